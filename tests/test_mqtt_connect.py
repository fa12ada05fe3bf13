"""`pulsewire.mqtt` on a real Mosquitto: both factories connect, log in, and resume each other's session."""

from __future__ import annotations

import asyncio
import itertools
import queue
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from pulsewire.errors import BrokerError, ConfigError
from pulsewire.mqtt import Backoff, ConnectOptions, Tls, aiomqtt_client, paho_client, paho_connect
from pulsewire.settings import MqttTarget
from pulsewire.stack import StackInfo
from schemas import topics
from tests.helpers import free_port


def _options(info: StackInfo, **extra: Any) -> ConnectOptions:
    return ConnectOptions.from_target(MqttTarget.parse(info.mqtt_url), f"t-{uuid.uuid4().hex[:10]}", **extra)


class _Paho:
    """A paho client from the factory on its own network thread; callbacks only fill queues."""

    def __init__(self, options: ConnectOptions) -> None:
        self.client = paho_client(options)
        self.connacks: queue.Queue[tuple[bool, bool]] = queue.Queue()
        self.subacks: queue.Queue[object] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = lambda _c, _u, flags, rc, _p: self.connacks.put(
            (rc.is_failure, flags.session_present)
        )
        self.client.on_subscribe = lambda *_: self.subacks.put(True)
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        paho_connect(self.client, options)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(info: StackInfo, topic: str, payload: bytes) -> None:
    publisher = _Paho(_options(info))
    try:
        assert publisher.connacks.get(timeout=10) == (False, False)
        publisher.client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        publisher.close()


def test_both_factories_connect_with_the_service_login(stack_info: StackInfo) -> None:
    client = _Paho(_options(stack_info))
    try:
        assert client.connacks.get(timeout=10) == (False, False)
    finally:
        client.close()

    async def aio() -> None:
        async with aiomqtt_client(_options(stack_info)) as c:
            await c.subscribe(topics.scratch("aio"), qos=1)

    asyncio.run(aio())


def test_both_factories_are_refused_with_a_wrong_password(stack_info: StackInfo) -> None:
    wrong = _options(stack_info).login("pulsewire", "wrong")
    client = _Paho(wrong)
    try:
        assert client.connacks.get(timeout=10)[0] is True
    finally:
        client.close()

    async def aio() -> None:
        async with aiomqtt_client(wrong):
            pass

    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(aio())


def test_the_factories_agree_on_identity_and_session(stack_info: StackInfo) -> None:
    """A session paho opened (same client id, clean_start False, expiry) is the one aiomqtt resumes."""
    options = _options(stack_info, clean_start=False, session_expiry_s=60)
    topic = topics.scratch(f"session-{uuid.uuid4().hex[:8]}")
    first = _Paho(options)
    assert first.connacks.get(timeout=10) == (False, False)
    first.client.subscribe(topic, qos=1)
    first.subacks.get(timeout=10)
    first.close()
    _publish(stack_info, topic, b"while away")

    async def resume() -> tuple[bool, tuple[str, bytes]]:
        async with aiomqtt_client(options) as client:
            # No subscribe: the message arrives only if the broker kept paho's session for this id.
            message = await anext(aiter(client.messages))
            assert isinstance(message.payload, bytes)
            return True, (str(message.topic), message.payload)

    assert asyncio.run(asyncio.wait_for(resume(), 10)) == (True, (topic, b"while away"))


def test_an_unreachable_broker_is_a_broker_error(stack_info: StackInfo) -> None:
    options = ConnectOptions(host="127.0.0.1", port=free_port(), client_id="nobody")
    with pytest.raises(BrokerError, match="cannot reach the broker"):
        paho_connect(paho_client(options), options)


def test_backoff_doubles_up_to_its_cap_and_starts_again() -> None:
    policy = Backoff(first_s=0.5, max_s=10.0)
    assert list(itertools.islice(policy.delays(), 8)) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert next(policy.delays()) == 0.5
    assert ConnectOptions(host="h", port=1, client_id="c").backoff == Backoff(first_s=1.0, max_s=30.0)


def test_tls_is_one_value_for_both_libraries(tmp_path: Path) -> None:
    context = Tls().context()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert not Tls(check_hostname=False).context().check_hostname
    with pytest.raises(ConfigError):
        Tls(ca_file=tmp_path / "missing.pem").context()
    with pytest.raises(ConfigError):
        Tls(cert_file=tmp_path / "missing.pem").context()
    target = MqttTarget.parse("mqtts://u:p@broker.example:8883")
    options = ConnectOptions.from_target(target, "c")
    assert options.tls == Tls() and (options.host, options.port, options.username) == (
        "broker.example",
        8883,
        "u",
    )
    assert ConnectOptions.from_target(MqttTarget.parse("mqtt://h"), "c").tls is None
    client: mqtt.Client = paho_client(options)
    assert client.username is not None
