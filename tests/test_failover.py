"""PostgreSQL failover under load, with real processes: nothing acknowledged is lost or stored twice.

A pg_auto_failover formation (`Stack.up(ha=True)`) serves ingest, relay and dashboard processes,
all on its multi-host URL. Under continuous QoS 1 telemetry and with a red alert in flight, the
primary node dies (its keeper and postmaster SIGKILLed); the monitor promotes the standby and every
service finds it by itself. The time from the kill to the first commit on the new primary is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.errors import DatabaseError
from pulsewire.migrate import migrate
from pulsewire.settings import Settings
from pulsewire.stack import Stack
from pulsewire.stack._ha import kill_formation
from pulsewire.stack._ports import free_port
from relay import store
from relay.rules import seed_defaults
from relay.signing import IDEMPOTENCY_HEADER
from tests.fix_stack import new_state_dir
from tests.helpers import wait_for
from tests.ingest_support import (
    ROOT,
    Publisher,
    event,
    scraped_statuses,
    settle,
    start_ingest_process,
    telemetry,
)
from tests.relay_support import Receiver, webhook_receiver

pytestmark = pytest.mark.slow
DEVICE = "icd-failover"  # also the device of the red alert
# Each device stays well inside ingest's per-device budget (50 msg/s): 10 devices at 20 msg/s each.
LOAD_DEVICES = [f"{DEVICE}-{i}" for i in range(10)]


# A watchdog in a session of its own, so it outlives pytest however pytest ends: unless told
# "done" before its stdin closes, it SIGKILLs the pids it was given and the whole formation, and
# removes the state directory.
_REAPER = """
import os, shutil, sys
from pathlib import Path
from pulsewire.stack._ha import kill_formation
lines = sys.stdin.read().split()
if "done" not in lines:
    for pid in lines:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    kill_formation(Path(sys.argv[1], "ha"))
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class _Reaper:
    """A run killed outright (SIGKILL, a CI timeout) leaves no keeper, broker or service behind."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._proc = subprocess.Popen([sys.executable, "-c", _REAPER, str(state_dir)], cwd=ROOT,
                                      stdin=subprocess.PIPE, start_new_session=True)  # fmt: skip

    def watch(self, pid: int | None) -> None:
        """Kill `pid` too if this run dies."""
        if pid is not None and self._proc.stdin is not None:
            self._proc.stdin.write(f"{pid}\n".encode())
            self._proc.stdin.flush()

    def disarm(self) -> None:
        """The run cleaned up after itself: the watchdog exits without killing anything."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(b"done\n")
        self._proc.stdin.close()
        self._proc.wait(30)


@pytest.fixture(scope="module")
def reaper() -> Iterator[_Reaper]:
    """The watchdog of this module's formation (started before it, so nothing escapes it)."""
    watchdog = _Reaper(new_state_dir())
    try:
        yield watchdog
    finally:
        watchdog.disarm()


@pytest.fixture(scope="module")
def ha_stack(reaper: _Reaper) -> Iterator[Stack]:
    """`stack up --ha`; stopped after the module, and whatever a failed stop left is killed."""
    stack = Stack(reaper.state_dir)
    try:
        reaper.watch(stack.up(ha=True).broker_pid)
        yield stack
    finally:
        try:
            stack.down()
        finally:
            kill_formation(stack.state_dir / "ha")
            shutil.rmtree(stack.state_dir, ignore_errors=True)


