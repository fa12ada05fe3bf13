"""The web pages in a real browser: times in the viewer's own time zone (UTC without JavaScript), an
admin's live inbox of every org's alerts, and live vendor rows that link their device."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from pulsewire import registry
from pulsewire.db import connect
from tests.fix_browser import PASSWORD, LiveServer, WebPeople, insert_alert, login
from tests.fix_db import World
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKYO, NEW_YORK = "Asia/Tokyo", "America/New_York"


@pytest.fixture(scope="module")
def admin(world: World) -> str:
    with connect(world.db_url, autocommit=True) as c:
        registry.add_user(
            c, "root@pulsewire.example", role="admin", display_name="Ada Admin", password=PASSWORD
        )
    return "root@pulsewire.example"


def _listeners(db_url: str) -> int:
    with connect(db_url) as c:
        row = c.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN pulsewire_alerts%%'"
        ).fetchone()
    return int(row["n"]) if row else 0


def open_live_inbox(page: Page, base: str, db_url: str) -> None:
    page.goto(f"{base}/alerts")
    expect(page.locator("#live")).to_contain_text("Live")
    wait_for(lambda: _listeners(db_url), what="the dashboard's alert listener")


def test_appointment_times_show_in_each_viewers_zone(
    new_page: Callable[..., Page], live_server: LiveServer, world: World, web_people: WebPeople
) -> None:
    owner = new_page(timezone_id=TOKYO)
    login(owner, live_server.url, web_people.patient)
    wanted = (datetime.now(ZoneInfo(TOKYO)) + timedelta(days=3)).replace(
        hour=10, minute=30, second=0, microsecond=0
    )
    owner.get_by_label(f"Preferred date and time ({TOKYO})").fill(wanted.strftime("%Y-%m-%dT%H:%M"))
    owner.get_by_label("Reason").fill("Check-up while travelling.")
    owner.get_by_role("button", name="Send request").click()
    expect(owner.get_by_role("status")).to_contain_text("request was sent")

    # The form meant 10:30 in Tokyo: that instant is what is stored.
    with connect(world.db_url) as c:
        row = c.execute(
            "SELECT requested_for FROM appointments ORDER BY appointment_id DESC LIMIT 1"
        ).fetchone()
    assert row is not None and row["requested_for"] == wanted.astimezone(UTC)
    slot = owner.locator("#appointments time").first
    expect(slot).to_contain_text("10:30")
    expect(slot).to_contain_text("GMT+9")

    # The clinic in New York reads the same instant in its own zone.
    clinician = new_page(timezone_id=NEW_YORK)
    login(clinician, live_server.url, web_people.clinician)
    clinician.goto(f"{live_server.url}/devices/{web_people.implant}")
    in_new_york = wanted.astimezone(ZoneInfo(NEW_YORK)).strftime("%H:%M")
    expect(clinician.locator("section[aria-labelledby=appt-h] time").first).to_contain_text(in_new_york)
    expect(clinician.get_by_label(f"Other time ({NEW_YORK})").first).to_be_visible()

    # Without JavaScript the page says UTC, and is right.
    plain = new_page(timezone_id=NEW_YORK, javascript=False)
    login(plain, live_server.url, web_people.clinician)  # a plain form: no script needed
    plain.goto(f"{live_server.url}/devices/{web_people.implant}")
    utc_text = wanted.astimezone(UTC).strftime("%H:%M UTC")
    expect(plain.locator("section[aria-labelledby=appt-h] time").first).to_contain_text(utc_text)
    expect(plain.get_by_label("Other time (UTC)").first).to_be_visible()


def test_admins_have_a_live_inbox_of_every_org(
    new_page: Callable[..., Page], live_server: LiveServer, world: World, web_people: WebPeople, admin: str
) -> None:
    page = new_page()
    login(page, live_server.url, admin)
    open_live_inbox(page, live_server.url, world.db_url)
    clinic_alert = insert_alert(world.db_url, web_people.implant, "implant.admin_live", klass="clinical")
    garage_alert = insert_alert(world.db_url, web_people.vehicle, "vehicle.admin_live", name="Coolant hot")
    expect(page.locator(f'tr[data-alert="{clinic_alert}"]')).to_contain_text("Lead impedance out of range")
    garage_row = page.locator(f'tr[data-alert="{garage_alert}"]')
    expect(garage_row).to_contain_text("Coolant hot")
    expect(garage_row.get_by_role("link", name=web_people.vehicle)).to_have_attribute(
        "href", f"/devices/{web_people.vehicle}"
    )


def test_a_vendors_live_row_links_its_device(
    new_page: Callable[..., Page], live_server: LiveServer, world: World, web_people: WebPeople
) -> None:
    page = new_page()
    login(page, live_server.url, web_people.vendor)
    open_live_inbox(page, live_server.url, world.db_url)
    alert_id = insert_alert(world.db_url, web_people.implant, "implant.vendor_live", name="Battery drain")
    row = page.locator(f'tr[data-alert="{alert_id}"]')
    expect(row).to_contain_text("Battery drain")  # arrived over SSE, no reload
    link = row.get_by_role("link", name=web_people.implant)
    expect(link).to_have_attribute("href", f"/devices/{web_people.implant}")
    # The same link as the row the server renders on a reload.
    page.reload()
    expect(
        page.locator(f'tr[data-alert="{alert_id}"]').get_by_role("link", name=web_people.implant)
    ).to_have_attribute("href", f"/devices/{web_people.implant}")
