"""An implant's days through its home monitor: store and forward.

The implant measures all day; the monitor uploads the day's readings once a night (a `transmission`
event of kind `scheduled` goes with it), and sends at once after an alert-worthy episode
(`alert`) or when the patient asks (`patient`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from devices.simulator.device import Message, SimDevice
from devices.simulator.signals import DAY_S, ImplantState, Sample, heart_rate_hourly, implant_daily

ACTIONS = frozenset(
    {"af_episode", "vt_shock", "battery_eri", "lead_fracture", "silent", "patient_transmission"}
)
UPLOAD_DELAY_S = 2 * 3600  # the nightly upload happens around 02:00 after the day closes


@dataclass(frozen=True)
class Step:
    """One timeline entry: at `at_s` seconds of event time, do `action` with `args`."""

    at_s: float
    action: str
    args: dict[str, Any]


class ImplantPlan:
    """Builds the messages of one implant over a scenario's length."""

    def __init__(self, device: SimDevice, rng: np.random.Generator, start: datetime, *, icd: bool = True):
        self.device, self.rng, self.start = device, rng, start
        self.state = ImplantState.draw(rng, icd=icd)
        self.out: list[Message] = []
        self.pending: list[Message] = []  # events waiting for the next upload
        self.silent_from: float | None = None
        self.af: list[tuple[float, float]] = []  # (start_s, end_s) of AF episodes

    def build(self, length_s: float, steps: list[Step]) -> list[Message]:
        """Every message in send order (event time)."""
        steps = sorted(steps, key=lambda s: s.at_s)
        for step in steps:
            if step.action == "af_episode":
                self.af.append((step.at_s, step.at_s + float(step.args.get("duration_s", 28_800))))
            if step.action == "silent":
                self.silent_from = step.at_s
        days = int(length_s // DAY_S)
        due = list(steps)
        for day in range(days):
            day_start_s = day * DAY_S
            while due and due[0].at_s < day_start_s + DAY_S:
                self._apply(due.pop(0))
            self._day(day, day_start_s)
        self.out.sort(key=lambda m: m.send_at)
        return self.out

    def _at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def _sends(self, at_s: float) -> bool:
        return self.silent_from is None or at_s < self.silent_from

    def _apply(self, step: Step) -> None:
        ts = self._at(step.at_s)
        args = step.args
        if step.action == "af_episode":
            data = {
                "duration_s": int(args.get("duration_s", 28_800)),
                "max_v_rate_bpm": int(args.get("max_v_rate_bpm", 112)),
            }
            self._alert_transmission(step.at_s + data["duration_s"], [(ts, "af_episode", data)])
        elif step.action == "vt_shock":
            shock = {
                "energy_j": float(args.get("energy_j", 35.0)),
                "success": bool(args.get("success", True)),
            }
            vt = {
                "duration_s": int(args.get("vt_duration_s", 14)),
                "max_v_rate_bpm": int(args.get("rate", 212)),
            }
            self._alert_transmission(
                step.at_s + 120,
                [
                    (ts, "vt_episode", vt),
                    (ts + timedelta(seconds=vt["duration_s"]), "shock_delivered", shock),
                ],
            )
        elif step.action == "battery_eri":
            self.state.battery_v = float(args.get("voltage_v", 2.62))
            self.state.longevity_months = float(args.get("longevity_months", 3.0))
            self._alert_transmission(step.at_s + 60, [(ts, "battery_status", {"status": "ERI"})])
        elif step.action == "lead_fracture":
            self.state.rv_override_ohm = float(args.get("ohm", 1450))
        elif step.action == "patient_transmission":
            self._alert_transmission(step.at_s, [], kind="patient")

    def _alert_transmission(
        self, at_s: float, events: list[tuple[datetime, str, dict[str, Any]]], kind: str = "alert"
    ) -> None:
        if not self._sends(at_s):
            return
        sent = self._at(at_s)
        for ts, type_, data in events:
            self.out.append(self.device.event(ts, type_, data, sent_at=sent))
        self.out.append(self.device.event(sent, "transmission", {"kind": kind}))

    def _day(self, day: int, day_start_s: float) -> None:
        day_start = self._at(day_start_s)
        af_hours = self._af_hours(day_start_s)
        readings: list[Sample] = heart_rate_hourly(self.rng, day_start, self.state.rest_hr_bpm, af_hours)
        burden = float(af_hours.sum()) / 24 * 100 + float(self.rng.uniform(0, 0.8))
        readings += implant_daily(self.rng, self.state, day_start + timedelta(hours=3), burden)
        self.state.age_one_day(self.rng)
        upload_s = day_start_s + DAY_S + UPLOAD_DELAY_S + float(self.rng.uniform(0, 900))
        if not self._sends(upload_s):
            return
        sent = self._at(upload_s)
        self.out.append(self.device.telemetry(readings, sent))
        self.out.append(self.device.event(sent, "transmission", {"kind": "scheduled"}))

    def _af_hours(self, day_start_s: float) -> np.ndarray:
        """Share of each hour of the day spent in AF."""
        edges = day_start_s + np.arange(25) * 3600.0
        share = np.zeros(24)
        for lo, hi in self.af:
            overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, 3600)
            share += overlap / 3600
        return np.clip(share, 0, 1)
