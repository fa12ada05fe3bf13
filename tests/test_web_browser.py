"""The web dashboard in a real browser (Debian's Chromium through Playwright) against the real app,
the session's PostgreSQL and Mosquitto, and the real ingest service.

Screenshots land in docs/screenshots/ for the README and for people to check by eye.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Page, expect

from ingest.service import IngestService
from pulsewire.db import connect
from pulsewire.settings import Settings
from pulsewire.stack import StackInfo
from schemas import topics
from tests.fix_browser import PHONE, LiveServer, WebPeople, insert_alert, login, screenshot
from tests.fix_db import World

pytestmark = [pytest.mark.browser, pytest.mark.slow]

IMPLANT_SIGNALS: dict[str, Callable[[int], float]] = {
    "heart_rate_bpm": lambda i: 68 + 9 * math.sin(i / 9) + 4 * math.sin(i / 2.3),
    "battery_voltage_v": lambda i: 2.95 - 0.0004 * (150 - i),
    "lead_impedance_rv_ohm": lambda i: 540 + 12 * math.sin(i / 17),
    "af_burden_pct": lambda i: max(0.0, 3 + 2.5 * math.sin(i / 25)),
}


def publish_history(stack_info: StackInfo, device_id: str, password: str, hours: int) -> int:
    """Publish `hours` of 10-minute readings as the device would (a store-and-forward upload)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-upload", protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, password)
    client.tls_set(ca_certs=str(stack_info.ca_file))
    client.connect(stack_info.mqtt_host, stack_info.mqtt_port)
    client.loop_start()
    now = datetime.now(UTC).replace(microsecond=0)
    steps = hours * 6
    infos = []
    for seq, start in enumerate(range(0, steps, 36), start=1):
        readings = [
            {
                "ts": (now - timedelta(minutes=10 * i)).isoformat().replace("+00:00", "Z"),
                "metric": m,
                "value": round(f(i), 3),
            }
            for i in range(start, min(start + 36, steps))
            for m, f in IMPLANT_SIGNALS.items()
        ]
        payload = {
            "schema": "pulsewire.telemetry/1",
            "device_id": device_id,
            "boot_id": "web1",
            "seq": seq,
            "sent_at": now.isoformat().replace("+00:00", "Z"),
            "readings": readings,
        }
        infos.append(client.publish(topics.telemetry(device_id), json.dumps(payload), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    return steps * len(IMPLANT_SIGNALS)


@pytest.fixture(scope="module")
def implant_data(world: World, web_people: WebPeople, settings: Settings, stack_info: StackInfo) -> int:
    """Seven days of the implant's telemetry, through the broker and the real ingest service."""
    password = "implant-upload-pw-1"
    with connect(world.db_url, autocommit=True) as c:
        from pulsewire.brokerauth import hash_password

        c.execute(
            "UPDATE devices SET mqtt_password_hash = %s WHERE device_id = %s",
            (hash_password(password), web_people.implant),
        )
    world.sync_broker()
    service = IngestService(settings, client_id="web-test-ingest")
    service.start()
    try:
        assert service.wait_subscribed(15)
        expected = publish_history(stack_info, web_people.implant, password, hours=7 * 24)
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline:
            with connect(world.db_url) as c:
                row: dict[str, Any] | None = c.execute(
                    "SELECT count(*) AS n FROM readings WHERE device_id = %s", (web_people.implant,)
                ).fetchone()
            stored = int(row["n"]) if row else 0
            if stored >= expected:
                break
            time.sleep(0.2)
    finally:
        service.stop()
    assert stored == expected
    return stored


def wait_for_listener(db_url: str, timeout_s: float = 10) -> None:
    """Wait until the page's SSE stream LISTENs (it subscribes just after the response starts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with connect(db_url) as c:
            row = c.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN pulsewire_alerts%%'"
            ).fetchone()
        if row and row["n"]:
            return
        time.sleep(0.05)
    raise AssertionError("the alert stream never subscribed")


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Iterator[Page]:
    yield new_page()


def test_clinician_sees_fleet_and_implant_chart(
    page: Page, live_server: LiveServer, world: World, web_people: WebPeople, implant_data: int
) -> None:
    login(page, live_server.url, web_people.clinician)
    expect(page).to_have_url(f"{live_server.url}/fleet")
    row = page.locator(f'tr[data-device="{web_people.implant}"]')
    expect(row).to_contain_text("Ada Patient")
    expect(row).to_contain_text("Offline")
    expect(page.locator(f'tr[data-device="{web_people.vehicle}"]')).to_have_count(0)  # the garage's
    insert_alert(
        world.db_url,
        web_people.other_implant,
        "implant.hv_impedance_low",
        name="HV impedance below 20 Ω",
        values={"hv_impedance_ohm": 14},
    )
    page.reload()
    expect(page.locator(f'tr[data-device="{web_people.other_implant}"]')).to_contain_text("1 urgent")
    screenshot(page, "fleet-overview")

    page.get_by_role("link", name=web_people.implant).click()
    chart = page.locator('figure.chart[data-metric="heart_rate_bpm"]')
    # 24 h in 10-minute buckets, one reading each (144 or 145 depending on the clock's phase)
    expect(chart).to_have_attribute("data-points", re.compile(r"^14[45]$"))
    expect(chart.locator("canvas")).to_have_count(1)
    page.get_by_role("button", name="7 d").click()
    expect(page.get_by_role("button", name="7 d")).to_have_attribute("aria-pressed", "true")
    expect(chart).to_have_attribute("data-points", re.compile(r"^16[89]$"))  # 1-hour buckets
    page.get_by_role("button", name="24 h").click()
    expect(chart).to_have_attribute("data-points", re.compile(r"^14[45]$"))
    screenshot(page, "device-page")


def test_clinician_acknowledges_a_live_alert(
    page: Page, live_server: LiveServer, world: World, web_people: WebPeople
) -> None:
    login(page, live_server.url, web_people.clinician)
    page.get_by_role("link", name="Alerts").click()
    expect(page.locator("#live")).to_contain_text("Live")
    wait_for_listener(world.db_url)
    alert_id = insert_alert(
        world.db_url,
        web_people.implant,
        "implant.lead_impedance_rv",
        name="RV lead impedance out of range",
        values={"lead_impedance_rv_ohm": 3400},
    )
    row = page.locator(f'tr[data-alert="{alert_id}"]')
    expect(row).to_contain_text("RV lead impedance out of range")  # arrived over SSE, no reload
    expect(row).to_contain_text("Open")
    row.get_by_role("button", name="Acknowledge").click()
    expect(row.locator(".state-cell")).to_have_text("Acknowledged")
    expect(row.get_by_role("button", name="Acknowledge")).to_have_count(0)
    with connect(world.db_url) as c:
        state = c.execute(
            "SELECT state, acknowledged_by FROM alerts WHERE alert_id = %s", (alert_id,)
        ).fetchone()
    assert state is not None and state["state"] == "acknowledged" and state["acknowledged_by"] is not None
    screenshot(page, "alert-inbox")
    page.goto(f"{live_server.url}/alerts?state=acknowledged")
    expect(page.locator(f'tr[data-alert="{alert_id}"]')).to_contain_text("Acknowledged")


def test_vendor_never_sees_owner_names_or_clinical_data(
    page: Page, live_server: LiveServer, world: World, web_people: WebPeople, implant_data: int
) -> None:
    insert_alert(
        world.db_url,
        web_people.implant,
        "implant.af_burden",
        severity="yellow",
        klass="clinical",
        name="AF burden above 6 h/day",
        values={"af_burden_pct": 31},
    )
    login(page, live_server.url, web_people.vendor)
    expect(page.locator(f'tr[data-device="{web_people.implant}"]')).to_be_visible()
    pages = [
        f"{live_server.url}/fleet",
        f"{live_server.url}/devices/{web_people.implant}",
        f"{live_server.url}/alerts?state=all",
    ]
    for url in pages:
        page.goto(url)
        html = page.content()
        for name in ("Ada Patient", "Otto Otherpatient", "Dan Driver"):
            assert name not in html, f"{name} shown to a vendor on {url}"
        assert "AF burden" not in html
    page.goto(pages[1])
    expect(page.locator('figure.chart[data-metric="lead_impedance_rv_ohm"]')).to_have_count(1)
    expect(page.locator('figure.chart[data-metric="heart_rate_bpm"]')).to_have_count(0)
    expect(page.locator('figure.chart[data-metric="af_burden_pct"]')).to_have_count(0)
    expect(page.get_by_role("heading", name="Message the owner")).to_have_count(0)
    screenshot(page, "vendor-device-page")


def test_owner_sees_the_providers_message_and_gets_an_appointment(
    new_page: Callable[..., Page], live_server: LiveServer, web_people: WebPeople
) -> None:
    clinician, owner = new_page(), new_page()
    login(owner, live_server.url, web_people.patient)
    expect(owner).to_have_url(f"{live_server.url}/my")
    owner.get_by_label("Preferred date and time (UTC)").fill(
        (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT10:30")
    )
    owner.get_by_label("Reason").fill("Feeling dizzy after climbing stairs.")
    owner.get_by_role("button", name="Send request").click()
    expect(owner.get_by_role("status")).to_contain_text("request was sent")
    expect(owner.locator("#appointments")).to_contain_text("Requested")

    login(clinician, live_server.url, web_people.clinician)
    clinician.goto(f"{live_server.url}/devices/{web_people.implant}")
    clinician.get_by_role("textbox", name="Message").fill(
        "Your transmission looks good. Please keep the monitor plugged in."
    )
    clinician.get_by_role("button", name="Send message").click()
    expect(clinician.get_by_role("status")).to_contain_text("Message sent")
    clinician.get_by_role("button", name="Confirm").click()
    expect(clinician.get_by_role("status")).to_contain_text("Appointment confirmed")

    owner.reload()
    expect(owner.locator("#messages")).to_contain_text("Please keep the monitor plugged in.")
    expect(owner.locator("#messages")).to_contain_text("Dr. Grace Hopper")
    expect(owner.locator("#appointments")).to_contain_text("Confirmed")
    screenshot(owner, "owner-view")
    # The owner reaches their own device page, not anyone else's.
    owner.goto(f"{live_server.url}/devices/{web_people.other_implant}")
    expect(owner.get_by_role("heading", name="Not found")).to_be_visible()


def test_phone_width_is_usable(
    new_page: Callable[..., Page], live_server: LiveServer, web_people: WebPeople, implant_data: int
) -> None:
    phone = new_page(viewport=PHONE)
    login(phone, live_server.url, web_people.clinician)
    phone.goto(f"{live_server.url}/devices/{web_people.implant}")
    expect(phone.locator('figure.chart[data-metric="heart_rate_bpm"] canvas')).to_have_count(1)
    # Nothing wider than the screen: no sideways scrolling of the whole page.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(phone, "phone-device-page", full_page=False)
    phone.goto(f"{live_server.url}/fleet")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(phone, "phone-fleet")
