"""The owner downloads their records from their own page, in Debian's Chromium, as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from pulsewire.db import connect
from tests.fix_browser import PASSWORD, LiveServer, WebPeople, insert_readings
from tests.fix_db import World

pytestmark = [pytest.mark.browser]


def test_owner_downloads_records_from_the_owner_page(
    new_page: Callable[..., Page], live_server: LiveServer, web_people: WebPeople, world: World
) -> None:
    insert_readings(world.db_url, web_people.implant, {"battery_voltage_v": lambda i: 2.9}, hours=2)
    with connect(world.db_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO messages (device_id, owner_id, body) VALUES (%s, %s, 'All looks fine.')",
            (web_people.implant, world.patient_id),
        )
    page = new_page()
    page.goto(f"{live_server.url}/login")
    page.get_by_label("E-mail").fill(web_people.patient)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/my")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download my records (JSON)").click()
    download = download_info.value
    assert download.suggested_filename.startswith("pulsewire-records-")
    data = json.loads(Path(download.path()).read_text(encoding="utf-8"))
    assert data["owner"]["full_name"] == "Ada Patient"
    devices = {d["device"]["device_id"]: d for d in data["devices"]}
    assert web_people.other_implant not in devices  # another patient's, in the same clinic
    mine = devices[web_people.implant]
    assert {r["metric"] for r in mine["readings"]} == {"battery_voltage_v"}
    assert [m["body"] for m in mine["messages"]] == ["All looks fine."]
    start = datetime.fromisoformat(data["start"])
    assert timedelta(days=29) < datetime.now(UTC) - start < timedelta(days=31)

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download my records (CSV)").click()
    rows = list(csv.reader(io.StringIO(Path(download_info.value.path()).read_text(encoding="utf-8"))))
    assert rows[0][:2] == ["section", "device_id"]
    assert ["readings", web_people.implant] in [r[:2] for r in rows]
