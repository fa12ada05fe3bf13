"""Benchmark: GET /api/v1/devices/{id}/readings over 30 days and 1 year, hourly and daily buckets,
on native storage and TimescaleDB side by side, while readings pour in.

    .venv/bin/python -m bench.readings_query_bench [--requests 200] [--write-rate 10000]

A private stack (PostgreSQL + Mosquitto) in a temp dir, with one database per storage (TimescaleDB
only when it is installed): one device with a reading every 30 s (`--step-s`) for a year, and 50
background devices (every 5 min, 30 days); rollups as a running system has them (native: `maintain`;
TimescaleDB: the refresh and compression policies run once). For each storage, the real dashboard
server (`pulsewire dashboard`, a separate process) and a separate writer process that COPYs
~10,000 readings/s of current data into that database; p50/p95/p99 of the request latency seen by
an HTTP client, per range and bucket. Goal: p99 <= 100 ms for a year of daily buckets.
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
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.migrate import Storage, migrate
from pulsewire.stack import Stack
from pulsewire.storage import maintain

DEVICE = "veh-bench"
METRIC = "rpm"
BACKGROUND = 50
DAYS = 30  # of background history
YEAR = 365
QUERIES = [  # (range in days, bucket): 30 to 8,760 buckets
    (30, "1h"),
    (30, "1d"),
    (YEAR, "1d"),
    (YEAR, "1h"),
]
AGGS = ("avg", "max", "last", "min")


def load_history(url: str, now: datetime, step_s: int) -> int:
    """A year of the dense series and 30 days of the background fleet; returns rows written."""
    rng = np.random.default_rng(7)
    start = (now - timedelta(days=YEAR)).timestamp()
    stamps = start + step_s * np.arange(YEAR * 86_400 // step_s)
    values = np.abs(50 + 10 * rng.standard_normal(len(stamps)))
    rows = [_copy_text(stamps, DEVICE, values)]
    bg_stamps = (now - timedelta(days=DAYS)).timestamp() + 300 * np.arange(DAYS * 86_400 // 300)
    for d in range(BACKGROUND):
        rows.append(_copy_text(bg_stamps, f"veh-bg{d:03d}", 800.0 + np.arange(len(bg_stamps)) % 50))
    with (
        connect(url, autocommit=True) as conn,
        conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy,
    ):
        for chunk in rows:
            copy.write(chunk)
    return len(stamps) + BACKGROUND * len(bg_stamps)


def _copy_text(stamps: Any, device: str, values: Any) -> bytes:
    """COPY text rows (epoch seconds as timestamptz through `to_timestamp`'s text form)."""
    lines = [
        f"{datetime.fromtimestamp(t, UTC).isoformat()}\t{device}\t{METRIC}\t{v:.3f}\n"
        for t, v in zip(stamps.tolist(), values.tolist(), strict=True)
    ]
    return "".join(lines).encode()


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
                    copy.write_row((now, f"veh-bg{i % BACKGROUND:03d}", METRIC, 900.0 + i % 100))
            written.value += batch
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.monotonic()))


def measure(base: str, token: str, n: int, now: datetime, query: tuple[int, str]) -> list[float]:
    """Latencies (ms) of `n` sequential readings requests over `days` up to now, aggregates in turn."""
    days, bucket = query
    start = (now - timedelta(days=days) + timedelta(hours=1)).isoformat()
    latencies = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for i in range(n):
            params = {"metric": METRIC, "bucket": bucket, "agg": AGGS[i % len(AGGS)], "start": start,
                      "end": now.isoformat()}  # fmt: skip
            began = time.perf_counter()
            response = client.get(f"/api/v1/devices/{DEVICE}/readings", params=params)
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
        # Day partitions for the whole year, as a system running for a year has them.
        for days_ago in range(YEAR + 1, -1, -7):
            maintain(conn, retention_days=400, now=datetime.now(UTC) - timedelta(days=days_ago))
        return registry.issue_token(conn, user, "bench")


