"""Ingest benchmark: raw COPY rate vs end to end (publishers → Mosquitto → `pulsewire ingest` → commit).

Run: `.venv/bin/python -m bench.ingest_bench [--duration 20] [--publishers 2] [--devices 200]`.
Starts a private stack in a temp dir, registers devices, runs ingest as a subprocess and publishes
realistic telemetry at QoS 1 from several processes. End to end = committed readings / (last commit -
first publish), publishers running flat out for `--duration` seconds and the backlog drained after.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from pulsewire import registry
from pulsewire.migrate import migrate
from pulsewire.settings import MqttTarget
from pulsewire.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
METRICS = [("rpm", 800.0, 4000.0), ("speed_kmh", 0.0, 130.0), ("coolant_temp_c", 70.0, 105.0),
           ("engine_load_pct", 5.0, 90.0), ("throttle_pct", 0.0, 80.0), ("maf_gs", 2.0, 60.0),
           ("fuel_level_pct", 5.0, 100.0), ("module_voltage_v", 12.0, 14.5), ("oil_temp_c", 60.0, 120.0),
           ("intake_temp_c", 0.0, 50.0)]  # fmt: skip
MAX_OUTSTANDING = 4_000  # unacknowledged publishes per publisher


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))  # fmt: skip
    python = platform.python_version()
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, Python {python}"


def raw_copy_rate(url: str, rows: int = 1_000_000) -> float:
    """Rows/s of one COPY of `rows` readings (text format, as ingest writes them), committed."""
    stamp = datetime.now(UTC).isoformat()
    data = "".join(
        f"{stamp}\tcopy-{i % 200}\t{METRICS[i % 10][0]}\t{i * 0.5!r}\n" for i in range(rows)
    ).encode()
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy:
            for i in range(0, len(data), 1 << 20):
                copy.write(data[i : i + (1 << 20)])
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DELETE FROM readings WHERE device_id LIKE 'copy-%'")
        conn.commit()
    return rows / elapsed


def publisher(url: str, devices: list[str], per_msg: int, duration_s: float, boot: str, *,
              go: Any, results: Any) -> None:  # fmt: skip
    """One publisher process: QoS 1 telemetry from `devices` round-robin for `duration_s`."""
    target = MqttTarget.parse(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}", protocol=mqtt.MQTTv311
    )
    client.username_pw_set(target.username, target.password)
    client.max_inflight_messages_set(MAX_OUTSTANDING)
    acked = [0]
    client.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    client.connect(target.host, target.port, keepalive=60)
    # paho driven from this one thread: with loop_start() the publishing thread and paho's network
    # thread hand the GIL back and forth per message, which capped a publisher at ~3,000 msg/s.
    while not client.is_connected():
        client.loop(0.1)
    seqs = dict.fromkeys(devices, 0)
    go.wait()
    started = time.time()
    sent = 0
    while time.time() - started < duration_s:
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for dev in devices:
            seq = seqs[dev]
            seqs[dev] = seq + 1
            readings = ",".join(
                f'{{"ts":"{stamp}","metric":"{m}","value":{lo + (seq * 7 + j) % 100 * (hi - lo) / 100:.2f}}}'
                for j, (m, lo, hi) in enumerate(METRICS[:per_msg])
            )
            payload = (f'{{"schema":"pulsewire.telemetry/1","device_id":"{dev}","boot_id":"{boot}",'
                       f'"seq":{seq},"sent_at":"{stamp}","readings":[{readings}]}}')  # fmt: skip
            client.publish(f"pw/v1/dev/{dev}/telemetry", payload, qos=1)
            sent += 1
            if sent % 64 == 0:
                client.loop(0)
            while sent - acked[0] > MAX_OUTSTANDING:
                client.loop(0.01)
    deadline = time.time() + 60
    while acked[0] < sent and time.time() < deadline:
        client.loop(0.01)
    client.disconnect()
    results.put((started, sent, sent * per_msg))


def committed(url: str, boot: str) -> tuple[int, int, float]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(n_rows), 0), coalesce(extract(epoch FROM max(received_at)), 0) "
            "FROM ingest_log WHERE boot_id = %s",
            (boot,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), float(row[2])


def end_to_end(
    url: str, mqtt_url: str, devices: list[str], per_msg: int, args: argparse.Namespace
) -> dict[str, float]:
    boot = f"bench{per_msg}-{int(time.time())}"
    go, results = mp.Event(), mp.Queue()
    share = [devices[i :: args.publishers] for i in range(args.publishers)]
    procs = [mp.Process(target=publisher, args=(mqtt_url, part, per_msg, args.duration, boot),
                        kwargs={"go": go, "results": results}) for part in share]  # fmt: skip
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.set()
    outs = [results.get(timeout=args.duration + 120) for _ in procs]
    for p in procs:
        p.join(30)
    first = min(o[0] for o in outs)
    sent_msgs = sum(o[1] for o in outs)
    deadline = time.time() + 120
    while (got := committed(url, boot))[0] < sent_msgs and time.time() < deadline:
        time.sleep(0.5)
    msgs, rows, last = got
    span = last - first
    return {"sent_msgs": sent_msgs, "msgs": msgs, "rows": rows, "span_s": span,
            "rows_per_s": rows / span, "msgs_per_s": msgs / span}  # fmt: skip


def setup_devices(url: str, n: int) -> list[str]:
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        garage = registry.add_org(conn, "Bench Garage", "provider")
        vendor = registry.add_org(conn, "Bench Dongles", "vendor")
        ids = [f"veh-{i:05d}" for i in range(n)]
        for dev in ids:
            registry.add_device(conn, dev, kind="vehicle", model="OBDLink MX+", provider_org_id=garage,
                                vendor_org_id=vendor, password="bench-password-0123456789")  # fmt: skip
    return ids


def start_ingest(db_url: str, mqtt_url: str, state: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ, PULSEWIRE_DATABASE_URL=db_url, PULSEWIRE_MQTT_URL=mqtt_url, PULSEWIRE_STATE_DIR=str(state)
    )
    exe = Path(sys.executable).parent / "pulsewire"
    return subprocess.Popen([str(exe), "ingest", "--client-id", "bench-ingest", "--log-level", "WARNING"],
                            env=env, cwd=ROOT)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each publisher runs flat out")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--devices", type=int, default=200)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="pulsewire-bench-"))
    state.chmod(0o755)
    stack = Stack(state)
    try:
        info = stack.up()
        migrate(info.database_url)
        devices = setup_devices(info.database_url, args.devices)
        copy_rate = raw_copy_rate(info.database_url)
        ingest = start_ingest(info.database_url, info.mqtt_url, state)
        try:
            time.sleep(3.0)  # connect, subscribe, storage maintenance
            ten = end_to_end(info.database_url, info.mqtt_url, devices, 10, args)
            one = end_to_end(info.database_url, info.mqtt_url, devices, 1, args)
        finally:
            ingest.terminate()
            ingest.wait(60)
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python -m bench.ingest_bench --duration {args.duration:g} "
          f"--publishers {args.publishers} --devices {args.devices}")  # fmt: skip
    print(f"{'measure':<44}{'rate':>14}{'vs raw COPY':>14}")
    print(f"{'raw COPY into readings (rows/s)':<44}{copy_rate:>14,.0f}{'1.00':>14}")
    print(f"{'end to end, 10 readings/msg (readings/s)':<44}{ten['rows_per_s']:>14,.0f}"
          f"{ten['rows_per_s'] / copy_rate:>14.2f}")  # fmt: skip
    print(f"{'end to end, 1 reading/msg (messages/s)':<44}{one['msgs_per_s']:>14,.0f}"
          f"{one['rows_per_s'] / copy_rate:>14.2f}")  # fmt: skip
    for name, r in (("10/msg", ten), ("1/msg", one)):
        print(f"  {name}: {r['msgs']:,}/{r['sent_msgs']:,} messages committed, {r['rows']:,} readings "
              f"in {r['span_s']:.1f}s (first publish to last commit)")  # fmt: skip
    ok = ten["msgs"] == ten["sent_msgs"] and one["msgs"] == one["sent_msgs"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
