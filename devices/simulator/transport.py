"""One MQTT 5 connection per simulated device, all driven by one asyncio event loop.

paho does the protocol; we drive its sockets from the loop (`add_reader`/`add_writer`) the way
aiomqtt does, instead of one network thread per client, so thousands of devices share one
process. Acknowledgements only bump counters and wake a waiting publisher: no future per message,
which is what keeps the publish rate high. The client, its login, TLS and reconnect backoff come
from `pulsewire.mqtt`. paho types stay in this module; its errors leave it as `BrokerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pulsewire.errors import BrokerError
from pulsewire.mqtt import Backoff, ConnectOptions, paho_client, paho_connect
from pulsewire.settings import MqttTarget

MISC_INTERVAL_S = 1.0
SESSION_EXPIRY_S = 300


def link_options(
    target: MqttTarget, username: str, password: str, client_id: str,
    certificate: tuple[Path, Path] | None = None,
) -> ConnectOptions:  # fmt: skip
    """A simulated login on `target`'s broker: a session kept across its own reconnects, quick retries.

    A device's login (any but the target's own) goes to the devices' listener when the target names one:
    the service listener accepts only Pulsewire's components. With a `certificate` (cert and key
    files) and a target that names the mutual TLS listener, the device logs in there instead, as
    its certificate's CN, with no password.
    """
    broker = target if username == target.username else (target.devices or target)
    login: tuple[str | None, str | None] = (username, password)
    if certificate is not None and target.mtls is not None:
        broker = replace(target.mtls, cert_file=certificate[0], key_file=certificate[1])
        login = (None, None)
    return ConnectOptions.from_target(
        broker, client_id, username=login[0], password=login[1], keepalive_s=60, clean_start="first_only",
        session_expiry_s=SESSION_EXPIRY_S, backoff=Backoff(first_s=0.05, max_s=5.0),
    )  # fmt: skip


@dataclass
class Counters:
    """Fleet-wide tallies, shared by every link; plain ints because one loop owns them."""

    connected: int = 0
    published: int = 0
    acknowledged: int = 0
    errors: int = 0
    reconnects: int = 0
    commands: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class Incoming:
    """A message delivered to a device: a command, with its MQTT 5 reply addressing."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


@dataclass
class LinkConfig:
    """Where and who (`link_options`), the Will, what to subscribe to, and the in-flight bound."""

    connect: ConnectOptions
    will_topic: str | None = None
    will_payload: bytes = b""
    subscribe: list[str] = field(default_factory=list)
    max_inflight: int = 100

    @property
    def username(self) -> str:
        """The login, for messages."""
        return self.connect.username or ""


