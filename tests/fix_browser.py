"""Browser fixtures: the real dashboard app served by uvicorn in a thread, and Debian's Chromium
driven through Playwright (never `playwright install`: no browser is downloaded).

Fixtures: `live_server` (module) -> LiveServer with `.url`; `browser` (module) -> a Playwright
Browser; `new_page(viewport=...)` (function) -> a factory of pages in fresh contexts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pulsewire import registry
from pulsewire.db import connect, transaction
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
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@dataclass
class LiveServer:
    """A uvicorn server running the app in a background thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve(settings: Settings) -> LiveServer:
    """Start `create_app(settings)` on a free loopback port; returns once it accepts requests."""
    from dashboards.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-live", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start within 20 s")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="module")
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """The real app against the module's database, on 127.0.0.1."""
    web_settings = settings.model_copy(update={"session_secret": "test-session-secret"})
    live = serve(web_settings)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages in fresh browser contexts (own cookies), closed after the test; a context may have a
    time zone of its own and JavaScript switched off."""
    contexts = []

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
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


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
