"""The MQTT side of ingest: a persistent MQTT 5 session driven from the caller's thread, manual acks.

paho types stay in this module and in `ingest._paho_fastpath` (its client, the only code that
touches paho's internals); connection options, TLS and backoff are `pulsewire.mqtt`'s. There is no
network thread: the ingest thread calls `pump()`, which
(re)connects with capped backoff, reads what the socket holds and hands each message to `sink` in the
same thread (no queue, no GIL handoff per message). While the caller does not pump, paho does not
read the socket and the broker holds the rest (backpressure, not memory growth). A message is
acknowledged only when the writer says its batch is committed (`ack`), many acks in one packet write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest._paho_fastpath import FastClient
from pulsewire.mqtt import Backoff, ConnectOptions, paho_client, paho_connect
from pulsewire.settings import MqttTarget
from schemas.topics import uplink_filters

log = logging.getLogger(__name__)

SHARE_GROUP = "ingest"


def shared_topics(group: str = SHARE_GROUP) -> tuple[str, ...]:
    """The subscriptions of an ingest worker in `group` (workers of one group split the load).

    Devices' uplinks and, on `pw/v1/replay/...`, quarantined messages replayed by the service login
    (`pulsewire quarantine replay`). An empty group means plain subscriptions, for a single worker:
    Mosquitto 2.0.11 does not restore shared subscriptions from its persistence file, so after a
    broker restart messages published before the worker has subscribed again are dropped; plain
    ones are restored.
    """
    return uplink_filters(group)


def connect_options(target: MqttTarget, client_id: str) -> ConnectOptions:
    """Ingest's session: durable (resumed on every connect), kept a day, with a wide receive window."""
    return ConnectOptions.from_target(
        target,
        client_id,
        keepalive_s=30,
        clean_start=False,
        session_expiry_s=86_400,  # QoS 1 messages wait a day for a worker that is down
        receive_maximum=65_535,  # unacked messages the broker may send us: the writer batches across them
        backoff=Backoff(first_s=1.0, max_s=30.0),
    )


MAX_BURST = 512  # packets read per pump() without another select(), so acks and batches keep flowing

# topic, payload, mid, qos, connection number, and whether the broker sends it again (MQTT's DUP
# flag on its way to us: set by the broker, never passed on from the device)
Received = tuple[str, bytes, int, int, int, bool]
# mid, qos, connection number
Ack = tuple[int, int, int]
Sink = Callable[[Received], None]


class Consumer:
    """A persistent, shared-subscription MQTT 5 session whose messages go to `sink`.

    Not thread-safe: `pump`, `ack` and `disconnect` are called from one thread.
    """

    def __init__(
        self, target: MqttTarget, client_id: str, sink: Sink, topics: Sequence[str] | None = None
    ) -> None:
        self._target = target
        self._sink = sink
        self._topics = tuple(topics) if topics is not None else shared_topics()
        self.subscribed = threading.Event()
        self._connection = 0  # counts connects; acks name the connection a message came on
        self._received = 0
        self._options = connect_options(target, client_id)
        self._delays = self._options.backoff.delays()
        self._next_try = 0.0
        self._client = paho_client(
            self._options, client_class=FastClient, manual_ack=True, fast_sink=self._on_qos1
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        paho_connect(self._client, self._options, wait=False)  # pump() connects

    def pump(self, timeout_s: float, full: Callable[[], bool] = lambda: False) -> None:
        """Network I/O for at most about `timeout_s`: connect if needed, read, write, keep alive.

        Reading stops once `full()` says the caller's batch is full (checked after each message).
        """
        client = self._client
        if client.socket() is None:
            self._reconnect(timeout_s)
            return
        # select() cannot see bytes we have already read: parse those first, without waiting.
        rc = client.loop_read() if client.buffered() else client.loop(timeout_s)
        if rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            return  # connection lost: paho closed the socket, the next pump reconnects
        # Packets already in the socket buffer: read them without a select() per packet, the
        # publishes among them framed in bulk and the rest (or a packet cut by the read) by paho.
        budget = MAX_BURST
        while budget > 0:
            before = self._received
            client.read_publishes(full, budget)
            if full() or client.loop_read() is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if self._received == before:
                break
            budget -= self._received - before
        if client.want_write():
            client.loop_write()
        client.loop_misc()  # keepalive: loop_read() alone never sends a ping

    def ack(self, acks: Iterable[Ack]) -> None:
        """Acknowledge messages (after their batch is committed) in one packet write.

        A message from an earlier connection is not acknowledged: the broker resends it, and the
        packet id may by then name another message (the resent copy is deduplicated on write).
        Only QoS 1 exists here: the subscriptions ask for at most QoS 1.
        """
        current = self._connection
        self._client.queue_pubacks(mid for mid, qos, conn in acks if qos == 1 and conn == current)

    def disconnect(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (acks), then disconnect; the session stays at the broker."""
        client = self._client
        if client.socket() is None:
            return
        client.disconnect()
        deadline = time.monotonic() + timeout_s
        while client.socket() is not None and time.monotonic() < deadline:
            if client.loop(0.05) is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    def _reconnect(self, timeout_s: float) -> None:
        wait = self._next_try - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout_s))
            return
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS, DNS
            delay = next(self._delays)
            log.warning("cannot reach the broker (%s); retrying in %.0fs", exc, delay)
            self._next_try = time.monotonic() + delay

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if reason.is_failure:
            log.error("broker refused ingest: %s", reason)
            self._next_try = time.monotonic() + next(self._delays)
            return
        self._connection += 1
        self._delays = self._options.backoff.delays()
        log.info("connected to broker (session present: %s)", flags.session_present)
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        # retainHandling=2: no retained copies at subscribe time. Every message reaches this persistent
        # session live; a retained copy is either one already stored (each reconnect subscribes again)
        # or a status from before this consumer existed, e.g. of a device since deleted. Mosquitto
        # 2.0.11 sends retained messages to shared subscriptions too, so the share group does not help.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(t, options) for t in self._topics])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:  # fmt: skip
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("subscription refused: %s", ", ".join(failed))
        else:
            self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        self.subscribed.clear()
        self._connection += 1  # acks still pending for the old connection must not go out on the next
        if self._next_try < time.monotonic():
            self._next_try = time.monotonic() + self._options.backoff.first_s
        if reason.is_failure:
            log.warning("disconnected from broker: %s; reconnecting", reason)

    def _on_qos1(self, topic: str, payload: bytes, mid: int, dup: bool) -> None:
        self._received += 1
        self._sink((topic, payload, mid, 1, self._connection, dup))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._received += 1
        payload = msg.payload
        data = payload if isinstance(payload, bytes) else bytes(payload)
        self._sink((msg.topic, data, msg.mid, msg.qos, self._connection, bool(msg.dup)))
