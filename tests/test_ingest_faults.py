"""Ingest under faults: nothing lost, nothing stored twice (SIGKILL, PostgreSQL down, broker restart,
two workers on one shared subscription). Real processes, real servers; every test is bounded.

"Nothing stored twice" is checked behind a barrier (`tests.ingest_support.settle`): a message published
after the stream, committed by every worker."""

from __future__ import annotations

import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest import IngestService
from pulsewire.settings import Settings
from pulsewire.stack import Stack, StackInfo
from tests.fix_db import World
from tests.helpers import free_port
from tests.ingest_support import (
    Committed,
    Publisher,
    forget_session,
    in_process_statuses,
    running_ingest,
    scraped_statuses,
    settle,
    start_ingest_process,
    telemetry,
    wait_for,
)

pytestmark = pytest.mark.slow
Conn = psycopg.Connection[dict[str, Any]]
MESSAGES = 3_000
READINGS = 5


class Stream:
    """Publishes MESSAGES telemetry messages of READINGS readings from one device, paced, in a thread."""

    def __init__(self, settings: Settings, device_id: str, rate_hz: float = 1_000.0) -> None:
        self.device_id = device_id
        self.expected_sum = 0.0
        self._msgs = []
        for seq in range(MESSAGES):
            values = [float(60 + (seq + i) % 100) for i in range(READINGS)]
            self.expected_sum += sum(values)
            self._msgs.append(telemetry(device_id, seq, [("heart_rate_bpm", v) for v in values]))
        self._rate = rate_hz
        self.published = 0  # acknowledged by the broker
        self._pub = Publisher(settings.mqtt())
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            chunk = 50
            for i in range(0, MESSAGES, chunk):
                started = time.monotonic()
                self._pub.publish_all(self._msgs[i : i + chunk], timeout_s=90)
                self.published = i + chunk
                time.sleep(max(0.0, chunk / self._rate - (time.monotonic() - started)))
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(120)
        self._pub.close()
        assert not self._thread.is_alive(), "publisher did not finish"
        assert self.error is None, f"publisher failed: {self.error!r}"


def stored(conn: Conn, device_id: str) -> tuple[int, float, int]:
    row = conn.execute(
        "SELECT count(*) AS n, coalesce(sum(value), 0) AS s, "
        "(SELECT count(*) FROM ingest_log WHERE device_id = %s) AS logged FROM readings WHERE device_id = %s",
        (device_id, device_id),
    ).fetchone()
    assert row is not None
    return int(row["n"]), float(row["s"]), int(row["logged"])


def assert_exactly_once(conn: Conn, stream: Stream, settings: Settings, workers: Sequence[Committed]) -> None:
    stream.join()
    settle(settings, stream.device_id, workers)
    assert stored(conn, stream.device_id) == (MESSAGES * READINGS, stream.expected_sum, MESSAGES)


def wait_landed(conn: Conn, device_id: str, messages: int) -> None:
    wait_for(lambda: stored(conn, device_id)[2] >= messages, 60, f"{messages} messages of {device_id}")


# The crash and outage tests run with one writer connection (the default) and with two
# (`PULSEWIRE_INGEST_WRITERS=2`: a batch may be in flight on each when the fault strikes).
WRITERS = pytest.mark.parametrize("writers", [1, 2])


@pytest.fixture
def in_process(settings: Settings, writers: int) -> Iterator[IngestService]:
    with running_ingest(settings, "fault", ingest_writers=writers) as svc:
        yield svc


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


