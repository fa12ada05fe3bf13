"""Ingest's paho fast path: the private paho members it uses keep their shape; it works on a real broker.

If paho changes one of these, the first test names it; update `ingest/_paho_fastpath.py` (and its
pin in pyproject.toml) rather than letting the hot path misbehave quietly.
"""

from __future__ import annotations

import inspect
import struct
import threading
import uuid

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from ingest._paho_fastpath import FastClient
from pulsewire.mqtt import ConnectOptions, paho_client, paho_connect
from pulsewire.settings import MqttTarget
from pulsewire.stack import StackInfo
from schemas import topics
from tests.helpers import wait_for
from tests.ingest_support import Publisher


def _parameters(name: str) -> list[str]:
    return list(inspect.signature(getattr(mqtt.Client, name)).parameters)


def test_the_private_paho_members_keep_their_shape() -> None:
    assert _parameters("_sock_recv") == ["self", "bufsize"]
    assert _parameters("_handle_publish") == ["self"]
    assert _parameters("_packet_queue")[:5] == ["self", "command", "packet", "mid", "qos"]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    assert {"command", "packet"} <= set(client._in_packet) and client._in_packet["command"] == 0
    with client._msgtime_mutex:  # a lock, which read_publishes takes to set _last_bytes_received
        pass
    assert client._sock is None
    # The keepalive override: paho's clock, the last byte's time on it, the outstanding PINGREQ's.
    assert client._ping_t == 0 and client._keepalive == 60
    assert abs(client._last_bytes_received - mqtt.time_func()) < 60


class _Got:
    """What the fast path and paho's own path delivered, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fast: list[tuple[str, bytes, int, bool]] = []
        self.slow: list[bytes] = []

    def on_fast(self, topic: str, payload: bytes, mid: int, dup: bool) -> None:
        with self.lock:
            self.fast.append((topic, payload, mid, dup))

    def on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.slow.append(bytes(msg.payload))


def _connected(options: ConnectOptions, got: _Got, topic: str) -> FastClient:
    """A FastClient connected and subscribed to `topic`; the caller drives it from then on."""
    client = paho_client(options, client_class=FastClient, manual_ack=True, fast_sink=got.on_fast)
    client.on_message = got.on_message
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    paho_connect(client, options)
    wait_for(lambda: client.loop(0.05) is not None and subscribed.is_set(), what="SUBACK")
    return client


class _Consumer:
    """A FastClient driven as ingest drives it: select() cannot see bytes already read ahead."""

    def __init__(self, options: ConnectOptions, got: _Got, topic: str) -> None:
        self.client, self._stop = _connected(options, got, topic), threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True)
        self._thread.start()

    def _drive(self) -> None:
        client = self.client
        while not self._stop.is_set():
            client.read_publishes(lambda: False, 512)
            client.loop_read() if client.buffered() else client.loop(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self._stop.set()
        self._thread.join(5)
        self.client.loop(0.05)  # the DISCONNECT and any queued PUBACKs go out


def test_qos1_goes_to_the_sink_and_only_acknowledged_messages_are_not_resent(stack_info: StackInfo) -> None:
    target = MqttTarget.parse(stack_info.mqtt_url)
    topic = topics.scratch(f"fast-{uuid.uuid4().hex[:8]}")
    options = ConnectOptions.from_target(
        target, f"fast-{uuid.uuid4().hex[:8]}", clean_start=False, session_expiry_s=60
    )
    publisher_options = ConnectOptions.from_target(target, f"pub-{uuid.uuid4().hex[:8]}")
    publisher = paho_client(publisher_options)
    paho_connect(publisher, publisher_options)
    publisher.loop_start()
    got = _Got()
    consumer = _Consumer(options, got, topic)
    try:
        for body in (b"one", b"two", b"three"):
            publisher.publish(topic, body, qos=1).wait_for_publish(10)
        publisher.publish(topic, b"at most once", qos=0).wait_for_publish(10)
        wait_for(lambda: len(got.fast) == 3 and got.slow, what="three fast and one slow message")
        assert [p for _, p, _, _ in got.fast] == [b"one", b"two", b"three"] and got.slow == [b"at most once"]
        assert not any(dup for *_, dup in got.fast)
        consumer.client.queue_pubacks(mid for _, _, mid, _ in got.fast[:2])  # "three" stays unacknowledged
        consumer.close()

        again = _Got()
        consumer = _Consumer(options, again, topic)  # the same session: the broker resends "three" first
        publisher.publish(topic, b"marker", qos=1).wait_for_publish(10)
        wait_for(lambda: any(p == b"marker" for _, p, _, _ in again.fast), what="the marker")
        # The copy sent again carries the broker's DUP flag (ingest does not charge it to the device).
        assert [(p, dup) for _, p, _, dup in again.fast] == [(b"three", True), (b"marker", False)]
    finally:
        consumer.close()
        publisher.disconnect()
        publisher.loop_stop()


def _keepalive_options(stack_info: StackInfo, keepalive_s: int) -> ConnectOptions:
    target = MqttTarget.parse(stack_info.mqtt_url)
    return ConnectOptions.from_target(target, f"ka-{uuid.uuid4().hex[:8]}", keepalive_s=keepalive_s)


def test_a_pingresp_late_behind_a_backlog_does_not_close_a_connection_that_delivers(
    stack_info: StackInfo,
) -> None:
    keepalive = 10
    topic = topics.scratch(f"ka-{uuid.uuid4().hex[:8]}")
    got = _Got()
    client = _connected(_keepalive_options(stack_info, keepalive), got, topic)
    publisher = Publisher(MqttTarget.parse(stack_info.mqtt_url))
    try:
        publisher.publish_all([(topic, b"still flowing")])
        wait_for(lambda: client.loop(0.05) is not None and len(got.fast) == 1, what="a message")
        # What a backlog leaves behind: the PINGREQ went out over a keepalive ago and its PINGRESP
        # still waits behind the messages queued before it, while bytes keep arriving and our own
        # packets went out lately. Plain paho closes here ("Keep alive timeout").
        client._ping_t = mqtt.time_func() - keepalive - 1
        assert client.loop_misc() is mqtt.MQTT_ERR_SUCCESS
        assert client.socket() is not None and client._ping_t == 0
        publisher.publish_all([(topic, b"and after")])
        wait_for(lambda: client.loop(0.05) is not None and len(got.fast) == 2, what="the next message")
    finally:
        publisher.close()
        client.disconnect()
        client.loop(0.05)


def test_a_connection_silent_for_a_keepalive_with_a_ping_unanswered_is_still_closed(
    stack_info: StackInfo,
) -> None:
    keepalive = 10
    got = _Got()
    topic = topics.scratch(f"ka-{uuid.uuid4().hex[:8]}")
    client = _connected(_keepalive_options(stack_info, keepalive), got, topic)
    reasons: list[str] = []
    client.on_disconnect = lambda c, u, flags, reason, props: reasons.append(str(reason))
    # Nothing has arrived for longer than a keepalive, and the PINGREQ is unanswered: a dead link.
    client._last_bytes_received = client._ping_t = mqtt.time_func() - keepalive - 1
    client.loop_misc()
    assert client.socket() is None and reasons and set(reasons) == {"Keep alive timeout"}


# -- framing publishes in bulk, against paho's own reading of the same bytes -------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: str, payload: bytes, *, qos: int, mid: int, flags: int, user_property: bool) -> bytes:
    """An MQTT 5 PUBLISH: `flags` sets DUP (8) and RETAIN (1); a user property makes paho read it."""
    name = topic.encode()
    head = struct.pack("!H", len(name)) + name + (struct.pack("!H", mid) if qos else b"")
    props = b"\x26" + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v" if user_property else b""
    body = head + _varint(len(props)) + props + payload
    return bytes([0x30 | qos << 1 | flags]) + _varint(len(body)) + body


class _Chunks:
    """A socket whose `recv` returns the stream cut where the test says, then "would block"."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, bufsize: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        if len(chunk) > bufsize:
            self.chunks.insert(0, chunk[bufsize:])
        return chunk[:bufsize]

    def close(self) -> None:  # paho closes a connection whose bytes it cannot parse
        self.chunks = []


