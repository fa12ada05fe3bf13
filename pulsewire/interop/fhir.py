"""One device's records as an HL7 FHIR R4 Bundle (built and validated with `fhir.resources`, R4B models).

What goes in, per audience (`records.Audience`):

    resource        provider   owner   vendor
    Device          yes        yes     yes, without the patient
    Patient         yes        -       -
    Observation     every reading      technical metrics only
    connectivity    when the device is silent (HL7 CardX-CIED's connectivity status)
    DetectedIssue   every alert        technical alerts, without values

Every resource's id is a UUID derived from what it describes (device, metric, event time; alert id;
owner id), and each carries the matching `identifier`: exporting the same window again gives the
same ids, so a receiver that stores by id (or a transaction's PUT) never duplicates anything.
`docs/interop.md` explains the codes and why alerts are DetectedIssues rather than Flags.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from pulsewire.interop.records import Audience, DeviceRecords, Row, instant
from schemas.catalogue import MDC_SYSTEM, PULSEWIRE_METRIC_SYSTEM, UCUM_SYSTEM, Metric, metric_for

Resource = dict[str, Any]

# Our identifier and code systems (URNs: nothing needs to be resolved to use them).
DEVICE_ID_SYSTEM = "urn:pulsewire:fhir:device"
OWNER_ID_SYSTEM = "urn:pulsewire:fhir:owner"
READING_ID_SYSTEM = "urn:pulsewire:fhir:reading"
ALERT_ID_SYSTEM = "urn:pulsewire:fhir:alert"
CONNECTIVITY_ID_SYSTEM = "urn:pulsewire:fhir:connectivity"
DEVICE_KIND_SYSTEM = "urn:pulsewire:fhir:device-kind"
ALERT_RULE_SYSTEM = "urn:pulsewire:fhir:alert-rule"
CIED_CONNECTIVITY_SYSTEM = "http://hl7.org/fhir/uv/cardx-cied/CodeSystem/cied-connectivity"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pulsewire:fhir")
_SEVERITY = {"red": "high", "yellow": "moderate", "info": "low"}
_KIND_TEXT = {"implant": "implantable cardiac device", "vehicle": "vehicle OBD-II adapter"}


def fhir_id(*parts: object) -> str:
    """The resource id for what `parts` name: the same parts always give the same id."""
    return str(uuid.uuid5(_NAMESPACE, "|".join(str(p) for p in parts)))


def export_bundle(records: DeviceRecords, *, transaction: bool = False) -> Bundle:
    """The Bundle (`collection`, or `transaction` of PUTs) of `records`, validated by fhir.resources."""
    device_id = str(records.device["device_id"])
    patient = _patient(records.owner) if records.audience is Audience.PROVIDER and records.owner else None
    resources: list[Resource] = [_device(records, patient)]
    if patient is not None:
        resources.append(patient)
    refs = _Refs(device=_url(resources[0]), patient=_url(patient) if patient else None)
    resources += [_reading(records, device_id, row, refs) for row in records.readings]
    if (since := records.silent_since()) is not None:
        resources.append(_connectivity(records, since, refs))
    resources += [_alert(records, row, refs) for row in records.alerts]
    body: Resource = {
        "resourceType": "Bundle",
        "id": fhir_id(
            "bundle", device_id, records.audience, instant(records.window.start), instant(records.window.end)
        ),
        "type": "transaction" if transaction else "collection",
        "timestamp": instant(records.read_at),
        "entry": [_entry(r, transaction) for r in resources],
    }
    return Bundle.model_validate(body)


class _Refs:
    def __init__(self, *, device: str, patient: str | None) -> None:
        self.device, self.patient = device, patient

    def subject(self) -> Resource:
        return {"subject": {"reference": self.patient}} if self.patient else {}


def _url(resource: Resource) -> str:
    return f"urn:uuid:{resource['id']}"


def _entry(resource: Resource, transaction: bool) -> Resource:
    entry: Resource = {"fullUrl": _url(resource), "resource": resource}
    if transaction:
        # Update-as-create with our deterministic id: sending the same bundle twice stores nothing twice.
        entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    return entry


def _device(records: DeviceRecords, patient: Resource | None) -> Resource:
    d = records.device
    resource: Resource = {
        "resourceType": "Device",
        "id": fhir_id("device", d["device_id"]),
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": d["device_id"]}],
        "status": "inactive" if d["decommissioned_at"] else "active",
        "manufacturer": d["vendor_name"],
        "serialNumber": d["serial"],
        "modelNumber": d["model"],
        "deviceName": [{"name": d["model"], "type": "model-name"}],
        "type": {
            "coding": [{"system": DEVICE_KIND_SYSTEM, "code": d["kind"]}],
            "text": _KIND_TEXT.get(d["kind"], d["kind"]),
        },
    }
    if d["firmware"]:
        resource["version"] = [{"value": d["firmware"]}]
    if patient is not None:
        resource["patient"] = {"reference": _url(patient)}
    if records.audience is not Audience.VENDOR:
        resource["owner"] = {"display": d["provider_name"]}
    return resource


def _patient(owner: Row) -> Resource:
    # Minimal on purpose: who the readings are about, nothing a clinic's own record does not hold.
    resource: Resource = {
        "resourceType": "Patient",
        "id": fhir_id("owner", owner["owner_id"]),
        "identifier": [{"system": OWNER_ID_SYSTEM, "value": str(owner["owner_id"])}],
        "name": [{"text": owner["full_name"]}],
    }
    if owner["birth_date"]:
        resource["birthDate"] = owner["birth_date"].isoformat()
    return resource


def metric_code(name: str, metric: Metric | None) -> Resource:
    """The CodeableConcept of a metric: its MDC/IDC code first where it has one, always ours too."""
    codings: list[Resource] = []
    known = metric.standard if metric is not None else None
    if known is not None and known.ieee_code is not None:
        codings.append({"system": MDC_SYSTEM, "code": str(known.ieee_code), "display": known.ieee_term})
    codings.append({"system": PULSEWIRE_METRIC_SYSTEM, "code": name})
    return {"coding": codings, "text": metric.description if metric else name}


def _reading(records: DeviceRecords, device_id: str, row: Row, refs: _Refs) -> Resource:
    metric = metric_for(records.kind, row["metric"])
    ts = instant(row["ts"])
    quantity: Resource = {"value": float(row["value"])}
    if metric is not None:
        quantity |= {"unit": metric.unit, "system": UCUM_SYSTEM, "code": metric.standard.ucum}
    return {
        "resourceType": "Observation",
        "id": fhir_id("reading", device_id, row["metric"], ts),
        "identifier": [{"system": READING_ID_SYSTEM, "value": f"{device_id}/{row['metric']}/{ts}"}],
        "status": "final",
        "code": metric_code(row["metric"], metric),
        **refs.subject(),
        "device": {"reference": refs.device},
        "effectiveDateTime": ts,
        "valueQuantity": quantity,
    }


def _connectivity(records: DeviceRecords, silent_since: datetime, refs: _Refs) -> Resource:
    """CardX-CIED's connectivity status: the monitor has not reported within its expected interval."""
    d = records.device
    last = d["last_seen_at"]
    since = instant(last) if last else "registration"
    key = f"{d['device_id']}/{since}"

    def component(code: str, value: Resource) -> Resource:
        return {"code": {"coding": [{"system": CIED_CONNECTIVITY_SYSTEM, "code": code}]}} | value

    concept = {"coding": [{"system": CIED_CONNECTIVITY_SYSTEM, "code": "observation-cied-connectivity"}]}
    components = [
        component(
            "connectivity-status",
            {
                "valueCodeableConcept": {
                    "coding": [{"system": CIED_CONNECTIVITY_SYSTEM, "code": "disconnected"}]
                }
            },
        ),
        component("connection-interval", {"valueInteger": math.ceil(int(d["heartbeat_s"]) / 86400)}),
    ]
    if last is not None:
        components.append(component("last-monitor-connectivity-time", {"valueDateTime": instant(last)}))
    return {
        "resourceType": "Observation",
        "id": fhir_id("connectivity", key),
        "identifier": [{"system": CONNECTIVITY_ID_SYSTEM, "value": key}],
        "status": "final",
        "category": [concept],
        "code": concept,
        **refs.subject(),
        "device": {"reference": refs.device},
        "effectiveDateTime": instant(min(records.window.end, records.read_at)),
        "note": [{"text": f"No contact since {since}; expected by {instant(silent_since)}."}],
        "component": components,
    }


