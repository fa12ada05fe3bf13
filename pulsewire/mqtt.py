"""MQTT connections: one options value, one TLS value, one backoff policy, and the client factories.

Every MQTT client of Pulsewire is made here, so each connects, authenticates and checks the broker
the same way: ingest's consumer and the simulator's device links (paho, each driving its own
socket loop), the relay's org channel and the quarantine replay (paho with its network thread),
and the dashboard's command service (aiomqtt, which wraps paho). Callers keep what is theirs: the
topics, their loop, what to do with a message.

`ConnectOptions.from_target(settings.mqtt(), client_id, ...)` gives the options; `paho_client` and
`paho_connect`, or `aiomqtt_client`, make the client. TLS is one `Tls` value turned into one
`ssl.SSLContext` for both libraries: the system's trust store or a CA file, an optional client
certificate (mutual TLS), and the server-name check. paho and aiomqtt types stay in this module and
in the module that drives the client; a failure to connect leaves here as `BrokerError`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pulsewire.errors import BrokerError, ConfigError
from pulsewire.settings import MqttTarget

__all__ = [
    "Backoff",
    "CleanStart",
    "ConnectOptions",
    "Tls",
    "aiomqtt_client",
    "connect_properties",
    "paho_client",
    "paho_connect",
]

# True: a new session at every connect. False: resume the broker's session (a durable consumer).
# "first_only": a new session at the first connect, resumed when the same client reconnects.
CleanStart = bool | Literal["first_only"]
PahoClient = TypeVar("PahoClient", bound=mqtt.Client)


@dataclass(frozen=True, slots=True)
class Tls:
    """How the broker is checked, and who we are to it, as one value.

    Without `ca_file` the system's trust store is used. `cert_file` (and `key_file`, unless the
    certificate file holds the key too) present a client certificate: mutual TLS.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @classmethod
    def of(cls, target: MqttTarget) -> Tls | None:
        """The TLS of an `mqtts://` target (its CA, or the system's; its client certificate); None for `mqtt://`."""
        if not target.tls:
            return None
        return cls(ca_file=target.ca_file, cert_file=target.cert_file, key_file=target.key_file)

    def context(self) -> ssl.SSLContext:
        """A client context: certificates always verified; the host name as `check_hostname` says."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.check_hostname = self.check_hostname
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:  # a missing or unreadable file, a bad PEM
            raise ConfigError(f"MQTT TLS settings unusable: {exc}") from exc
        return context


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential delays between connection attempts: `first_s`, doubled, at most `max_s`."""

    first_s: float = 1.0
    max_s: float = 30.0

    def delays(self) -> Iterator[float]:
        """The delays of one run of failures; start a new iterator after a success."""
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Where the broker is, who we are on it, and how the session and reconnects behave."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    tls: Tls | None = None
    keepalive_s: int = 60
    clean_start: CleanStart = "first_only"
    session_expiry_s: int = 0  # MQTT 5: how long the broker keeps the session after we go
    receive_maximum: int | None = None  # MQTT 5: unacknowledged QoS 1 messages the broker may send us
    backoff: Backoff = Backoff()

    @classmethod
    def from_target(cls, target: MqttTarget, client_id: str, **options: Any) -> ConnectOptions:
        """The options for `target` (the service login from the settings), with `options` on top."""
        login = {"username": target.username, "password": target.password}
        return cls(
            host=target.host, port=target.port, client_id=client_id, tls=Tls.of(target),
            **{**login, **options},
        )  # fmt: skip

    def login(self, username: str, password: str, client_id: str | None = None) -> ConnectOptions:
        """The same broker, as another login (a device's)."""
        return replace(self, username=username, password=password, client_id=client_id or self.client_id)

    @property
    def address(self) -> str:
        """`host:port`, for messages to the operator (never to a tenant)."""
        return f"{self.host}:{self.port}"


def connect_properties(options: ConnectOptions) -> Properties | None:
    """The MQTT 5 CONNECT properties the options ask for; None when they ask for none."""
    if not options.session_expiry_s and options.receive_maximum is None:
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if options.session_expiry_s:
        props.SessionExpiryInterval = options.session_expiry_s
    if options.receive_maximum is not None:
        props.ReceiveMaximum = options.receive_maximum
    return props


def _clean_start(value: CleanStart) -> mqtt.CleanStartOption:
    return mqtt.MQTT_CLEAN_START_FIRST_ONLY if value == "first_only" else bool(value)


@overload
def paho_client(options: ConnectOptions) -> mqtt.Client: ...
@overload
def paho_client(options: ConnectOptions, *, client_class: type[PahoClient], **kwargs: Any) -> PahoClient: ...


def paho_client(
    options: ConnectOptions, *, client_class: type[mqtt.Client] = mqtt.Client, **kwargs: Any
) -> mqtt.Client:
    """A paho MQTT 5 client with the options' identity, login and TLS; not connected yet.

    `client_class` is a subclass to make (with its own `kwargs`), e.g. ingest's fast path.
    """
    client = client_class(
        CallbackAPIVersion.VERSION2, client_id=options.client_id, protocol=mqtt.MQTTv5, **kwargs
    )
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls is not None:
        client.tls_set_context(options.tls.context())
    return client


def paho_connect(client: mqtt.Client, options: ConnectOptions, *, wait: bool = True) -> None:
    """Connect `client` as the options say: now (TCP and TLS, CONNACK later), or with `wait=False`
    only remember where, for the caller's loop to connect (`reconnect()`) when it is ready.

    BrokerError when the broker cannot be reached or the options are not usable.
    """
    connect = client.connect if wait else client.connect_async
    clean_start, properties = _clean_start(options.clean_start), connect_properties(options)
    try:
        connect(
            options.host, options.port, options.keepalive_s, clean_start=clean_start, properties=properties
        )
    except (OSError, ValueError) as exc:  # refused, unreachable, TLS, DNS; a bad port or keepalive
        raise BrokerError(f"cannot reach the broker at {options.address}: {exc}") from exc


def aiomqtt_client(options: ConnectOptions, **kwargs: Any) -> aiomqtt.Client:
    """An aiomqtt MQTT 5 client with the same identity, login, session and TLS as `paho_client`.

    Use it as `async with aiomqtt_client(options) as client:`; it connects on entering.
    """
    return aiomqtt.Client(
        options.host,
        options.port,
        username=options.username,
        password=options.password,
        identifier=options.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=options.keepalive_s,
        clean_start=_clean_start(options.clean_start),
        properties=connect_properties(options),
        tls_context=options.tls.context() if options.tls is not None else None,
        **kwargs,
    )
