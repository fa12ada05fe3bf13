"""The ingest bench's publishers over the device mTLS listener, one connection per device.

A device may publish only on its own topics (the ACL's `%u` is its certificate's CN), so each
simulated device gets a certificate from the stack's CA and its own TLS connection. The sends stay
bulk and pre-encoded as in `bench.ingest_bench.RawPublisher`: each device's PUBLISH packets are
gathered and written a TLS record's worth at a time.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bench.ingest_bench import MAX_OUTSTANDING, _packet, _utf8
from pulsewire.stack import Stack
from schemas.topics import telemetry as telemetry_topic

# Bytes of a device's queued PUBLISHes written at once: most of one TLS record (16 KiB), so the
# broker decrypts few, full records; at the bench's rates a device fills it in about 0.1 s.
FLUSH_BYTES = 12 * 1024
SOCKET_RETRY = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)


def prepare(stack: Stack, devices: list[str], out_dir: Path) -> str:
    """Issue each device a certificate into `out_dir`; the publishers' URL (`mqtts://...?certs=`)."""
    ca = stack.certificate_authority()
    out_dir.mkdir(parents=True, exist_ok=True)
    for dev in devices:
        cert, key = ca.issue_device_certificate(dev)
        (out_dir / f"{dev}.crt").write_bytes(cert)
        (out_dir / f"{dev}.key").write_bytes(key)
    (out_dir / "ca.crt").write_bytes(ca.ca_pem)
    info = stack.status()
    assert info is not None and info.mqtts_port
    return f"mqtts://{info.mqtt_host}:{info.mqtts_port}/?certs={out_dir}"


class DeviceLink:
    """One device's mTLS connection: its queued packets, the chunk in flight, acks counted."""

    def __init__(self, host: str, port: int, certs: Path, device_id: str) -> None:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        context.load_cert_chain(certs / f"{device_id}.crt", certs / f"{device_id}.key")
        raw = socket.create_connection((host, port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        # The listener takes the client id from the certificate; MQTT 3.1.1 still wants one sent.
        body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _utf8(device_id)
        self.sock.sendall(_packet(0x10, body))
        connack = self.sock.recv(4)
        if len(connack) != 4 or connack[3] != 0:
            raise RuntimeError(f"broker refused {device_id}'s certificate: {connack!r}")
        self.sock.setblocking(False)
        self.topic = telemetry_topic(device_id).encode()
        self.sent = self.acked = 0
        self.out = bytearray()
        # Without partial writes, a TLS send that would block must be retried with the same bytes.
        self.chunk: bytes | None = None
        self._pending = b""

    def queue(self, payload: bytes) -> None:
        mid = self.sent % 65_535 + 1
        self.sent += 1
        head = struct.pack("!H", len(self.topic)) + self.topic + struct.pack("!H", mid)
        self.out += _packet(0x32, head + payload)

    def flush(self, at_least: int = 0) -> bool:
        """Write the queued packets if there are `at_least` bytes; False while some are left."""
        if self.chunk is None:
            if not self.out or len(self.out) < at_least:
                return True
            self.chunk, self.out = bytes(self.out), bytearray()
        try:
            self.sock.send(self.chunk)
        except SOCKET_RETRY:
            return False
        self.chunk = None
        return True

    def read_acks(self) -> None:
        """Count the PUBACKs (4 bytes each) that arrived."""
        data = self._pending
        try:
            while chunk := self.sock.recv(1 << 16):
                data += chunk
        except SOCKET_RETRY:
            pass
        whole = len(data) // 4 * 4
        self.acked += whole // 4
        self._pending = data[whole:]


class DevicePublishers:
    """`RawPublisher`'s interface (publish, read_acks, sent, acked, close) over one link a device."""

    def __init__(self, url: str, devices: list[str]) -> None:
        parts = urlsplit(url)
        certs = Path(parse_qs(parts.query)["certs"][0])
        host, port = parts.hostname or "127.0.0.1", parts.port or 8883
        self.links = {telemetry_topic(dev).encode(): DeviceLink(host, port, certs, dev) for dev in devices}

    @property
    def sent(self) -> int:
        return sum(link.sent for link in self.links.values())

    @property
    def acked(self) -> int:
        return sum(link.acked for link in self.links.values())

    def publish(self, packets: list[tuple[bytes, bytes]]) -> None:
        """Queue QoS 1 PUBLISHes of (topic, payload) on their device's link; write full ones."""
        for topic, payload in packets:
            self.links[topic].queue(payload)
        while not all([link.flush(FLUSH_BYTES) for link in self.links.values()]):
            self.read_acks(wait=True)
        while self.sent - self.acked > MAX_OUTSTANDING:
            self.read_acks(wait=True)

    def read_acks(self, wait: bool = False) -> None:
        """Write what is queued, then count PUBACKs; with `wait`, block up to 50 ms for some."""
        for link in self.links.values():
            link.flush()
        if wait:
            select.select([link.sock for link in self.links.values()], [], [], 0.05)
        for link in self.links.values():
            link.read_acks()

    def close(self) -> None:
        for link in self.links.values():
            link.sock.close()


# The issue's targets, which must hold over TLS too: readings/s at 10 a message, messages/s at 1.
TARGETS = {10: 100_000, 1: 20_000}
Runs = dict[str, dict[int, dict[str, float]]]  # {setup: {readings a message: figures}}


def report(alone: dict[int, float], runs: Runs, tls_alone: dict[int, float], tls_runs: Runs) -> None:
    """Print plain and mTLS side by side, with TLS/plain per measure and the targets checked."""
    print("plain: publishers on the service listener, one connection each; mTLS: one connection "
          "per device on the device mTLS listener; ingest on the service listener in both")  # fmt: skip
    print(f"{'':<44}{'plain':>12}{'mTLS':>12}{'TLS/plain':>11}  target")
    for n, rate in alone.items():
        line = f"publishers alone, {n}/msg (messages/s)"
        print(f"{line:<44}{rate:>12,.0f}{tls_alone[n]:>12,.0f}{tls_alone[n] / rate:>11.2f}")
    for w in runs:
        for n, unit, key in ((10, "readings/s", "rows_per_s"), (1, "messages/s", "msgs_per_s")):
            if n not in runs[w]:
                continue
            plain, tls = runs[w][n][key], tls_runs[w][n][key]
            met = "met" if tls >= TARGETS[n] else "NOT met"
            line = f"end to end, {w}, {n}/msg ({unit})"
            print(f"{line:<44}{plain:>12,.0f}{tls:>12,.0f}{tls / plain:>11.2f}  "
                  f">= {TARGETS[n]:,}: {met} over mTLS")  # fmt: skip
    for w, run in tls_runs.items():
        for n, r in run.items():
            capped = (
                "capped by the offer" if r["msgs_per_s"] >= 0.95 * r["offered_msgs_per_s"] else "ingest-bound"
            )
            print(f"  mTLS, {w}, {n}/msg: {r['msgs']:,}/{r['sent_msgs']:,} messages committed, "
                  f"offered {r['offered_msgs_per_s']:,.0f} msg/s; {capped}")  # fmt: skip
