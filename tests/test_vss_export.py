"""VSS export of a car's faults (DTC list, count, lamp) and signals, and the owner's records download."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg.types.json import Jsonb

from pulsewire.db import connect
from pulsewire.interop.vss import fault_datapoints
from schemas.catalogue import VSS_DTC_COUNT, VSS_DTC_LIST, VSS_MIL_ON
from tests.fix_api import Users, assert_error
from tests.fix_db import World

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
WINDOW = {"start": (T0 - timedelta(hours=1)).isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()}


def _event(ts: datetime, type_: str, data: dict[str, object]) -> dict[str, object]:
    return {"ts": ts, "type": type_, "data": data}


def test_fault_datapoints_fold_set_lamp_and_clear() -> None:
    prior = [_event(T0 - timedelta(days=1), "dtc_set", {"code": "P0420", "state": "confirmed"})]
    events = [
        _event(T0, "dtc_set", {"code": "P0301", "state": "confirmed"}),
        _event(T0 + timedelta(seconds=1), "mil_on", {"codes": ["P0301"]}),
        _event(T0 + timedelta(minutes=5), "dtc_cleared", {"codes": []}),
        _event(T0 + timedelta(minutes=5, seconds=1), "mil_off", {}),
    ]
    points = [(p["path"], p["value"]) for p in fault_datapoints(prior, events, T0 - timedelta(hours=1))]
    assert points == [
        (VSS_DTC_LIST, ["P0420"]),
        (VSS_DTC_COUNT, 1),
        (VSS_DTC_LIST, ["P0420", "P0301"]),
        (VSS_DTC_COUNT, 2),
        (VSS_MIL_ON, True),
        (VSS_DTC_LIST, []),
        (VSS_DTC_COUNT, 0),
        (VSS_MIL_ON, False),
    ]


@pytest.fixture(scope="module")
def car(world: World, users: Users) -> str:
    """The garage's car `veh-b` of the driver (owner2), with a fault, readings and a message."""
    with connect(world.db_url, autocommit=True) as c:
        for seq, (offset, type_, data) in enumerate(
            [(0, "dtc_set", {"code": "P0301", "state": "confirmed"}), (1, "mil_on", {"codes": ["P0301"]})]
        ):
            c.execute(
                """INSERT INTO events (ts, device_id, boot_id, seq, type, data)
                   VALUES (%s, 'veh-b', 'b1', %s, %s, %s)""",
                (T0 + timedelta(seconds=offset), seq, type_, Jsonb(data)),
            )
        for metric, value in (("coolant_temp_c", 91.0), ("lat", 52.1)):
            c.execute(
                "INSERT INTO readings (ts, device_id, metric, value) VALUES (%s, 'veh-b', %s, %s)",
                (T0, metric, value),
            )
        c.execute(
            """INSERT INTO messages (device_id, owner_id, subject, body)
               VALUES ('veh-b', %s, 'Misfire', 'Please bring the car in.')""",
            (world.driver_id,),
        )
    return "veh-b"


def test_vss_export_for_the_garage(clients: dict[str, httpx.Client], car: str) -> None:
    data = clients["provider2"].get(f"/api/v1/devices/{car}/vss", params=WINDOW).json()
    paths = [(p["path"], p["value"]) for p in data["datapoints"]]
    assert (VSS_DTC_LIST, ["P0301"]) in paths and (VSS_MIL_ON, True) in paths
    assert data["latest"]["Vehicle.OBD.CoolantTemperature"]["value"] == 91.0
    assert data["latest"]["Vehicle.CurrentLocation.Latitude"]["value"] == 52.1


def test_vss_export_for_the_dongle_vendor_is_technical_only(
    clients: dict[str, httpx.Client], car: str
) -> None:
    data = clients["vendor2"].get(f"/api/v1/devices/{car}/vss", params=WINDOW).json()
    assert data["datapoints"] == []
    assert set(data["latest"]) == {"Vehicle.OBD.CoolantTemperature"}


def test_vss_export_of_an_implant_is_422(clients: dict[str, httpx.Client], users: Users) -> None:
    response = clients["provider"].get(f"/api/v1/devices/{users.own_device}/vss", params=WINDOW)
    assert_error(response, 422, "not_a_vehicle")


def test_owner_downloads_records_as_json_and_csv(clients: dict[str, httpx.Client], car: str) -> None:
    response = clients["owner2"].get("/api/v1/me/records", params={"format": "json"})
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    data = response.json()
    assert data["owner"]["full_name"] == "Dan Driver"
    (device,) = data["devices"]
    assert device["device"]["device_id"] == car
    assert [e["type"] for e in device["fault_history"]] == ["dtc_set", "mil_on"]
    assert device["messages"][0]["subject"] == "Misfire"
    assert {r["metric"] for r in device["readings"]} == {"coolant_temp_c", "lat"}
    rows = list(csv.reader(io.StringIO(clients["owner2"].get("/api/v1/me/records?format=csv").text)))
    assert rows[0] == ["section", "device_id", "time", "name", "value", "detail"]
    sections = {r[0] for r in rows[1:]}
    assert {"owner", "device", "readings", "events", "messages"} <= sections


@pytest.mark.parametrize("role", ["provider", "vendor", "admin"])
def test_only_owners_download_records(clients: dict[str, httpx.Client], role: str) -> None:
    assert_error(clients[role].get("/api/v1/me/records"), 403)
