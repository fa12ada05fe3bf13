"""Live incidents go out when they happen, and the overheating timings are read off the signal itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices.simulator import scenarios
from devices.simulator.device import Message, SimDevice
from devices.simulator.live_sources import (
    INCIDENTS,
    OVERHEAT_AFTER_S,
    Incident,
    LiveImplant,
    LiveVehicle,
    incident_plan,
)
from devices.simulator.signals import AMBIENT_C, VehicleState, rng_for, seconds_to_reach, trip

ORIGIN = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
OVERHEATING = scenarios.default_rules()["vehicle"]["vehicle.overheating"]
HOT_C, HELD_S = float(OVERHEATING["value"]), float(OVERHEATING["for_s"])
SAMPLE_S = 5.0


def events(messages: list[Message]) -> list[tuple[str, datetime]]:
    return [(m.event[1], m.send_at) for m in messages if m.event is not None]


def implant_incident(action: str, happens: datetime) -> Incident:
    """A planned incident whose alert transmission goes out at `happens`."""
    if action == "battery_eri":
        return Incident(
            "icd-late",
            action,
            (happens - ORIGIN).total_seconds(),
            ("implant.battery_eri",),
            {"voltage_v": 2.62, "longevity_months": 3.0},
        )
    duration_s = 7 * 3600  # ends 120 s before its alert transmission
    at_s = (happens - ORIGIN).total_seconds() - duration_s - 120
    args = {"duration_s": duration_s, "max_v_rate_bpm": 112}
    return Incident("icd-late", action, at_s, ("implant.af_burden_high",), args)


@pytest.mark.parametrize(
    ("action", "event"), [("battery_eri", "battery_status"), ("af_episode", "af_episode")]
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_implant_incident_goes_out_when_it_happens_not_at_the_next_upload(
    action: str, event: str, seed: int
) -> None:
    device = SimDevice("icd-late", "implant")
    twin = LiveImplant(device, seed, ORIGIN, ORIGIN - timedelta(hours=3), [])
    twin.due(ORIGIN)
    next_upload = twin.hour + twin.offset  # this implant's first hourly upload after ORIGIN
    happens = next_upload + timedelta(minutes=20)  # 40 minutes before the upload after that
    source = LiveImplant(
        SimDevice("icd-late", "implant"),
        seed,
        ORIGIN,
        ORIGIN - timedelta(hours=3),
        [implant_incident(action, happens)],
    )
    source.due(ORIGIN)
    source.due(next_upload)
    sent = events(source.due(happens))
    assert event in {e for e, _ in sent}, sent
    assert ("transmission", happens) in sent  # the alert transmission, at once
    later = events(source.due(happens + timedelta(days=2)))
    assert event not in {e for e, _ in later}  # sent once


def test_the_live_fleet_sends_each_implant_incident_once() -> None:
    fleet = [(f"icd-{n}", "implant") for n in range(10)]
    plan = incident_plan(fleet, 4, catch_up_s=3600)
    sent: list[tuple[str, str]] = []
    for device_id, _ in fleet:
        mine = [i for i in plan if i.device_id == device_id]
        source = LiveImplant(SimDevice(device_id, "implant"), 4, ORIGIN, ORIGIN - timedelta(hours=3), mine)
        for minute in range(0, 3 * 24 * 60, 7):
            sent += [(device_id, e) for e, _ in events(source.due(ORIGIN + timedelta(minutes=minute)))]
    wanted = {"af_episode": "af_episode", "battery_eri": "battery_status"}
    got = sorted((d, e) for d, e in sent if e in wanted.values())
    assert got == sorted((i.device_id, wanted[i.action]) for i in plan)


def first_hot_s(samples: list[list[tuple[datetime, str, float]]]) -> float:
    start = samples[0][0][0]
    for row in samples:
        reading = {name: value for _, name, value in row}
        if reading["coolant_temp_c"] >= HOT_C:
            return (row[0][0] - start).total_seconds()
    raise AssertionError("never reached the overheating threshold")


@pytest.mark.parametrize("start_c", [AMBIENT_C[0], sum(AMBIENT_C) / 2, AMBIENT_C[1], 60.0, 90.0])
def test_seconds_to_reach_agrees_with_the_coolant_signal(start_c: float) -> None:
    predicted = seconds_to_reach(HOT_C, start_c, OVERHEAT_AFTER_S)
    for seed in range(12):
        rng = rng_for(seed, "climb")
        state = VehicleState.draw(rng)
        state.coolant_c = start_c
        samples = trip(rng, state, ORIGIN, 2400, sample_s=SAMPLE_S, overheat_after_s=OVERHEAT_AFTER_S)
        # Sensor noise (0.3 degC) moves the crossing by a few samples where the curve is flat.
        assert abs(first_hot_s(samples) - predicted) <= 8 * SAMPLE_S, (seed, predicted)
    # A cold engine is still warming up when the cooling fails: the climb takes longer than the ramp.
    assert seconds_to_reach(HOT_C, AMBIENT_C[1], OVERHEAT_AFTER_S) > OVERHEAT_AFTER_S + 240


def alert_due(messages: list[Message]) -> datetime:
    """When `vehicle.overheating` fires on these readings: hot with the engine running, held for_s."""
    rows: dict[datetime, dict[str, float]] = {}
    for m in messages:
        for ts, name, value in m.readings:
            rows.setdefault(ts, {})[name] = value
    held: datetime | None = None
    for ts in sorted(rows):
        row = rows[ts]
        if "coolant_temp_c" not in row:
            continue
        if row["coolant_temp_c"] >= HOT_C and row.get("rpm", 0) > 0:
            held = held or ts
            if (ts - held).total_seconds() >= HELD_S:
                return ts
        else:
            held = None
    raise AssertionError("the overheating rule never fires")


@pytest.mark.parametrize("seed", range(1, 13))
def test_an_overheating_incident_pages_a_few_minutes_after_the_clock_catches_up(seed: int) -> None:
    catch_up_s = 3600.0
    fleet = [(f"veh-{n}", "vehicle") for n in range(3)]
    origin = ORIGIN + timedelta(hours=5 * seed)  # drives at all hours of the day
    plan = incident_plan(fleet, seed, catch_up_s)
    incident = next(i for i in plan if i.action == "overheating")
    mine = [i for i in plan if i.device_id == incident.device_id]
    source = LiveVehicle(
        SimDevice(incident.device_id, "vehicle"), seed, origin, origin - timedelta(hours=2), mine
    )
    messages = source.due(origin + timedelta(seconds=incident.at_s + 7200))
    after_catch_up_s = (alert_due(messages) - origin).total_seconds() - catch_up_s
    lo, hi = INCIDENTS["overheating"][2]
    # The plan assumes the warmest parked engine; a colder one climbs for longer, and so pages later.
    colder_s = seconds_to_reach(HOT_C, AMBIENT_C[0], OVERHEAT_AFTER_S) - seconds_to_reach(
        HOT_C, AMBIENT_C[1], OVERHEAT_AFTER_S
    )
    assert lo - 2 * SAMPLE_S <= after_catch_up_s <= hi + colder_s + 8 * SAMPLE_S, incident


def test_the_overheating_scenario_holds_the_rule_as_it_says() -> None:
    scenario = scenarios.load("overheating")
    step = scenario.timeline[0]
    for seed in range(1, 6):
        messages = scenarios.build_plan(
            scenario,
            SimDevice("veh-x", "vehicle"),
            seed=seed,
            start=ORIGIN - timedelta(days=1),
            wall_now=ORIGIN,
        )
        on = next(at for e, at in events(messages) if e == "ignition_on")
        off = next(at for e, at in events(messages) if e == "ignition_off")
        coolant = [(ts, v) for m in messages for ts, name, v in m.readings if name == "coolant_temp_c"]
        hot = [ts for ts, v in coolant if on <= ts <= off and v >= HOT_C]
        climb_s = (hot[0] - on).total_seconds()
        after_s = float(step.args["overheat_after_s"])
        fastest, slowest = (seconds_to_reach(HOT_C, c, after_s) for c in reversed(AMBIENT_C))
        assert fastest - 8 * SAMPLE_S <= climb_s <= slowest + 8 * SAMPLE_S
        assert 19 * 60 <= climb_s <= 20 * 60 and (hot[-1] - hot[0]).total_seconds() >= 20 * 60
        assert HELD_S <= (alert_due(messages) - hot[0]).total_seconds() <= HELD_S + 60
