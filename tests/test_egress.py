"""The webhook egress policy (relay.egress): URL syntax, global addresses only, and the attempt
that connects to the address it checked, with the original Host, TLS SNI and certificate name."""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from relay import egress
from relay.channels import Channels, Delivery, Outcome
from relay.egress import EgressPolicy, EgressRefused
from tests.helpers import serving

STRICT = EgressPolicy(allow_private=False)
DEV = EgressPolicy(allow_private=True)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://a..b/", "must be an https URL"),
        ("https://a..b/", "invalid host name"),
        ("https://xn--zz.com/", "not a valid URL"),
        ("https://-bad-.example/", "invalid host name"),
        ("https://%41.example/", "invalid host name"),
        ("https://2130706433/", "invalid host name"),
        ("https://" + "a" * 64 + ".example/", "invalid host name"),
        ("https:///hook", "no host"),
        ("https://user:pw@hooks.example/", "user name or password"),
        ("https://hooks.example/#x", "fragment"),
        ("ftp://hooks.example/", "must be an https URL"),
        ("http://hooks.example/", "must be an https URL"),
        ("hooks.example/hook", "must be an https URL"),
        ("https://hooks.example/" + "p" * 2000, "longer than 2000"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(EgressRefused, match=why):
        egress.check_url(url, STRICT)


def test_development_policy_allows_http_but_not_malformed_urls() -> None:
    assert egress.check_url("http://127.0.0.1:8080/hook", DEV).host == "127.0.0.1"
    with pytest.raises(EgressRefused, match="invalid host name"):
        egress.check_url("http://a..b/", DEV)
    with pytest.raises(EgressRefused, match="https or http"):
        egress.check_url("gopher://127.0.0.1/", DEV)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2001:db8::1",
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert egress.refusal(ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(EgressRefused, match="resolves to"):
        egress.check_destination(f"https://{host}/hook", STRICT)


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_global_addresses_pass(address: str) -> None:
    assert egress.refusal(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    assert egress.check_destination(f"https://{host}/hook", STRICT).host == address


def test_names_are_refused_when_any_address_is_not_global(monkeypatch: pytest.MonkeyPatch) -> None:
    # `localhost` really resolves (hosts file), to loopback only.
    with pytest.raises(EgressRefused, match="loopback"):
        egress.check_destination("https://localhost/hook", STRICT)
    # One private answer among global ones is enough to refuse.
    answers = [ipaddress.ip_address("1.1.1.1"), ipaddress.ip_address("10.0.0.7")]
    monkeypatch.setattr(egress, "_lookup", lambda host, port: answers)
    with pytest.raises(EgressRefused, match=r"10\.0\.0\.7 is a private address"):
        egress.check_destination("https://mixed.pulsewire.test/hook", STRICT)


def test_unresolvable_name_is_accepted_on_create_and_refused_at_delivery() -> None:
    url = "https://no-such-host.invalid/hook"
    assert egress.check_destination(url, STRICT).host == "no-such-host.invalid"
    with pytest.raises(EgressRefused, match="does not resolve"):
        _pin(url, STRICT)


def test_pin_connects_to_the_checked_address_and_keeps_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    answers = iter(["1.1.1.1", "127.0.0.1"])  # a rebinding resolver: public first, loopback next

    def rebinding(host: str, port: int) -> list[Any]:
        lookups.append(host)
        return [ipaddress.ip_address(next(answers))]

    monkeypatch.setattr(egress, "_lookup", rebinding)
    target = _pin("https://hooks.pulsewire.test:8443/in?x=1", STRICT)
    assert str(target.url) == "https://1.1.1.1:8443/in?x=1"
    assert target.host_header == "hooks.pulsewire.test:8443"
    assert target.extensions == {"sni_hostname": "hooks.pulsewire.test"}
    with pytest.raises(EgressRefused, match=r"127\.0\.0\.1 is a loopback address"):
        _pin("https://hooks.pulsewire.test:8443/in", STRICT)
    assert lookups == ["hooks.pulsewire.test"] * 2  # one lookup per attempt, never a second one


def _pin(url: str, policy: EgressPolicy) -> egress.Target:
    import asyncio

    return asyncio.run(egress.pin(url, policy))


# --- TLS: the request goes to the address; SNI and the certificate check use the name ---------------


@dataclass
class _TlsServer:
    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (Host header, SNI)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(directory: Path, name: str) -> Path:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", "server.key",
             "-out", "server.csr", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{name}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=directory)  # fmt: skip
    return directory / "ca.pem"


@contextmanager
def _tls_receiver(directory: Path, cert_name: str, url_name: str) -> Iterator[_TlsServer]:
    _make_certs(directory, cert_name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    seen_sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]
    server = _TlsServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            server.requests.append((self.headers["Host"], seen_sni[-1] if seen_sni else None))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.url = f"https://{url_name}:{httpd.server_address[1]}/hook"
    with serving(httpd):
        yield server


def _delivery(url: str) -> Delivery:
    body = json.dumps({"event": "opened", "alert": {"severity": "red", "rule_name": "r"}})
    return Delivery(1, "webhook", 1, body, "opened", url=url, secret="whsec_test")


def _loopback_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "_lookup", lambda host, port: [ipaddress.ip_address("127.0.0.1")])


def _send_over_tls(directory: Path, cert_name: str) -> tuple[Outcome, _TlsServer]:
    """One webhook attempt to https://hooks.pulsewire.test (resolved to 127.0.0.1), whose server
    presents a certificate for `cert_name` from a CA the attempt trusts."""
    with _tls_receiver(directory, cert_name, "hooks.pulsewire.test") as server:
        trust = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        channels = Channels(None, None, "relay@test", timeout_s=10, egress_policy=DEV, verify=trust)
        try:
            return channels.send(_delivery(server.url)), server
        finally:
            channels.close()


def test_https_attempt_uses_the_host_name_for_sni_and_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _loopback_resolver(monkeypatch)
    outcome, server = _send_over_tls(tmp_path, "hooks.pulsewire.test")
    assert outcome.ok and outcome.status_code == 204, outcome
    port = server.url.split(":")[2].split("/")[0]
    assert server.requests == [(f"hooks.pulsewire.test:{port}", "hooks.pulsewire.test")]


def test_https_attempt_refuses_a_certificate_for_another_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _loopback_resolver(monkeypatch)
    outcome, server = _send_over_tls(tmp_path, "other.pulsewire.test")
    assert not outcome.ok and outcome.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error and "\n" not in outcome.error
    assert server.requests == []