class MqttLink:
    """A device's MQTT connection: publish with bounded in-flight QoS 1, receive commands."""

    def __init__(
        self,
        config: LinkConfig,
        counters: Counters,
        on_message: Callable[[Incoming], None] | None = None,
    ) -> None:
        self.config = config
        self.counters = counters
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._inflight = 0
        self._drained = asyncio.Event()
        self._connected = asyncio.Event()
        self._first_connect: asyncio.Future[None] = self._loop.create_future()
        self._closing = False
        self._delays = config.connect.backoff.delays()
        self._misc: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._writing = False
        self._socket_closed = asyncio.Event()
        self._client = self._build_client()

    def _build_client(self) -> mqtt.Client:
        cfg = self.config
        client = paho_client(cfg.connect)
        # The in-flight bound is ours (publish waits); paho's own queue then never grows past it.
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(cfg.max_inflight * 2)
        if cfg.will_topic:
            client.will_set(cfg.will_topic, cfg.will_payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted us and the link is up."""
        return self._connected.is_set()

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect (clean start the first time only) and wait for the broker's CONNACK."""
        paho_connect(self._client, self.config.connect)
        try:
            async with asyncio.timeout(timeout_s):
                await self._first_connect
        except TimeoutError as exc:
            self._teardown()
            raise BrokerError(f"{self.config.username}: no CONNACK within {timeout_s} s") from exc

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send one message; waits while `max_inflight` QoS 1 messages are unacknowledged."""
        while qos and self._inflight >= self.config.max_inflight:
            self._drained.clear()
            await self._drained.wait()
        if qos:
            self._inflight += 1
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN is fine: paho keeps QoS 1 messages and sends them after the reconnect.
            self._inflight -= 1 if qos else 0
            self._error(f"publish to {topic}: {mqtt.error_string(info.rc)}")
            return
        self.counters.published += 1

    def try_publish(self, topic: str, payload: bytes) -> bool:
        """Send one QoS 1 message unless `max_inflight` are unacknowledged (then False, nothing sent)."""
        if self._inflight >= self.config.max_inflight or not self.connected:
            return False
        self._inflight += 1
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._inflight -= 1
            self._error(f"publish to {topic}: {mqtt.error_string(info.rc)}")
            return False
        self.counters.published += 1
        return True

    def reply(self, topic: str, payload: bytes, correlation_data: bytes | None) -> None:
        """Publish a command reply carrying the request's correlation data."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        self._inflight += 1
        self._client.publish(topic, payload, qos=1, properties=props)
        self.counters.published += 1

    async def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every QoS 1 message is acknowledged; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._inflight > 0:
                    self._drained.clear()
                    await self._drained.wait()
        except TimeoutError:
            return False
        return True

    def drop(self) -> None:
        """Cut the TCP connection without DISCONNECT, as a lost link would; the broker sends the Will."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def abort(self) -> None:
        """Go away for good without DISCONNECT (a device losing power): the broker sends the Will."""
        self._closing = True
        self.drop()
        self._teardown()

    async def close(self, last_words: tuple[str, bytes] | None = None) -> None:
        """Clean disconnect; `last_words` (topic, payload) go out retained first, as the Will will not."""
        self._closing = True
        if last_words and self.connected:
            await self.publish(last_words[0], last_words[1], retain=True)
            await self.drain(timeout_s=5.0)
        if self.connected:
            self._client.disconnect()
            # DISCONNECT goes out on the next write; wait for paho to close the socket after it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._socket_closed.wait()
        self._teardown()

    # -- paho callbacks (run inside the event loop, from loop_read/loop_write/loop_misc) --

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._closing = True
            if not self._first_connect.done():
                self._first_connect.set_exception(
                    BrokerError(f"{self.config.username}: broker refused the connection: {rc}")
                )
            return
        self._connected.set()
        self._delays = self.config.connect.backoff.delays()
        self.counters.connected += 1
        for topic in self.config.subscribe:
            client.subscribe(topic, qos=1)
        if not self._first_connect.done():
            self._first_connect.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connected.is_set():
            self.counters.connected -= 1
        self._connected.clear()
        if not self._closing:
            self.counters.reconnects += 1
            self._loop.call_later(next(self._delays), self._reconnect)

    def _reconnect(self) -> None:
        if self._closing:
            return
        try:
            self._client.reconnect()
        except OSError as exc:
            self._error(f"{self.config.username}: reconnect failed: {exc}")
            self._loop.call_later(next(self._delays), self._reconnect)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._inflight = max(0, self._inflight - 1)
        if rc.is_failure:
            self._error(f"{self.config.username}: broker rejected a publish: {rc}")
        else:
            self.counters.acknowledged += 1
        self._drained.set()

    def _on_paho_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is None:
            return
        props = msg.properties
        self._on_message(
            Incoming(
                topic=msg.topic,
                payload=bytes(msg.payload),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=getattr(props, "CorrelationData", None),
            )
        )

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._socket_closed.clear()
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, client.loop_read)
        if self._misc is None:
            self._misc = self._loop.call_later(MISC_INTERVAL_S, self._tick)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._socket_closed.set()
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Try the non-blocking send at once: on loopback it nearly always completes, which saves
        # two epoll_ctl calls and a loop turn per message. Only a full socket buffer waits for the loop.
        if self._writing:
            return
        self._writing = True
        try:
            client.loop_write()
        finally:
            self._writing = False
        if client.want_write() and self._fd is not None:
            self._loop.add_writer(self._fd, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self._loop.remove_writer(self._fd)

    def _tick(self) -> None:
        # Keepalive pings and retries; a timer handle per link is far cheaper than a task.
        self._client.loop_misc()
        self._misc = None if self._closing else self._loop.call_later(MISC_INTERVAL_S, self._tick)

    def _teardown(self) -> None:
        self._closing = True
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None
        with contextlib.suppress(Exception):
            self._client.loop_read()  # lets paho notice the closed socket and release it

    def _error(self, message: str) -> None:
        self.counters.errors += 1
        self.counters.last_error = message
