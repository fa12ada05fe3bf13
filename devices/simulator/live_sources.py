"""What each device of a live fleet sends, as its simulated clock advances; and the incident plan.

A source is pure (no I/O): `due(until)` returns every message whose event time has come, in send
order, generating the device's days lazily from the signal generators in `signals.py`.
`command(name, at)` is what a device does after answering a command (an upload, `dtc_cleared`).

Implants store and forward: hourly heart rate, uploaded every simulated hour (a demo liberty so
the chart moves), the daily measurements with a `scheduled` transmission around 02:00, and an
`alert` transmission at once after an episode. Vehicles drive two or three trips a day (telemetry
batches every 30 s while driving) and send a heartbeat every 30 min when parked.

Incidents are drawn from the seed and cross the default rules' thresholds on purpose; everything
else stays clear of them, as the `normal` scenarios do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from devices.simulator.device import Message, SimDevice
from devices.simulator.scenarios import default_rules
from devices.simulator.signals import (
    AMBIENT_C,
    DAY_S,
    HOUR_S,
    ImplantState,
    Sample,
    VehicleState,
    heart_rate_hourly,
    implant_daily,
    parked,
    rng_for,
    seconds_to_reach,
    trip,
)

HEARTBEAT_S = 1800.0  # parked vehicle; well inside 1.5 x the default 3,600 s heartbeat_s
SAMPLE_S, BATCH_SAMPLES = 5.0, 6  # vehicle telemetry: a 5 s sample, a batch every 30 s
OUTBOX_MAX = 1000  # messages waiting after commands; more means nobody drains them
OVERHEAT_AFTER_S = 600.0  # an overheating incident's drive: the cooling fails this far in
# Incident kind -> (device kind, the rules it must trip, when its alert is due: seconds after the
# simulated clock has caught up with the wall clock). Placing them after the catch-up makes them current
# alerts that page, not late ones recorded from a backlog.
INCIDENTS: dict[str, tuple[str, tuple[str, ...], tuple[float, float]]] = {
    "af_episode": ("implant", ("implant.af_burden_high",), (30.0, 120.0)),
    "overheating": ("vehicle", ("vehicle.overheating",), (60.0, 180.0)),
    "new_dtc": ("vehicle", ("vehicle.dtc_confirmed", "vehicle.mil_on"), (90.0, 240.0)),
    "battery_eri": ("implant", ("implant.battery_eri",), (180.0, 420.0)),
}
REPEAT_EVERY_S = 15 * 60  # the n-th incident of a kind on a large fleet comes this much later
DEVICES_PER_INCIDENT = 10  # one incident of each kind per ten devices of its kind (at least one)


@dataclass(frozen=True)
class Incident:
    """A planned incident: which device, what, when (seconds from the live start) and its alerts."""

    device_id: str
    action: str
    at_s: float
    rules: tuple[str, ...]
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """For the `--json` summary."""
        return {
            "device_id": self.device_id,
            "action": self.action,
            "at_s": round(self.at_s),
            "rules": list(self.rules),
            **self.args,
        }


def incident_plan(devices: list[tuple[str, str]], seed: int, catch_up_s: float = 0.0) -> list[Incident]:
    """Seeded incidents for `devices` (device_id, kind): the same seed and fleet give the same plan.

    `catch_up_s` is when (seconds from the live start, in event time) the simulated clock reaches the
    wall clock; every incident's alert falls due a few minutes after it.
    """
    rng = rng_for(seed, "live-incidents")
    plan: list[Incident] = []
    for action, (kind, rules, (lo, hi)) in INCIDENTS.items():
        ids = [d for d, k in devices if k == kind]
        if not ids:
            continue
        order = rng.permutation(len(ids))
        for n in range(max(1, len(ids) // DEVICES_PER_INCIDENT)):
            device_id = ids[int(order[(n * 2 + (action == "battery_eri")) % len(ids)])]
            due_s = catch_up_s + float(rng.uniform(lo, hi)) + n * REPEAT_EVERY_S
            args = _incident_args(action, rng)
            plan.append(Incident(device_id, action, round(due_s - _lead_s(action, args)), rules, args))
    return sorted(plan, key=lambda i: i.at_s)


def _lead_s(action: str, args: dict[str, Any]) -> float:
    """How long before its alert is due an incident starts."""
    if action == "af_episode":  # the alert transmission follows the episode's end
        return float(args["duration_s"]) + 120
    if action == "overheating":
        return _overheating_lead_s(float(args["overheat_after_s"]), float(args["peak_c"]))
    return 0.0


def _overheating_lead_s(overheat_after_s: float, peak_c: float) -> float:
    """From the start of the drive until the overheating rule fires, read off the coolant signal.

    The car starts cold (parked for hours), so its coolant is at ambient. Assuming the warmest ambient
    gives the shortest climb: a colder car pages a little later than planned, never before the clock
    has caught up.
    """
    rule = default_rules()["vehicle"]["vehicle.overheating"]
    climb_s = seconds_to_reach(float(rule["value"]), AMBIENT_C[1], overheat_after_s, peak_c=peak_c)
    return climb_s + float(rule["for_s"])


def _incident_args(action: str, rng: np.random.Generator) -> dict[str, Any]:
    if action == "af_episode":  # > 6 h of AF: a burden > 25 % of the day
        return {"duration_s": int(rng.uniform(7, 8) * HOUR_S), "max_v_rate_bpm": int(rng.uniform(105, 118))}
    if action == "overheating":  # >= 110 degC for far longer than the rule's 60 s, engine running
        return {
            "duration_s": int(rng.uniform(35, 45) * 60),
            "overheat_after_s": OVERHEAT_AFTER_S,
            "peak_c": 118.0,
        }
    if action == "new_dtc":
        return {"code": str(rng.choice(["P0171", "P0420", "P0455", "P0128"]))}
    return {"voltage_v": 2.62, "longevity_months": 3.0}


class LiveImplant:
    """An implant and its home monitor, hour by hour from `start` on."""

    def __init__(
        self, device: SimDevice, seed: int, origin: datetime, start: datetime, incidents: list[Incident]
    ):
        self.device, self.origin = device, origin
        self.rng = rng_for(seed, device.device_id, "live")
        self.state = ImplantState.draw(self.rng)
        self.offset = timedelta(minutes=float(self.rng.uniform(1, 50)))  # its own upload minute
        self.hour = start.replace(minute=0, second=0, microsecond=0)
        self.measured: list[Sample] = []  # stored in the implant, not yet uploaded
        self.days_done: set[datetime] = set()
        self.incidents = sorted(incidents, key=self._fires_at)  # in the order they go out
        self.af = [
            (origin + timedelta(seconds=i.at_s), origin + timedelta(seconds=i.at_s + i.args["duration_s"]))
            for i in incidents
            if i.action == "af_episode"
        ]
        self.outbox: list[Message] = []

    def due(self, until: datetime) -> list[Message]:
        """Everything sent up to `until` (event time).

        An incident goes out when it happens (the home monitor's alert transmission), not at the next
        hourly upload: waiting for that would page the clinic up to an hour late.
        """
        out, self.outbox = self.outbox, []
        while self.hour + self.offset <= until:
            out += self._hour(self.hour, self.hour + self.offset)
            self.hour += timedelta(hours=1)
        return out + self._incidents(until)

    def command(self, name: str, at: datetime) -> list[Message]:
        """After an `ok` reply: `request_transmission` uploads what the implant has stored."""
        if name != "request_transmission" or len(self.outbox) > OUTBOX_MAX:
            return []
        self.outbox += self._upload(at, "remote")
        return self.outbox

    def _hour(self, hour: datetime, at: datetime) -> list[Message]:
        day = hour.replace(hour=0)
        if day not in self.days_done:
            self.days_done.add(day)
            self.measured += heart_rate_hourly(self.rng, day, self.state.rest_hr_bpm, self._af_hours(day))
        out = self._incidents(at)
        if hour.hour == 2:
            yesterday = day - timedelta(days=1)
            burden = float(self._af_hours(yesterday).sum()) / 24 * 100 + float(self.rng.uniform(0, 0.8))
            self.measured += implant_daily(self.rng, self.state, at, burden)
            self.state.age_one_day(self.rng)
            return out + self._upload(at, "scheduled")
        return out + self._upload(at, None)

    def _upload(self, at: datetime, kind: str | None) -> list[Message]:
        """Readings complete by `at` (an hourly mean once its hour is over); a transmission event.

        A requested (`remote`) transmission also sends the running mean of the current hour.
        """
        whole = timedelta(0) if kind == "remote" else timedelta(hours=1)
        ready = [s for s in self.measured if s[0] + whole <= at or s[1] != "heart_rate_bpm"]
        ready = [s for s in ready if s[0] <= at]
        self.measured = [s for s in self.measured if s not in ready]
        out = [self.device.telemetry(ready, at)] if ready else []
        if kind is not None:
            out.append(self.device.event(at, "transmission", {"kind": kind}))
        return out

    def _incidents(self, until: datetime) -> list[Message]:
        """The planned incidents that have happened by `until`, each sent once."""
        out: list[Message] = []
        while self.incidents and self.origin + timedelta(seconds=self._fires_at(self.incidents[0])) <= until:
            out += self._incident(self.incidents.pop(0))
        return out

    @staticmethod
    def _fires_at(incident: Incident) -> float:
        if incident.action == "af_episode":  # the alert transmission follows the episode's end
            return incident.at_s + float(incident.args["duration_s"]) + 120
        return incident.at_s

    def _incident(self, incident: Incident) -> list[Message]:
        at = self.origin + timedelta(seconds=self._fires_at(incident))
        began = self.origin + timedelta(seconds=incident.at_s)
        if incident.action == "af_episode":
            data = {k: incident.args[k] for k in ("duration_s", "max_v_rate_bpm")}
            burden = min(100.0, round(float(incident.args["duration_s"]) / DAY_S * 100, 2))
            return [
                self.device.event(began, "af_episode", data, sent_at=at),
                self.device.telemetry([(at, "af_burden_pct", burden)], at),
                self.device.event(at, "transmission", {"kind": "alert"}),
            ]
        self.state.battery_v = float(incident.args["voltage_v"])
        self.state.longevity_months = float(incident.args["longevity_months"])
        return [
            self.device.event(began, "battery_status", {"status": "ERI"}),
            self.device.event(at, "transmission", {"kind": "alert"}),
        ]

    def _af_hours(self, day: datetime) -> np.ndarray:
        """Share of each hour of `day` spent in AF."""
        share = np.zeros(24)
        for lo, hi in self.af:
            for h in range(24):
                a, b = max(day + timedelta(hours=h), lo), min(day + timedelta(hours=h + 1), hi)
                share[h] += max(0.0, (b - a).total_seconds()) / HOUR_S
        return np.clip(share, 0, 1)


@dataclass(frozen=True)
class _Trip:
    start: datetime
    duration_s: float
    overheat_after_s: float | None = None  # an incident's drive: when its cooling fails
    peak_c: float = 118.0


class LiveVehicle:
    """A car and its OBD dongle: trips on a daily routine, heartbeats when parked."""

    def __init__(
        self, device: SimDevice, seed: int, origin: datetime, start: datetime, incidents: list[Incident]
    ):
        self.device, self.origin = device, origin
        self.rng = rng_for(seed, device.device_id, "live")
        self.state = VehicleState.draw(self.rng)
        self.cursor = start  # event time generated up to
        self.stopped_at = start - timedelta(hours=6)  # parked overnight
        self.queue: list[Message] = []
        self.outbox: list[Message] = []
        self.dtcs: list[str] = []
        self.trips: list[_Trip] = [
            _Trip(
                origin + timedelta(seconds=i.at_s),
                float(i.args["duration_s"]),
                float(i.args["overheat_after_s"]),
                float(i.args["peak_c"]),
            )
            for i in incidents
            if i.action == "overheating"
        ]
        self.dtc_incidents = sorted((i for i in incidents if i.action == "new_dtc"), key=lambda i: i.at_s)
        self.planned_until = start.replace(hour=0, minute=0, second=0, microsecond=0)
        self.first = True

    def due(self, until: datetime) -> list[Message]:
        """Everything sent up to `until` (event time)."""
        out, self.outbox = self.outbox, []
        while self.dtc_incidents and self.origin + timedelta(seconds=self.dtc_incidents[0].at_s) <= until:
            out += self._dtc(self.dtc_incidents.pop(0))
        while True:
            if not self.queue:
                self._next_segment()
            if self.queue[0].send_at > until:
                break
            out.append(self.queue.pop(0))
        out.sort(key=lambda m: m.send_at)
        return out

    def command(self, name: str, at: datetime) -> list[Message]:
        """After an `ok` reply: `clear_dtc` clears the stored codes (and the lamp) and says so."""
        if name != "clear_dtc" or len(self.outbox) > OUTBOX_MAX:
            return []
        self.outbox.append(self.device.event(at, "dtc_cleared", {"codes": list(self.dtcs)}))
        if self.dtcs:
            self.outbox.append(self.device.event(at, "mil_off", {}))
        self.dtcs = []
        return self.outbox

    def _dtc(self, incident: Incident) -> list[Message]:
        at = self.origin + timedelta(seconds=incident.at_s)
        code = str(incident.args["code"])
        self.dtcs.append(code)
        return [
            self.device.event(at, "dtc_set", {"code": code, "state": "confirmed"}),
            self.device.event(at + timedelta(seconds=1), "mil_on", {"codes": list(self.dtcs)}),
        ]

    def _next_segment(self) -> None:
        """The next trip if it starts before the next heartbeat is due, else that heartbeat."""
        beat = self.cursor if self.first else self.cursor + timedelta(seconds=HEARTBEAT_S)
        self.first = False
        upcoming = self._next_trip(self.cursor)
        if upcoming.start <= beat:
            self.cursor = self._drive(upcoming)
            return
        readings = parked(self.rng, self.state, beat, (beat - self.stopped_at).total_seconds())
        self.queue += [self.device.telemetry(readings, beat), self.device.event(beat, "heartbeat", {})]
        self.cursor = beat

    def _next_trip(self, after: datetime) -> _Trip:
        while True:
            self.trips.sort(key=lambda t: t.start)
            upcoming = [t for t in self.trips if t.start >= after]
            if upcoming:
                self.trips = upcoming
                return upcoming[0]
            self._plan_day(self.planned_until)
            self.planned_until += timedelta(days=1)

    def _plan_day(self, day: datetime) -> None:
        """A routine: to work, maybe an errand at lunch, home again."""
        r = self.rng
        times = [
            (7 * 60 + r.uniform(0, 90), r.uniform(18, 40)),
            (16 * 60 + r.uniform(30, 150), r.uniform(18, 40)),
        ]
        if r.uniform() < 0.5:
            times.append((11 * 60 + r.uniform(0, 150), r.uniform(8, 25)))
        for minute, length in times:
            self.trips.append(_Trip(day + timedelta(minutes=float(minute)), float(length) * 60))

    def _drive(self, t: _Trip) -> datetime:
        st = self.state
        since = (t.start - self.stopped_at).total_seconds()
        st.coolant_c = st.ambient_c + (st.coolant_c - st.ambient_c) * float(np.exp(-since / 2400))
        if st.fuel_pct < 25:  # filled up on the way
            st.fuel_pct = float(self.rng.uniform(80, 95))
        samples = trip(
            self.rng,
            st,
            t.start,
            t.duration_s,
            sample_s=SAMPLE_S,
            overheat_after_s=t.overheat_after_s,
            overheat_peak_c=t.peak_c,
        )
        self.queue.append(self.device.event(t.start, "ignition_on", {}))
        for i in range(0, len(samples), BATCH_SAMPLES):
            batch = [r for sample in samples[i : i + BATCH_SAMPLES] for r in sample]
            self.queue.append(self.device.telemetry(batch, batch[-1][0] + timedelta(seconds=1)))
        end = t.start + timedelta(seconds=len(samples) * SAMPLE_S)
        self.queue.append(self.device.event(end + timedelta(seconds=1), "ignition_off", {}))
        # Routine trips overlapping this one never happen; an incident's trip is only put off.
        later = end + timedelta(minutes=15)
        self.trips = [
            x if x.start > end else replace(x, start=later)
            for x in self.trips
            if x is not t and (x.start > end or x.overheat_after_s is not None)
        ]
        self.stopped_at = end
        return end + timedelta(seconds=1)
