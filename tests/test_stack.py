"""The local stack against real PostgreSQL and Mosquitto processes; no mocks."""

from __future__ import annotations

import base64
import hashlib
import queue
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pulsewire import brokerauth
from pulsewire.stack import SERVICE_USER, Stack, StackError, StackInfo
from schemas import topics
from tests.fix_stack import new_state_dir

WAIT_S = 5.0
# A message that has not arrived this long after a later one on the same path never will.
QUIET_S = 0.5
NOT_AUTHORIZED = 0x87  # what Mosquitto 2.0 answers a wrong password or an unknown user


class Peer:
    """A paho MQTT 5 client on its own network thread; callbacks only fill queues."""

    def __init__(
        self, info: StackInfo, username: str, password: str, client_id: str = "", port: int | None = None
    ) -> None:
        self.info = info
        self.port = port or info.mqtt_port  # the device listener unless told otherwise
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        if self.port == info.mqtt_port:  # the device listener speaks TLS with the stack's CA
            self.client.tls_set(ca_certs=str(info.ca_file))
        self.connacks: queue.Queue[tuple[ReasonCode, bool]] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda _c, _u, flags, rc, _p: self.connacks.put((rc, flags.session_present))
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def connect(self, *, clean_start: bool = True, session_expiry_s: int = 0) -> tuple[ReasonCode, bool]:
        """Connect and return (CONNACK reason, session_present); stops the loop on refusal."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if session_expiry_s:
            props.SessionExpiryInterval = session_expiry_s
        self.client.connect(self.info.mqtt_host, self.port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        result = self.connacks.get(timeout=WAIT_S)
        if result[0].is_failure:
            self.close()
        return result

    def subscribe(self, topic: str) -> ReasonCode:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT_S)[0]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=WAIT_S)

    def received(self) -> list[tuple[str, bytes]]:
        """Everything that arrives until the line has been quiet for QUIET_S."""
        got: list[tuple[str, bytes]] = []
        while True:
            try:
                msg = self.messages.get(timeout=QUIET_S)
            except queue.Empty:
                return got
            got.append((msg.topic, bytes(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def service(info: StackInfo, client_id: str = "") -> Peer:
    password = info.mqtt_url.split("@")[0].rsplit(":", 1)[1]
    return Peer(info, SERVICE_USER, password, client_id, port=info.service_port)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def our_processes(state_dir: Path) -> set[int]:
    """Live processes whose command line names `state_dir` (postmaster, broker)."""
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(state_dir).encode() in cmdline and state != "Z":
            found.add(int(proc.name))
    return found


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    """A stack of this module's own, for the tests that break or re-key it."""
    state_dir = new_state_dir()
    private = Stack(state_dir)
    try:
        private.up()
        yield private
    finally:
        private.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def test_status_is_none_before_up() -> None:
    state_dir = new_state_dir()
    try:
        assert Stack(state_dir).status() is None
        Stack(state_dir).down()  # nothing to stop: a no-op, not an error
        with pytest.raises(StackError, match="stack up"):
            Stack(state_dir).start_broker()
    finally:
        shutil.rmtree(state_dir)


