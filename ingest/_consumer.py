"""The MQTT side of ingest: a persistent MQTT 5 session driven from the caller's thread, manual acks.

paho types stay in this module. There is no network thread: the ingest thread calls `pump()`, which
(re)connects with capped backoff, reads what the socket holds and hands each message to `sink` in the
same thread (no queue, no GIL handoff per message). While the caller does not pump, paho does not
read the socket and the broker holds the rest (backpressure, not memory growth). A message is
acknowledged only when the writer says its batch is committed (`ack`), many acks in one packet write.
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from pulsewire.errors import BrokerError
from pulsewire.settings import MqttTarget

log = logging.getLogger(__name__)

SHARE_GROUP = "ingest"


def shared_topics(group: str = SHARE_GROUP) -> tuple[str, ...]:
    """The subscriptions of an ingest worker in `group` (workers of one group split the load).

    An empty group means plain subscriptions, for a single worker: Mosquitto 2.0.11 does not
    restore shared subscriptions from its persistence file, so after a broker restart messages
    published before the worker has subscribed again are dropped; plain ones are restored.
    """
    prefix = f"$share/{group}/" if group else ""
    # pw/v1/replay/...: quarantined messages replayed by the service login (`pulsewire quarantine replay`).
    return tuple(
        f"{prefix}pw/v1/{source}/+/{kind}"
        for source in ("dev", "replay")
        for kind in ("telemetry", "event", "status")
    )


SESSION_EXPIRY_S = 86_400  # QoS 1 messages wait a day for a worker that is down
RECEIVE_MAXIMUM = 65_535  # unacked messages the broker may send us: the writer batches across them
KEEPALIVE_S = 30
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30

MAX_BURST = 512  # packets read per pump() without another select(), so acks and batches keep flowing
_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id: "success"

# topic, payload, mid, qos, connection number
Received = tuple[str, bytes, int, int, int]
# mid, qos, connection number
Ack = tuple[int, int, int]
Sink = Callable[[Received], None]
FastSink = Callable[[str, bytes, int], None]  # topic, payload, mid of a QoS 1 message


class _BufferedClient(mqtt.Client):
    """paho reads each packet's header a byte at a time (three recv() calls a message): read ahead.

    paho only ever calls `_sock_recv` for bytes it needs next, so serving them from our own buffer
    is transparent; the buffer belongs to one socket and is dropped when paho opens another.
    """

    _READ_SIZE = 256 * 1024

    def __init__(self, *args: Any, fast_sink: FastSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self._fast_sink = fast_sink

    def _handle_publish(self) -> MQTTErrorCode:
        """The common PUBLISH (QoS 1, no properties) straight to `fast_sink`; anything else to paho.

        paho builds a Properties object, an MQTTMessage and a debug log line and matches callbacks
        per message, about a third of the network thread's time; ours is a few slices.
        """
        command, packet = self._in_packet["command"], self._in_packet["packet"]
        end_topic = 2 + (packet[0] << 8 | packet[1])
        if (command & 0x06) != 0x02 or len(packet) < end_topic + 3 or packet[end_topic + 2] != 0:
            return super()._handle_publish()
        mid = packet[end_topic] << 8 | packet[end_topic + 1]
        # Mosquitto only forwards valid UTF-8 topics; a bad one becomes an unknown topic, not a crash.
        topic = packet[2:end_topic].decode("utf-8", "replace")
        self._fast_sink(topic, bytes(packet[end_topic + 3 :]), mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def buffered(self) -> bool:
        """Whether bytes already read from the current socket wait to be parsed."""
        return self._rpos < len(self._rbuf) and self._rsock is self._sock

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.buffered():
            data = super()._sock_recv(self._READ_SIZE)  # raises BlockingIOError when there is none
            if len(data) <= bufsize:  # also b"": the connection is closed
                return data
            self._rbuf, self._rpos, self._rsock = data, 0, self._sock
        pos = self._rpos
        self._rpos = pos + bufsize
        return self._rbuf[pos : pos + bufsize]


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
        self._backoff = float(RECONNECT_MIN_S)
        self._next_try = 0.0
        self._client = _BufferedClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True,
            fast_sink=self._on_qos1,
        )  # fmt: skip
        if target.username:
            self._client.username_pw_set(target.username, target.password)
        if target.tls:
            self._client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            self._client.connect_async(
                target.host, target.port, keepalive=KEEPALIVE_S, clean_start=False, properties=props
            )
        except ValueError as exc:
            raise BrokerError(f"cannot connect to {target.host}:{target.port}: {exc}") from exc

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
        # Packets already in the socket buffer: read them without a select() per packet.
        for _ in range(MAX_BURST):
            before = self._received
            if full() or client.loop_read() is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if self._received == before:
                break
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
        pack = _PUBACK.pack
        blob = b"".join(pack(0x40, 2, mid) for mid, qos, conn in acks if qos == 1 and conn == current)
        if blob and self._client.socket() is not None:
            # paho's own ack() costs a wake-up byte and a send() per message; this is one of each.
            self._client._packet_queue(PacketTypes.PUBACK << 4, blob, 0, 0)

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
            log.warning("cannot reach the broker (%s); retrying in %.0fs", exc, self._backoff)
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if reason.is_failure:
            log.error("broker refused ingest: %s", reason)
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)
            return
        self._connection += 1
        self._backoff = float(RECONNECT_MIN_S)
        log.info("connected to broker (session present: %s)", flags.session_present)
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._topics])

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
            self._next_try = time.monotonic() + RECONNECT_MIN_S
        if reason.is_failure:
            log.warning("disconnected from broker: %s; reconnecting", reason)

    def _on_qos1(self, topic: str, payload: bytes, mid: int) -> None:
        self._received += 1
        self._sink((topic, payload, mid, 1, self._connection))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._received += 1
        payload = msg.payload
        data = payload if isinstance(payload, bytes) else bytes(payload)
        self._sink((msg.topic, data, msg.mid, msg.qos, self._connection))
