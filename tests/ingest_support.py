"""Helpers of the ingest tests: payload builders, a retrying QoS 1 publisher, polling, a barrier."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from ingest import IngestService
from pulsewire.mqtt import Tls
from pulsewire.settings import MqttTarget, Settings
from schemas import topics
from tests.helpers import wait_for  # noqa: F401 (re-exported: the ingest tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
Message = tuple[str, bytes]


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def telemetry(device_id: str, seq: int, readings: Sequence[tuple[str, float]], *, boot_id: str = "b1",
              ts: datetime | None = None) -> Message:  # fmt: skip
    """A telemetry message whose readings all carry `ts` (default: now)."""
    stamp = iso(ts or datetime.now(UTC))
    body = {
        "schema": "pulsewire.telemetry/1", "device_id": device_id, "boot_id": boot_id, "seq": seq,
        "sent_at": stamp, "readings": [{"ts": stamp, "metric": m, "value": v} for m, v in readings],
    }  # fmt: skip
    return topics.telemetry(device_id), json.dumps(body).encode()


def event(device_id: str, seq: int, type_: str, data: dict[str, Any] | None = None, *, boot_id: str = "b1",
          ts: datetime | None = None) -> Message:  # fmt: skip
    body = {
        "schema": "pulsewire.event/1", "device_id": device_id, "boot_id": boot_id, "seq": seq,
        "ts": iso(ts or datetime.now(UTC)), "type": type_, "data": data or {},
    }  # fmt: skip
    return topics.event(device_id), json.dumps(body).encode()


def status(device_id: str, state: str, ts: datetime) -> Message:
    body = {"schema": "pulsewire.status/1", "device_id": device_id, "state": state, "ts": iso(ts)}
    return topics.status(device_id), json.dumps(body).encode()


@contextmanager
def running_ingest(
    settings: Settings, name: str, *, share_group: str | None = None, **overrides: Any
) -> Iterator[IngestService]:
    """An in-process ingest worker for the block: a fresh client id, a fresh share group (unless
    given: workers of one group split the load), 20 ms batches (unless `overrides` say otherwise),
    subscribed before the block starts, stopped after it."""
    tuned = settings.model_copy(update={"flush_interval_ms": 20, **overrides})
    service = IngestService(
        tuned, client_id=f"t-{name}-{secrets.token_hex(3)}", share_group=share_group or secrets.token_hex(4)
    )
    service.start()
    try:
        assert service.wait_subscribed(15), "ingest never subscribed"
        yield service
    finally:
        service.stop()


class Publisher:
    """A QoS 1 publisher that republishes whatever the broker has not acknowledged (broker restarts)."""

    def __init__(self, target: MqttTarget, username: str | None = None, password: str | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.username_pw_set(username or target.username, password or target.password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        tls = Tls.of(target)
        if tls is not None:  # a device listener: TLS with the target's CA
            self.client.tls_set_context(tls.context())
        self.client.connect(target.host, target.port, keepalive=10)
        self.client.loop_start()

    def publish_all(self, messages: Iterable[Message], timeout_s: float = 60.0) -> None:
        """Publish every message at QoS 1 and return once the broker acknowledged each."""
        pending = list(messages)
        deadline = time.monotonic() + timeout_s
        while pending:
            infos = [(m, self.client.publish(m[0], m[1], qos=1)) for m in pending]
            wait_until = min(deadline, time.monotonic() + 5.0)
            for _, info in infos:
                while not _acked(info) and time.monotonic() < wait_until and info.rc == 0:
                    time.sleep(0.002)
            pending = [m for m, info in infos if not _acked(info)]
            if pending:
                assert time.monotonic() < deadline, f"{len(pending)} message(s) never acknowledged"
                time.sleep(0.3)  # disconnected: wait for paho to reconnect, then republish

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except RuntimeError:  # paho says "not connected": not acknowledged, publish it again
        return False


def forget_session(settings: Settings, client_id: str) -> None:
    """End a persistent session, so it does not collect every later test's messages."""
    target = settings.mqtt()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.connect(target.host, target.port, clean_start=True)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


def start_ingest_process(database_url: str, mqtt_url: str, state_dir: Path, *, client_id: str,
                         share_group: str, log_path: Path, metrics_port: int = 0,
                         writers: int = 1) -> subprocess.Popen[bytes]:  # fmt: skip
    """`.venv/bin/pulsewire ingest` as a child process, configured by environment like in production."""
    env = dict(os.environ, PULSEWIRE_DATABASE_URL=database_url, PULSEWIRE_MQTT_URL=mqtt_url,
               PULSEWIRE_STATE_DIR=str(state_dir), PULSEWIRE_FLUSH_INTERVAL_MS="20",
               PULSEWIRE_INGEST_WRITERS=str(writers))  # fmt: skip
    exe = Path(sys.executable).parent / "pulsewire"
    return subprocess.Popen(
        [str(exe), "ingest", "--client-id", client_id, "--share-group", share_group,
         "--log-level", "WARNING", "--metrics-port", str(metrics_port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_path.open("ab"),
    )  # fmt: skip


Committed = Callable[[], float]  # how many status messages one ingest worker has committed


def settle(settings: Settings, device_id: str, workers: Sequence[Committed], timeout_s: float = 60) -> None:
    """Return once every worker has committed a status message published after this call.

    Each of `workers` must count status messages only (`in_process_statuses`, `scraped_statuses`):
    with a count of every message, telemetry still being committed would pass for the barrier.

    Then each worker is subscribed and has committed everything it received before: a worker
    commits in the order it receives, and a broker resends what a session has not acknowledged
    before anything newer, so past this barrier every copy has been handled. Statuses go out one
    at a time, the next once the last was committed or found nobody subscribed yet; a shared
    subscription hands them to its workers in turn.
    """
    start = [committed() for committed in workers]

    def total() -> float:
        return sum(committed() for committed in workers)

    pub = Publisher(settings.mqtt())
    try:
        deadline = time.monotonic() + timeout_s
        while not all(committed() > s for committed, s in zip(workers, start, strict=True)):
            assert time.monotonic() < deadline, f"not every worker committed a status in {timeout_s}s"
            before = total()
            pub.publish_all([status(device_id, "online", datetime.now(UTC))])
            answered = time.monotonic() + 1.0
            while total() <= before and time.monotonic() < answered:
                time.sleep(0.02)
    finally:
        pub.close()


def in_process_statuses(service: IngestService) -> Committed:
    return lambda: float(service.metrics.messages.labels("status")._value.get())


def scraped_statuses(port: int) -> Committed:
    """A worker process's count, from its /metrics; 0 until it serves them (it has committed nothing)."""

    def read() -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except ConnectionRefusedError:
            return 0.0
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return 0.0
            raise
        return sample_value(text, "pulsewire_ingest_messages_total", kind="status")

    return read


def sample_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` with `labels` in a Prometheus exposition `text`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
