"""REST API over relay/: alerts per audience, ack/resolve, the SSE stream, rules, webhooks, deliveries."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from pulsewire.db import connect
from tests.fix_api import ApiServer, Users, assert_error
from tests.fix_db import World


@pytest.fixture(scope="module")
def alerts(world: World, users: Users) -> dict[str, int]:
    """clinical + technical alerts on the clinic's implant, a technical one on the garage's vehicle."""
    specs = {
        "clinical": (
            "icd-a",
            "implant.shock",
            "clinical",
            world.clinic_id,
            world.implant_vendor_id,
            {"energy_j": 35, "heart_rate_bpm": 190},
        ),
        "technical": (
            "icd-a",
            "implant.lead_rv",
            "technical",
            world.clinic_id,
            world.implant_vendor_id,
            {"lead_impedance_rv_ohm": 3500, "heart_rate_bpm": 70},
        ),
        "vehicle": (
            "veh-b",
            "vehicle.dtc",
            "technical",
            world.garage_id,
            world.dongle_vendor_id,
            {"code": "P0301"},
        ),
        "spare": ("icd-a", "implant.battery", "technical", world.clinic_id, world.implant_vendor_id, {}),
    }
    ids = {}
    start = datetime.now(UTC) - timedelta(hours=1)
    with connect(world.db_url, autocommit=True) as c:
        for name, (device, key, klass, provider, vendor, values) in specs.items():
            row = c.execute(
                """INSERT INTO alerts (device_id, rule_key, rule_name, severity, class, provider_org_id,
                                       vendor_org_id, started_at, last_seen_at, "values")
                   VALUES (%s, %s, %s, 'red', %s, %s, %s, %s, %s, %s) RETURNING alert_id""",
                (device, key, key.title(), klass, provider, vendor, start, start, json.dumps(values)),
            ).fetchone()
            assert row is not None
            ids[name] = int(row["alert_id"])
    return ids


def _ids(response: httpx.Response) -> set[int]:
    assert response.status_code == 200, response.text
    return {a["alert_id"] for a in response.json()["items"]}


def test_alert_lists_per_role(clients: dict[str, httpx.Client], alerts: dict[str, int]) -> None:
    assert _ids(clients["provider"].get("/api/v1/alerts")) == {
        alerts["clinical"],
        alerts["technical"],
        alerts["spare"],
    }
    assert _ids(clients["vendor"].get("/api/v1/alerts")) == {alerts["technical"], alerts["spare"]}
    assert _ids(clients["provider2"].get("/api/v1/alerts")) == {alerts["vehicle"]}
    assert _ids(clients["admin"].get("/api/v1/alerts")) == set(alerts.values())
    assert_error(clients["owner"].get("/api/v1/alerts"), 403)
    assert clients["admin"].get(f"/api/v1/alerts/{alerts['vehicle']}").json()["owner"]["name"] == "Dan Driver"
    assert_error(clients["owner"].get(f"/api/v1/alerts/{alerts['clinical']}"), 403)
    assert_error(clients["admin"].get("/api/v1/alerts/999999999"), 404)
    filtered = clients["provider"].get("/api/v1/alerts", params={"device_id": "veh-b"})
    assert _ids(filtered) == set()


def test_vendor_view_is_minimal(clients: dict[str, httpx.Client], alerts: dict[str, int]) -> None:
    view = clients["vendor"].get(f"/api/v1/alerts/{alerts['technical']}").json()
    assert "owner" not in view and "device_id" not in view["device"]
    assert view["values"] == {"lead_impedance_rv_ohm": 3500}
    provider = clients["provider"].get(f"/api/v1/alerts/{alerts['technical']}").json()
    assert provider["owner"]["name"] == "Ada Patient" and provider["values"]["heart_rate_bpm"] == 70


@pytest.mark.parametrize(
    ("who", "alert"),
    [
        ("provider2", "clinical"),
        ("vendor", "clinical"),
        ("vendor2", "technical"),
        ("provider", "vehicle"),
        ("vendor", "vehicle"),
    ],
)
def test_other_tenants_alert_is_404(
    clients: dict[str, httpx.Client], alerts: dict[str, int], who: str, alert: str
) -> None:
    alert_id = alerts[alert]
    assert_error(clients[who].get(f"/api/v1/alerts/{alert_id}"), 404)
    assert_error(clients[who].post(f"/api/v1/alerts/{alert_id}/ack"), 404)
    assert_error(clients[who].post(f"/api/v1/alerts/{alert_id}/resolve"), 404)


def test_ack_and_resolve_lifecycle(
    clients: dict[str, httpx.Client], alerts: dict[str, int], users: Users
) -> None:
    alert_id = alerts["clinical"]
    assert_error(clients["owner"].post(f"/api/v1/alerts/{alert_id}/ack"), 403)
    assert_error(clients["vendor"].post(f"/api/v1/alerts/{alerts['technical']}/ack"), 403)
    acked = clients["provider"].post(f"/api/v1/alerts/{alert_id}/ack")
    assert acked.status_code == 200, acked.text
    assert (
        acked.json()["state"] == "acknowledged" and acked.json()["acknowledged_by"] == users.ids["provider"]
    )
    assert_error(clients["provider"].post(f"/api/v1/alerts/{alert_id}/ack"), 409, "conflict")
    resolved = clients["admin"].post(f"/api/v1/alerts/{alert_id}/resolve").json()
    assert resolved["state"] == "resolved" and resolved["resolved_by"] == users.ids["admin"]
    history = clients["provider"].get(f"/api/v1/alerts/{alert_id}").json()["history"]
    assert [h["action"] for h in history][-2:] == ["acknowledged", "resolved"]
    assert _ids(clients["provider"].get("/api/v1/alerts", params={"state": "resolved"})) == {alert_id}


def _read_events(
    api: ApiServer, token: str, out: list[dict[str, Any]], until: str, listening: threading.Event
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=api.url, headers=headers, timeout=httpx.Timeout(10, read=10)) as c,
        c.stream("GET", "/api/v1/alerts/stream") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line == ": connected":  # the server LISTENs from here on: no later change is missed
                listening.set()
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append({"event": event, "alert": json.loads(line[6:])})
                if event == until:
                    return


@pytest.mark.parametrize("who", ["provider", "vendor"])
def test_sse_stream_delivers_changes_in_the_audience_view(  # noqa: PLR0917 (fixtures)
    api: ApiServer,
    users: Users,
    clients: dict[str, httpx.Client],
    alerts: dict[str, int],
    world: World,
    who: str,
) -> None:
    got: list[dict[str, Any]] = []
    event = "acknowledged" if who == "provider" else "resolved"
    listening = threading.Event()
    reader = threading.Thread(target=_read_events, args=(api, users.tokens[who], got, event, listening))
    reader.start()
    assert listening.wait(10), "the stream never said it was listening"
    action = "ack" if who == "provider" else "resolve"
    assert clients["provider"].post(f"/api/v1/alerts/{alerts['spare']}/{action}").status_code == 200
    reader.join(10)
    assert got[-1]["event"] == event and got[-1]["alert"]["alert_id"] == alerts["spare"]
    assert got[-1]["alert"]["state"] == event
    assert ("owner" in got[-1]["alert"]) == (who == "provider")


def test_stream_not_for_owners(clients: dict[str, httpx.Client]) -> None:
    # Admins have a live inbox of every org's alerts (tests/test_web_leftovers_browser.py).
    assert_error(clients["owner"].get("/api/v1/alerts/stream"), 403)


RULE = {
    "key": "implant.rv_low",
    "name": "RV impedance low",
    "device_kind": "implant",
    "kind": "threshold",
    "severity": "yellow",
    "class": "technical",
    "params": {"metric": "lead_impedance_rv_ohm", "op": "<", "value": 250, "for_s": 0},
}


def test_rules_per_role(clients: dict[str, httpx.Client], world: World) -> None:
    created = clients["provider"].post("/api/v1/rules", json=RULE)
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["provider_org_id"] == world.clinic_id and rule["class"] == "technical"
    assert rule["rule_id"] in [r["rule_id"] for r in clients["provider"].get("/api/v1/rules").json()]
    assert rule["rule_id"] not in [r["rule_id"] for r in clients["provider2"].get("/api/v1/rules").json()]
    assert_error(clients["provider"].post("/api/v1/rules", json=RULE), 409)
    assert_error(clients["provider2"].patch(f"/api/v1/rules/{rule['rule_id']}", json={"enabled": False}), 404)
    patched = clients["provider"].patch(f"/api/v1/rules/{rule['rule_id']}", json={"severity": "red"})
    assert patched.status_code == 200 and patched.json()["severity"] == "red"
    for who in ("vendor", "owner"):
        assert_error(clients[who].get("/api/v1/rules"), 403)
        assert_error(clients[who].post("/api/v1/rules", json=RULE), 403)
    assert_error(clients["admin"].get("/api/v1/rules"), 422, "missing_org")
    admin_view = clients["admin"].get("/api/v1/rules", params={"org_id": world.clinic_id}).json()
    assert rule["rule_id"] in [r["rule_id"] for r in admin_view]
    bad = {**RULE, "key": "implant.other", "params": {"metric": "lead_impedance_rv_ohm"}}
    assert_error(clients["provider"].post("/api/v1/rules", json=bad), 422)


def test_webhooks_and_deliveries_per_role(clients: dict[str, httpx.Client], world: World) -> None:
    created = clients["provider"].post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert len(hook["secret"]) >= 16
    listed = clients["provider"].get("/api/v1/webhooks").json()
    assert [h["webhook_id"] for h in listed] == [hook["webhook_id"]] and "secret" not in listed[0]
    assert clients["provider2"].get("/api/v1/webhooks").json() == []
    assert_error(clients["provider2"].delete(f"/api/v1/webhooks/{hook['webhook_id']}"), 404)
    for who in ("vendor", "owner"):
        assert_error(clients[who].get("/api/v1/webhooks"), 403)
        assert_error(clients[who].get("/api/v1/deliveries"), 403)
    assert_error(clients["provider"].post("/api/v1/webhooks", json={"url": "ftp://x"}), 422)
    assert clients["provider"].get("/api/v1/deliveries").status_code == 200
    assert clients["admin"].get("/api/v1/deliveries", params={"org_id": world.garage_id}).status_code == 200
    assert clients["provider"].delete(f"/api/v1/webhooks/{hook['webhook_id']}").status_code == 204
    assert clients["provider"].get("/api/v1/webhooks").json() == []
