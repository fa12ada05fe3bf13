"""The broker's device identity, against the session's real Mosquitto over real TLS.

Certificates (our CA's, another CA's, expired, revoked, CSR-signed), client ids bound to the login
(no session takeover), and least-privilege topics for devices, org logins and service logins.
"""

from __future__ import annotations

import queue
import secrets
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.simulator.registration import ensure_certificates
from devices.simulator.transport import link_options
from pulsewire import brokerauth, devicecerts
from pulsewire.pki import CertificateAuthority, load_certificate
from pulsewire.settings import MqttTarget, Settings
from pulsewire.stack import Stack, StackInfo
from schemas import topics

WAIT_S = 10.0
NOT_AUTHORIZED = 0x87


class Client:
    """A paho MQTT 5 client on its own network thread; callbacks only fill queues."""

    def __init__(self, client_id: str = "") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.connacks: queue.Queue[tuple[ReasonCode, bool]] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.pubacks: queue.Queue[ReasonCode] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda _c, _u, flags, rc, _p: self.connacks.put((rc, flags.session_present))
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)
        self.client.on_publish = lambda _c, _u, _mid, rc, _p: self.pubacks.put(rc)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        # A connection the broker drops before its CONNACK (a refused certificate under TLS 1.3, where
        # the client's handshake ends before the server has checked it) shows up as a failed CONNACK.
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.connacks.put((rc, False))

    def connect(self, port: int, *, clean_start: bool = True, expiry_s: int = 0) -> tuple[ReasonCode, bool]:
        """Connect to 127.0.0.1:`port`; (CONNACK reason, session present)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if expiry_s:
            props.SessionExpiryInterval = expiry_s
        self.client.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        return self.connacks.get(timeout=WAIT_S)

    def subscribe(self, topic: str) -> ReasonCode:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT_S)[0]

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        self.client.publish(topic, payload, qos=1)
        return self.pubacks.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def tls_client(ca: Path, cert: Path | None = None, key: Path | None = None, client_id: str = "") -> Client:
    """A client that checks the broker against `ca` and presents `cert` when given."""
    client = Client(client_id)
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    client.client.tls_set_context(context)
    return client


def refused_tls(info: StackInfo, cert: Path, key: Path) -> bool:
    """Whether the mTLS listener refuses the handshake with `cert`."""
    assert info.ca_file is not None
    client = tls_client(info.ca_file, cert, key)
    try:
        reason, _ = client.connect(info.mqtts_port)
    except (ssl.SSLError, OSError):
        return True
    finally:
        client.client.disconnect()
        client.client.loop_stop()
    return bool(reason.is_failure)


@pytest.fixture(scope="module")
def settings(stack: Stack) -> Settings:
    return Settings(state_dir=stack.state_dir)


@pytest.fixture(scope="module")
def ca(settings: Settings) -> CertificateAuthority:
    return devicecerts.certificate_authority(settings)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def bundle(ca: CertificateAuthority, device_id: str, out: Path) -> tuple[Path, Path]:
    cert, key = ca.issue_device_certificate(device_id)
    devicecerts.write_bundle(ca, device_id, out, cert, key)
    return out / f"{device_id}.crt", out / f"{device_id}.key"


def service(info: StackInfo, component: str | None = None, client_id: str = "") -> Client:
    """A login on the service listener: the operator's, or a component's."""
    url = info.service_urls[component] if component and info.service_urls else info.mqtt_url
    target = MqttTarget.parse(url)
    client = Client(client_id)
    client.client.username_pw_set(target.username, target.password)
    return client


def device_logins(stack: Stack, *, but: str = "") -> list[tuple[str, str]]:
    """The devices' `(login, hash)` pairs in the broker's password file now (all `but` one)."""
    passwd = stack.state_dir / "mosquitto" / "passwd"
    pairs = (line.split(":", 1) for line in passwd.read_text().splitlines() if "@" not in line)
    return [(device, digest) for device, digest in pairs if device != but]


def add_password_device(stack: Stack, device_id: str) -> str:
    """Give `device_id` a password login, keeping every other device's."""
    password = brokerauth.new_password()
    stack.reload_broker_auth([*device_logins(stack), (device_id, brokerauth.hash_password(password))])
    return password


@pytest.fixture
def watcher(stack_info: StackInfo) -> Iterator[Client]:
    client = service(stack_info)
    assert not client.connect(stack_info.service_port)[0].is_failure
    yield client
    client.close()


def test_device_publishes_over_mtls_under_its_own_name(
    stack_info: StackInfo, ca: CertificateAuthority, tmp_path: Path, watcher: Client
) -> None:
    device = unique("mtls")
    cert, key = bundle(ca, device, tmp_path)
    assert stack_info.ca_file is not None
    assert watcher.subscribe(topics.device_filter(device)).value < 0x80
    client = tls_client(stack_info.ca_file, cert, key)
    assert not client.connect(stack_info.mqtts_port)[0].is_failure
    assert client.publish(topics.telemetry(device), b"{}").value == 0
    assert client.publish(topics.telemetry("someone-else"), b"{}").value == NOT_AUTHORIZED
    client.close()
    msg = watcher.messages.get(timeout=WAIT_S)
    assert (msg.topic, msg.payload) == (topics.telemetry(device), b"{}")


