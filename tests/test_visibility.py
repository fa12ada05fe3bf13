"""Which alerts each viewer sees: the SQL condition and the Python predicate of `relay.visibility` agree
with each other and with the rule, on the same rows, for every role; and the API's store and the
web pages' queries, which use them, return the same alerts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from dashboards.queries import viewer_of
from dashboards.types import Principal
from dashboards.web import page_queries
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.errors import InvalidInput
from relay import store, visibility
from relay.views import ALERT_SELECT
from relay.visibility import Viewer

Conn = psycopg.Connection[dict[str, Any]]


@dataclass(frozen=True)
class Fleet:
    """Two providers, two vendors, two owners; devices that mix them; a clinical and a technical alert
    each."""

    providers: tuple[int, int]
    vendors: tuple[int, int]
    owners: tuple[int, int]
    alerts: dict[int, dict[str, Any]]  # alert id -> its device's orgs and owner, and its class


@pytest.fixture(scope="module")
def fleet(db_url: str) -> Fleet:
    with connect(db_url, autocommit=True) as c:
        providers = (registry.add_org(c, "P1", "provider"), registry.add_org(c, "P2", "provider"))
        vendors = (registry.add_org(c, "V1", "vendor"), registry.add_org(c, "V2", "vendor"))
        owners = (registry.add_owner(c, providers[0], "O1"), registry.add_owner(c, providers[1], "O2"))
        devices = {
            "icd-v1": (providers[0], vendors[0], owners[0]),
            "icd-v2": (providers[1], vendors[1], owners[1]),
            "icd-mixed": (providers[0], vendors[1], None),  # one provider's care, the other vendor's make
        }
        alerts: dict[int, dict[str, Any]] = {}
        for device_id, (provider, vendor, owner) in devices.items():
            registry.add_device(
                c,
                device_id,
                kind="implant",
                model="M",
                provider_org_id=provider,
                vendor_org_id=vendor,
                owner_id=owner,
            )
            for klass in ("clinical", "technical"):
                alert_id = _insert_alert(c, device_id, klass, provider, vendor)
                alerts[alert_id] = {"provider": provider, "vendor": vendor, "owner": owner, "class": klass}
    return Fleet(providers, vendors, owners, alerts)


def _insert_alert(c: Conn, device_id: str, klass: str, provider: int, vendor: int) -> int:
    now = datetime.now(UTC)
    row = c.execute(
        """INSERT INTO alerts (device_id, rule_key, rule_name, severity, class, provider_org_id,
                               vendor_org_id, started_at, last_seen_at)
           VALUES (%s, %s, %s, 'red', %s, %s, %s, %s, %s) RETURNING alert_id""",
        (device_id, f"test.{klass}", klass, klass, provider, vendor, now, now),
    ).fetchone()
    assert row is not None
    return int(row["alert_id"])


def _viewers(fleet: Fleet) -> list[Viewer]:
    return [
        Viewer("admin"),
        *(Viewer("provider", org) for org in fleet.providers),
        *(Viewer("vendor", org) for org in fleet.vendors),
        *(Viewer("owner", owner_id=owner) for owner in fleet.owners),
    ]


def _expected(viewer: Viewer, alert: dict[str, Any]) -> bool:
    """The rule as people state it (docs/domain.md), written here independently of the module."""
    if viewer.audience == "admin":
        return True
    if viewer.audience == "provider":
        return bool(alert["provider"] == viewer.org_id)
    if viewer.audience == "vendor":
        return alert["vendor"] == viewer.org_id and alert["class"] == "technical"
    return bool(alert["owner"] == viewer.owner_id)


def _sql_ids(c: Conn, viewer: Viewer) -> set[int]:
    where, params = visibility.sql(viewer)
    rows = c.execute(
        f"SELECT a.alert_id FROM alerts a JOIN devices d ON d.device_id = a.device_id WHERE {where}", params
    )
    return {int(r["alert_id"]) for r in rows}


def test_sql_and_python_agree_with_the_rule_for_every_viewer(fleet: Fleet, conn: Conn) -> None:
    rows = list(conn.execute(ALERT_SELECT))
    assert {int(r["alert_id"]) for r in rows} == set(fleet.alerts)
    for viewer in _viewers(fleet):
        expected = {i for i, alert in fleet.alerts.items() if _expected(viewer, alert)}
        assert expected, f"{viewer} should see something in this fleet"
        assert _sql_ids(conn, viewer) == expected, viewer
        assert {int(r["alert_id"]) for r in rows if visibility.sees(viewer, r)} == expected, viewer


def test_a_notification_never_rules_out_a_viewer_who_sees_the_alert(fleet: Fleet, conn: Conn) -> None:
    for row in conn.execute(ALERT_SELECT):
        note = {k: row[k] for k in ("alert_id", "provider_org_id", "vendor_org_id", "class")}
        for viewer in _viewers(fleet):
            if visibility.sees(viewer, row):
                assert visibility.may_see(viewer, note), (viewer, row["alert_id"])
            elif viewer.audience in ("provider", "vendor"):  # the note carries all these need
                assert not visibility.may_see(viewer, note), (viewer, row["alert_id"])


def test_the_api_store_lists_what_the_rule_allows(fleet: Fleet, conn: Conn) -> None:
    for viewer in _viewers(fleet):
        listed = {int(v["alert_id"]) for v in store.list_alerts(conn, viewer)}
        assert listed == _sql_ids(conn, viewer), viewer
        for view in store.list_alerts(conn, viewer):
            assert ("owner" in view) == (viewer.view == "provider")  # vendors get their minimal view


async def test_the_web_pages_list_what_the_rule_allows(fleet: Fleet, db_url: str, conn: Conn) -> None:
    roles = {"admin": "admin", "provider": "provider_staff", "vendor": "vendor_staff", "owner": "owner"}
    async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row) as aconn:
        for viewer in _viewers(fleet):
            p = Principal(1, roles[viewer.audience], viewer.org_id, None, viewer.owner_id, "someone")
            assert viewer_of(p) == viewer
            listed = {int(r["alert_id"]) for r in await page_queries.list_alerts(aconn, p, state=None)}
            assert listed == _sql_ids(conn, viewer), viewer


def test_a_viewer_needs_its_scope() -> None:
    with pytest.raises(InvalidInput, match="org_id"):
        Viewer("provider")
    with pytest.raises(InvalidInput, match="owner_id"):
        Viewer("owner", org_id=3)
    with pytest.raises(InvalidInput, match="audience"):
        Viewer("everyone")
