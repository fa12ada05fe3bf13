"""The access audit page (/audit) over plain HTTP: the same entries as `GET /api/v1/audit` for the
same viewer, an admin's whole trail by patient, actor and time, a provider's own patients only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pulsewire import registry
from pulsewire.db import connect
from tests.fix_browser import LiveServer, WebPeople
from tests.fix_db import World
from tests.web_support import add_admin, signed_in, user_id_of


def _rows(html: str) -> list[dict[str, str]]:
    """The entries a trail page lists: id, action, actor and owner of each row."""
    pattern = r'data-audit="(\d+)" data-action="([^"]*)" data-actor="([^"]*)" data-owner="([^"]*)"'
    return [dict(zip(("id", "action", "actor", "owner"), m, strict=True)) for m in re.findall(pattern, html)]


@pytest.fixture(scope="module")
def admin(world: World) -> str:
    return add_admin(world)


@pytest.fixture(scope="module")
def clinician_read(live_server: LiveServer, web_people: WebPeople) -> None:
    """The clinician has opened the patient's device page (and the other patient's)."""
    with signed_in(live_server, web_people.clinician) as c:
        for device in (web_people.implant, web_people.other_implant):
            assert c.get(f"/devices/{device}").status_code == 200


def test_an_admin_filters_by_patient_and_actor(
    live_server: LiveServer, web_people: WebPeople, world: World, admin: str, clinician_read: None
) -> None:
    clinician = user_id_of(world.db_url, web_people.clinician)
    with signed_in(live_server, admin) as c:
        html = c.get("/audit", params={"owner_id": world.patient_id}).text
        assert f'href="/devices/{web_people.implant}"' in html and "GET /devices/{device_id}" in html
        rows = _rows(html)
        assert rows and {r["owner"] for r in rows} == {str(world.patient_id)}
        assert any(r["actor"] == str(clinician) and r["action"] == "read" for r in rows)
        by_actor = _rows(c.get("/audit", params={"actor_user_id": clinician}).text)
        assert {r["actor"] for r in by_actor} == {str(clinician)}
        # the two patients the clinician looked at, and the sign-in (which concerns no patient)
        assert len({r["owner"] for r in by_actor} - {""}) == 2
        later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert _rows(c.get("/audit", params={"owner_id": world.patient_id, "start": later}).text) == []
        assert _rows(c.get("/audit", params={"owner_id": world.patient_id, "end": later}).text) == rows


@pytest.mark.parametrize("viewer", ["admin", "clinician", "mechanic"])
def test_the_page_lists_what_the_api_gives_the_same_viewer(
    *,
    live_server: LiveServer,
    web_people: WebPeople,
    world: World,
    admin: str,
    clinician_read: None,
    viewer: str,
) -> None:
    email = {"admin": admin, "clinician": web_people.clinician, "mechanic": web_people.mechanic}[viewer]
    with connect(world.db_url, autocommit=True) as conn:
        token = registry.issue_token(conn, user_id_of(world.db_url, email), "audit page test")
    params = {"owner_id": world.patient_id}
    with signed_in(live_server, email) as c:
        page = [int(r["id"]) for r in _rows(c.get("/audit", params=params).text)]
    api = httpx.get(
        f"{live_server.url}/api/v1/audit",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert page == [e["audit_id"] for e in api.json()["items"]]
    # the garage's mechanic sees nothing of the clinic's patient; the others see the clinician's read
    assert (page == []) == (viewer == "mechanic")


def test_a_provider_sees_its_own_patients_only(
    live_server: LiveServer, web_people: WebPeople, world: World, clinician_read: None
) -> None:
    with signed_in(live_server, web_people.mechanic) as c:
        html = c.get("/audit").text
        assert str(world.patient_id) not in {r["owner"] for r in _rows(html)}
        assert web_people.implant not in html and "Dr. Grace Hopper" not in html
        assert 'href="/audit"' in html  # in the nav
    with signed_in(live_server, web_people.clinician) as c:
        rows = _rows(c.get("/audit").text)
        assert rows and all(r["owner"] for r in rows)  # sign-ins of other orgs' staff are not theirs


@pytest.mark.parametrize("who", ["vendor", "patient"])
def test_vendors_and_owners_have_no_trail(live_server: LiveServer, web_people: WebPeople, who: str) -> None:
    with signed_in(live_server, getattr(web_people, who)) as c:
        assert c.get("/audit").status_code == 403
        assert 'href="/audit"' not in c.get("/fleet", follow_redirects=True).text


def test_a_filter_that_is_not_a_number_or_time_says_so(live_server: LiveServer, admin: str) -> None:
    with signed_in(live_server, admin) as c:
        r = c.get("/audit", params={"owner_id": "ada", "start": "yesterday"})
    assert r.status_code == 200 and _rows(r.text) == []
    assert "Patient: give a number" in r.text and "From: give a date and time" in r.text
