"""The access audit page in Debian's Chromium: an admin filters the trail by patient (and time, in
the viewer's zone) and finds the clinician's read of that patient's device page; a provider of
another org does not."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from tests.fix_browser import LiveServer, WebPeople, login
from tests.fix_db import World
from tests.web_support import add_admin

pytestmark = [pytest.mark.browser]
ZONE = "Asia/Tokyo"  # far from UTC and without summer time: a local time read as UTC would be 9 h off


def _filter(page: Page, owner_id: int, *, start: datetime | None = None) -> None:
    page.get_by_role("link", name="Audit").click()
    page.get_by_label("Patient (owner id)").fill(str(owner_id))
    if start is not None:
        page.get_by_label("From").fill(start.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Show").click()


def test_an_admin_sees_the_clinicians_read_and_another_provider_does_not(
    new_page: Callable[..., Page], live_server: LiveServer, web_people: WebPeople, world: World
) -> None:
    clinician = new_page()
    login(clinician, live_server.url, web_people.clinician)
    clinician.goto(f"{live_server.url}/devices/{web_people.implant}")
    expect(clinician.get_by_role("heading", name=web_people.implant)).to_be_visible()

    admin = new_page(timezone_id=ZONE)
    login(admin, live_server.url, add_admin(world))
    an_hour_ago_there = datetime.now(ZoneInfo(ZONE)) - timedelta(hours=1)
    _filter(admin, world.patient_id, start=an_hour_ago_there)
    read = admin.locator("tr[data-action='read']", has_text="Dr. Grace Hopper").filter(
        has_text="GET /devices/{device_id}"
    )
    expect(read.first).to_be_visible()
    expect(read.first.get_by_role("link", name=web_people.implant)).to_be_visible()
    expect(admin.locator(f"tbody tr:not([data-owner='{world.patient_id}'])")).to_have_count(0)
    when = read.first.locator("time[datetime]")
    expect(when).not_to_contain_text("UTC")  # the viewer's zone, not the server's
    expect(admin.locator("#audit-window time")).not_to_contain_text("UTC")

    mechanic = new_page()
    login(mechanic, live_server.url, web_people.mechanic)
    _filter(mechanic, world.patient_id)
    expect(mechanic.get_by_text("No entries match this filter.")).to_be_visible()
    expect(mechanic.locator("tbody tr")).to_have_count(0)
    expect(mechanic.get_by_text("Dr. Grace Hopper")).to_have_count(0)
