"""Benchmark: publish -> first webhook delivery of a red alert, under background telemetry load.

    .venv/bin/python -m bench.alert_latency_bench [--probes 200] [--rate 10000] [--relays 1] [--hostile]
        [--clients-nice N]

A private stack (PostgreSQL + Mosquitto) in a temp dir, the real `pulsewire ingest` and
`pulsewire relay` as separate processes, a separate load process publishing ~`rate` readings/s
(normal values of metrics the default rules read, 100 readings a message over 10 devices) and a
webhook receiver (threaded http.server) in this process. Each probe publishes a `device_reset`
event (a red technical alert) and times the arrival of its signed `opened` webhook; the alert is
then resolved so the next probe opens a new one. Prints p50/p99/max and the achieved load.

With `--hostile`, the same run measures twice, side by side: first as above, then with a hostile
tenant present (bench/hostile.py: broken, tarpit and endless webhooks with a backlog of failing
deliveries, failing rules, a flooding device, and a dashboard under SSE, login and query abuse).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt

from bench import cpu, hostile, pacing
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.migrate import migrate
from pulsewire.settings import MqttTarget, Settings
from pulsewire.stack import Stack
from relay import store
from relay.egress import EgressPolicy
from relay.rules import seed_defaults
from relay.signing import verify
from schemas import topics

LOAD_DEVICES = 10
PROBE = "icd-probe"
READINGS_PER_MESSAGE = 100


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _load(mqtt_url: str, rate: float, stop: Any, nice: int = 0) -> None:
    """Publish ~rate readings/s of normal data until `stop` is set (runs in its own process, at `nice`)."""
    os.nice(nice)
    client = pacing.client(MqttTarget.parse(mqtt_url), f"bench-load-{os.getpid()}")
    rng = np.random.default_rng(1)
    for n in pacing.paced(rate / READINGS_PER_MESSAGE, stop):
        # Each device numbers its own messages 0, 1, 2, ... as a real one does (numbering them
        # across devices made every message a seq gap for ingest to record).
        device, seq = f"icd-load-{n % LOAD_DEVICES:02d}", n // LOAD_DEVICES
        now = datetime.now(UTC)
        readings = [
            {"ts": _iso(now), "metric": "lead_impedance_rv_ohm", "value": round(500 + rng.normal(0, 5), 1)}
            for _ in range(READINGS_PER_MESSAGE // 2)
        ]
        readings += [
            {"ts": _iso(now), "metric": "heart_rate_bpm", "value": round(70 + rng.normal(0, 3))}
            for _ in range(READINGS_PER_MESSAGE // 2)
        ]
        body = {
            "schema": "pulsewire.telemetry/1",
            "device_id": device,
            "boot_id": f"bench-{os.getpid()}",  # a second run must not be deduplicated as a resend
            "seq": seq,
            "sent_at": _iso(now),
            "readings": readings,
        }
        client.publish(topics.telemetry(device), json.dumps(body), qos=1)
    client.loop_stop()
    client.disconnect()


class _Receiver:
    """Arrival times of `opened` webhooks, by probe number; checks every signature."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.bad_signatures = 0
        self.secret = ""
        self.got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at, wall = time.perf_counter(), time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.record((at, wall), body, self.headers.get("Pulsewire-Signature", ""))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, when: tuple[float, float], body: bytes, signature: str) -> None:
        if not verify(self.secret, signature, body, 300):
            self.bad_signatures += 1
        data = json.loads(body)
        probe = data["alert"]["values"].get("probe")
        if data["event"] == "opened" and probe is not None:
            with self.got:
                self.arrivals.setdefault(int(probe), when[0])
                _ARRIVED_WALL.setdefault(int(probe), when[1])
                self.got.notify_all()


