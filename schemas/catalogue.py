"""The metric catalogue: every metric a device kind may report, its unit and its possible range.

Ranges are what the sensor can physically report (`docs/domain.md`), not what is normal:
a reading outside them is an error in transit or in the device, and is quarantined.
Clinical metrics are never shown to a device's vendor.

Each metric also carries how the outside world names it (`Standard`): its UCUM unit, its IEEE
11073-10101/10103 (MDC/IDC) code where one is published, and its COVESA VSS path for vehicles.
`docs/interop.md` lists them with their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class DeviceKind(StrEnum):
    IMPLANT = "implant"
    VEHICLE = "vehicle"


# Code systems of exported metrics: IEEE 11073-10101 (which holds the 10103 IDC terms), and ours for
# metrics that have no published code.
MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
PULSEWIRE_METRIC_SYSTEM = "urn:pulsewire:fhir:metric"
UCUM_SYSTEM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Standard:
    """How a metric is named outside Pulsewire.

    `ieee_code` is the numeric code in `MDC_SYSTEM` and `ieee_term` its reference id; both empty when
    no code is published (or none we could verify): such a metric is exported in
    `PULSEWIRE_METRIC_SYSTEM`. `vss_path` is the COVESA VSS 4.x signal of a vehicle metric.
    """

    ucum: str
    ieee_code: int | None = None
    ieee_term: str = ""
    vss_path: str = ""


@dataclass(frozen=True)
class Metric:
    """One catalogue entry."""

    name: str
    unit: str
    low: float
    high: float
    clinical: bool = False
    description: str = ""
    standard: Standard = Standard(ucum="1")

    def admits(self, value: float) -> bool:
        """Whether `value` is physically possible for this metric."""
        return self.low <= value <= self.high


def _m(name: str, unit: str, low: float, high: float, description: str, *, clinical: bool = False) -> Metric:
    return Metric(name, unit, low, high, clinical, description)


_IMPLANT = [
    _m("heart_rate_bpm", "bpm", 20, 300, "heart rate", clinical=True),
    _m("battery_voltage_v", "V", 0, 4, "battery voltage"),
    _m("battery_longevity_months", "months", 0, 240, "remaining battery longevity"),
    _m("charge_time_s", "s", 0, 60, "ICD capacitor charge time"),
    _m("lead_impedance_ra_ohm", "ohm", 0, 10_000, "right atrial lead impedance"),
    _m("lead_impedance_rv_ohm", "ohm", 0, 10_000, "right ventricular lead impedance"),
    _m("lead_impedance_lv_ohm", "ohm", 0, 10_000, "left ventricular lead impedance"),
    _m("hv_impedance_ohm", "ohm", 0, 200, "high-voltage (shock) lead impedance"),
    _m("r_wave_mv", "mV", 0, 30, "R-wave sensing amplitude"),
    _m("p_wave_mv", "mV", 0, 30, "P-wave sensing amplitude"),
    _m("capture_threshold_rv_v", "V", 0, 10, "RV pacing capture threshold"),
    _m("paced_pct_ra", "%", 0, 100, "atrial pacing percentage", clinical=True),
    _m("paced_pct_rv", "%", 0, 100, "ventricular pacing percentage", clinical=True),
    _m("biv_paced_pct", "%", 0, 100, "biventricular pacing percentage", clinical=True),
    _m("af_burden_pct", "%", 0, 100, "share of the day in atrial fibrillation", clinical=True),
]

_VEHICLE = [
    _m("rpm", "rpm", 0, 16_383.75, "engine speed"),
    _m("speed_kmh", "km/h", 0, 255, "vehicle speed"),
    _m("coolant_temp_c", "degC", -40, 215, "engine coolant temperature"),
    _m("intake_temp_c", "degC", -40, 215, "intake air temperature"),
    _m("engine_load_pct", "%", 0, 100, "calculated engine load"),
    _m("throttle_pct", "%", 0, 100, "throttle position"),
    _m("maf_gs", "g/s", 0, 655.35, "mass air flow"),
    _m("short_fuel_trim_pct", "%", -100, 99.2, "short-term fuel trim, bank 1"),
    _m("long_fuel_trim_pct", "%", -100, 99.2, "long-term fuel trim, bank 1"),
    _m("fuel_level_pct", "%", 0, 100, "fuel tank level"),
    _m("module_voltage_v", "V", 0, 65.535, "control module voltage"),
    _m("battery_voltage_v", "V", 0, 30, "battery voltage at the adapter"),
    _m("oil_temp_c", "degC", -40, 215, "engine oil temperature"),
    # Location identifies the driver: treated like clinical data, never shown to a vendor.
    _m("odometer_km", "km", 0, 2_000_000, "odometer"),
    _m("lat", "deg", -90, 90, "latitude", clinical=True),
    _m("lon", "deg", -180, 180, "longitude", clinical=True),
]

_S = Standard
# Codes as published in HL7 CardX-CIED's IDCO example (721344, 721472, 721728, 722432) and in the IDC
# term lists of the iCARDEA project (RV/LV chamber variants, HV impedance 722624); heart rate is
# MDC_ECG_HEART_RATE of 11073-10101. Pacing percentages, AF burden and sensing amplitudes have IDC
# terms whose numeric codes we could not verify from a public source: they stay in our system.
_IMPLANT_STANDARDS = {
    "heart_rate_bpm": _S("/min", 147842, "MDC_ECG_HEART_RATE"),
    "battery_voltage_v": _S("V", 721344, "MDC_IDC_MSMT_BATTERY_VOLTAGE"),
    "battery_longevity_months": _S("mo", 721472, "MDC_IDC_MSMT_BATTERY_REMAINING_LONGEVITY"),
    "charge_time_s": _S("s", 721728, "MDC_IDC_MSMT_CAP_CHARGE_TIME"),
    "lead_impedance_ra_ohm": _S("Ohm", 722432, "MDC_IDC_MSMT_LEADCHNL_RA_IMPEDANCE_VALUE"),
    "lead_impedance_rv_ohm": _S("Ohm", 722433, "MDC_IDC_MSMT_LEADCHNL_RV_IMPEDANCE_VALUE"),
    "lead_impedance_lv_ohm": _S("Ohm", 722435, "MDC_IDC_MSMT_LEADCHNL_LV_IMPEDANCE_VALUE"),
    "hv_impedance_ohm": _S("Ohm", 722624, "MDC_IDC_MSMT_LEADHVCHNL_IMPEDANCE"),
    "r_wave_mv": _S("mV"),
    "p_wave_mv": _S("mV"),
    "capture_threshold_rv_v": _S("V", 722177, "MDC_IDC_MSMT_LEADCHNL_RV_PACING_THRESHOLD_AMPLITUDE"),
    "paced_pct_ra": _S("%"),
    "paced_pct_rv": _S("%"),
    "biv_paced_pct": _S("%"),
    "af_burden_pct": _S("%"),
}
# VSS 4.x signal paths (spec/OBD/OBD.vspec and the Vehicle tree of COVESA's specification).
_VEHICLE_STANDARDS = {
    "rpm": _S("/min", vss_path="Vehicle.OBD.EngineSpeed"),
    "speed_kmh": _S("km/h", vss_path="Vehicle.OBD.Speed"),
    "coolant_temp_c": _S("Cel", vss_path="Vehicle.OBD.CoolantTemperature"),
    "intake_temp_c": _S("Cel", vss_path="Vehicle.OBD.IntakeTemp"),
    "engine_load_pct": _S("%", vss_path="Vehicle.OBD.EngineLoad"),
    "throttle_pct": _S("%", vss_path="Vehicle.OBD.ThrottlePosition"),
    "maf_gs": _S("g/s", vss_path="Vehicle.OBD.MAF"),
    "short_fuel_trim_pct": _S("%", vss_path="Vehicle.OBD.ShortTermFuelTrim1"),
    "long_fuel_trim_pct": _S("%", vss_path="Vehicle.OBD.LongTermFuelTrim1"),
    "fuel_level_pct": _S("%", vss_path="Vehicle.OBD.FuelLevel"),
    "module_voltage_v": _S("V", vss_path="Vehicle.OBD.ControlModuleVoltage"),
    "battery_voltage_v": _S("V", vss_path="Vehicle.LowVoltageBattery.CurrentVoltage"),
    "oil_temp_c": _S("Cel", vss_path="Vehicle.OBD.OilTemperature"),
    "odometer_km": _S("km", vss_path="Vehicle.TraveledDistance"),
    "lat": _S("deg", vss_path="Vehicle.CurrentLocation.Latitude"),
    "lon": _S("deg", vss_path="Vehicle.CurrentLocation.Longitude"),
}
# Vehicle events in VSS terms: the DTC list, their count and the malfunction indicator lamp.
VSS_DTC_LIST = "Vehicle.OBD.DTCList"
VSS_DTC_COUNT = "Vehicle.OBD.Status.DTCCount"
VSS_MIL_ON = "Vehicle.OBD.Status.IsMILOn"


def _with_standards(metrics: list[Metric], standards: dict[str, Standard]) -> dict[str, Metric]:
    return {m.name: replace(m, standard=standards[m.name]) for m in metrics}


CATALOGUE: dict[DeviceKind, dict[str, Metric]] = {
    DeviceKind.IMPLANT: _with_standards(_IMPLANT, _IMPLANT_STANDARDS),
    DeviceKind.VEHICLE: _with_standards(_VEHICLE, _VEHICLE_STANDARDS),
}

IMPLANT_EVENTS = frozenset(
    {
        "af_episode",
        "vt_episode",
        "vf_episode",
        "shock_delivered",
        "atp_delivered",
        "battery_status",
        "device_reset",
        "transmission",
        "integrity_fault",
    }
)
VEHICLE_EVENTS = frozenset(
    {
        "dtc_set",
        "dtc_cleared",
        "mil_on",
        "mil_off",
        "ignition_on",
        "ignition_off",
        "dongle_unplugged",
        "dongle_plugged",
        "heartbeat",
    }
)
EVENT_TYPES: dict[DeviceKind, frozenset[str]] = {
    DeviceKind.IMPLANT: IMPLANT_EVENTS,
    DeviceKind.VEHICLE: VEHICLE_EVENTS,
}
# Events that describe the patient, not the device: never shown to a vendor.
CLINICAL_EVENTS = frozenset({"af_episode", "vt_episode", "vf_episode", "shock_delivered", "atp_delivered"})
# The event data a vendor may see, per event type: fields that describe the device (its battery, a
# fault code, a reset reason). Anything else a device sends, and every field of an event type not
# listed here, stays with the provider. The trouble codes and lamp of a car concern the owner's asset,
# not the dongle: its vendor sees that such an event happened, without its data.
VENDOR_EVENT_FIELDS: dict[str, frozenset[str]] = {
    "battery_status": frozenset({"status"}),
    "device_reset": frozenset({"reason", "code"}),
    "integrity_fault": frozenset({"code", "component", "status"}),
    "transmission": frozenset({"kind"}),
    "dongle_unplugged": frozenset(),
    "dongle_plugged": frozenset(),
    "heartbeat": frozenset(),
}
_VENDOR_VALUE_MAX_CHARS = 200


def metric_for(kind: DeviceKind | str, name: str) -> Metric | None:
    """The catalogue entry for `name` on devices of `kind`, or None when it is unknown."""
    return CATALOGUE[DeviceKind(kind)].get(name)


def is_clinical_metric(name: str) -> bool:
    """Whether a metric of that name is clinical (or identifying) on any device kind."""
    return any(m.clinical for kind in CATALOGUE.values() if (m := kind.get(name)) is not None)


def is_clinical_event(event_type: str) -> bool:
    """Whether an event of that type describes the patient (or driver) rather than the device."""
    return event_type in CLINICAL_EVENTS


def vendor_event_data(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The fields of an event's data its device's vendor may see: whitelisted, scalar, short."""
    allowed = VENDOR_EVENT_FIELDS.get(event_type, frozenset())
    return {
        key: value
        for key, value in data.items()
        if key in allowed
        and isinstance(value, int | float | str | bool)
        and not (isinstance(value, str) and len(value) > _VENDOR_VALUE_MAX_CHARS)
    }
