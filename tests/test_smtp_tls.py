"""E-mail deliveries over TLS against real aiosmtpd servers: STARTTLS and SMTPS with a certificate from
a test CA (pulsewire.pki), and the refusals: an untrusted certificate, no STARTTLS on loopback without
the explicit setting, no STARTTLS beyond loopback whatever the setting, an unknown scheme."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from pulsewire.pki import CertificateAuthority
from pulsewire.settings import is_loopback
from relay.channels import Channels, Delivery, Outcome
from relay.mail import PLAIN_SETTING, SmtpPolicy
from tests.helpers import free_port

BODY = json.dumps({"alert": {"severity": "red", "rule_name": "Lead impedance", "device": {"serial": "S1"}}})


@dataclass
class Inbox:
    """What one SMTP server received, and whether each message came over TLS."""

    url: str = ""
    received: list[tuple[list[str], bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        over_tls = server.transport.get_extra_info("ssl_object") is not None
        self.received.append((list(envelope.rcpt_tos), over_tls))
        return "250 OK"


@dataclass(frozen=True)
class SmtpPki:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SmtpPki:
    """A CA of the test's own and a server certificate for 127.0.0.1 and localhost."""
    root = tmp_path_factory.mktemp("smtp-pki")
    ca = CertificateAuthority.open(root / "ca")
    cert, key = ca.issue_server_certificate(["127.0.0.1", "localhost", _outward_address()], root)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return SmtpPki(ca.ca_file, context)


@contextmanager
def smtp_server(scheme: str = "smtp", host: str = "127.0.0.1", **server: Any) -> Iterator[Inbox]:
    """An aiosmtpd server on a free port of `host` for the block."""
    port = free_port()
    inbox = Inbox(url=f"{scheme}://{host}:{port}")
    controller = Controller(inbox, hostname=host, port=port, **server)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


def send(url: str, policy: SmtpPolicy) -> Outcome:
    """One e-mail delivery through the relay's channel, as a relay worker makes it."""
    channels = Channels(None, url, "relay@test", timeout_s=10, smtp_policy=policy)
    try:
        return channels.send(Delivery(1, "email", 1, BODY, "opened", recipients=("oncall@clinic.example",)))
    finally:
        channels.close()


def test_starttls_with_a_trusted_certificate(pki: SmtpPki) -> None:
    with smtp_server(tls_context=pki.server_context, require_starttls=True) as inbox:
        outcome = send(inbox.url, SmtpPolicy(ca_file=pki.ca_file))
    assert outcome.ok, outcome
    assert inbox.received == [(["oncall@clinic.example"], True)]


def test_smtps_with_a_trusted_certificate(pki: SmtpPki) -> None:
    with smtp_server("smtps", ssl_context=pki.server_context) as inbox:
        outcome = send(inbox.url, SmtpPolicy(ca_file=pki.ca_file))
    assert outcome.ok, outcome
    assert inbox.received == [(["oncall@clinic.example"], True)]


def test_starttls_with_an_untrusted_certificate_fails(pki: SmtpPki) -> None:
    # The system trust store does not know the test CA: the attempt fails before any message.
    with smtp_server(tls_context=pki.server_context, require_starttls=True) as inbox:
        outcome = send(inbox.url, SmtpPolicy())
    assert not outcome.ok and outcome.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error, outcome
    assert inbox.received == []


def test_plain_loopback_is_refused_without_the_setting() -> None:
    with smtp_server() as inbox:
        outcome = send(inbox.url, SmtpPolicy(allow_plain_loopback=False))
    assert not outcome.ok and outcome.error is not None
    assert "does not offer STARTTLS" in outcome.error and PLAIN_SETTING in outcome.error, outcome
    assert inbox.received == []


def test_plain_loopback_is_sent_with_the_setting() -> None:
    with smtp_server() as inbox:
        outcome = send(inbox.url, SmtpPolicy(allow_plain_loopback=True))
    assert outcome.ok, outcome
    assert inbox.received == [(["oncall@clinic.example"], False)]


def test_plain_beyond_loopback_is_refused_even_with_the_setting() -> None:
    address = _outward_address()
    with smtp_server(host=address) as inbox:
        outcome = send(inbox.url, SmtpPolicy(allow_plain_loopback=True))
    assert not outcome.ok and outcome.error is not None
    assert "plain SMTP is allowed only to a loopback relay" in outcome.error, outcome
    assert inbox.received == []


def test_an_unknown_scheme_is_refused() -> None:
    outcome = send("mail://127.0.0.1:25", SmtpPolicy(allow_plain_loopback=True))
    assert not outcome.ok and outcome.error is not None
    assert "must start with smtps:// or smtp://" in outcome.error, outcome


def _outward_address() -> str:
    # The address this machine would use towards the outside (a UDP "connect" sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = str(probe.getsockname()[0])
    assert not is_loopback(address), f"this test needs a non-loopback interface, found only {address}"
    return address
