"""Browser fixtures: the real dashboard app served by uvicorn in a thread, and Debian's Chromium
driven through Playwright (never `playwright install`: no browser is downloaded).

Fixtures: `live_server` (module) -> LiveServer with `.url`; `browser` (module) -> a Playwright
Browser; `new_page(viewport=...)` (function) -> a factory of pages in fresh contexts;
`web_tls` (session) -> a test CA and the dashboard's certificate from it.

Browser modules (marked `browser`) get the dashboard over HTTPS, as production serves it, and
Chromium trusts its certificate by the key's pin. Other modules keep plain HTTP on loopback, the
development mode, so their httpx clients need no CA. Every page fails its test if the browser
reports a Content-Security-Policy violation.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pulsewire import registry
from pulsewire.db import connect, transaction
from pulsewire.pki import CertificateAuthority, load_certificate
from pulsewire.settings import Settings
from tests.fix_db import World
from tests.helpers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What Chromium's console says when a page breaks its Content-Security-Policy.
CSP_REPORT = "Content Security Policy"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@dataclass
class LiveServer:
    """A uvicorn server running the app in a background thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    # What an httpx client passes as `verify` to reach it (a context trusting the test CA on HTTPS).
    verify: ssl.SSLContext | bool = True

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass(frozen=True)
class WebTls:
    """A test CA and a certificate it signed for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def spki_pin(self) -> str:
        """The certificate key's pin (base64 SHA-256 of its SubjectPublicKeyInfo), as Chromium takes it."""
        key = load_certificate(self.cert_file.read_bytes()).public_key()
        der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="session")
def web_tls(tmp_path_factory: pytest.TempPathFactory) -> WebTls:
    """The dashboard's certificate for the tests, from a CA of their own (pulsewire.pki)."""
    root = tmp_path_factory.mktemp("web-tls")
    ca = CertificateAuthority.open(root / "ca")
    cert, key = ca.issue_server_certificate(["127.0.0.1", "localhost"], root, stem="dashboard")
    return WebTls(ca.ca_file, cert, key)


def serve(settings: Settings, *, verify: ssl.SSLContext | bool = True) -> LiveServer:
    """Start `create_app(settings)` on a free loopback port, over HTTPS when the settings name a
    certificate; returns once it accepts requests."""
    from dashboards.app import create_app

    port = free_port()
    tls = settings.api_tls()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=3,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-live", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start within 20 s")
        time.sleep(0.05)
    return LiveServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}", server, thread, verify)


@pytest.fixture(scope="module")
def live_server(settings: Settings, web_tls: WebTls, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """The real app against the module's database, on 127.0.0.1: HTTPS for browser modules."""
    update: dict[str, Any] = {"session_secret": "test-session-secret"}
    verify: ssl.SSLContext | bool = True
    if request.node.get_closest_marker("browser"):
        update |= {"api_cert_file": web_tls.cert_file, "api_key_file": web_tls.key_file}
        verify = web_tls.client_context()
    live = serve(settings.model_copy(update=update), verify=verify)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser(web_tls: WebTls) -> Iterator[Browser]:
    """Headless Debian Chromium, trusting the dashboard's test certificate (and no other)."""
    trust = f"--ignore-certificate-errors-spki-list={web_tls.spki_pin()}"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, trust])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages in fresh browser contexts (own cookies), closed after the test; a context may have a
    time zone of its own and JavaScript switched off."""
    contexts = []
    violations: list[str] = []

    def make(
        viewport: dict[str, int] | None = None, *, timezone_id: str | None = None, javascript: bool = True
    ) -> Page:
        context = browser.new_context(
            viewport=viewport or LAPTOP,  # type: ignore[arg-type]
            timezone_id=timezone_id,
            java_script_enabled=javascript,
        )
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: violations.extend([m.text] if CSP_REPORT in m.text else []))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not violations, f"the pages broke their Content-Security-Policy: {violations}"


def login(page: Page, base: str, email: str) -> None:
    """Sign in through the login form (a plain form: no script needed) as `email`."""
    page.goto(f"{base}/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot under docs/screenshots/ for the README and for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# ---- the people and devices the web tests use ------------------------------------------------------

PASSWORD = "correct horse battery staple"


@dataclass
class WebPeople:
    """Users with passwords (all share PASSWORD) and their devices, in the module's `world`."""

    clinician: str
    mechanic: str
    vendor: str
    patient: str
    implant: str
    vehicle: str
    other_implant: str  # in the clinic's care but of another owner, for scoping checks


@pytest.fixture(scope="module")
def web_people(world: World) -> WebPeople:
    """A clinician, a mechanic, an implant-vendor engineer and a patient, and their devices."""
    with connect(world.db_url, autocommit=True) as c:
        registry.add_user(
            c,
            "dr.house@heartland.example",
            role="provider_staff",
            org_id=world.clinic_id,
            display_name="Dr. Grace Hopper",
            password=PASSWORD,
        )
        registry.add_user(
            c,
            "mia@northside.example",
            role="provider_staff",
            org_id=world.garage_id,
            display_name="Mia Mechanic",
            password=PASSWORD,
        )
        registry.add_user(
            c,
            "eng@cardiacdevices.example",
            role="vendor_staff",
            org_id=world.implant_vendor_id,
            display_name="Victor Vendor",
            password=PASSWORD,
        )
        registry.add_user(
            c,
            "ada@example.org",
            role="owner",
            owner_id=world.patient_id,
            display_name="Ada",
            password=PASSWORD,
        )
        other = registry.add_owner(c, world.clinic_id, "Otto Otherpatient")
    world.add_device("icd-000042", "implant", firmware="2.4.1")
    world.add_device("veh-001337", "vehicle", firmware="1.9.0")
    world.add_device("icd-000077", "implant", owner_id=other, model="Azure XT DR")
    return WebPeople(
        "dr.house@heartland.example",
        "mia@northside.example",
        "eng@cardiacdevices.example",
        "ada@example.org",
        "icd-000042",
        "veh-001337",
        "icd-000077",
    )


def insert_readings(
    db_url: str, device_id: str, series: dict[str, Callable[[int], float]], *, hours: int, step_min: int = 10
) -> int:
    """Readings every `step_min` minutes over the last `hours`, straight into the table; returns rows."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = []
    for i in range(hours * 60 // step_min):
        ts = now - timedelta(minutes=step_min * i)
        rows += [(ts, device_id, metric, f(i)) for metric, f in series.items()]
    with (
        connect(db_url, autocommit=True) as c,
        c.cursor() as cur,
        cur.copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
    return len(rows)


def insert_alert(
    db_url: str,
    device_id: str,
    rule_key: str,
    *,
    severity: str = "red",
    klass: str = "technical",
    name: str = "Lead impedance out of range",
    values: dict[str, Any] | None = None,
) -> int:
    """Open an alert as the relay does (alert, history, outbox and NOTIFY in one transaction)."""
    from relay import alerts as relay_alerts
    from relay.evaluate import Fire
    from relay.rules import Rule

    now = datetime.now(UTC)
    with transaction(db_url) as conn:
        device = conn.execute("SELECT * FROM devices WHERE device_id = %s", (device_id,)).fetchone()
        assert device is not None
        rule = Rule(key=rule_key, name=name, kind="threshold", severity=severity, klass=klass)
        signal = Fire(ts=now, started_at=now, severity=severity, values=values or {})
        opened = relay_alerts.fire(conn, device, rule, signal, late=False, actor="system:test")
        assert opened is not None
        relay_alerts.enqueue(conn, opened[0], "opened", email=False)
    return opened[0]
