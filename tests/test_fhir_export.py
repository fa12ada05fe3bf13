"""FHIR export from real rows: codes from the catalogue, validation by fhir.resources, stable ids,
what each audience gets, the connectivity status of a silent device, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from pulsewire.db import connect
from pulsewire.interop import records
from pulsewire.interop.fhir import export_bundle
from pulsewire.interop.records import Audience, Window
from pulsewire.stack import StackInfo
from schemas.catalogue import MDC_SYSTEM, PULSEWIRE_METRIC_SYSTEM, UCUM_SYSTEM
from tests.fix_api import assert_error
from tests.fix_db import World

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
WINDOW = Window(T0 - timedelta(hours=1), T0 + timedelta(hours=2))
READINGS = [
    ("battery_voltage_v", 2.95),
    ("battery_longevity_months", 84.0),
    ("lead_impedance_ra_ohm", 530.0),
    ("heart_rate_bpm", 72.0),
    ("af_burden_pct", 1.5),
]


@pytest.fixture(scope="module")
def implant(world: World, db_url: str) -> str:
    """An implant with readings, a clinical and a technical alert, silent for a day."""
    world.add_device("fhir-icd-1", serial="SN-FHIR-1", firmware="4.2.1")
    with connect(db_url, autocommit=True) as c:
        for i, (metric, value) in enumerate(READINGS):
            c.execute(
                "INSERT INTO readings (ts, device_id, metric, value) VALUES (%s, 'fhir-icd-1', %s, %s)",
                (T0 + timedelta(minutes=i), metric, value),
            )
        for key, klass, severity in (("af_episode", "clinical", "red"), ("lead_ra", "technical", "yellow")):
            c.execute(
                """INSERT INTO alerts (device_id, rule_key, rule_name, severity, class, provider_org_id,
                       vendor_org_id, started_at, last_seen_at, "values")
                   VALUES ('fhir-icd-1', %s, %s, %s, %s, %s, %s, %s, %s, '{"value": 1}')""",
                (
                    key,
                    key.replace("_", " "),
                    severity,
                    klass,
                    world.clinic_id,
                    world.implant_vendor_id,
                    T0,
                    T0,
                ),
            )
        # heard from at T0, expected hourly: silent before the window ends
        c.execute(
            "UPDATE devices SET last_seen_at = %s, heartbeat_s = 3600 WHERE device_id = 'fhir-icd-1'", (T0,)
        )
    return "fhir-icd-1"


def _export(db_url: str, device_id: str, audience: Audience, *, transaction: bool = False) -> Bundle:
    async def run() -> Bundle:
        conn = await records.connect(db_url)
        async with conn:
            loaded = await records.load(conn, device_id, WINDOW, audience)
        return export_bundle(loaded, transaction=transaction)

    return asyncio.run(run())


def _resources(bundle: Bundle, kind: str | None = None) -> list[dict[str, Any]]:
    data = json.loads(bundle.model_dump_json(exclude_none=True))
    found = [e["resource"] for e in data["entry"]]
    return [r for r in found if kind is None or r["resourceType"] == kind]


def _observation(bundle: Bundle, metric: str) -> dict[str, Any]:
    for obs in _resources(bundle, "Observation"):
        if {"system": PULSEWIRE_METRIC_SYSTEM, "code": metric} in obs["code"]["coding"]:
            return obs
    raise AssertionError(f"no Observation of {metric}")


def test_every_resource_validates_on_its_own_and_in_the_bundle(db_url: str, implant: str) -> None:
    bundle = _export(db_url, implant, Audience.PROVIDER)
    text = bundle.model_dump_json(exclude_none=True)
    assert Bundle.model_validate_json(text).type == "collection"
    resources = _resources(bundle)
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    kinds = [r["resourceType"] for r in resources]
    assert kinds.count("Device") == 1 and kinds.count("Patient") == 1
    assert kinds.count("DetectedIssue") == 2
    # one Observation per reading, plus the connectivity status (the device is silent)
    assert kinds.count("Observation") == len(READINGS) + 1


@pytest.mark.parametrize(
    ("metric", "code", "ucum", "value"),
    [
        ("battery_voltage_v", "721344", "V", 2.95),
        ("battery_longevity_months", "721472", "mo", 84.0),
        ("lead_impedance_ra_ohm", "722432", "Ohm", 530.0),
    ],
)
def test_cardx_cied_codes_and_units(
    db_url: str, implant: str, metric: str, code: str, ucum: str, *, value: float
) -> None:
    obs = _observation(_export(db_url, implant, Audience.PROVIDER), metric)
    assert obs["code"]["coding"][0]["system"] == MDC_SYSTEM
    assert obs["code"]["coding"][0]["code"] == code
    assert obs["valueQuantity"] == {
        "value": value,
        "unit": obs["valueQuantity"]["unit"],
        "system": UCUM_SYSTEM,
        "code": ucum,
    }
    assert obs["status"] == "final"
    assert obs["effectiveDateTime"].endswith("Z")
    assert obs["identifier"][0]["value"].startswith(f"{implant}/{metric}/")


def test_uncoded_metric_carries_the_pulsewire_system_only(db_url: str, implant: str) -> None:
    obs = _observation(_export(db_url, implant, Audience.PROVIDER), "af_burden_pct")
    assert [c["system"] for c in obs["code"]["coding"]] == [PULSEWIRE_METRIC_SYSTEM]


def test_reexport_gives_the_same_identifiers(db_url: str, implant: str) -> None:
    def ids(bundle: Bundle) -> list[tuple[str, str, str]]:
        return sorted(
            (r["resourceType"], r["id"], json.dumps(r.get("identifier"))) for r in _resources(bundle)
        )

    first, second = _export(db_url, implant, Audience.PROVIDER), _export(db_url, implant, Audience.PROVIDER)
    assert ids(first) == ids(second)
    assert first.id == second.id


def test_transaction_bundle_puts_every_resource_at_its_id(db_url: str, implant: str) -> None:
    data = json.loads(
        _export(db_url, implant, Audience.PROVIDER, transaction=True).model_dump_json(exclude_none=True)
    )
    assert data["type"] == "transaction"
    for entry in data["entry"]:
        resource = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"


def test_vendor_export_has_no_patient_and_no_clinical_observation(db_url: str, implant: str) -> None:
    bundle = _export(db_url, implant, Audience.VENDOR)
    resources = _resources(bundle)
    assert not [r for r in resources if r["resourceType"] == "Patient"]
    codes = {c["code"] for r in _resources(bundle, "Observation") for c in r["code"]["coding"]}
    assert "heart_rate_bpm" not in codes and "af_burden_pct" not in codes
    assert "battery_voltage_v" in codes
    (device,) = _resources(bundle, "Device")
    assert "patient" not in device and "owner" not in device
    issues = _resources(bundle, "DetectedIssue")
    assert [i["code"]["coding"][0]["code"] for i in issues] == ["lead_ra"]
    assert all("patient" not in r and "subject" not in r for r in resources)
    assert "Ada" not in bundle.model_dump_json()


def test_owner_export_has_their_device_without_a_patient_resource(db_url: str, implant: str) -> None:
    resources = _resources(_export(db_url, implant, Audience.OWNER))
    assert "Patient" not in {r["resourceType"] for r in resources}
    assert len([r for r in resources if r["resourceType"] == "DetectedIssue"]) == 2


def test_silent_device_has_a_cardx_connectivity_status(db_url: str, implant: str) -> None:
    bundle = _export(db_url, implant, Audience.PROVIDER)
    (status,) = [
        o
        for o in _resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] == "observation-cied-connectivity"
    ]
    values = {c["code"]["coding"][0]["code"]: c for c in status["component"]}
    assert values["connectivity-status"]["valueCodeableConcept"]["coding"][0]["code"] == "disconnected"
    assert "last-monitor-connectivity-time" in values


def test_device_heard_within_its_heartbeat_has_no_connectivity_status(db_url: str, world: World) -> None:
    world.add_device("fhir-icd-live")
    with connect(db_url, autocommit=True) as c:
        c.execute(
            "UPDATE devices SET last_seen_at = %s WHERE device_id = 'fhir-icd-live'",
            (WINDOW.end - timedelta(minutes=5),),
        )
    codes = {
        c["code"]
        for o in _resources(_export(db_url, "fhir-icd-live", Audience.PROVIDER), "Observation")
        for c in o["code"]["coding"]
    }
    assert "observation-cied-connectivity" not in codes


def test_cli_export_prints_the_bundle_and_leaves_an_audit_entry(
    stack_info: StackInfo, db_url: str, implant: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWIRE_")}
    env |= {"PULSEWIRE_STATE_DIR": str(stack_info.state_dir), "PULSEWIRE_DATABASE_URL": db_url}
    args = [
        "export",
        "fhir",
        "--device",
        implant,
        "--start",
        WINDOW.start.isoformat(),
        "--end",
        WINDOW.end.isoformat(),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pulsewire", *args, "--audience", "vendor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    bundle = Bundle.model_validate_json(result.stdout)
    assert bundle.type == "collection"
    assert bundle.id == _export(db_url, implant, Audience.VENDOR).id
    with psycopg.connect(db_url) as c:
        row = c.execute(
            """SELECT actor_label, action, object_type, object_id, role FROM access_audit
               ORDER BY audit_id DESC LIMIT 1"""
        ).fetchone()
    assert (
        row is not None and row[0].startswith("cli:") and row[1:] == ("export", "fhir", implant, "operator")
    )


def test_cli_refuses_a_reversed_window(stack_info: StackInfo, db_url: str, implant: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWIRE_")}
    env |= {"PULSEWIRE_STATE_DIR": str(stack_info.state_dir), "PULSEWIRE_DATABASE_URL": db_url}
    args = ["export", "fhir", "--device", implant, "--start", "2026-01-02", "--end", "2026-01-01"]
    result = subprocess.run(
        [sys.executable, "-m", "pulsewire", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "end must be after start" in result.stderr


# ---- through the API -------------------------------------------------------------------------------


def _api_window() -> dict[str, str]:
    return {"start": WINDOW.start.isoformat(), "end": WINDOW.end.isoformat()}


@pytest.mark.parametrize("role", ["provider2", "vendor2", "owner2"])
def test_other_tenants_export_is_404(clients: dict[str, httpx.Client], implant: str, role: str) -> None:
    for route in ("fhir", "vss"):
        assert_error(clients[role].get(f"/api/v1/devices/{implant}/{route}", params=_api_window()), 404)


def test_api_export_per_audience(clients: dict[str, httpx.Client], implant: str) -> None:
    provider = clients["provider"].get(f"/api/v1/devices/{implant}/fhir", params=_api_window())
    assert provider.status_code == 200 and provider.headers["content-type"] == "application/fhir+json"
    kinds = [
        e["resource"]["resourceType"] for e in Bundle.model_validate_json(provider.text).model_dump()["entry"]
    ]
    assert "Patient" in kinds
    vendor = clients["vendor"].get(
        f"/api/v1/devices/{implant}/fhir", params=_api_window() | {"bundle": "transaction"}
    )
    data = json.loads(vendor.text)
    assert data["type"] == "transaction"
    assert "Patient" not in {e["resource"]["resourceType"] for e in data["entry"]}
    assert "heart_rate_bpm" not in vendor.text and "Ada" not in vendor.text


def test_api_export_window_is_capped_like_readings(clients: dict[str, httpx.Client], implant: str) -> None:
    params = {"start": "2001-01-01T00:00:00Z", "end": "2001-01-02T00:00:00Z"}
    assert_error(
        clients["provider"].get(f"/api/v1/devices/{implant}/fhir", params=params), 422, "invalid_range"
    )