def _alert(records: DeviceRecords, row: Row, refs: _Refs) -> Resource:
    period: Resource = {"start": instant(row["started_at"])}
    if row["ended_at"] is not None:
        period["end"] = instant(row["ended_at"])
    resource: Resource = {
        "resourceType": "DetectedIssue",
        "id": fhir_id("alert", row["alert_id"]),
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": str(row["alert_id"])}],
        "status": "final" if row["state"] == "resolved" else "preliminary",
        "code": {
            "coding": [{"system": ALERT_RULE_SYSTEM, "code": row["rule_key"], "display": row["rule_name"]}],
            "text": row["rule_name"],
        },
        "severity": _SEVERITY[row["severity"]],
        "identifiedPeriod": period,
        "implicated": [{"reference": refs.device}],
        "detail": _alert_detail(row),
    }
    if refs.patient:
        resource["patient"] = {"reference": refs.patient}
    if row["acknowledged_at"] is not None:
        resource["mitigation"] = [
            {"action": {"text": "acknowledged"}, "date": instant(row["acknowledged_at"])}
        ]
    return resource


def _alert_detail(row: Row) -> str:
    values = ", ".join(f"{k}={v}" for k, v in sorted(dict(row["values"]).items()))
    state = f"{row['class']} alert, {row['state']}"
    return f"{row['rule_name']} ({state})" + (f": {values}" if values else "")