def test_foreign_and_expired_certificates_are_refused(
    stack_info: StackInfo, ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.open(tmp_path / "other-ca")
    cert, key = bundle(other, "dev-foreign", tmp_path / "foreign")
    assert refused_tls(stack_info, cert, key)

    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired_pem, key_pem = ca.issue_device_certificate("dev-expired", days=1, valid_from=long_ago)
    devicecerts.write_bundle(ca, "dev-expired", tmp_path / "expired", expired_pem, key_pem)
    expired = tmp_path / "expired"
    assert refused_tls(stack_info, expired / "dev-expired.crt", expired / "dev-expired.key")


def test_revoked_certificate_is_refused_at_once_and_rotation_keeps_the_new_one(
    stack_info: StackInfo, settings: Settings, ca: CertificateAuthority, tmp_path: Path
) -> None:
    device = unique("rot")
    old = bundle(ca, device, tmp_path / "old")
    new_pem, new_key = ca.issue_device_certificate(device)
    devicecerts.write_bundle(ca, device, tmp_path / "new", new_pem, new_key)
    new = (tmp_path / "new" / f"{device}.crt", tmp_path / "new" / f"{device}.key")
    assert not refused_tls(stack_info, *old)

    started = time.monotonic()
    keep = x509.load_pem_x509_certificate(new_pem).serial_number
    done = devicecerts.revoke(settings, device, keep_serial=keep)
    assert done.broker_reloaded and len(done.serials) == 1
    assert refused_tls(stack_info, *old)
    took_s = time.monotonic() - started
    print(f"revoke-cert to refusal: {took_s * 1000:.0f} ms")
    assert not refused_tls(stack_info, *new)


def make_csr(common_name: str) -> tuple[bytes, bytes]:
    """A CSR naming `common_name`, and its key, both PEM (as a device would make them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return csr.public_bytes(pem), key_pem


def test_csr_signed_certificate_works_and_another_cn_is_refused(
    stack_info: StackInfo, ca: CertificateAuthority, tmp_path: Path
) -> None:
    device = unique("csr")
    csr, key_pem = make_csr(device)
    with pytest.raises(ValueError, match="common name"):
        ca.sign_csr("someone-else", csr)
    devicecerts.write_bundle(ca, device, tmp_path, ca.sign_csr(device, csr))
    (tmp_path / "device.key").write_bytes(key_pem)
    assert not refused_tls(stack_info, tmp_path / f"{device}.crt", tmp_path / "device.key")


def test_no_device_credential_takes_over_ingests_session(
    stack: Stack, stack_info: StackInfo, ca: CertificateAuthority, tmp_path: Path
) -> None:
    ingest_id = "pulsewire-ingest-host-0"
    device = unique("hijack")
    password = add_password_device(stack, device)
    cert, key = bundle(ca, device, tmp_path)
    ingest = service(stack_info, "ingest", ingest_id)
    assert not ingest.connect(stack_info.service_port, clean_start=True, expiry_s=600)[0].is_failure
    assert ingest.subscribe(topics.telemetry(device)).value < 0x80
    ingest.close()  # "ingest stopped": its session and subscription stay on the broker

    assert stack_info.ca_file is not None
    publisher = tls_client(stack_info.ca_file, cert, key)
    assert not publisher.connect(stack_info.mqtts_port)[0].is_failure
    for n in range(10):
        assert publisher.publish(topics.telemetry(device), str(n).encode()).value == 0
    publisher.close()

    by_password = tls_client(stack_info.ca_file, client_id=ingest_id)
    by_password.client.username_pw_set(device, password)
    assert not by_password.connect(stack_info.mqtt_port, clean_start=True)[0].is_failure
    by_password.close()
    by_cert = tls_client(stack_info.ca_file, cert, key, client_id=ingest_id)
    assert not by_cert.connect(stack_info.mqtts_port, clean_start=True)[0].is_failure
    by_cert.close()
    by_password_on_service = Client(ingest_id)
    by_password_on_service.client.username_pw_set(device, password)
    assert by_password_on_service.connect(stack_info.service_port)[0].value == NOT_AUTHORIZED
    by_password_on_service.client.loop_stop()

    ingest = service(stack_info, "ingest", ingest_id)
    assert ingest.connect(stack_info.service_port, clean_start=False, expiry_s=600) == (
        ReasonCode(2, "Success"),
        True,
    )
    got = [ingest.messages.get(timeout=WAIT_S).payload for _ in range(10)]
    ingest.close()
    assert got == [str(n).encode() for n in range(10)]


def test_topics_are_least_privilege(stack: Stack, stack_info: StackInfo) -> None:
    device = unique("acl")
    password = add_password_device(stack, device)
    assert stack_info.ca_file is not None
    client = tls_client(stack_info.ca_file)
    client.client.username_pw_set(device, password)
    assert not client.connect(stack_info.mqtt_port)[0].is_failure
    # Mosquitto 2.0 grants the SUBACK and filters each message: what matters is what arrives.
    for topic in (topics.command(device), topics.command("another-device"), topics.org_alerts(1)):
        client.subscribe(topic)
    dashboard = service(stack_info, "dashboard")
    assert not dashboard.connect(stack_info.service_port)[0].is_failure
    assert dashboard.publish(topics.command("another-device"), b"not yours").value == 0
    operator = service(stack_info)
    assert not operator.connect(stack_info.service_port)[0].is_failure
    assert operator.publish(topics.org_alerts(1), b"not yours").value == 0
    assert dashboard.publish(topics.command(device), b"yours").value == 0  # sent last, so it arrives last
    assert client.messages.get(timeout=WAIT_S).payload == b"yours"
    assert client.messages.empty()
    client.close()

    ingest = service(stack_info, "ingest")
    assert not ingest.connect(stack_info.service_port)[0].is_failure
    assert ingest.publish(topics.command(device), b"{}").value == NOT_AUTHORIZED
    for other in (ingest, dashboard, operator):
        other.close()


def test_org_login_reads_only_its_own_alerts(stack: Stack, stack_info: StackInfo) -> None:
    username, password = stack.set_org_login(41)
    assert stack_info.ca_file is not None
    org = tls_client(stack_info.ca_file)
    org.client.username_pw_set(username, password)
    assert not org.connect(stack_info.mqtt_port)[0].is_failure
    for topic in (topics.org_alerts(41), topics.org_alerts(42), topics.telemetry("+")):
        org.subscribe(topic)
    relay = service(stack_info, "relay")
    assert not relay.connect(stack_info.service_port)[0].is_failure
    assert relay.publish(topics.org_alerts(42), b"another org's").value == 0
    assert relay.publish(topics.org_alerts(41), b"alert").value == 0
    relay.close()
    assert org.messages.get(timeout=WAIT_S).payload == b"alert"
    assert org.messages.empty()
    org.close()


def test_the_device_password_listener_speaks_only_tls(stack: Stack, stack_info: StackInfo) -> None:
    device = unique("plain")
    password = add_password_device(stack, device)
    plain = Client()
    plain.client.username_pw_set(device, password)
    try:
        reason, _ = plain.connect(stack_info.mqtt_port)
        refused = reason.is_failure
    except OSError:  # the broker drops a cleartext CONNECT as a bad TLS record
        refused = True
    finally:
        plain.client.loop_stop()
    assert refused
    assert stack_info.ca_file is not None
    over_tls = tls_client(stack_info.ca_file)
    over_tls.client.username_pw_set(device, password)
    assert not over_tls.connect(stack_info.mqtt_port)[0].is_failure
    over_tls.close()


def test_simulated_devices_log_in_with_certificates_renewed_once_revoked(
    settings: Settings, stack_info: StackInfo
) -> None:
    device = unique("sim")
    first = ensure_certificates(settings, [device])[device]
    assert ensure_certificates(settings, [device])[device] == first
    serial = load_certificate(first[0].read_bytes()).serial_number
    options = link_options(settings.mqtt(), device, "unused", device, first)
    assert (options.port, options.username, options.password) == (stack_info.mqtts_port, None, None)
    assert not refused_tls(stack_info, *first)

    devicecerts.revoke(settings, device)
    renewed = ensure_certificates(settings, [device])[device]
    assert load_certificate(renewed[0].read_bytes()).serial_number != serial
    assert not refused_tls(stack_info, *renewed)


def test_a_connected_password_device_is_cut_off_when_its_login_goes(
    stack: Stack, stack_info: StackInfo
) -> None:
    """On SIGHUP Mosquitto checks every connected client's password again and drops those that fail."""
    device = unique("gone")
    password = add_password_device(stack, device)
    assert stack_info.ca_file is not None
    client = tls_client(stack_info.ca_file)
    client.client.username_pw_set(device, password)
    client.client.reconnect_delay_set(60, 60)  # one connection: a reconnect would be refused anyway
    assert not client.connect(stack_info.mqtt_port)[0].is_failure
    stack.reload_broker_auth(device_logins(stack, but=device))  # what decommissioning does
    dropped, _ = client.connacks.get(timeout=WAIT_S)
    client.client.loop_stop()
    assert dropped.is_failure, dropped


def test_a_connected_device_keeps_its_revoked_certificates_session_until_it_reconnects(
    settings: Settings, stack_info: StackInfo, ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The limit docs/deployment-security.md states: Mosquitto 2.0.11's reload checks a connected
    client's certificate CN again but not the CRL, so only the next handshake meets the revocation."""
    device = unique("sticky")
    cert, key = bundle(ca, device, tmp_path)
    assert stack_info.ca_file is not None
    client = tls_client(stack_info.ca_file, cert, key)
    assert not client.connect(stack_info.mqtts_port)[0].is_failure
    assert devicecerts.revoke(settings, device).broker_reloaded
    assert not client.publish(topics.telemetry(device), b"{}").is_failure  # still connected, accepted
    client.close()
    assert refused_tls(stack_info, cert, key)