def _setup(db_url: str, state_dir: Path, receiver: _Receiver) -> tuple[int, int, int]:
    migrate(db_url)
    with connect(db_url, autocommit=True) as c:
        seed_defaults(c)
        clinic = registry.add_org(c, "Bench Clinic", "provider")
        vendor = registry.add_org(c, "Bench Vendor", "vendor")
        for i in range(LOAD_DEVICES):
            registry.add_device(
                c,
                f"icd-load-{i:02d}",
                kind="implant",
                model="M",
                provider_org_id=clinic,
                vendor_org_id=vendor,
                password="bench-password",
            )
        registry.add_device(
            c,
            PROBE,
            kind="implant",
            model="M",
            provider_org_id=clinic,
            vendor_org_id=vendor,
            password="bench-password",
        )
        registry.sync_broker_auth(c, state_dir)
        loopback = EgressPolicy(allow_private=True)  # the receiver is on loopback
        receiver.secret = store.create_webhook(c, clinic, receiver.url, egress=loopback)["secret"]
        user = registry.add_user(c, "bench@example.org", role="provider_staff", org_id=clinic)
    return clinic, user, vendor


def _probe(client: mqtt.Client, n: int) -> float:
    body = {
        "schema": "pulsewire.event/1",
        "device_id": PROBE,
        "boot_id": "probe",
        "seq": n,
        "ts": _iso(datetime.now(UTC)),
        "type": "device_reset",
        "data": {"probe": n},
    }
    payload = json.dumps(body)
    sent = time.perf_counter()
    _SENT_WALL[n] = time.time()
    client.publish(topics.event(PROBE), payload, qos=1)
    return sent


_SENT_WALL: dict[int, float] = {}  # probe -> wall clock at publish, for the publish -> ingest stage
_ARRIVED_WALL: dict[int, float] = {}  # probe -> wall clock at the webhook's arrival


_CLI = [sys.executable, "-c", "from pulsewire.cli import main; import sys; sys.exit(main(sys.argv[1:]))"]


