"""REST API: auth, tenancy per role, devices, readings (hand-computed buckets), events, tokens, health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pulsewire.db import connect
from pulsewire.settings import Settings
from pulsewire.stack import Stack
from tests.fix_api import ApiServer, Users, assert_error
from tests.fix_db import World
from tests.helpers import free_port, wait_for

ALL = ("provider", "vendor", "owner", "admin")
BASE = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
# battery_voltage_v every 10 minutes for 3 hours: 6 readings per hour bucket.
VOLTS = [2.90 + 0.01 * i for i in range(18)]


@pytest.fixture(scope="module", autouse=True)
def data(world: World, users: Users) -> None:
    """Readings, events and quarantine rows to read back."""
    with connect(world.db_url, autocommit=True) as c:
        rows = [
            (BASE + timedelta(minutes=10 * i), "icd-a", "battery_voltage_v", v) for i, v in enumerate(VOLTS)
        ]
        rows += [(BASE + timedelta(minutes=10 * i), "icd-a", "heart_rate_bpm", 60.0 + i) for i in range(18)]
        rows += [(BASE, "veh-b", "coolant_temp_c", 90.0)]
        with c.cursor().copy("COPY readings (ts, device_id, metric, value) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        for seq, (etype, d) in enumerate(
            [("af_episode", {"duration_s": 400}), ("battery_status", {"status": "ERI"})]
        ):
            c.execute(
                """INSERT INTO events (ts, device_id, boot_id, seq, type, data)
                   VALUES (%s, 'icd-a', 'b1', %s, %s, %s)""",
                (BASE + timedelta(minutes=seq), seq, etype, json.dumps(d)),
            )
        c.execute(
            "INSERT INTO quarantine (topic, device_id, reason, detail, payload) "
            "VALUES ('pw/v1/dev/x/telemetry', 'x', 'malformed_json', 'bad', '\\xff7b'::bytea)"
        )


# --- auth -------------------------------------------------------------------------------------------


def test_me_for_every_role(clients: dict[str, httpx.Client], users: Users, world: World) -> None:
    expected = {
        "provider": ("provider_staff", world.clinic_id, "provider", None),
        "vendor": ("vendor_staff", world.implant_vendor_id, "vendor", None),
        "owner": ("owner", None, None, world.patient_id),
        "admin": ("admin", None, None, None),
    }
    for name, (role, org, kind, owner) in expected.items():
        me = clients[name].get("/api/v1/me").json()
        assert (me["role"], me["org_id"], me["org_kind"], me["owner_id"]) == (role, org, kind, owner)
        assert me["user_id"] == users.ids[name]


def test_missing_or_bad_token_is_401(clients: dict[str, httpx.Client], api: ApiServer) -> None:
    assert_error(clients["anon"].get("/api/v1/me"), 401, "unauthorized")
    with httpx.Client(base_url=api.url, headers={"Authorization": "Bearer pw_nope"}) as bad:
        assert_error(bad.get("/api/v1/devices"), 401)


def test_tokens_shown_once_listed_and_revoked(clients: dict[str, httpx.Client], api: ApiServer) -> None:
    created = clients["owner"].post("/api/v1/tokens", json={"name": "laptop"})
    assert created.status_code == 201
    token, token_id = created.json()["token"], created.json()["token_id"]
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}) as mine:
        assert mine.get("/api/v1/me").json()["role"] == "owner"
        listed = mine.get("/api/v1/tokens").json()["items"]
        assert token_id in [t["token_id"] for t in listed] and all("token" not in t for t in listed)
        # another user cannot see or revoke it
        assert_error(clients["provider"].delete(f"/api/v1/tokens/{token_id}"), 404)
        assert token_id not in [
            t["token_id"] for t in clients["provider"].get("/api/v1/tokens").json()["items"]
        ]
        assert mine.delete(f"/api/v1/tokens/{token_id}").status_code == 204
        assert_error(mine.get("/api/v1/me"), 401)


# --- tenancy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ALL)
def test_device_lists_are_scoped(clients: dict[str, httpx.Client], role: str) -> None:
    ids = [d["device_id"] for d in clients[role].get("/api/v1/devices").json()["items"]]
    assert "icd-a" in ids
    assert ("veh-b" in ids) == (role == "admin")


def test_vendor_view_has_no_owner_and_provider_view_has(clients: dict[str, httpx.Client]) -> None:
    vendor = clients["vendor"].get("/api/v1/devices/icd-a").json()
    assert "owner" not in vendor and "provider_org_id" not in vendor
    assert "Ada" not in json.dumps(clients["vendor"].get("/api/v1/devices").json())
    provider = clients["provider"].get("/api/v1/devices/icd-a").json()
    assert provider["owner"]["full_name"] == "Ada Patient"
    assert clients["owner"].get("/api/v1/devices/icd-a").json()["owner"]["email"] == "ada@example.org"


SUBROUTES = ("", "/readings", "/events", "/commands", "/messages", "/appointments", "/commands/nope")


@pytest.mark.parametrize("role", ["provider", "vendor", "owner", "provider2", "vendor2", "owner2"])
@pytest.mark.parametrize("sub", SUBROUTES)
def test_other_tenants_device_is_404_on_every_route(
    clients: dict[str, httpx.Client], role: str, sub: str
) -> None:
    other = "veh-b" if not role.endswith("2") else "icd-a"
    assert_error(clients[role].get(f"/api/v1/devices/{other}{sub}"), 404, "not_found")
    assert_error(clients[role].get(f"/api/v1/devices/no-such-device{sub}"), 404)


@pytest.mark.parametrize("role", ["provider", "vendor", "owner"])
def test_other_tenants_device_is_404_for_writes(clients: dict[str, httpx.Client], role: str) -> None:
    c = clients[role]
    assert_error(c.post("/api/v1/devices/veh-b/commands", json={"name": "ping"}), 404)
    assert_error(c.post("/api/v1/devices/veh-b/messages", json={"body": "hi"}), 404)
    when = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    assert_error(c.post("/api/v1/devices/veh-b/appointments", json={"requested_for": when}), 404)


# role -> expected status of GET on its own device's subroute
OWN_DEVICE_MATRIX = {
    "": {"provider": 200, "vendor": 200, "owner": 200, "admin": 200},
    "/readings": {"provider": 200, "vendor": 200, "owner": 200, "admin": 200},
    "/events": {"provider": 200, "vendor": 200, "owner": 200, "admin": 200},
    "/commands": {"provider": 200, "vendor": 403, "owner": 403, "admin": 200},
    "/messages": {"provider": 200, "vendor": 403, "owner": 200, "admin": 200},
    "/appointments": {"provider": 200, "vendor": 403, "owner": 200, "admin": 200},
}


@pytest.mark.parametrize("sub", list(OWN_DEVICE_MATRIX))
@pytest.mark.parametrize("role", ALL)
def test_own_device_routes_per_role(clients: dict[str, httpx.Client], role: str, sub: str) -> None:
    response = clients[role].get(f"/api/v1/devices/icd-a{sub}")
    expected = OWN_DEVICE_MATRIX[sub][role]
    if expected == 200:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, expected, "forbidden")


def test_admin_sees_every_device(clients: dict[str, httpx.Client]) -> None:
    assert clients["admin"].get("/api/v1/devices/veh-b").json()["owner"]["full_name"] == "Dan Driver"


@pytest.mark.parametrize("role", ALL)
def test_quarantine_is_admin_only(clients: dict[str, httpx.Client], role: str) -> None:
    response = clients[role].get("/api/v1/quarantine")
    if role != "admin":
        assert_error(response, 403)
        return
    items = response.json()["items"]
    assert items[0]["reason"] == "malformed_json" and items[0]["payload"] == "\ufffd{"


# --- registration -------------------------------------------------------------------------------------


def _new_device(world: World, device_id: str, **kw: object) -> dict[str, object]:
    return {
        "device_id": device_id,
        "kind": "implant",
        "model": "Evera",
        "vendor_org_id": world.implant_vendor_id,
        **kw,
    }


@pytest.mark.parametrize("role", ALL)
def test_register_device_per_role(clients: dict[str, httpx.Client], world: World, role: str) -> None:
    body = _new_device(world, f"icd-new-{role}", provider_org_id=world.clinic_id, owner_id=world.patient_id)
    response = clients[role].post("/api/v1/devices", json=body)
    if role in ("vendor", "owner"):
        assert_error(response, 403)
        return
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["mqtt_username"] == f"icd-new-{role}" and len(created["mqtt_password"]) >= 20
    assert created["broker_synced"] is True and created["device"]["owner"]["owner_id"] == world.patient_id
    assert "mqtt_password" not in clients[role].get(f"/api/v1/devices/icd-new-{role}").json()


def test_register_device_rejects_bad_input(clients: dict[str, httpx.Client], world: World) -> None:
    c = clients["provider"]
    assert_error(c.post("/api/v1/devices", json=_new_device(world, "icd-a")), 409, "conflict")
    assert_error(c.post("/api/v1/devices", json=_new_device(world, "bad/id")), 422, "invalid_input")
    garage = _new_device(world, "icd-x", provider_org_id=world.garage_id)
    assert_error(c.post("/api/v1/devices", json=garage), 403)
    foreign_owner = _new_device(world, "icd-y", owner_id=world.driver_id)
    assert_error(c.post("/api/v1/devices", json=foreign_owner), 422, "unknown_owner")
    wrong_vendor = _new_device(world, "icd-z", vendor_org_id=world.clinic_id)
    assert_error(c.post("/api/v1/devices", json=wrong_vendor), 422)
    assert_error(
        clients["admin"].post("/api/v1/devices", json=_new_device(world, "icd-w")), 422, "missing_provider"
    )


# --- readings -----------------------------------------------------------------------------------------


def _series(response: httpx.Response) -> dict[str, list[tuple[str, float, int]]]:
    assert response.status_code == 200, response.text
    return {
        s["metric"]: [(p["ts"], p["value"], p["n"]) for p in s["points"]] for s in response.json()["series"]
    }


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("agg", ["avg", "min", "max", "last"])
def test_bucketed_readings_match_hand_computed(clients: dict[str, httpx.Client], agg: str) -> None:
    params = {
        "metric": "battery_voltage_v",
        "start": _iso(BASE),
        "end": _iso(BASE + timedelta(hours=3)),
        "bucket": "1h",
        "agg": agg,
    }
    got = _series(clients["provider"].get("/api/v1/devices/icd-a/readings", params=params))[
        "battery_voltage_v"
    ]
    hours = [VOLTS[6 * h : 6 * h + 6] for h in range(3)]
    expected = {
        "avg": [sum(h) / 6 for h in hours],
        "min": [min(h) for h in hours],
        "max": [max(h) for h in hours],
        "last": [h[-1] for h in hours],
    }[agg]
    assert [n for _, _, n in got] == [6, 6, 6]
    assert [v for _, v, _ in got] == pytest.approx(expected)
    assert [datetime.fromisoformat(ts) for ts, _, _ in got] == [BASE + timedelta(hours=h) for h in range(3)]


def test_raw_readings_and_range(clients: dict[str, httpx.Client]) -> None:
    params = {
        "metric": "battery_voltage_v",
        "start": _iso(BASE + timedelta(minutes=30)),
        "end": _iso(BASE + timedelta(minutes=60)),
    }
    got = _series(clients["owner"].get("/api/v1/devices/icd-a/readings", params=params))
    assert [v for _, v, _ in got["battery_voltage_v"]] == pytest.approx(VOLTS[3:6])


def test_default_range_is_last_24h_and_all_visible_metrics(clients: dict[str, httpx.Client]) -> None:
    body = clients["provider"].get("/api/v1/devices/icd-a/readings").json()
    end, start = datetime.fromisoformat(body["end"]), datetime.fromisoformat(body["start"])
    assert end - start == timedelta(hours=24) and abs(datetime.now(UTC) - end) < timedelta(minutes=1)
    points = {s["metric"]: len(s["points"]) for s in body["series"]}
    assert points["battery_voltage_v"] == 18 and points["heart_rate_bpm"] == 18


def test_vendor_gets_no_clinical_readings(clients: dict[str, httpx.Client]) -> None:
    body = clients["vendor"].get("/api/v1/devices/icd-a/readings").json()
    metrics = {s["metric"] for s in body["series"]}
    assert "battery_voltage_v" in metrics and "heart_rate_bpm" not in metrics
    assert not any(s["clinical"] for s in body["series"])
    assert_error(
        clients["vendor"].get("/api/v1/devices/icd-a/readings", params={"metric": "heart_rate_bpm"}), 403
    )


@pytest.mark.parametrize(
    ("params", "code"),
    [
        (
            {"bucket": "1m", "start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"},
            "too_many_buckets",
        ),
        ({"bucket": "fortnight"}, "invalid_bucket"),
        ({"bucket": "0s"}, "invalid_bucket"),
        ({"metric": "warp_factor"}, "unknown_metric"),
        ({"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "invalid_range"),
        ({"start": "yesterday"}, "invalid_input"),
        ({"agg": "median", "bucket": "1h"}, "invalid_input"),
    ],
)
def test_bad_readings_queries_are_422(
    clients: dict[str, httpx.Client], params: dict[str, str], code: str | None
) -> None:
    assert_error(clients["provider"].get("/api/v1/devices/icd-a/readings", params=params), 422, code)


@pytest.mark.parametrize(
    "params",
    [
        {"start": "0001-01-01T00:00:00Z", "end": "0001-01-01T00:00:01Z", "bucket": "999999d"},
        {"end": "0001-01-01T00:00:00Z"},
        {"start": "9999-12-31T00:00:00Z", "end": "9999-12-31T23:59:59Z", "bucket": "1d"},
    ],
)
def test_extreme_times_are_answered_not_crashed(
    clients: dict[str, httpx.Client], params: dict[str, str]
) -> None:
    response = clients["provider"].get("/api/v1/devices/icd-a/readings", params=params)
    assert response.status_code in (200, 422), response.text


def test_bucket_cap_allows_exactly_1000(clients: dict[str, httpx.Client]) -> None:
    params = {
        "bucket": "1h",
        "start": _iso(BASE - timedelta(hours=997)),
        "end": _iso(BASE + timedelta(hours=3)),
    }
    assert clients["provider"].get("/api/v1/devices/icd-a/readings", params=params).status_code == 200


# --- events -------------------------------------------------------------------------------------------


def test_events_newest_first_and_vendor_sees_technical_only(clients: dict[str, httpx.Client]) -> None:
    provider = [e["type"] for e in clients["provider"].get("/api/v1/devices/icd-a/events").json()["items"]]
    assert provider == ["battery_status", "af_episode"]
    vendor = [e["type"] for e in clients["vendor"].get("/api/v1/devices/icd-a/events").json()["items"]]
    assert vendor == ["battery_status"]


def test_pagination_is_capped(clients: dict[str, httpx.Client]) -> None:
    page = clients["admin"].get("/api/v1/devices", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_offset"] == 1
    assert_error(clients["admin"].get("/api/v1/devices", params={"limit": 501}), 422)


# --- system -------------------------------------------------------------------------------------------


def test_health_ready_metrics(clients: dict[str, httpx.Client]) -> None:
    anon = clients["anon"]
    assert_error(clients["provider"].get("/api/v1/devices/no-such-device"), 404)  # counted by route
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").json() == {"status": "ready"}
    text = anon.get("/metrics").text
    assert (
        'pulsewire_http_requests_total{method="GET",route="/api/v1/devices/{device_id}",status="404"}' in text
    )
    assert "pulsewire_http_request_duration_seconds_bucket" in text
    assert 'status="500"' not in text, "a request ended in a server error"


def test_unknown_route_and_method_use_error_body(clients: dict[str, httpx.Client]) -> None:
    assert_error(clients["admin"].get("/api/v1/nothing-here"), 404)
    assert_error(clients["admin"].put("/api/v1/me"), 405)
    assert_error(
        clients["admin"].post(
            "/api/v1/tokens", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )


# --- web session helpers (used by the pages) ----------------------------------------------------------


async def test_session_cookie_and_csrf(api: ApiServer, users: Users, world: World) -> None:
    from dashboards import auth
    from dashboards.auth import SESSION_COOKIE

    config = api.app.state.session_config
    import psycopg
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(
        world.db_url, autocommit=True, row_factory=dict_row
    ) as conn:
        assert await auth.principal_from_login(conn, "provider@example.org", "wrong") is None
        principal = await auth.principal_from_login(conn, "PROVIDER@example.org", "provider-secret-pw")
        assert principal is not None and principal.role == "provider_staff"
        cookie = await auth.create_session(conn, config, principal.user_id)
    forged = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    for value, status in ((cookie, 200), (forged, 401)):
        async with httpx.AsyncClient(base_url=api.url, cookies={SESSION_COOKIE: value}) as c:
            me = await c.get("/api/v1/me")
            assert me.status_code == status
            assert status != 200 or me.json()["user_id"] == principal.user_id
    token = auth.csrf_token(config, cookie)
    assert auth.csrf_valid(config, cookie, token)
    assert not auth.csrf_valid(config, cookie, token[:-1] + "x") and not auth.csrf_valid(
        config, forged, token
    )
    # A write made with the session cookie alone (another site's form) is refused; with the
    # session's CSRF token in the header, as our pages' scripts send it, it goes through.
    async with httpx.AsyncClient(base_url=api.url, cookies={SESSION_COOKIE: cookie}) as c:
        refused = await c.post("/api/v1/tokens", json={"name": "from-a-form"})
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]["message"]
        made = await c.post("/api/v1/tokens", json={"name": "from-a-page"}, headers={"X-CSRF-Token": token})
        assert made.status_code == 201, made.text
    async with await psycopg.AsyncConnection.connect(
        world.db_url, autocommit=True, row_factory=dict_row
    ) as conn:
        await auth.end_session(conn, config, cookie)
        assert await auth.principal_from_session(conn, config, cookie) is None


@pytest.mark.parametrize("role", ALL)
def test_tokens_for_every_role(clients: dict[str, httpx.Client], role: str) -> None:
    created = clients[role].post("/api/v1/tokens", json={"name": f"{role}-cli"})
    assert created.status_code == 201 and created.json()["token"].startswith("pw_")
    listed = clients[role].get("/api/v1/tokens").json()["items"]
    assert created.json()["token_id"] in [t["token_id"] for t in listed]
    others = [name for name in ALL if name != role]
    for other in others:
        assert_error(clients[other].delete(f"/api/v1/tokens/{created.json()['token_id']}"), 404)
    assert clients[role].delete(f"/api/v1/tokens/{created.json()['token_id']}").status_code == 204


def test_cli_serves_the_app(settings: Settings) -> None:
    """`pulsewire dashboard --port N` serves the API until terminated."""
    port = free_port()
    env = {
        **os.environ,
        "PULSEWIRE_DATABASE_URL": settings.require_database_url(),
        "PULSEWIRE_MQTT_URL": settings.require_mqtt_url(),
        "PULSEWIRE_STATE_DIR": str(settings.state_dir),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "pulsewire", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert server.poll() is None, "the dashboard exited"
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200

    try:
        wait_for(ready, 20, "the dashboard to start", ignoring=(httpx.TransportError,))
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/me").status_code == 401
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0].decode()
    assert f"http://127.0.0.1:{port}/" in output


# --- the database goes away and comes back ------------------------------------------------------------


@pytest.mark.slow
def test_database_down_is_503_then_recovers(
    clients: dict[str, httpx.Client], stack: Stack, api: ApiServer
) -> None:
    stack.stop_postgres()
    try:
        assert_error(clients["anon"].get("/readyz"), 503, "unavailable")
        assert_error(clients["provider"].get("/api/v1/devices"), 503, "unavailable")
        assert clients["anon"].get("/healthz").status_code == 200
    finally:
        stack.start_postgres()
    wait_for(lambda: clients["anon"].get("/readyz").status_code == 200, 20, "the API to recover")
    ok = [clients["provider"].get("/api/v1/devices").status_code for _ in range(5)]
    assert ok[-1] == 200 and set(ok) <= {200, 503}
    api.check_pools()  # the module's other tests find working connections, whatever their order


async def test_a_session_started_on_one_instance_is_valid_on_another(
    api: ApiServer, settings: Settings, world: World
) -> None:
    # Behind a load balancer the next request may reach another dashboard process: without a
    # configured secret, all instances sign sessions with the one kept in the database.
    import psycopg
    from psycopg.rows import dict_row

    from dashboards import auth
    from dashboards.auth import SESSION_COOKIE

    assert settings.session_secret is None
    async with await psycopg.AsyncConnection.connect(
        world.db_url, autocommit=True, row_factory=dict_row
    ) as conn:
        principal = await auth.principal_from_login(conn, "provider@example.org", "provider-secret-pw")
        assert principal is not None
        cookie = await auth.create_session(conn, api.app.state.session_config, principal.user_id)
    with ApiServer(settings) as other:
        async with httpx.AsyncClient(base_url=other.url, cookies={SESSION_COOKIE: cookie}) as c:
            me = await c.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["user_id"] == principal.user_id