def test_up_is_idempotent_and_down_stops_exactly_ours(stack_info: StackInfo) -> None:
    state_dir = new_state_dir()
    local = Stack(state_dir)
    try:
        first = local.up()
        second = local.up()
        assert first == second and first.running
        assert our_processes(state_dir) == {first.postgres_pid, first.broker_pid}
        assert stat.S_IMODE((state_dir / "stack.json").stat().st_mode) == 0o600
        assert first.to_json()["database_url"] == first.database_url

        local.down()
        after = local.status()
        assert after is not None and not after.postgres_running and not after.broker_running
        assert our_processes(state_dir) == set()
        local.down()
        # The session's stack was not touched.
        session = Stack(stack_info.state_dir).status()
        assert session is not None and session.running

        again = local.up()
        assert (again.pg_port, again.mqtt_port, again.database_url, again.mqtt_url) == (
            first.pg_port, first.mqtt_port, first.database_url, first.mqtt_url,
        )  # fmt: skip
    finally:
        local.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def test_database_url_reaches_a_tuned_durable_postgres(stack_info: StackInfo) -> None:
    with psycopg.connect(stack_info.database_url) as conn:
        settings: dict[str, str] = dict(conn.execute("SELECT name, setting FROM pg_settings").fetchall())
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        dbname = conn.execute("SELECT current_database()").fetchone()
    assert superuser == (True,) and dbname == ("pulsewire",)
    assert settings["synchronous_commit"] == "on" and settings["fsync"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["max_connections"] == "200"
    assert settings["shared_buffers"] == str(512 * 1024 // 8)  # in 8 kB pages
    assert settings["port"] == str(stack_info.pg_port)


def test_service_user_publishes_and_subscribes(stack_info: StackInfo) -> None:
    topic = topics.scratch(unique("svc"))
    sub, pub = service(stack_info), service(stack_info)
    assert not sub.connect()[0].is_failure and not pub.connect()[0].is_failure
    try:
        assert sub.subscribe(f"{topic}/#").value == 1
        pub.publish(f"{topic}/a", b"hello")
        assert sub.received() == [(f"{topic}/a", b"hello")]
    finally:
        sub.close()
        pub.close()


def test_new_device_connects_after_reload_without_restart(own_stack: Stack) -> None:
    info = own_stack.status()
    assert info is not None
    device, password = unique("dev"), brokerauth.new_password()
    listener = service(info)
    listener.connect()
    listener.subscribe(topics.device_filter(device))
    try:
        own_stack.reload_broker_auth([(device, brokerauth.hash_password(password))])
        after = own_stack.status()
        assert after is not None and after.broker_pid == info.broker_pid  # no restart

        peer = Peer(info, device, password)
        assert not peer.connect()[0].is_failure
        peer.publish(topics.telemetry(device), b"{}")
        peer.close()
        assert listener.received() == [(topics.telemetry(device), b"{}")]

        assert Peer(info, device, "wrong").connect()[0].value == NOT_AUTHORIZED
        assert Peer(info, unique("nobody"), password).connect()[0].value == NOT_AUTHORIZED
    finally:
        listener.close()


def test_device_reaches_only_its_own_topics(own_stack: Stack) -> None:
    info = own_stack.status()
    assert info is not None
    alice, bob = unique("alice"), unique("bob")
    secret = brokerauth.new_password()
    own_stack.reload_broker_auth([(d, brokerauth.hash_password(secret)) for d in (alice, bob)])
    watcher, device = service(info), Peer(info, alice, secret)
    watcher.connect()
    watcher.subscribe(topics.EVERYTHING)
    device.connect()
    try:
        device.publish(topics.telemetry(bob), b"forged")
        device.publish(topics.org_alerts(1), b"forged")
        device.publish(topics.telemetry(alice), b"mine")  # same path, so it arrives last
        assert watcher.received() == [(topics.telemetry(alice), b"mine")]

        device.subscribe(topics.command(bob))
        assert device.subscribe(topics.command(alice)).value == 1
        watcher.publish(topics.command(bob), b"not yours")
        watcher.publish(topics.command(alice), b"yours")
        assert device.received() == [(topics.command(alice), b"yours")]
    finally:
        device.close()
        watcher.close()


def test_postgres_restart_keeps_port_and_data(own_stack: Stack) -> None:
    info = own_stack.status()
    assert info is not None
    with psycopg.connect(info.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    own_stack.stop_postgres()
    stopped = own_stack.status()
    assert stopped is not None and not stopped.postgres_running and stopped.broker_running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(info.database_url, connect_timeout=2)
    own_stack.start_postgres()
    with psycopg.connect(info.database_url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("still here",)]


def test_restart_broker_keeps_port_and_queued_qos1(own_stack: Stack) -> None:
    info = own_stack.status()
    assert info is not None
    topic, client_id = topics.scratch(unique("durable")), unique("ingest")
    consumer = service(info, client_id)
    consumer.connect(clean_start=False, session_expiry_s=3600)
    consumer.subscribe(topic)
    consumer.close()
    producer = service(info)
    producer.connect()
    producer.publish(topic, b"queued while away")
    producer.close()

    own_stack.restart_broker()
    after = own_stack.status()
    assert after is not None and after.broker_running
    assert after.mqtt_port == info.mqtt_port and after.broker_pid != info.broker_pid

    consumer = service(info, client_id)
    assert consumer.connect(clean_start=False, session_expiry_s=3600)[1]  # session_present
    try:
        assert consumer.received() == [(topic, b"queued while away")]
    finally:
        consumer.close()


def test_hash_password_matches_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "u", "s3cret"], check=True)
    _, algo, iterations, salt, digest = path.read_text().strip().split(":", 1)[1].split("$")
    assert (algo, int(iterations)) == ("7", brokerauth.PBKDF2_ITERATIONS)
    ours = hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), int(iterations), 64)
    assert base64.b64encode(ours).decode() == digest
    mine = brokerauth.hash_password("s3cret").split("$")
    assert mine[1:3] == ["7", iterations] and len(mine[3]) == len(salt) and len(mine[4]) == len(digest)


@pytest.mark.parametrize("username", ["", "a:b", "a/b", "+", "dev#", "two words", "nl\n"])
def test_password_file_refuses_unsafe_usernames(username: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        brokerauth.render_password_file([(username, brokerauth.hash_password("x"))])


def test_reload_refuses_the_service_login_as_device(own_stack: Stack) -> None:
    with pytest.raises(StackError, match="service login"):
        own_stack.reload_broker_auth([(SERVICE_USER, brokerauth.hash_password("x"))])