def _service(args: list[str], stack: Stack, log: Path) -> subprocess.Popen[bytes]:
    info = stack.status()
    assert info is not None
    env = dict(os.environ, PULSEWIRE_DATABASE_URL=info.database_url, PULSEWIRE_MQTT_URL=info.mqtt_url,
               PULSEWIRE_STATE_DIR=str(stack.state_dir), PULSEWIRE_WEBHOOK_ALLOW_PRIVATE="1")  # fmt: skip
    exe = Path(sys.executable).parent / "pulsewire"
    return subprocess.Popen(
        [str(exe), *args], env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _committed(port: int) -> float:
    """Messages the ingest process has committed, from its /metrics (0 before it serves them)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (ConnectionError, urllib.error.URLError):
        return 0.0
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pulsewire_ingest_messages_total"
    )


class _Load:
    """Continuous QoS 1 telemetry in a thread; `acked`: the (device, seq) the broker acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.acked: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._pub = Publisher(settings.mqtt())
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self._pub.close()

    def _run(self) -> None:
        seq = 0
        while not self._stop.wait(0.1):
            seq += 2
            batch = [
                telemetry(d, s, [("heart_rate_bpm", 70.0)]) for d in LOAD_DEVICES for s in (seq - 1, seq)
            ]
            self._pub.publish_all(batch)
            self.acked.extend((d, s) for d in LOAD_DEVICES for s in (seq - 1, seq))


def _prepare(url: str, stack: Stack) -> tuple[int, str]:
    """Schema, rules, the devices (with broker logins) and a provider; returns the clinic and its token."""
    migrate(url, "native")
    with connect(url, autocommit=True) as c:
        seed_defaults(c)
        clinic = registry.add_org(c, "Failover Clinic", "provider")
        vendor = registry.add_org(c, "Failover Vendor", "vendor")
        for device in (DEVICE, *LOAD_DEVICES):
            registry.add_device(c, device, kind="implant", provider_org_id=clinic, vendor_org_id=vendor,
                                model="Evera XT DR")  # fmt: skip
        assert registry.sync_broker_auth(c, stack.state_dir)
        user = registry.add_user(c, "fo@example.org", display_name="Fo", password="fo-secret-password",
                                 role="provider_staff", org_id=clinic)  # fmt: skip
        return clinic, registry.issue_token(c, user, "failover")


def test_primary_killed_under_load_loses_nothing(ha_stack: Stack, reaper: _Reaper, tmp_path: Path) -> None:
    info = ha_stack.status()
    assert info is not None and ha_stack.cluster() is not None
    url = info.database_url
    assert "target_session_attrs=read-write" in url and url.count("127.0.0.1:") == 2
    clinic, token = _prepare(url, ha_stack)
    settings = Settings(database_url=url, mqtt_url=info.mqtt_url, state_dir=ha_stack.state_dir)
    metrics, api = free_port(), _Dashboard(free_port(), token)
    ingest = start_ingest_process(url, info.mqtt_url, ha_stack.state_dir, client_id="fo-ingest",
                                  share_group="fo", log_path=tmp_path / "ingest.log",
                                  metrics_port=metrics)  # fmt: skip
    relay = _service(["relay"], ha_stack, tmp_path / "relay.log")
    dashboard = _service(["dashboard", "--port", str(api.port)], ha_stack, tmp_path / "dashboard.log")
    procs = (ingest, relay, dashboard)
    for proc in procs:
        reaper.watch(proc.pid)
    try:
        wait_for(api.ready, what="the dashboard to be ready")
        with webhook_receiver() as rx:
            with connect(url, autocommit=True) as c:
                hook = store.create_webhook(c, clinic, rx.url)
            _run_failover(ha_stack, settings, metrics, rx, api)
            with connect(url, autocommit=True) as c:
                store.delete_webhook(c, clinic, hook["webhook_id"])
        assert all(proc.poll() is None for proc in procs), "a service exited instead of reconnecting"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _run_failover(stack: Stack, settings: Settings, metrics: int, rx: Receiver, api: _Dashboard) -> None:
    url = settings.require_database_url()
    acked = _kill_primary_under_load(stack, settings, metrics)
    settle(settings, DEVICE, [scraped_statuses(metrics)])
    stored = _assert_stored_once(url, acked)
    _assert_alert_once(url, rx)
    api.assert_reads(sum(d == LOAD_DEVICES[0] for d, _ in stored))


def _kill_primary_under_load(stack: Stack, settings: Settings, metrics: int) -> set[tuple[str, int]]:
    """Kill the primary under load with the red alert in flight; returns what the broker acknowledged."""
    cluster = stack.cluster()
    assert cluster is not None
    url = settings.require_database_url()
    with _Load(settings) as load:
        wait_for(lambda: _committed(metrics) > 100, what="ingest to commit under load")
        primary = cluster.primary()
        assert primary is not None
        with Publisher(settings.mqtt()) as pub:  # the red alert, in flight when the primary dies
            pub.publish_all(
                [event(DEVICE, 1, "shock_delivered", {"energy_j": 35, "success": True}, boot_id="ev")]
            )
        killed = time.monotonic()
        cluster.crash(primary.name)
        # The old postmaster is gone: a transaction that began after this ran on the new primary.
        gone = datetime.now(UTC)
        began = wait_for(
            lambda: _first_commit_since(url, gone), timeout_s=120, what="a commit on the new primary"
        )
        failover_s = time.monotonic() - killed
        assert began is not None
        lag_s = (began - gone).total_seconds()
        print(f"\nfailover: kill -> first commit seen on the new primary in {failover_s:.1f} s"
              f" (its transaction began {lag_s:.1f} s after the kill returned)")  # fmt: skip
        new = cluster.primary()
        assert new is not None and new.name != primary.name
        before = _committed(metrics)
        wait_for(lambda: _committed(metrics) > before + 400, timeout_s=60, what="ingest to go on")
    return set(load.acked)


def _assert_stored_once(url: str, acked: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Every acknowledged message is in ingest_log, with its one reading; returns what is stored."""
    with connect(url, autocommit=True) as c:
        rows: list[dict[str, Any]] = c.execute(
            "SELECT device_id, seq FROM ingest_log WHERE device_id = ANY(%s) AND boot_id = 'b1'",
            (LOAD_DEVICES,),
        ).fetchall()
        counts = c.execute(
            "SELECT (SELECT count(*) FROM readings WHERE device_id = ANY(%(d)s)) AS readings,"
            " (SELECT count(*) FROM quarantine WHERE device_id = ANY(%(d)s)) AS quarantined",
            {"d": LOAD_DEVICES},
        ).fetchone()
    stored = {(str(r["device_id"]), int(r["seq"])) for r in rows}
    assert acked <= stored, f"{len(acked - stored)} acknowledged message(s) lost"
    assert counts == {"readings": len(stored), "quarantined": 0}, "a reading stored twice, lost or refused"
    return stored


def _first_commit_since(url: str, since: datetime) -> datetime | None:
    """When the first ingest_log row whose transaction began at or after `since` began; None before."""
    try:
        with connect(url, autocommit=True) as c:
            row = c.execute("SELECT min(received_at) AS t FROM ingest_log WHERE received_at >= %s", (since,))
            found = row.fetchone()
    except DatabaseError:  # no node takes writes yet
        return None
    began = None if found is None else found["t"]
    return began if isinstance(began, datetime) else None


def _assert_alert_once(url: str, rx: Receiver) -> None:
    """One alert, one delivered outbox row; every request the receiver took is that one delivery."""

    def delivered() -> list[dict[str, Any]]:
        with connect(url, autocommit=True) as c:
            return c.execute(
                "SELECT a.alert_id, o.delivery_id, o.state FROM alerts a LEFT JOIN outbox o"
                " ON o.alert_id = a.alert_id AND o.webhook_id IS NOT NULL"
                " WHERE a.device_id = %s AND a.rule_key = 'implant.shock_delivered'",
                (DEVICE,),
            ).fetchall()

    rows = wait_for(lambda: [r for r in delivered() if r["state"] == "delivered"], timeout_s=90,
                    what="the red alert's delivery")  # fmt: skip
    assert len(delivered()) == len(rows) == 1, "the red alert raised or queued twice"
    taken = [r for r in rx.accepted() if b"implant.shock_delivered" in r.body]
    # A request sent just before a crash is sent again with the same key (at-least-once on the
    # wire); the receiver deduplicates by it, so "once" is one key among what it accepted.
    keys = {r.headers.get(IDEMPOTENCY_HEADER) for r in taken}
    assert len(taken) >= 1 and len(keys) == 1 and None not in keys
    print(f"red alert: 1 alert, 1 delivery, {len(taken)} request(s) accepted with its one key")


@dataclass(frozen=True)
class _Dashboard:
    """The dashboard process's port and a provider's API token."""

    port: int
    token: str

    def ready(self) -> bool:
        """Whether /readyz says ready (False while it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as response:
                return bool(json.loads(response.read())["status"] == "ready")
        except (ConnectionError, urllib.error.URLError):
            return False

    def assert_reads(self, expected: int) -> None:
        """A readings query answers from the new primary, with every reading stored.

        The first query may meet a pooled connection of the dead primary (a 503, and the pool
        replaces the rest); the dashboard answers the next ones without a restart.
        """
        refused: list[int] = []

        def points() -> int | None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/api/v1/devices/{LOAD_DEVICES[0]}/readings"
                "?metric=heart_rate_bpm",
                headers={"Authorization": f"Bearer {self.token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    (series,) = json.loads(response.read())["series"]
            except urllib.error.HTTPError as exc:
                assert exc.code == 503, exc
                refused.append(exc.code)
                return None
            return len(series["points"])

        assert wait_for(points, timeout_s=60, what="the dashboard's readings") == expected
        print(f"dashboard: readings answered after {len(refused)} refused quer(ies)")