_messages = st.lists(
    st.tuples(
        st.sampled_from(["fast", "qos0", "properties"]),
        st.sampled_from([0, 1, 20, 200, 20_000]),  # payload sizes: 1, 2 and 3 length bytes
        st.sampled_from([0, 1, 8, 9]),  # DUP and RETAIN
        st.sampled_from([0, 1, 0x80, 0xFF]),  # the payload's bytes: a QoS 0 one must not pass for QoS 1
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(messages=_messages, cuts=st.lists(st.integers(min_value=1, max_value=70_000), max_size=12),
       burst=st.integers(min_value=1, max_value=5))  # fmt: skip
def test_publishes_framed_in_bulk_reach_the_sinks_as_pahos_reading_of_the_same_bytes(
    messages: list[tuple[str, int, int, int]], cuts: list[int], burst: int
) -> None:
    """Any stream of publishes, cut anywhere by the reads: each message reaches one sink once, in order,
    with its DUP flag (the broker's mark of a message it sends again)."""
    stream, expected = bytearray(), []
    for i, (kind, size, flags, fill) in enumerate(messages):
        topic, payload, mid = f"pulsewire/v1/t/dev-{i}", bytes([fill]) * size, i + 1
        qos = 0 if kind == "qos0" else 1
        stream += _publish(topic, payload, qos=qos, mid=mid, flags=flags, user_property=kind == "properties")
        expected.append(("fast" if kind == "fast" else "paho", topic, payload, bool(flags & 8)))
    chunks, last = [], 0
    for cut in sorted({c for c in cuts if c < len(stream)}):
        chunks.append(bytes(stream[last:cut]))
        last = cut
    chunks.append(bytes(stream[last:]))

    got: list[tuple[str, str, bytes, bool]] = []

    def fast(topic: str, payload: bytes, mid: int, dup: bool) -> None:
        got.append(("fast", topic, payload, dup))

    client = FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True, fast_sink=fast)
    client.on_message = lambda c, u, msg: got.append(("paho", msg.topic, bytes(msg.payload), bool(msg.dup)))
    client._sock = _Chunks(chunks)
    for _ in range(10 * len(stream)):  # ingest's pump(): bulk framing, then one packet by paho
        client.read_publishes(lambda: False, burst)
        client.loop_read()
        if not client._sock.chunks and not client.buffered() and not client._in_packet["command"]:
            break
    assert got == expected


def test_bulk_framing_stops_when_the_batch_is_full_and_leaves_the_rest_read_ahead() -> None:
    stream = b"".join(
        _publish(f"t/{i}", b"x", qos=1, mid=i + 1, flags=0, user_property=False) for i in range(10)
    )
    got: list[int] = []
    client = FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True,
                        fast_sink=lambda topic, payload, mid, dup: got.append(mid))  # fmt: skip
    client._sock = _Chunks([stream])
    client.loop_read()  # paho reads the first packet, and the rest is read ahead
    assert got == [1] and client.buffered()
    assert client.read_publishes(lambda: len(got) >= 4, 100) == 3 and got == [1, 2, 3, 4]
    assert client.read_publishes(lambda: False, 2) == 2 and got[-2:] == [5, 6]
    assert client.read_publishes(lambda: False, 100) == 4 and got[-1] == 10 and not client.buffered()
