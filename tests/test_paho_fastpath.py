"""Ingest's paho fast path: the private paho members it uses keep their shape; it works on a real broker.

If paho changes one of these, the first test names it; update `ingest/_paho_fastpath.py` (and its
pin in pyproject.toml) rather than letting the hot path misbehave quietly.
"""

from __future__ import annotations

import inspect
import threading
import uuid

import paho.mqtt.client as mqtt
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
    assert {"command", "packet"} <= set(client._in_packet)
    assert client._sock is None
    # The keepalive override: paho's clock, the last byte's time on it, the outstanding PINGREQ's.
    assert client._ping_t == 0 and client._keepalive == 60
    assert abs(client._last_bytes_received - mqtt.time_func()) < 60


class _Got:
    """What the fast path and paho's own path delivered, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fast: list[tuple[str, bytes, int]] = []
        self.slow: list[bytes] = []

    def on_fast(self, topic: str, payload: bytes, mid: int) -> None:
        with self.lock:
            self.fast.append((topic, payload, mid))

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
        assert [p for _, p, _ in got.fast] == [b"one", b"two", b"three"] and got.slow == [b"at most once"]
        consumer.client.queue_pubacks(mid for _, _, mid in got.fast[:2])  # "three" stays unacknowledged
        consumer.close()

        again = _Got()
        consumer = _Consumer(options, again, topic)  # the same session: the broker resends "three" first
        publisher.publish(topic, b"marker", qos=1).wait_for_publish(10)
        wait_for(lambda: any(p == b"marker" for _, p, _ in again.fast), what="the marker")
        assert [p for _, p, _ in again.fast] == [b"three", b"marker"]
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
