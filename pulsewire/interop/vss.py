"""A vehicle's faults and readings in COVESA VSS 4.x terms.

Trouble-code and lamp events become the signals `Vehicle.OBD.DTCList`, `Vehicle.OBD.Status.DTCCount`
and `Vehicle.OBD.Status.IsMILOn`, as a time series of datapoints (the state at the window's start,
then each change); readings become the latest value of each metric's VSS signal. A vendor gets the
technical readings only: trouble codes and the lamp concern the owner's car, not the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pulsewire.errors import InvalidInput
from pulsewire.interop.records import AConn, Audience, DeviceRecords, Row, events_before, instant
from schemas.catalogue import VSS_DTC_COUNT, VSS_DTC_LIST, VSS_MIL_ON, DeviceKind, metric_for

VSS_VERSION = "4.0"
FAULT_EVENTS = ["dtc_set", "dtc_cleared", "mil_on", "mil_off"]


@dataclass
class _Faults:
    """The active trouble codes and the lamp, as the events so far say."""

    codes: list[str] = field(default_factory=list)
    mil_on: bool | None = None

    def apply(self, event: Row) -> tuple[bool, bool]:
        """Fold one event in; returns whether (the codes, the lamp) changed."""
        data, before = dict(event["data"]), (list(self.codes), self.mil_on)
        kind = event["type"]
        if kind == "dtc_set" and isinstance(data.get("code"), str):
            self._add([data["code"]])
        elif kind == "dtc_cleared":
            cleared = data.get("codes")
            # Without a list of codes, a clear (mode $04) clears every one of them.
            if isinstance(cleared, list) and cleared:
                self.codes = [c for c in self.codes if c not in cleared]
            else:
                self.codes = []
        elif kind in ("mil_on", "mil_off"):
            self.mil_on = kind == "mil_on"
            if isinstance(data.get("codes"), list):
                self._add([c for c in data["codes"] if isinstance(c, str)])
        return self.codes != before[0], self.mil_on != before[1]

    def _add(self, codes: list[str]) -> None:
        self.codes += [c for c in codes if c not in self.codes]

    def datapoints(self, ts: datetime, *, codes: bool, mil: bool) -> list[dict[str, Any]]:
        at = instant(ts)
        points: list[dict[str, Any]] = []
        if codes:
            points += [
                {"path": VSS_DTC_LIST, "ts": at, "value": list(self.codes)},
                {"path": VSS_DTC_COUNT, "ts": at, "value": len(self.codes)},
            ]
        if mil and self.mil_on is not None:
            points.append({"path": VSS_MIL_ON, "ts": at, "value": self.mil_on})
        return points


async def export_vss(conn: AConn, records: DeviceRecords) -> dict[str, Any]:
    """The vehicle's VSS document for the window; InvalidInput for an implant."""
    if records.kind is not DeviceKind.VEHICLE:
        raise InvalidInput("VSS describes vehicles; this device is an implant", code="not_a_vehicle")
    device_id = str(records.device["device_id"])
    datapoints: list[dict[str, Any]] = []
    if records.audience is not Audience.VENDOR:
        prior = await events_before(conn, device_id, records.window.start, FAULT_EVENTS)
        datapoints = fault_datapoints(prior, records.events, records.window.start)
    return {
        "schema": "pulsewire.vss/1",
        "vss_version": VSS_VERSION,
        "device_id": device_id,
        "start": instant(records.window.start),
        "end": instant(records.window.end),
        "datapoints": datapoints,
        "latest": latest_signals(records),
    }


def fault_datapoints(prior: list[Row], events: list[Row], start: datetime) -> list[dict[str, Any]]:
    """The DTC list, count and lamp at `start` (from `prior`), then at each change in `events`."""
    faults = _Faults()
    for event in prior:
        faults.apply(event)
    points = faults.datapoints(start, codes=bool(faults.codes), mil=True) if prior else []
    for event in events:
        if event["type"] in FAULT_EVENTS:
            codes_changed, mil_changed = faults.apply(event)
            points += faults.datapoints(event["ts"], codes=codes_changed, mil=mil_changed)
    return points


def latest_signals(records: DeviceRecords) -> dict[str, dict[str, Any]]:
    """The newest reading of each metric in the window, under its VSS path."""
    latest: dict[str, dict[str, Any]] = {}
    for row in records.readings:  # ordered by time: later rows replace earlier ones
        metric = metric_for(records.kind, row["metric"])
        if metric is not None and metric.standard.vss_path:
            latest[metric.standard.vss_path] = {"ts": instant(row["ts"]), "value": float(row["value"])}
    return latest