@WRITERS
def test_sigkill_mid_stream_then_restart_stores_everything_once(
    world: World, settings: Settings, stack_info: StackInfo, conn: Conn, tmp_path: Path, *, writers: int
) -> None:
    device = f"imp-kill-{writers}"
    world.add_device(device, "implant")
    group, client_id = secrets.token_hex(4), f"t-kill-{secrets.token_hex(3)}"

    def spawn() -> tuple[subprocess.Popen[bytes], Committed]:
        port = free_port()
        proc = start_ingest_process(
            settings.require_database_url(),
            stack_info.mqtt_url,
            tmp_path,
            client_id=client_id,
            share_group=group,
            log_path=tmp_path / "ingest.log",
            metrics_port=port,
            writers=writers,
        )
        return proc, scraped_statuses(port)

    proc, committed = spawn()
    try:
        settle(settings, device, [committed])  # subscribed
        stream = Stream(settings, device).start()
        wait_landed(conn, device, MESSAGES // 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        sent = stream.published
        wait_for(lambda: stream.published >= min(sent + 300, MESSAGES), 30, "messages queued for the session")
        proc, committed = spawn()  # same client id: resumes the session and its unacked messages
        assert_exactly_once(conn, stream, settings, [committed])
        assert stop(proc) == 0, (tmp_path / "ingest.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


@WRITERS
def test_postgres_down_for_seconds_loses_nothing(
    world: World, settings: Settings, stack: Stack, conn: Conn, in_process: IngestService, *, writers: int
) -> None:
    device = f"imp-pg-{writers}"
    world.add_device(device, "implant")
    stream = Stream(settings, device).start()
    wait_landed(conn, device, MESSAGES // 3)
    conn.close()
    retries, sent = in_process.metrics.db_retries._value.get(), stream.published
    stack.stop_postgres()

    def down_long_enough() -> bool:  # the worker retried a few times (about 1.5 s), the stream went on
        return bool(
            in_process.metrics.db_retries._value.get() >= retries + 4
            and stream.published >= min(sent + 300, MESSAGES)
        )

    try:
        wait_for(down_long_enough, 30, "retries while PostgreSQL is down")
    finally:
        stack.start_postgres()
    with psycopg.connect(
        settings.require_database_url(), autocommit=True, row_factory=psycopg.rows.dict_row
    ) as c:
        assert_exactly_once(c, stream, settings, [in_process_statuses(in_process)])
    assert in_process.metrics.db_retries._value.get() > 0
    assert in_process.alive


@WRITERS
def test_broker_restart_mid_stream_loses_nothing(
    world: World, settings: Settings, stack: Stack, conn: Conn, writers: int
) -> None:
    # A single worker on plain subscriptions: Mosquitto 2.0.11 restores those from its persistence
    # file, but not shared ones (see ingest._consumer.shared_topics).
    device = f"imp-brk-{writers}"
    world.add_device(device, "implant")
    client_id = f"t-brk-{secrets.token_hex(3)}"
    svc = IngestService(
        settings.model_copy(update={"flush_interval_ms": 20, "ingest_writers": writers}),
        client_id=client_id,
        share_group="",
    )
    svc.start()
    try:
        assert svc.wait_subscribed(15)
        stream = Stream(settings, device).start()
        wait_landed(conn, device, MESSAGES // 3)
        stack.restart_broker()
        assert_exactly_once(conn, stream, settings, [in_process_statuses(svc)])
        assert svc.alive
    finally:
        svc.stop()
        forget_session(settings, client_id)


def test_two_workers_on_the_shared_subscription_store_everything_once(
    world: World, settings: Settings, stack_info: StackInfo, conn: Conn, tmp_path: Path
) -> None:
    world.add_device("imp-two", "implant")
    group, ports = secrets.token_hex(4), [free_port(), free_port()]
    procs = [
        start_ingest_process(
            settings.require_database_url(),
            stack_info.mqtt_url,
            tmp_path,
            client_id=f"t-two-{i}-{secrets.token_hex(3)}",
            share_group=group,
            log_path=tmp_path / f"ingest{i}.log",
            metrics_port=port,
        )
        for i, port in enumerate(ports)
    ]
    workers = [scraped_statuses(port) for port in ports]
    try:
        settle(settings, "imp-two", workers)  # both subscribed
        assert_exactly_once(conn, Stream(settings, "imp-two", rate_hz=2_000).start(), settings, workers)
        assert [stop(p) for p in procs] == [0, 0]
        logs = [(tmp_path / f"ingest{i}.log").read_text() for i in range(2)]
        assert all("Traceback" not in text for text in logs), logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
