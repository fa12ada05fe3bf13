"""Benchmark: publish -> first webhook delivery of a red alert, under background telemetry load.

    .venv/bin/python -m bench.alert_latency_bench [--probes 200] [--rate 10000] [--relays 1]

A private stack (PostgreSQL + Mosquitto) in a temp dir, the real `pulsewire ingest` and
`pulsewire relay` as separate processes, a separate load process publishing ~`rate` readings/s
(normal values of metrics the default rules read, 100 readings a message over 10 devices) and a
webhook receiver (threaded http.server) in this process. Each probe publishes a `device_reset`
event (a red technical alert) and times the arrival of its signed `opened` webhook; the alert is
then resolved so the next probe opens a new one. Prints p50/p99/max and the achieved load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.migrate import migrate
from pulsewire.settings import MqttTarget
from pulsewire.stack import Stack
from relay import store
from relay.rules import seed_defaults
from relay.signing import verify

LOAD_DEVICES = 10
PROBE = "icd-probe"
READINGS_PER_MESSAGE = 100


def _client(target: MqttTarget, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.max_inflight_messages_set(1000)
    client.connect(target.host, target.port)
    client.loop_start()
    return client


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _load(mqtt_url: str, rate: float, stop: Any) -> None:
    """Publish ~rate readings/s of normal data until `stop` is set (runs in its own process)."""
    client = _client(MqttTarget.parse(mqtt_url), f"bench-load-{os.getpid()}")
    rng = np.random.default_rng(1)
    per_s = rate / READINGS_PER_MESSAGE
    seq, start = 0, time.perf_counter()
    while not stop.is_set():
        device = f"icd-load-{seq % LOAD_DEVICES:02d}"
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
            "boot_id": "bench",
            "seq": seq,
            "sent_at": _iso(now),
            "readings": readings,
        }
        client.publish(f"pw/v1/dev/{device}/telemetry", json.dumps(body), qos=1)
        seq += 1
        delay = start + seq / per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
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
                at = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.record(at, body, self.headers.get("Pulsewire-Signature", ""))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, at: float, body: bytes, signature: str) -> None:
        if not verify(self.secret, signature, body, 300):
            self.bad_signatures += 1
        data = json.loads(body)
        probe = data["alert"]["values"].get("probe")
        if data["event"] == "opened" and probe is not None:
            with self.got:
                self.arrivals.setdefault(int(probe), at)
                self.got.notify_all()


def _setup(db_url: str, state_dir: Path, receiver: _Receiver) -> tuple[int, int]:
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
        receiver.secret = store.create_webhook(c, clinic, receiver.url)["secret"]
        user = registry.add_user(c, "bench@example.org", role="provider_staff", org_id=clinic)
    return clinic, user


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
    client.publish(f"pw/v1/dev/{PROBE}/event", payload, qos=1)
    return sent


def _services(env: dict[str, str], relays: int) -> list[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-c", "from pulsewire.cli import main; import sys; sys.exit(main(sys.argv[1:]))"]
    procs = [
        subprocess.Popen([*cmd, "ingest"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    ]
    procs += [
        subprocess.Popen(
            [*cmd, "relay", "--delivery-threads", "2"],
            env=env,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(relays)
    ]
    return procs


def _measure(
    args: argparse.Namespace, db_url: str, mqtt_url: str, receiver: _Receiver, *, clinic: int, user: int
) -> dict[str, Any]:
    client = _client(MqttTarget.parse(mqtt_url), "bench-probe")
    stop = mp.Event()
    load = mp.Process(target=_load, args=(mqtt_url, args.rate, stop), daemon=True)
    with connect(db_url, autocommit=True) as c:
        load.start()
        time.sleep(args.warmup_s)
        before = c.execute("SELECT count(*) AS n FROM readings").fetchone()
        began = time.perf_counter()
        latencies, missed = [], 0
        for n in range(args.probes):
            sent = _probe(client, n)
            with receiver.got:
                receiver.got.wait_for(lambda n=n: n in receiver.arrivals, timeout=5)
            if n in receiver.arrivals:
                latencies.append((receiver.arrivals[n] - sent) * 1000)
            else:
                missed += 1
            for alert in store.list_alerts(c, clinic, "provider", state="open", device_id=PROBE):
                store.resolve(c, clinic, alert["alert_id"], user)
            time.sleep(args.gap_s)
        elapsed = time.perf_counter() - began
        after = c.execute("SELECT count(*) AS n FROM readings").fetchone()
        stages = _stages(c)
    stop.set()
    load.join(10)
    client.loop_stop()
    assert before is not None and after is not None
    lat = np.asarray(latencies)
    return {
        "probes": args.probes,
        "missed": missed,
        "bad_signatures": receiver.bad_signatures,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "max_ms": round(float(lat.max()), 1),
        "background_readings_per_s": round((after["n"] - before["n"]) / elapsed),
        **stages,
        "relay_workers": args.relays,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _stages(conn: Any) -> dict[str, float]:
    """Where the time goes, from database clocks: ingest start -> evaluation start -> delivered."""
    rows = conn.execute(
        """SELECT extract(epoch FROM a.opened_at - e.received_at) * 1000 AS to_eval,
                  extract(epoch FROM o.delivered_at - a.opened_at) * 1000 AS to_delivery
           FROM alerts a
           JOIN events e ON e.device_id = a.device_id AND e.ts = a.started_at AND e.type = 'device_reset'
           JOIN outbox o ON o.alert_id = a.alert_id AND o.channel = 'webhook' AND o.event = 'opened'
           WHERE a.device_id = %s AND o.delivered_at IS NOT NULL""",
        (PROBE,),
    ).fetchall()
    to_eval = np.asarray([float(r["to_eval"]) for r in rows])
    to_delivery = np.asarray([float(r["to_delivery"]) for r in rows])
    return {
        "ingest_to_eval_p50_ms": round(float(np.percentile(to_eval, 50)), 1),
        "ingest_to_eval_p99_ms": round(float(np.percentile(to_eval, 99)), 1),
        "eval_to_delivered_p50_ms": round(float(np.percentile(to_delivery, 50)), 1),
        "eval_to_delivered_p99_ms": round(float(np.percentile(to_delivery, 99)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10_000, help="background readings/s")
    parser.add_argument("--relays", type=int, default=1, help="relay worker processes")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--gap-s", type=float, default=0.1, help="pause between probes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="pulsewire-bench-"))
    state_dir.chmod(0o755)
    stack = Stack(state_dir)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        info = stack.up()
        receiver = _Receiver()
        clinic, user = _setup(info.database_url, state_dir, receiver)
        env = {
            **os.environ,
            "PULSEWIRE_DATABASE_URL": info.database_url,
            "PULSEWIRE_MQTT_URL": info.mqtt_url,
            "PULSEWIRE_STATE_DIR": str(state_dir),
            "PULSEWIRE_FLUSH_INTERVAL_MS": "5",
        }
        procs = _services(env, args.relays)
        time.sleep(3)  # subscriptions and LISTENs in place
        result = _measure(args, info.database_url, info.mqtt_url, receiver, clinic=clinic, user=user)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