def _services(env: dict[str, str], relays: int, *, split: bool = False) -> list[subprocess.Popen[bytes]]:
    """ingest and `relays` relay workers; with `split`, each relay worker is two processes, one
    evaluating and one delivering, so a delivery never waits for the evaluators' interpreter."""
    cmd = _CLI
    together = [["--delivery-threads", "2"]]
    roles = [["--no-deliver"], ["--no-evaluate", "--delivery-threads", "2"]] if split else together
    procs = [
        subprocess.Popen([*cmd, "ingest"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    ]
    procs += [
        subprocess.Popen(
            [*cmd, "relay", *role], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        for _ in range(relays)
        for role in roles
    ]
    return procs


def _measure(
    args: argparse.Namespace,
    db_url: str,
    mqtt_url: str,
    receiver: _Receiver,
    *,
    clinic: int,
    user: int,
    first: int = 0,
) -> dict[str, Any]:
    client = pacing.client(MqttTarget.parse(mqtt_url), f"bench-probe-{first}")
    stop = mp.Event()
    load = mp.Process(target=_load, args=(mqtt_url, args.rate, stop, args.clients_nice), daemon=True)
    with connect(db_url, autocommit=True) as c:
        load.start()
        time.sleep(args.warmup_s)
        before = c.execute("SELECT count(*) AS n FROM readings").fetchone()
        began, cpu_before = time.perf_counter(), cpu.snapshot()
        latencies, missed = [], 0
        since = datetime.now(UTC)
        for n in range(first, first + args.probes):
            sent = _probe(client, n)
            with receiver.got:
                receiver.got.wait_for(lambda n=n: n in receiver.arrivals, timeout=5)
            if n in receiver.arrivals:
                latencies.append((receiver.arrivals[n] - sent) * 1000)
            else:
                missed += 1
            viewer = store.Viewer("provider", clinic)
            for alert in store.list_alerts(c, viewer, state="open", device_id=PROBE):
                store.resolve(c, clinic, alert["alert_id"], user)
            time.sleep(args.gap_s)
        elapsed = time.perf_counter() - began
        cpu_used = cpu.percent(cpu_before, cpu.snapshot(), elapsed)
        after = c.execute("SELECT count(*) AS n FROM readings").fetchone()
        stages = _stages(c, since)
    stop.set()
    load.join(10)
    client.loop_stop()
    assert before is not None and after is not None
    return {
        "probes": args.probes,
        "missed": missed,
        "bad_signatures": receiver.bad_signatures,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "max_ms": _pct(latencies, 100),
        "background_readings_per_s": round((after["n"] - before["n"]) / elapsed),
        **stages,
        **cpu_used,
        "relay_workers": args.relays,
        "relay_split": args.split_relay,
        "clients_nice": args.clients_nice,
        "ingest_flush_interval_ms": Settings().flush_interval_ms,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _stages(conn: Any, since: datetime) -> dict[str, float]:
    """Where the time goes, from database clocks: ingest start -> evaluation start -> delivered."""
    rows = conn.execute(
        """SELECT extract(epoch FROM a.opened_at - e.received_at) * 1000 AS to_eval,
                  extract(epoch FROM o.delivered_at - a.opened_at) * 1000 AS to_delivery,
                  extract(epoch FROM e.received_at) AS received, (e.data->>'probe')::int AS probe,
                  extract(epoch FROM o.delivered_at) AS claimed
           FROM alerts a
           JOIN events e ON e.device_id = a.device_id AND e.ts = a.started_at AND e.type = 'device_reset'
           JOIN outbox o ON o.alert_id = a.alert_id AND o.channel = 'webhook' AND o.event = 'opened'
           WHERE a.device_id = %s AND o.delivered_at IS NOT NULL AND a.opened_at >= %s""",
        (PROBE, since),
    ).fetchall()
    to_eval = [float(r["to_eval"]) for r in rows]
    to_delivery = [float(r["to_delivery"]) for r in rows]
    # Same machine, so the publisher's wall clock and PostgreSQL's compare.
    mine = [r for r in rows if r["probe"] in _SENT_WALL and r["probe"] in _ARRIVED_WALL]
    to_ingest = [(float(r["received"]) - _SENT_WALL[r["probe"]]) * 1000 for r in mine]
    to_arrival = [(_ARRIVED_WALL[r["probe"]] - float(r["claimed"])) * 1000 for r in mine]
    return {
        "publish_to_ingest_p50_ms": _pct(to_ingest, 50),
        "publish_to_ingest_p99_ms": _pct(to_ingest, 99),
        "ingest_to_eval_p50_ms": _pct(to_eval, 50),
        "ingest_to_eval_p99_ms": _pct(to_eval, 99),
        "eval_to_delivered_p50_ms": _pct(to_delivery, 50),
        "eval_to_delivered_p99_ms": _pct(to_delivery, 99),
        "claim_to_webhook_p50_ms": _pct(to_arrival, 50),
        "claim_to_webhook_p99_ms": _pct(to_arrival, 99),
    }


def _pct(values: list[float], q: float) -> float | str:
    """The q-th percentile, rounded; "none" when nothing arrived."""
    return round(float(np.percentile(values, q)), 1) if values else "none"


def _hostile_run(
    args: argparse.Namespace,
    info: Any,
    state_dir: Path,
    env: dict[str, str],
    *,
    receiver: _Receiver,
    ids: Any,
) -> dict[str, Any]:
    """The probes again, with org A doing everything it can at once (bench/hostile.py)."""
    clinic, user, vendor = ids
    tarpit, endless = hostile.Tarpit(), hostile.Endless()
    parts = set(args.hostile_parts.split(","))
    tenant = hostile.setup(info.database_url, vendor, tarpit, endless, parts=parts)
    with connect(info.database_url, autocommit=True) as c:
        registry.sync_broker_auth(c, state_dir)
    port = _free_port()
    dashboard = subprocess.Popen(
        [*_CLI, "dashboard", "--port", str(port), "--log-level", "error"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rate = args.hostile_rate if "flood" in parts else 0.0
    device_url = info.to_json()["mqtt_device_url"]
    flood, stop_flood = hostile.start_flood(device_url, str(info.ca_file), rate, args.clients_nice)
    web = hostile.WebAttackProcess(
        f"http://127.0.0.1:{port}", tenant["token"], enabled="web" in parts, nice=args.clients_nice
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        web.start()
        time.sleep(args.warmup_s)
        result = _measure(
            args, info.database_url, info.mqtt_url, receiver, clinic=clinic, user=user, first=args.probes
        )
    finally:
        statuses = web.close()
        stop_flood.set()
        flood.join(10)
        _stop(dashboard)
        tarpit.close()
        endless.close()
    return {**result, **hostile.ledger(info.database_url, tenant["org"]), **statuses}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        what = " ".join(map(str, proc.args[3:]))  # type: ignore[index]
        print(f"{what} did not stop on SIGTERM within 15 s; killed", file=sys.stderr)
        proc.kill()
        proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def _print(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"{'':>34}" + "".join(f"{n:>14}" for n in names))
    for key in keys:
        print(f"{key:>34}" + "".join(f"{results[n].get(key, ''):>14}" for n in names))
    base, other = (results[n].get("p99_ms") for n in [*names, names[0]][:2])
    if len(names) == 2 and isinstance(base, float) and isinstance(other, float):
        print(f"{'p99 ratio ' + names[1] + '/' + names[0]:>34}{other / base:>14.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10_000, help="background readings/s")
    parser.add_argument("--relays", type=int, default=1, help="relay worker processes")
    parser.add_argument(
        "--split-relay",
        action="store_true",
        help="run each relay worker as an evaluating and a delivering process (--no-deliver, --no-evaluate)",
    )
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--gap-s", type=float, default=0.1, help="pause between probes")
    parser.add_argument("--hostile", action="store_true", help="measure again with a hostile tenant present")
    parser.add_argument("--hostile-rate", type=float, default=2000, help="flooding device, events/s")
    parser.add_argument(
        "--hostile-parts",
        default=",".join(hostile.PARTS),
        help=f"what the hostile tenant does, comma-separated (default: all of {','.join(hostile.PARTS)})",
    )
    parser.add_argument(
        "--clients-nice",
        type=int,
        default=0,
        help="niceness of the processes that stand in for other machines (the background devices, org A's"
        " flooding device and browsers), so that on a small host they take less of the CPU the services"
        " need; the achieved background rate and their CPU are printed either way (default 0)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="pulsewire-bench-"))
    state_dir.chmod(0o755)
    stack = Stack(state_dir)
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        info = stack.up()
        receiver = _Receiver()
        ids = _setup(info.database_url, state_dir, receiver)
        # The services run with the product's defaults unless the caller's environment says
        # otherwise (PULSEWIRE_FLUSH_INTERVAL_MS, say); the results name the flush interval.
        env = {
            **os.environ,
            "PULSEWIRE_DATABASE_URL": info.database_url,
            "PULSEWIRE_MQTT_URL": info.mqtt_url,
            "PULSEWIRE_STATE_DIR": str(state_dir),
            "PULSEWIRE_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver is on loopback
        }
        procs = _services(env, args.relays, split=args.split_relay)
        time.sleep(3)  # subscriptions and LISTENs in place
        clinic, user, _ = ids
        results["quiet"] = _measure(
            args, info.database_url, info.mqtt_url, receiver, clinic=clinic, user=user
        )
        if args.hostile:
            results["hostile"] = _hostile_run(args, info, state_dir, env, receiver=receiver, ids=ids)
    finally:
        for proc in procs:
            _stop(proc)
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
    else:
        _print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