def start_server(url: str, state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PULSEWIRE_DATABASE_URL": url,
        "PULSEWIRE_STATE_DIR": str(state_dir),
        "PULSEWIRE_READINGS_BUCKETS_MAX": "10000",
    }  # fmt: skip  (a year of hourly buckets)
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
    parser.add_argument("--requests", type=int, default=200, help="per storage, range and bucket")
    parser.add_argument("--write-rate", type=int, default=10_000, help="readings/s written meanwhile")
    parser.add_argument("--port", type=int, default=18_480)
    parser.add_argument("--step-s", type=int, default=30, help="cadence of the device's readings")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="pulsewire-bench-"))
    state_dir.chmod(0o755)
    stack = Stack(state_dir)
    try:
        info = stack.up()
        storages: list[Storage] = ["native", "timescale"] if info.timescaledb else ["native"]
        print(describe_machine(args, storages), flush=True)
        results = {}
        for i, storage in enumerate(storages):
            db = prepare(info.database_url, storage, state_dir, args)
            results[storage] = run_storage(db, storage, state_dir, args, args.port + i)
        report(results)
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def describe_machine(args: argparse.Namespace, storages: list[Storage]) -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), {platform.python_implementation()} "
        f"{platform.python_version()}; storages: {', '.join(storages)}; {args.requests} sequential requests "
        f"per range and bucket; one reading every {args.step_s} s for {YEAR} days"
    )


def prepare(admin_url: str, storage: Storage, state_dir: Path, args: argparse.Namespace) -> tuple[str, str]:
    """A database of this storage with the history loaded and rolled up; its URL and an API token."""
    with connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE bench_{storage}".encode())
    parts = urlsplit(admin_url)
    url = urlunsplit(parts._replace(path=f"/bench_{storage}"))
    migrate(url, storage)
    now = datetime.now(UTC).replace(microsecond=0)
    token = setup_registry(url, state_dir)
    began = time.perf_counter()
    rows = load_history(url, now, args.step_s)
    with connect(url, autocommit=True) as conn:
        if storage == "timescale":  # what the policies have done on a system running for a year
            conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, now() - INTERVAL '1 hour')")
            old = "show_chunks('readings', older_than => INTERVAL '7 days')"
            conn.execute(f"SELECT compress_chunk(c, true) FROM {old} c")
        else:
            maintain(conn, retention_days=400)
        # What autovacuum does to settled history on a running system: statistics and the
        # all-visible map for index-only scans.
        conn.execute("VACUUM (ANALYZE) readings")
    print(f"{storage}: loaded {rows:,} readings and rolled them up in {time.perf_counter() - began:.0f} s",
          flush=True)  # fmt: skip
    return url, token


def run_storage(
    db: tuple[str, str], storage: Storage, state_dir: Path, args: argparse.Namespace, port: int
) -> dict[str, dict[str, float]]:
    """Latency figures per (range, bucket) on one storage (URL and token), with the writer running."""
    url, token = db
    server = start_server(url, state_dir, port)
    ctx = mp.get_context("spawn")
    stop, written = ctx.Event(), ctx.Value("q", 0)
    proc = ctx.Process(target=writer, args=(url, args.write_rate, stop, written))
    try:
        base, now = f"http://127.0.0.1:{port}", datetime.now(UTC).replace(microsecond=0)
        for days, bucket in QUERIES:
            measure(base, token, 8, now, (days, bucket))  # warm-up: pool, plans, page cache
        proc.start()
        time.sleep(2)
        before, t0 = written.value, time.perf_counter()
        print(f"load average before {storage}: {_load()}", flush=True)
        figures = {}
        for days, bucket in QUERIES:
            name = f"{storage} {days:>3} d by {bucket}"
            figures[f"{days} d by {bucket}"] = summary(
                name, measure(base, token, args.requests, now, (days, bucket))
            )
        rate = (written.value - before) / (time.perf_counter() - t0)
        print(f"{storage}: writer achieved {rate:,.0f} readings/s; load average after: {_load()}", flush=True)
    finally:
        stop.set()
        if proc.pid is not None:
            proc.join(10)
        server.terminate()
        server.wait(10)
    return figures


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: dict[Storage, dict[str, dict[str, float]]]) -> None:
    """The goal's verdict per storage: p99 of a year of daily buckets during ingest."""
    for storage, figures in results.items():
        p99 = figures[f"{YEAR} d by 1d"]["p99"]
        print(f"{storage}: target p99 <= 100 ms for {YEAR} days by 1d during ingest: "
              f"{'PASS' if p99 <= 100 else 'FAIL'} (p99 {p99:.1f} ms)")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
