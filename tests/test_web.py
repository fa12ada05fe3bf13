"""The web pages over plain HTTP (no browser): login, sessions, CSRF, scoping, HTML errors, assets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pulsewire.db import connect
from tests.fix_browser import PASSWORD, LiveServer, WebPeople, insert_alert, insert_readings
from tests.fix_db import World
from tests.web_support import HTML, client, csrf_of, signed_in


@pytest.fixture
def clinician(live_server: LiveServer, web_people: WebPeople) -> Iterator[httpx.Client]:
    with signed_in(live_server, web_people.clinician) as c:
        yield c


@pytest.fixture
def vendor(live_server: LiveServer, web_people: WebPeople) -> Iterator[httpx.Client]:
    with signed_in(live_server, web_people.vendor) as c:
        yield c


def test_pages_redirect_to_login_and_back(live_server: LiveServer, web_people: WebPeople) -> None:
    with client(live_server) as c:
        r = c.get("/fleet")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/fleet"
        page = c.get("/login", params={"next": "/alerts"})
        assert 'value="/alerts"' in page.text
        r = c.post(
            "/login",
            data={
                "email": web_people.clinician,
                "password": PASSWORD,
                "csrf_token": csrf_of(page.text),
                "next": "/alerts",
            },
        )
        assert r.status_code == 303 and r.headers["location"] == "/alerts"
        assert c.get("/alerts").status_code == 200


def test_login_errors_are_shown_and_csrf_is_required(live_server: LiveServer, web_people: WebPeople) -> None:
    with client(live_server) as c:
        token = csrf_of(c.get("/login").text)
        wrong = c.post(
            "/login", data={"email": web_people.clinician, "password": "nope", "csrf_token": token}
        )
        assert wrong.status_code == 401
        assert "Wrong e-mail or password." in wrong.text and web_people.clinician in wrong.text
        assert "pw_session" not in wrong.cookies
        forged = c.post(
            "/login", data={"email": web_people.clinician, "password": PASSWORD, "csrf_token": "forged"}
        )
        assert forged.status_code == 403 and "expired" in forged.text
    with client(live_server) as fresh:  # a token without its login cookie is refused too
        r = fresh.post(
            "/login", data={"email": web_people.clinician, "password": PASSWORD, "csrf_token": token}
        )
        assert r.status_code == 403


def test_login_never_redirects_off_site(live_server: LiveServer, web_people: WebPeople) -> None:
    with client(live_server) as c:
        token = csrf_of(c.get("/login").text)
        r = c.post(
            "/login",
            data={
                "email": web_people.clinician,
                "password": PASSWORD,
                "csrf_token": token,
                "next": "//evil.example/phish",
            },
        )
        assert r.status_code == 303 and r.headers["location"] == "/"


def test_logout_needs_csrf_and_ends_the_session(live_server: LiveServer, web_people: WebPeople) -> None:
    with signed_in(live_server, web_people.clinician) as c:
        page = c.get("/fleet")
        assert page.status_code == 200
        assert c.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
        cookie = c.cookies["pw_session"]
        r = c.post("/logout", data={"csrf_token": csrf_of(page.text)})
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # The old cookie, replayed, no longer opens anything.
    with client(live_server) as replay:
        replay.cookies.set("pw_session", cookie)
        assert replay.get("/fleet").status_code == 303
        assert replay.get("/api/v1/me", headers={"Accept": "application/json"}).status_code == 401


def test_forms_without_the_session_token_are_refused(
    clinician: httpx.Client, world: World, web_people: WebPeople
) -> None:
    r = clinician.post(f"/devices/{web_people.implant}/messages", data={"body": "hi", "csrf_token": "x"})
    assert r.status_code == 403
    assert "<h1>Not allowed</h1>" in r.text  # an HTML page, not JSON, for a browser
    with connect(world.db_url) as c:
        row = c.execute("SELECT count(*) AS n FROM messages WHERE body = 'hi'").fetchone()
    assert row is not None and row["n"] == 0


def test_vendor_pages_show_no_owner_and_no_clinical_data(
    vendor: httpx.Client, clinician: httpx.Client, world: World, web_people: WebPeople
) -> None:
    insert_readings(
        world.db_url,
        web_people.implant,
        {"heart_rate_bpm": lambda i: 70.0, "lead_impedance_rv_ohm": lambda i: 540.0},
        hours=2,
    )
    alert_id = insert_alert(
        world.db_url,
        web_people.implant,
        "implant.charge_time",
        name="Charge time high",
        values={"charge_time_s": 17.5, "heart_rate_bpm": 142},
    )
    for path in ("/fleet", f"/devices/{web_people.implant}", "/alerts?state=all"):
        seen_by_clinician = clinician.get(path).text
        seen_by_vendor = vendor.get(path).text
        assert "Ada Patient" in seen_by_clinician or path.startswith("/alerts")
        for secret in ("Ada Patient", "Otto Otherpatient", "Heart rate"):
            assert secret not in seen_by_vendor, f"{secret!r} shown to the vendor on {path}"
    assert "ICD capacitor charge time 17.5 s" in vendor.get("/alerts").text
    api = {"Accept": "application/json"}
    end = datetime.now(UTC)
    window = {"start": (end - timedelta(hours=3)).isoformat(), "end": end.isoformat(), "bucket": "10m"}
    ok = vendor.get(
        f"/api/v1/devices/{web_people.implant}/readings",
        headers=api,
        params=window | {"metric": "lead_impedance_rv_ohm"},
    )
    assert ok.status_code == 200 and ok.json()["series"][0]["points"]
    hidden = vendor.get(
        f"/api/v1/devices/{web_people.implant}/readings",
        headers=api,
        params=window | {"metric": "heart_rate_bpm"},
    )
    assert hidden.status_code == 403
    token = csrf_of(vendor.get("/alerts").text)
    assert vendor.post(f"/alerts/{alert_id}/ack", data={"csrf_token": token}).status_code == 403


def test_another_tenants_device_is_not_found(live_server: LiveServer, web_people: WebPeople) -> None:
    with signed_in(live_server, web_people.mechanic) as garage:
        r = garage.get(f"/devices/{web_people.implant}")
        assert r.status_code == 404 and "<h1>Not found</h1>" in r.text
        assert web_people.implant not in garage.get("/fleet").text
        # The API keeps its JSON errors, even for a client that would take HTML.
        api = garage.get(f"/api/v1/devices/{web_people.implant}")
        assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"


def test_ack_and_resolve_work_without_javascript(
    clinician: httpx.Client, world: World, web_people: WebPeople
) -> None:
    alert_id = insert_alert(world.db_url, web_people.implant, "implant.device_reset", name="Device reset")
    page = clinician.get("/alerts")
    assert f'data-alert="{alert_id}"' in page.text
    token = csrf_of(page.text)
    r = clinician.post(
        f"/alerts/{alert_id}/ack",
        data={"csrf_token": token},
        headers=HTML | {"Referer": f"{clinician.base_url}/alerts?state=open"},
    )
    assert r.status_code == 303 and r.headers["location"] == "/alerts?state=open"
    again = clinician.post(f"/alerts/{alert_id}/ack", data={"csrf_token": token})
    assert again.status_code == 409 and "<h1>" in again.text
    done = clinician.post(
        f"/alerts/{alert_id}/resolve", data={"csrf_token": token}, headers={"Accept": "application/json"}
    )
    assert done.status_code == 200 and done.json()["state"] == "resolved"
    with connect(world.db_url) as c:
        actions = [
            r["action"]
            for r in c.execute(
                "SELECT action FROM alert_history WHERE alert_id = %s ORDER BY history_id", (alert_id,)
            )
        ]
    assert actions == ["opened", "acknowledged", "resolved"]


def test_assets_and_licences_are_served_by_the_app(live_server: LiveServer) -> None:
    with client(live_server) as c:
        licence = c.get("/static/vendor/uplot/LICENSE")
        assert licence.status_code == 200 and "MIT" in licence.text
        js = c.get("/static/vendor/uplot/uPlot.iife.min.js")
        assert js.status_code == 200 and "uPlot" in js.text
        for asset in ("app.css", "app.js", "charts.js", "alerts.js", "favicon.svg"):
            assert c.get(f"/static/{asset}").status_code == 200, asset
        page = c.get("/login").text
        assert "http://" not in page.replace(str(live_server.url), "") and "https://" not in page
