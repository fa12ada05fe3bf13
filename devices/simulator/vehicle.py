"""A car's day through its OBD-II dongle: live telemetry while driving, a heartbeat when parked.

While the engine runs the dongle samples every 5 s and sends a batch every 30 s; parked, it sends
a heartbeat (event `heartbeat` plus a few readings) every 30 min, well inside 1.5 x the default
3,600 s `heartbeat_s`. Ignition, trouble codes and unplugging are pushed at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np

from devices.simulator.device import Message, SimDevice
from devices.simulator.implant import Step
from devices.simulator.signals import Sample, VehicleState, parked, trip

ACTIONS = frozenset({"trip", "dtc", "battery_drain", "unplug"})
SAMPLE_S = 5.0
BATCH_SAMPLES = 6
HEARTBEAT_S = 1800.0


class VehiclePlan:
    """Builds the messages of one vehicle over a scenario's length."""

    def __init__(self, device: SimDevice, rng: np.random.Generator, start: datetime):
        self.device, self.rng, self.start = device, rng, start
        self.state = VehicleState.draw(rng)
        self.out: list[Message] = []
        self.stopped_at_s = -4 * 3600.0  # parked overnight before the scenario starts
        self.drain: tuple[float, float, float, float] | None = None  # (from_s, to_s, from_v, to_v)
        self.unplugged: tuple[float, float] | None = None

    def build(self, length_s: float, steps: list[Step]) -> list[Message]:
        """Every message in send order (event time)."""
        now_s = 0.0
        for step in sorted(steps, key=lambda s: s.at_s):
            self._park_until(now_s, step.at_s)
            now_s = max(now_s, step.at_s)
            now_s = self._apply(step, now_s)
        self._park_until(now_s, length_s)
        self.out.sort(key=lambda m: m.send_at)
        return self.out

    def _at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def _apply(self, step: Step, now_s: float) -> float:
        args = step.args
        if step.action == "trip":
            return self._trip(now_s, args)
        if step.action == "dtc":
            self._dtc(step.at_s, args)  # pushed at once, even in the middle of a trip
        elif step.action == "battery_drain":
            over_s = float(args.get("over_s", 43_200))
            self.drain = (now_s, now_s + over_s, self.state.battery_rest_v, float(args.get("to_v", 11.6)))
        elif step.action == "unplug":
            self.unplugged = (now_s, now_s + float(args.get("for_s", 1200)))
            self.out.append(self.device.event(self._at(now_s), "dongle_unplugged", {}))
            self.out.append(Message("", b"", self._at(now_s + 1), action="drop"))
        return now_s

    def _dtc(self, now_s: float, args: dict[str, Any]) -> None:
        ts = self._at(now_s)
        code, state = str(args.get("code", "P0442")), str(args.get("state", "pending"))
        self.out.append(self.device.event(ts, "dtc_set", {"code": code, "state": state}))
        if args.get("mil"):
            self.out.append(self.device.event(ts + timedelta(seconds=1), "mil_on", {"codes": [code]}))

    def _trip(self, now_s: float, args: dict[str, Any]) -> float:
        duration_s = float(args.get("duration_s", 1800))
        since = now_s - self.stopped_at_s
        st = self.state
        st.coolant_c = st.ambient_c + (st.coolant_c - st.ambient_c) * float(np.exp(-since / 2400))
        overheat = args.get("overheat_after_s")
        samples = trip(
            self.rng,
            st,
            self._at(now_s),
            duration_s,
            sample_s=SAMPLE_S,
            overheat_after_s=float(overheat) if overheat is not None else None,
            overheat_peak_c=float(args.get("overheat_peak_c", 118)),
        )
        self.out.append(self.device.event(self._at(now_s), "ignition_on", {}))
        for i in range(0, len(samples), BATCH_SAMPLES):
            batch = [r for sample in samples[i : i + BATCH_SAMPLES] for r in sample]
            self.out.append(self.device.telemetry(batch, batch[-1][0] + timedelta(seconds=1)))
        end_s = now_s + len(samples) * SAMPLE_S
        self.out.append(self.device.event(self._at(end_s), "ignition_off", {}))
        self.stopped_at_s = end_s
        return end_s

    def _park_until(self, from_s: float, to_s: float) -> None:
        """Heartbeats every HEARTBEAT_S from the last one up to `to_s`."""
        beat_s = from_s + (HEARTBEAT_S if self.out else 60.0)
        while beat_s < to_s:
            if self.unplugged and self.unplugged[0] <= beat_s:
                back_s = self.unplugged[1]
                if back_s >= to_s:
                    break
                self._replug(back_s)
                beat_s = max(beat_s, back_s + 30)
                continue
            self._battery_at(beat_s)
            at = self._at(beat_s)
            readings: list[Sample] = parked(self.rng, self.state, at, beat_s - self.stopped_at_s)
            self.out.append(self.device.telemetry(readings, at))
            self.out.append(self.device.event(at, "heartbeat", {}))
            beat_s += HEARTBEAT_S

    def _replug(self, at_s: float) -> None:
        """Power returns: the dongle boots (new boot_id, seq from 0) and says so."""
        self.unplugged = None
        self.device.reboot()
        self.out.append(self.device.event(self._at(at_s), "dongle_plugged", {}))

    def _battery_at(self, at_s: float) -> None:
        if self.drain is None:
            return
        lo, hi, v0, v1 = self.drain
        share = min(1.0, max(0.0, (at_s - lo) / (hi - lo)))
        self.state.battery_rest_v = v0 + (v1 - v0) * share
