"""The access audit: append-only for the application's database role, and an entry for each read of a
patient's data, with the right actor, from the API and the web pages."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from pulsewire import audit, registry
from pulsewire.db import connect
from pulsewire.stack import StackInfo
from tests.fix_api import Users, assert_error
from tests.fix_browser import LiveServer, WebPeople, insert_alert
from tests.fix_db import World
from tests.web_support import client, csrf_of, signed_in, user_id_of


def _insert_one(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    audit.record_sync(
        conn,  # type: ignore[arg-type]
        audit.Actor(user_id=1, label="tester", role="admin", client_addr="127.0.0.1"),
        audit.Entry(audit.READ, "device", "x", owner_ids=(7,)),
    )


@pytest.fixture(scope="module")
def app_role_url(db_url: str, stack_info: StackInfo) -> Iterator[str]:
    """A login role that is not a superuser and is a member of `pulsewire_app`, as production runs."""
    name, password = f"pw_app_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE pulsewire_app".encode())
    parts = urlsplit(db_url)
    yield urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}"))
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f"DROP ROLE {name}".encode())


CHANGES = [
    "UPDATE access_audit SET actor_label = 'someone else'",
    "DELETE FROM access_audit",
    "TRUNCATE access_audit",
]
OWNERS_ONLY = [
    "ALTER TABLE access_audit DISABLE TRIGGER access_audit_no_change",
    "DROP TRIGGER access_audit_no_change ON access_audit",
]


@pytest.mark.parametrize("statement", CHANGES)
def test_the_stacks_application_role_cannot_change_the_trail(db_url: str, statement: str) -> None:
    # The dashboard connects as the stack's role (a superuser): the trigger refuses it.
    with psycopg.connect(db_url, autocommit=True) as conn:
        _insert_one(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement.encode())
        assert conn.execute("SELECT count(*) FROM access_audit").fetchone() != (0,)


@pytest.mark.parametrize("statement", CHANGES + OWNERS_ONLY)
def test_a_member_of_pulsewire_app_may_append_and_read_only(app_role_url: str, statement: str) -> None:
    with psycopg.connect(app_role_url, autocommit=True) as conn:
        _insert_one(conn)
        assert conn.execute("SELECT count(*) FROM access_audit").fetchone() != (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.encode())


# ---- what the dashboard records ---------------------------------------------------------------------


def _entries(db_url: str, **where: object) -> list[dict[str, object]]:
    clause = " AND ".join(f"{k} = %({k})s" for k in where) or "TRUE"
    with connect(db_url, autocommit=True) as c:
        return c.execute(
            f"SELECT * FROM access_audit WHERE {clause} ORDER BY audit_id".encode(), where
        ).fetchall()


def test_page_api_readings_and_fhir_export_each_leave_an_entry(
    live_server: LiveServer, web_people: WebPeople, world: World, db_url: str
) -> None:
    with signed_in(live_server, web_people.clinician) as c:
        assert c.get(f"/devices/{web_people.implant}").status_code == 200
        assert c.get(f"/api/v1/devices/{web_people.implant}/readings").status_code == 200
        assert c.get(f"/api/v1/devices/{web_people.implant}/fhir").status_code == 200
    clinician = user_id_of(db_url, web_people.clinician)
    entries = _entries(db_url, actor_user_id=clinician, object_id=web_people.implant)
    routes = {(e["action"], e["object_type"], str(dict(e["detail"]).get("route"))) for e in entries}  # type: ignore[call-overload]
    assert ("read", "device", "GET /devices/{device_id}") in routes
    assert ("read", "device", "GET /api/v1/devices/{device_id}/readings") in routes
    assert ("export", "fhir", "GET /api/v1/devices/{device_id}/fhir") in routes
    for e in entries:
        assert e["actor_label"] == "Dr. Grace Hopper" and e["role"] == "provider_staff"
        assert e["org_id"] == world.clinic_id and e["owner_id"] == world.patient_id
        assert e["client_addr"] == "127.0.0.1" and e["credential"] == "session"
    logins = _entries(db_url, actor_user_id=clinician, action="login")
    assert logins and logins[-1]["credential"] == "password"


def test_a_failed_sign_in_is_recorded_with_the_email_tried(live_server: LiveServer, db_url: str) -> None:
    with client(live_server) as c:
        token = csrf_of(c.get("/login").text)
        c.post("/login", data={"email": "Nobody@Example.org", "password": "wrong", "csrf_token": token})
    (entry,) = _entries(db_url, action="login_failed", actor_label="nobody@example.org")
    assert entry["actor_user_id"] is None and entry["client_addr"] == "127.0.0.1"


def test_token_use_and_admin_acts_are_recorded(
    clients: dict[str, httpx.Client], users: Users, db_url: str
) -> None:
    assert clients["admin"].get("/api/v1/devices").status_code == 200
    uses = _entries(db_url, actor_user_id=users.ids["admin"], action="token_use")
    assert len(uses) == 1 and str(uses[0]["credential"]).startswith("token:")
    other = users.ids["vendor2"]
    assert clients["admin"].post(f"/api/v1/users/{other}/disable").status_code == 200
    assert clients["admin"].post(f"/api/v1/users/{other}/enable").status_code == 200
    acts = [e["action"] for e in _entries(db_url, actor_user_id=users.ids["admin"], object_id=str(other))]
    assert acts == ["admin:user.disable", "admin:user.enable"]


def test_trail_by_patient_for_admins_and_the_patients_provider(
    clients: dict[str, httpx.Client], users: Users, world: World
) -> None:
    assert clients["provider"].get(f"/api/v1/devices/{users.own_device}").status_code == 200
    params = {"owner_id": world.patient_id, "actor_user_id": users.ids["provider"]}
    admin_view = clients["admin"].get("/api/v1/audit", params=params).json()["items"]
    assert admin_view and all(e["owner_id"] == world.patient_id for e in admin_view)
    assert clients["provider"].get("/api/v1/audit", params=params).json()["items"] == admin_view
    # the garage sees nothing of the clinic's patient; vendors and owners see no trail at all
    assert clients["provider2"].get("/api/v1/audit", params=params).json()["items"] == []
    for role in ("vendor", "owner"):
        assert_error(clients[role].get("/api/v1/audit"), 403)


def test_reading_alerts_on_the_page_and_the_api_leaves_an_entry(
    live_server: LiveServer, web_people: WebPeople, world: World, db_url: str
) -> None:
    alert_id = insert_alert(db_url, web_people.implant, "audit_alert_read")
    with signed_in(live_server, web_people.clinician) as c:
        assert c.get("/alerts").status_code == 200
        assert c.get(f"/alerts/{alert_id}/row").status_code == 200
    clinician, vendor = (user_id_of(db_url, e) for e in (web_people.clinician, web_people.vendor))
    with connect(db_url, autocommit=True) as conn:
        tokens = [registry.issue_token(conn, user_id, "audit test") for user_id in (clinician, vendor)]
    for token in tokens:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=live_server.url, headers=headers, timeout=10) as api:
            assert api.get("/api/v1/alerts").status_code == 200
            assert api.get(f"/api/v1/alerts/{alert_id}").status_code == 200
    mine = _entries(db_url, actor_user_id=clinician, action="read", owner_id=world.patient_id)
    routes = {(e["object_type"], e["object_id"], dict(e["detail"])["route"]) for e in mine}  # type: ignore[call-overload]
    assert ("alert_list", None, "GET /alerts") in routes
    assert ("alert", str(alert_id), "GET /alerts/{alert_id}/row") in routes
    assert ("alert_list", None, "GET /api/v1/alerts") in routes
    assert ("alert", str(alert_id), "GET /api/v1/alerts/{alert_id}") in routes
    # a vendor's alerts are technical and name no owner: nothing about the patient to record
    assert _entries(db_url, actor_user_id=vendor, action="read", object_type="alert") == []
