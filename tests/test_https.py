"""The dashboard over HTTPS (a real uvicorn with a certificate of a test CA): Secure cookies and the
security headers; over plain HTTP on loopback: cookies without Secure, no HSTS, the same CSP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboards.security_headers import HSTS, PAGE_POLICY
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import Settings
from tests.fix_browser import PASSWORD, LiveServer, WebTls, serve
from tests.fix_db import World
from tests.helpers import free_port
from tests.web_support import csrf_of

EMAIL = "tls@heartland.example"


@pytest.fixture(scope="module")
def tls_server(settings: Settings, web_tls: WebTls, world: World) -> Iterator[LiveServer]:
    with connect(world.db_url, autocommit=True) as c:
        registry.add_user(c, EMAIL, role="provider_staff", org_id=world.clinic_id, password=PASSWORD)
    files = {"api_cert_file": web_tls.cert_file, "api_key_file": web_tls.key_file}
    live = serve(settings.model_copy(update=files), verify=web_tls.client_context())
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def plain_server(settings: Settings, tls_server: LiveServer) -> Iterator[LiveServer]:
    live = serve(settings)
    try:
        yield live
    finally:
        live.stop()


def sign_in(live: LiveServer) -> httpx.Response:
    """The answer to a correct sign-in on `live` (a redirect that sets the session cookie)."""
    with httpx.Client(base_url=live.url, verify=live.verify, follow_redirects=False, timeout=10) as c:
        form = c.get("/login")
        data = {"email": EMAIL, "password": PASSWORD, "csrf_token": csrf_of(form.text), "next": "/"}
        answer = c.post("/login", data=data)
    assert answer.status_code == 303, answer.text
    return answer


def test_the_session_cookie_is_secure_over_https(tls_server: LiveServer) -> None:
    assert tls_server.url.startswith("https://")
    cookies = sign_in(tls_server).headers.get_list("set-cookie")
    assert cookies and all("; secure" in c.lower() for c in cookies), cookies
    assert any("httponly" in c.lower() and "samesite=lax" in c.lower() for c in cookies), cookies


def test_security_headers_over_https(tls_server: LiveServer) -> None:
    for path in ("/login", "/healthz", "/api/v1/devices", "/static/app.css", "/no-such-page"):
        answer = httpx.get(tls_server.url + path, verify=tls_server.verify, timeout=10)
        headers = answer.headers
        assert headers["content-security-policy"] == PAGE_POLICY, path
        assert "frame-ancestors 'none'" in PAGE_POLICY and "script-src 'self'" in PAGE_POLICY
        assert headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "strict-origin-when-cross-origin", path
        assert headers["strict-transport-security"] == HSTS, path


def test_the_api_docs_have_their_own_policy(tls_server: LiveServer) -> None:
    answer = httpx.get(tls_server.url + "/docs", verify=tls_server.verify, timeout=10)
    policy = answer.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in policy and "frame-ancestors 'none'" in policy


def test_plain_http_on_loopback_has_no_secure_cookie_nor_hsts(plain_server: LiveServer) -> None:
    assert plain_server.url.startswith("http://127.0.0.1")
    answer = sign_in(plain_server)
    cookies = answer.headers.get_list("set-cookie")
    assert cookies and not any("secure" in c.lower() for c in cookies), cookies
    assert "strict-transport-security" not in answer.headers
    assert answer.headers["content-security-policy"] == PAGE_POLICY


def test_cookies_are_secure_unless_plain_http_on_loopback() -> None:
    assert not Settings(api_host="127.0.0.1").cookies_secure()
    assert not Settings(api_host="::1").cookies_secure()
    assert Settings(api_host="0.0.0.0").cookies_secure()  # behind a proxy that terminates TLS
    on_tls = Settings(api_host="127.0.0.1", api_cert_file=Path("c.pem"), api_key_file=Path("k.pem"))
    assert on_tls.cookies_secure()
    assert not Settings(api_host="0.0.0.0", secure_cookies=False).cookies_secure()


def test_the_dashboard_warns_about_plain_http_beyond_loopback(db_url: str) -> None:
    port = free_port()
    env = {"PULSEWIRE_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "pulsewire", "dashboard", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dashboard.stderr is not None
        first = dashboard.stderr.readline()  # printed before uvicorn starts
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=20)
    assert first.startswith("WARNING: the dashboard serves plain HTTP on 0.0.0.0, beyond loopback"), first
    assert "Cookies are Secure" in first
