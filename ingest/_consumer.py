"""The MQTT side of ingest: paho's network thread, a persistent MQTT 5 session, manual acks.

paho types stay in this module. The consumer hands every message to a `sink` (which may block:
that is the backpressure, paho then stops reading the socket and the broker holds the rest) and
acknowledges a message only when the writer says it is committed (`ack`).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
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
    return tuple(f"{prefix}pw/v1/dev/+/{kind}" for kind in ("telemetry", "event", "status"))


SESSION_EXPIRY_S = 86_400  # QoS 1 messages wait a day for a worker that is down
RECEIVE_MAXIMUM = 65_535  # unacked messages the broker may send us: the writer batches across them
KEEPALIVE_S = 30
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30

# topic, payload, mid, qos, connection number
Received = tuple[str, bytes, int, int, int]
Sink = Callable[[Received], None]


class Consumer:
    """A persistent, shared-subscription MQTT 5 session whose messages go to `sink`."""

    def __init__(
        self, target: MqttTarget, client_id: str, sink: Sink, topics: Sequence[str] | None = None
    ) -> None:
        self._target = target
        self._sink = sink
        self._topics = tuple(topics) if topics is not None else shared_topics()
        self.subscribed = threading.Event()
        self._connection = 0  # counts connects; acks name the connection a message came on
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if target.username:
            self._client.username_pw_set(target.username, target.password)
        if target.tls:
            self._client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in paho's network thread; it reconnects by itself with capped backoff."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        try:
            self._client.connect_async(
                self._target.host, self._target.port, keepalive=KEEPALIVE_S,
                clean_start=False, properties=props,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {self._target.host}:{self._target.port}: {exc}") from exc
        self._client.loop_start()

    def ack(self, mid: int, qos: int, connection: int) -> None:
        """Acknowledge a message (after its batch is committed) received on `connection`.

        A message from an earlier connection is not acknowledged: the broker resends it, and the
        packet id may by then name another message (the resent copy is deduplicated on write).
        """
        if qos > 0 and connection == self._connection:
            self._client.ack(mid, qos)

    def stop(self) -> None:
        """Disconnect (the session and its unacked messages stay at the broker) and end the thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if reason.is_failure:
            log.error("broker refused ingest: %s", reason)
            return
        self._connection += 1
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
        if reason.is_failure:
            log.warning("disconnected from broker: %s; reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload
        data = payload if isinstance(payload, bytes) else bytes(payload)
        self._sink((msg.topic, data, msg.mid, msg.qos, self._connection))
