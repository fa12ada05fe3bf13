"""Ingest benchmark: raw COPY rate vs end to end (publishers → Mosquitto → `pulsewire ingest` → commit).

Run: `.venv/bin/python -m bench.ingest_bench [--duration 20] [--publishers 2] [--devices 200]`.
Starts a private stack in a temp dir, registers devices, runs ingest as subprocesses and publishes
realistic telemetry at QoS 1 from several processes (a minimal MQTT 3.1.1 client on a raw socket), at
`--offered` times the goal rate for `--duration` seconds. End to end = committed readings / (last
commit - first publish), the backlog the broker holds when publishing stops drained and counted.
It runs each setup of `--setups` side by side: WORKERSxWRITERS, ingest processes on one shared
subscription (`$share/<group>/...`), each writing with that many PostgreSQL connections
(`PULSEWIRE_INGEST_WRITERS`); the broker runs throughout (no restart is involved). Each phase starts
with the tables ingest writes emptied, so the order of the setups does not favour the first.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import cpu
from pulsewire import registry
from pulsewire.migrate import migrate
from pulsewire.settings import MqttTarget
from pulsewire.stack import Stack, StackInfo
from schemas.topics import telemetry as telemetry_topic

ROOT = Path(__file__).resolve().parents[1]
METRICS = [("rpm", 800.0, 4000.0), ("speed_kmh", 0.0, 130.0), ("coolant_temp_c", 70.0, 105.0),
           ("engine_load_pct", 5.0, 90.0), ("throttle_pct", 0.0, 80.0), ("maf_gs", 2.0, 60.0),
           ("fuel_level_pct", 5.0, 100.0), ("module_voltage_v", 12.0, 14.5), ("oil_temp_c", 60.0, 120.0),
           ("intake_temp_c", 0.0, 50.0)]  # fmt: skip
# The goals in messages/s, with 10 and with 1 reading a message: 0.5 x raw COPY (about 180,000
# readings/s here) and 40,000 messages/s. The offer is `--offered` times these, so that a figure
# below the goal is ingest's, not the offer's.
TARGET_MSGS = {10: 18_000, 1: 40_000}
# Each device's budget in the bench's workers: 200 devices offering 60,000 messages/s send 300 each
# a second, past the default 50 (which holds devices of the field, not a bench's few hundred).
BENCH_DEVICE_RATE = "2000"
MAX_OUTSTANDING = 4_000  # unacknowledged publishes per publisher


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))  # fmt: skip
    python = platform.python_version()
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, Python {python}"


def raw_copy_rates(url: str, times: int = 3) -> list[float]:
    """`raw_copy_rate`, `times` over: one COPY's rate moved 72,000-155,000 rows/s between runs
    of the same code on one host (the commit's flush of ~100 MB of WAL), so the ratio is taken
    against their median."""
    return [raw_copy_rate(url) for _ in range(times)]


def raw_copy_rate(url: str, rows: int = 1_000_000) -> float:
    """Rows/s of one COPY of `rows` readings (text format, as ingest writes them), committed.

    Its rows are deleted and vacuumed after, so the end-to-end phases that follow do not insert
    into a table and index full of its dead rows (or meet autovacuum cleaning them up)."""
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
        conn.autocommit = True
        conn.execute("VACUUM readings")
    return rows / elapsed


def _packet(kind: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 packet: fixed header byte, remaining length (varint), body."""
    size, length = len(body), bytearray()
    while True:
        size, digit = divmod(size, 128)
        length.append(digit | (128 if size else 0))
        if not size:
            return bytes([kind]) + bytes(length) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


class RawPublisher:
    """A minimal MQTT 3.1.1 QoS 1 publisher on a plain socket.

    paho's publish() costs ~50 us of CPU a message, which on this 2-core machine is taken from the
    broker, PostgreSQL and ingest; devices publish from elsewhere. This sends pre-encoded PUBLISH
    packets in bulk and counts PUBACKs, keeping at most MAX_OUTSTANDING unacknowledged.
    """

    def __init__(self, target: MqttTarget, client_id: str) -> None:
        self.sock = socket.create_connection((target.host, target.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = (_utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 0) + _utf8(client_id)
                + _utf8(target.username or "") + _utf8(target.password or ""))  # fmt: skip
        self.sock.sendall(_packet(0x10, body))
        connack = self.sock.recv(4)
        if len(connack) != 4 or connack[3] != 0:
            raise RuntimeError(f"broker refused the publisher: {connack!r}")
        self.sock.setblocking(False)
        self.sent = self.acked = 0
        self._pending = b""

    def publish(self, packets: list[tuple[bytes, bytes]]) -> None:
        """Send QoS 1 PUBLISHes of (topic, payload), waiting for acks past MAX_OUTSTANDING."""
        out = []
        for topic, payload in packets:
            mid = self.sent % 65_535 + 1
            self.sent += 1
            out.append(
                _packet(0x32, struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + payload)
            )
        data = memoryview(b"".join(out))
        while data:
            self.read_acks(wait=self.sent - self.acked > MAX_OUTSTANDING)
            try:
                data = data[self.sock.send(data) :]
            except BlockingIOError:
                select.select([self.sock], [self.sock], [], 0.05)

    def read_acks(self, wait: bool = False) -> None:
        """Count the PUBACKs (4 bytes each) that arrived; with `wait`, block up to 50 ms for some."""
        if wait:
            select.select([self.sock], [], [], 0.05)
        try:
            data = self._pending + self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        whole = len(data) // 4 * 4
        self.acked += whole // 4
        self._pending = data[whole:]

    def close(self) -> None:
        self.sock.close()


def _readings(stamp: str, seq: int, per_msg: int) -> str:
    return ",".join(
        f'{{"ts":"{stamp}","metric":"{m}","value":{lo + (seq * 7 + j) % 100 * (hi - lo) / 100:.2f}}}'
        for j, (m, lo, hi) in enumerate(METRICS[:per_msg])
    )


def publisher(url: str, devices: list[str], per_msg: int, duration_s: float, boot: str, *,
              go: Any, results: Any, rate: float = 0.0) -> None:  # fmt: skip
    """One publisher process: QoS 1 telemetry from `devices` round-robin for `duration_s`, at most
    `rate` messages/s (0: flat out)."""
    if url.startswith("mqtts://"):  # --tls: one mTLS connection a device (bench/tls_publishers.py)
        from bench.tls_publishers import DevicePublishers

        client: RawPublisher | DevicePublishers = DevicePublishers(url, devices)
    else:
        client = RawPublisher(MqttTarget.parse(url), f"bench-pub-{os.getpid()}")
    seqs = dict.fromkeys(devices, 0)
    topic_of = {dev: telemetry_topic(dev).encode() for dev in devices}
    go.wait()
    started = time.time()
    while time.time() - started < duration_s:
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        batch = []
        # Readings repeat with seq % 100: format each variant once per timestamp (publisher CPU is
        # taken from the broker, PostgreSQL and ingest on this machine).
        variants: dict[int, str] = {}
        for dev in devices:
            seq = seqs[dev]
            seqs[dev] = seq + 1
            readings = variants.get(seq % 100)
            if readings is None:
                readings = variants[seq % 100] = _readings(stamp, seq, per_msg)
            payload = (f'{{"schema":"pulsewire.telemetry/1","device_id":"{dev}","boot_id":"{boot}",'
                       f'"seq":{seq},"sent_at":"{stamp}","readings":[{readings}]}}')  # fmt: skip
            batch.append((topic_of[dev], payload.encode()))
        client.publish(batch)
        ahead = client.sent / rate - (time.time() - started) if rate else 0.0
        if ahead > 0:
            time.sleep(ahead)
    deadline = time.time() + 60
    while client.acked < client.sent and time.time() < deadline:
        client.read_acks(wait=True)
    client.close()
    results.put((started, client.sent, client.sent * per_msg))


def committed(url: str, boot: str) -> tuple[int, int, float]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(n_rows), 0), coalesce(extract(epoch FROM max(received_at)), 0) "
            "FROM ingest_log WHERE boot_id = %s",
            (boot,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), float(row[2])


def publish_for(mqtt_url: str, devices: list[str], per_msg: int, duration_s: float, boot: str, *,
                publishers: int, rate: float = 0.0) -> tuple[float, int]:  # fmt: skip
    """Run the publisher processes, `rate` messages/s in all (0: flat out); (first publish time,
    messages sent and acknowledged)."""
    go, results = mp.Event(), mp.Queue()  # type: ignore[var-annotated]
    share = [devices[i::publishers] for i in range(publishers)]
    procs = [mp.Process(target=publisher, args=(mqtt_url, part, per_msg, duration_s, boot),
                        kwargs={"go": go, "results": results, "rate": rate / publishers})
             for part in share]  # fmt: skip
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.set()
    outs = [results.get(timeout=duration_s + 120) for _ in procs]
    for p in procs:
        p.join(30)
    return float(min(o[0] for o in outs)), int(sum(o[1] for o in outs))


def publishers_alone(mqtt_url: str, devices: list[str], per_msg: int, args: argparse.Namespace) -> float:
    """Messages/s the publishers get acknowledged by the broker with no subscriber (no ingest)."""
    duration = min(args.duration, 5.0)
    _first, sent = publish_for(mqtt_url, devices, per_msg, duration, "alone", publishers=args.publishers)
    return float(sent / duration)


# What ingest writes. Each phase starts with them empty: in one run, a later setup otherwise wrote
# into the tables and indexes the earlier ones had filled (millions of rows), and paid for it.
INGEST_TABLES = ("readings", "events", "ingest_log", "device_streams", "seq_gaps", "eval_queue", "quarantine",
                 "readings_rollup_dirty")  # fmt: skip


def empty_ingest_tables(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(INGEST_TABLES)}")
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings_1h'").fetchone()
        if kind is not None and kind[0] in ("r", "p"):  # the native rollup table (on TimescaleDB, a view)
            conn.execute("TRUNCATE readings_1h")
        conn.execute(f"VACUUM ANALYZE {', '.join(INGEST_TABLES)}")


def end_to_end(
    url: str, mqtt_url: str, devices: list[str], per_msg: int, args: argparse.Namespace
) -> dict[str, float]:
    empty_ingest_tables(url)
    boot = f"bench{per_msg}-{int(time.time())}"
    # Offered load: the target times --offered. Flat out, the broker's queue for ingest would
    # outgrow its max_queued_bytes (and drop messages) within 20 s; above the target, ingest still
    # sets the pace, so the rate measured is what it sustains (capped by the offer, never above).
    rate = TARGET_MSGS[per_msg] * args.offered
    cpu_before, idle_before, began = cpu.snapshot(), cpu.idle(), time.perf_counter()
    first, sent_msgs = publish_for(
        mqtt_url, devices, per_msg, args.duration, boot, publishers=args.publishers, rate=rate
    )
    deadline = time.time() + 120
    while (got := committed(url, boot))[0] < sent_msgs and time.time() < deadline:
        time.sleep(0.5)
    elapsed = time.perf_counter() - began
    used = cpu.percent(cpu_before, cpu.snapshot(), elapsed)
    used["cpu_idle_pct"] = round(100 * (cpu.idle() - idle_before) / elapsed, 1)
    msgs, rows, last = got
    span = last - first
    return {"sent_msgs": sent_msgs, "msgs": msgs, "rows": rows, "span_s": span, "rows_per_s": rows / span,
            "msgs_per_s": msgs / span, "offered_msgs_per_s": sent_msgs / args.duration, **used}  # fmt: skip


def setup_devices(url: str, n: int) -> list[str]:
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        garage = registry.add_org(conn, "Bench Garage", "provider")
        vendor = registry.add_org(conn, "Bench Dongles", "vendor")
        ids = [f"veh-{i:05d}" for i in range(n)]
        for dev in ids:
            registry.add_device(conn, dev, kind="vehicle", model="OBDLink MX+", provider_org_id=garage,
                                vendor_org_id=vendor, password="bench-password-0123456789")  # fmt: skip
    return ids


def start_ingest(
    db_url: str, mqtt_url: str, state: Path, client_id: str, group: str, *, writers: int = 1
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PULSEWIRE_DATABASE_URL=db_url, PULSEWIRE_MQTT_URL=mqtt_url,
               PULSEWIRE_STATE_DIR=str(state), PULSEWIRE_INGEST_WRITERS=str(writers),
               PULSEWIRE_DEVICE_RATE_MSGS_PER_S=BENCH_DEVICE_RATE)  # fmt: skip
    exe = Path(sys.executable).parent / "pulsewire"
    return subprocess.Popen([str(exe), "ingest", "--client-id", client_id, "--share-group", group,
                             "--log-level", "WARNING"], env=env, cwd=ROOT)  # fmt: skip


def setup_name(setup: tuple[int, int]) -> str:
    workers, writers = setup
    name = f"{workers} worker" + "s" * (workers > 1)
    return name + (f", {writers} writers" if writers > 1 else "")


def with_workers(setup: tuple[int, int], info: StackInfo, state: Path, devices: list[str],
                 args: argparse.Namespace, *, pub_url: str = "") -> dict[int, dict[str, float]]:  # fmt: skip
    """End to end at 10 and 1 readings a message with `setup` (ingest processes in one share group,
    PostgreSQL connections each), the publishers on `pub_url` (by default ingest's `mqtt_url`)."""
    url, mqtt_url = info.database_url, info.mqtt_url
    workers, writers = setup
    ids = [f"bench-ingest-{workers}x{writers}-{i}" for i in range(workers)]
    procs = [start_ingest(url, mqtt_url, state, cid, f"bench{workers}x{writers}", writers=writers)
             for cid in ids]  # fmt: skip
    try:
        time.sleep(3.0)  # connect, subscribe, storage maintenance
        return {n: end_to_end(url, pub_url or mqtt_url, devices, n, args) for n in args.per_msg}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
        for cid in ids:  # a clean session ends theirs: no queue for them while the next run goes on
            RawPublisher(MqttTarget.parse(mqtt_url), cid).sock.close()


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


DEFAULT_SETUPS = "1x1,1x2,2x1"  # the default (one writer), then two writers, then two default workers


def _setups(text: str) -> tuple[tuple[int, int], ...]:
    pairs = [part.split("x") for part in text.split(",")]
    return tuple((int(workers), int(writers)) for workers, writers in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds the publishers run")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument(
        "--offered",
        type=float,
        default=1.5,
        help="publish at this multiple of the target rate (bounds the broker backlog)",
    )
    parser.add_argument("--setups", type=_setups, default=_setups(DEFAULT_SETUPS),
                        help="WORKERSxWRITERS to run side by side, comma-separated "
                             f"(default {DEFAULT_SETUPS})")  # fmt: skip
    parser.add_argument("--per-msg", type=_counts, default=(10, 1),
                        help="readings a message to run (comma-separated, from 10 and 1)")  # fmt: skip
    parser.add_argument("--tls", action="store_true",
                        help="also run each measure with the devices on the mTLS listener")  # fmt: skip
    args = parser.parse_args()
    load_before = os.getloadavg()
    state = Path(tempfile.mkdtemp(prefix="pulsewire-bench-"))
    state.chmod(0o755)
    stack = Stack(state)
    try:
        info = stack.up()
        migrate(info.database_url)
        devices = setup_devices(info.database_url, args.devices)
        copy_rates = raw_copy_rates(info.database_url)
        alone = {n: publishers_alone(info.mqtt_url, devices, n, args) for n in args.per_msg}
        runs = {setup_name(x): with_workers(x, info, state, devices, args) for x in args.setups}
        tls: tuple[dict[int, float], Runs] | None = None
        if args.tls:
            from bench import tls_publishers

            tls_url = tls_publishers.prepare(stack, devices, state / "bench-certs")
            tls_alone = {n: publishers_alone(tls_url, devices, n, args) for n in args.per_msg}
            tls_runs = {setup_name(x): with_workers(x, info, state, devices, args, pub_url=tls_url)
                        for x in args.setups}  # fmt: skip
            tls = (tls_alone, tls_runs)
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    report(args, copy_rates, alone, runs, load_before)
    if tls:
        tls_publishers.report(alone, runs, *tls)
    checked = [*runs.values(), *(tls[1].values() if tls else ())]
    return 0 if all(r["msgs"] == r["sent_msgs"] for run in checked for r in run.values()) else 1


Runs = dict[str, dict[int, dict[str, float]]]  # {setup: {readings a message: figures}}


def report(args: argparse.Namespace, copy_rates: list[float], alone: dict[int, float], runs: Runs,
           load_before: tuple[float, float, float]) -> None:  # fmt: skip
    """Print the figures of each setup side by side, with what was offered."""
    copy_rate = statistics.median(copy_rates)
    print(f"machine: {machine()}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {os.getloadavg()}")
    print(f"command: .venv/bin/python -m bench.ingest_bench --duration {args.duration:g} "
          f"--publishers {args.publishers} --devices {args.devices} --offered {args.offered:g} "
          f"--setups {','.join(f'{w}x{n}' for w, n in args.setups)} "
          f"--per-msg {','.join(map(str, args.per_msg))}"
          f"{' --tls' * args.tls}")  # fmt: skip
    each = ", ".join(f"{rate:,.0f}" for rate in copy_rates)
    print(f"raw COPY into readings: {copy_rate:,.0f} rows/s (median of {len(copy_rates)}: {each})")
    columns = "".join(f"{name:>22}" for name in runs)
    print(f"{'end to end':<40}{columns}  offered (achieved)")
    for n, unit, key in ((10, "readings/s", "rows_per_s"), (1, "messages/s", "msgs_per_s")):
        if n not in args.per_msg:
            continue
        figures = "".join(f"{run[n][key]:>22,.0f}" for run in runs.values())
        offer = "/".join(f"{run[n]['offered_msgs_per_s'] / 1000:,.1f}k" for run in runs.values())
        print(f"{f'{n}/msg ({unit})':<40}{figures}  {offer} msg/s")
    if 10 in args.per_msg:
        ratios = "".join(f"{run[10]['rows_per_s'] / copy_rate:>22.2f}" for run in runs.values())
        print(f"{'10/msg vs raw COPY':<40}{ratios}")
    for n, rate in alone.items():
        print(f"  publishers alone (no ingest, no subscriber), {n}/msg: {rate:,.0f} messages/s acknowledged")
    for w, run in runs.items():
        for n, r in run.items():
            capped = (
                "capped by the offer" if r["msgs_per_s"] >= 0.95 * r["offered_msgs_per_s"] else "ingest-bound"
            )
            print(f"  {w}, {n}/msg: {r['msgs']:,}/{r['sent_msgs']:,} messages committed, "
                  f"{r['rows']:,} readings in {r['span_s']:.1f}s (first publish to last commit); "
                  f"{capped}")  # fmt: skip
    print(
        "CPU by role while publishing and draining (% of one CPU; the machine has "
        f"{100 * (os.cpu_count() or 1)}; load = the bench's publishers)"
    )
    roles = [role for role in cpu.ROLES if role not in ("relay", "dashboard")] + ["idle"]
    print(f"  {'setup, readings a message':<34}" + "".join(f"{role:>10}" for role in roles))
    for w, run in runs.items():
        for n, r in run.items():
            print(f"  {f'{w}, {n}/msg':<34}" + "".join(f"{r[f'cpu_{role}_pct']:>10.0f}" for role in roles))


if __name__ == "__main__":
    sys.exit(main())
