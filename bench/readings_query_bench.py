"""Benchmark: GET /api/v1/devices/{id}/readings over 30 days (≤ 1,000 buckets) while readings pour in.

    .venv/bin/python -m bench.readings_query_bench [--requests 400] [--write-rate 10000]

A private stack (PostgreSQL + Mosquitto) in a temp dir; 30 days of readings for one device (4 metrics
every 30 s by default, `--step-s`) and 50 background devices (every 5 min); the real dashboard server
(`pulsewire dashboard`, a separate process) and a separate writer process that COPYs ~10,000
readings/s of current data.
Prints p50/p95/p99 of the request latency seen by an HTTP client, with and without the writer.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.migrate import migrate
from pulsewire.stack import Stack
from pulsewire.storage import maintain

DEVICE = "veh-bench"
METRICS = ("coolant_temp_c", "rpm", "speed_kmh", "battery_voltage_v")
BACKGROUND = 50
DAYS = 30
QUERIES = [  # (bucket, agg): 30 days each, 30 to 960 buckets
    ("1h", "avg"),
    ("45m", "max"),
    ("1d", "last"),
    ("2h", "min"),
    ("1h", "last"),
    ("45m", "avg"),
]


def load_history(url: str, now: datetime, step_s: int) -> int:
    """30 days for the benchmark device and the background fleet; returns rows written."""
    start = now - timedelta(days=DAYS)
    rows = 0
    rng = np.random.default_rng(7)
    with (
        connect(url, autocommit=True) as conn,
        conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy,
    ):
        n = DAYS * 86_400 // step_s
        stamps = [start + timedelta(seconds=step_s * i) for i in range(n)]
        for metric in METRICS:
            values = 50 + 10 * rng.standard_normal(n)
            for ts, v in zip(stamps, values, strict=True):
                copy.write_row((ts, DEVICE, metric, abs(float(v))))
            rows += n
        for d in range(BACKGROUND):
            for i in range(DAYS * 86_400 // 300):
                copy.write_row((start + timedelta(seconds=300 * i), f"veh-bg{d:03d}", "rpm", 800.0 + i % 50))
                rows += 1
    return rows


def writer(url: str, rate: int, stop: Any, written: Any) -> None:
    """COPY `rate` readings/s of current data for the background fleet until `stop` is set."""
    batch = max(1, rate // 10)
    with connect(url, autocommit=True) as conn:
        next_at = time.monotonic()
        while not stop.is_set():
            now = datetime.now(UTC)
            with (
                conn.transaction(),
                conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy,
            ):
                for i in range(batch):
                    copy.write_row((now, f"veh-bg{i % BACKGROUND:03d}", "rpm", 900.0 + i % 100))
            written.value += batch
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.monotonic()))


def measure(base: str, token: str, n: int, now: datetime) -> list[float]:
    """Latencies (ms) of `n` sequential readings requests over the 30 days."""
    params_at = [
        {
            "metric": METRICS[i % len(METRICS)],
            "bucket": b,
            "agg": a,
            "start": (now - timedelta(days=DAYS)).isoformat(),
            "end": now.isoformat(),
        }
        for i, (b, a) in enumerate(QUERIES)
    ]
    latencies = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for i in range(n):
            began = time.perf_counter()
            response = client.get(f"/api/v1/devices/{DEVICE}/readings", params=params_at[i % len(params_at)])
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200 or not response.json()["series"][0]["points"]:
                raise SystemExit(f"bad answer: {response.status_code} {response.text[:300]}")
    return latencies


def summary(name: str, ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100)
    figures = {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(ms)}
    print(
        f"{name:<28} n={len(ms):<5} " + "  ".join(f"{k} {v:7.1f} ms" for k, v in figures.items()), flush=True
    )
    return figures


def setup_registry(url: str, state_dir: Path) -> str:
    """Orgs, the devices and a provider user; returns the user's API token."""
    with connect(url, autocommit=True) as conn:
        garage = registry.add_org(conn, "Bench Garage", "provider")
        vendor = registry.add_org(conn, "Bench Dongles", "vendor")
        owner = registry.add_owner(conn, garage, "Bench Driver")
        for device in [DEVICE] + [f"veh-bg{d:03d}" for d in range(BACKGROUND)]:
            registry.add_device(
                conn,
                device,
                kind="vehicle",
                model="OBDLink",
                provider_org_id=garage,
                vendor_org_id=vendor,
                owner_id=owner,
            )
        user = registry.add_user(conn, "mechanic@bench.example", role="provider_staff", org_id=garage)
        # Day partitions for the whole month, as a system running for a month has them.
        for days_ago in range(DAYS + 1, -1, -7):
            maintain(conn, retention_days=400, now=datetime.now(UTC) - timedelta(days=days_ago))
        conn.execute("ANALYZE readings")
        return registry.issue_token(conn, user, "bench")


def start_server(url: str, state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PULSEWIRE_DATABASE_URL": url, "PULSEWIRE_STATE_DIR": str(state_dir)}
    server = subprocess.Popen(
        [sys.executable, "-m", "pulsewire", "dashboard", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the dashboard did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--write-rate", type=int, default=10_000, help="readings/s written meanwhile")
    parser.add_argument("--port", type=int, default=18_480)
    parser.add_argument("--step-s", type=int, default=30, help="cadence of the device's readings")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="pulsewire-bench-"))
    state_dir.chmod(0o755)
    stack = Stack(state_dir)
    try:
        info = stack.up()
        migrate(info.database_url)
        now = datetime.now(UTC).replace(microsecond=0)
        token = setup_registry(info.database_url, state_dir)
        began = time.perf_counter()
        rows = load_history(info.database_url, now, args.step_s)
        print(
            f"storage: {'timescaledb' if info.timescaledb else 'native partitions'}; loaded {rows:,} "
            f"readings in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        with connect(info.database_url, autocommit=True) as conn:
            # What autovacuum does to settled history on a running system (PostgreSQL 13+ vacuums
            # insert-only tables too): statistics, and an all-visible map for index-only scans.
            conn.execute("VACUUM (ANALYZE) readings")
        server = start_server(info.database_url, state_dir, args.port)
        try:
            run(f"http://127.0.0.1:{args.port}", token, now, args, info.database_url)
        finally:
            server.terminate()
            server.wait(10)
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def run(base: str, token: str, now: datetime, args: argparse.Namespace, url: str) -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; {args.requests} sequential requests, 30 days, 30-960 buckets, "
        f"one reading per metric every {args.step_s} s ({DAYS * 86_400 // args.step_s:,} per series)",
        flush=True,
    )
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    measure(base, token, 30, now)  # warm-up: pool, plans, page cache
    idle = summary("idle", measure(base, token, args.requests, now))
    ctx = mp.get_context("spawn")
    stop, written = ctx.Event(), ctx.Value("q", 0)
    proc = ctx.Process(target=writer, args=(url, args.write_rate, stop, written))
    proc.start()
    time.sleep(2)
    before, t0 = written.value, time.perf_counter()
    busy = summary(f"writer at {args.write_rate:,}/s", measure(base, token, args.requests, now))
    rate = (written.value - before) / (time.perf_counter() - t0)
    stop.set()
    proc.join(10)
    print(f"writer achieved {rate:,.0f} readings/s during the measurement", flush=True)
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    verdict = "PASS" if busy["p99"] <= 100 else "FAIL"
    print(
        f"target p99 <= 100 ms during ingest: {verdict} "
        f"(p99 {busy['p99']:.1f} ms; idle p99 {idle['p99']:.1f} ms)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
