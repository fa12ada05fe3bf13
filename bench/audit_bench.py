"""Benchmark: what the access audit costs the readings API (p50 and p95, with and without it).

    .venv/bin/python -m bench.audit_bench [--requests 600] [--block 50]

A private stack in a temp dir; one vehicle with a day of readings (4 metrics every 30 s); the real
dashboard app under uvicorn in this process; a provider's token. Requests for a day in 1 h buckets
run in blocks taken in turn, so drift hits every mode alike: no audit (the writers replaced by
no-ops), the entry as an INSERT statement of its own in the request's transaction, and the entry as
a CTE of the statement that reads the device (what the dashboard does). Prints the latency
summaries side by side.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from dashboards import access
from dashboards.api import devices
from dashboards.app import create_app
from pulsewire import audit, registry
from pulsewire.db import connect
from pulsewire.migrate import migrate
from pulsewire.settings import Settings
from pulsewire.stack import Stack
from pulsewire.stack._ports import free_port

DEVICE = "veh-audit-bench"
METRICS = ("coolant_temp_c", "rpm", "speed_kmh", "battery_voltage_v")


def seed(url: str, now: datetime) -> str:
    """The registry, a day of readings; returns a provider's API token."""
    with connect(url, autocommit=True) as conn:
        garage = registry.add_org(conn, "Bench Garage", "provider")
        vendor = registry.add_org(conn, "Bench Dongles", "vendor")
        owner = registry.add_owner(conn, garage, "Bench Driver")
        registry.add_device(
            conn,
            DEVICE,
            kind="vehicle",
            model="OBDLink",
            provider_org_id=garage,
            vendor_org_id=vendor,
            owner_id=owner,
        )
        with conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy:
            for i in range(86_400 // 30):
                for j, metric in enumerate(METRICS):
                    copy.write_row((now - timedelta(seconds=30 * i), DEVICE, metric, 50.0 + j + i % 7))
        conn.execute("VACUUM (ANALYZE) readings")
        user = registry.add_user(conn, "mechanic@bench.example", role="provider_staff", org_id=garage)
        return registry.issue_token(conn, user, "bench")


_real_record = audit.record


async def _no_record(*args: Any, **kwargs: Any) -> None:
    return None


def _no_insert(*args: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    return "", {}


_real_insert = access.read_of_rows
_real_device_of = devices.device_of


async def _device_then_insert(conn: Any, p: Any, device_id: str) -> Any:
    # What the dashboard did first: the read, then the entry as a statement of its own.
    row = await _real_device_of(conn, p, device_id)
    owners = (int(row["owner_id"]),) if row["owner_id"] is not None else ()
    await access.record(conn, audit.READ, "device", device_id, owner_ids=owners)
    return row


# (record, read_of_rows, the routes' device lookup) per mode: no audit; an INSERT of its own; the
# INSERT as a CTE of the statement that reads the device (what the dashboard does).
MODES = {
    "no audit": (_no_record, _no_insert, _real_device_of),
    "own INSERT": (_real_record, _no_insert, _device_then_insert),
    "in the read": (_real_record, _real_insert, _real_device_of),
}


def measure(c: httpx.Client, n: int, now: datetime) -> list[float]:
    params = {
        "bucket": "1h",
        "agg": "avg",
        "start": (now - timedelta(days=1)).isoformat(),
        "end": now.isoformat(),
    }
    times = []
    for _ in range(n):
        began = time.perf_counter()
        response = c.get(f"/api/v1/devices/{DEVICE}/readings", params=params)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return times


def run(base: str, token: str, now: datetime, args: argparse.Namespace) -> dict[str, list[float]]:
    """Blocks in turn: no audit, the audit with a durable commit, the audit with a lazy commit."""
    figures: dict[str, list[float]] = {name: [] for name in MODES}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        measure(c, 50, now)  # warm-up: pools, plans, caches
        for block in range(args.requests // args.block):
            name = list(MODES)[block % len(MODES)]
            audit.record, access.read_of_rows, devices.device_of = MODES[name]  # type: ignore[assignment]
            try:
                figures[name] += measure(c, args.block, now)
            finally:
                audit.record, access.read_of_rows = _real_record, _real_insert  # type: ignore[assignment]
                devices.device_of = _real_device_of
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="pulsewire-audit-bench-"))
    state_dir.chmod(0o755)
    stack = Stack(state_dir)
    try:
        info = stack.up()
        migrate(info.database_url)
        now = datetime.now(UTC).replace(microsecond=0)
        token = seed(info.database_url, now)
        settings = Settings(database_url=info.database_url, mqtt_url=info.mqtt_url, state_dir=state_dir)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            figures = run(f"http://127.0.0.1:{port}", token, now, args)
        finally:
            server.should_exit = True
            thread.join(10)
        with connect(info.database_url) as conn:
            rows = conn.execute("SELECT count(*) AS n FROM access_audit").fetchone()
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()} {platform.release()}")
    print(f"{'':>10} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
    for name, ms in figures.items():
        p95 = statistics.quantiles(ms, n=20)[-1]
        print(f"{name:>10} {len(ms):>5} {statistics.median(ms):>8.2f} {p95:>8.2f}")
    print(f"access_audit rows written: {rows['n'] if rows else 0}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
