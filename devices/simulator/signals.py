"""Believable signals from numpy, seeded and reproducible.

Everything here is pure: a `numpy.random.Generator` in, samples out. The same seed gives the
same readings. Values are rounded to what the real sensor reports, which also keeps them exact
through JSON and PostgreSQL `double precision`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

Sample = tuple[datetime, str, float]
HOUR_S = 3600
DAY_S = 86_400
AMBIENT_C = (5.0, 22.0)  # a car's ambient temperature is drawn from this range
THERMOSTAT_C = 90.0  # a warm engine's coolant temperature
WARM_UP_S = 420.0  # time constant of the warm-up towards THERMOSTAT_C
OVERHEAT_RAMP_S = 300.0  # a failing cooling system adds its excess heat linearly over this long


def rng_for(seed: int, *names: str | int) -> np.random.Generator:
    """An independent generator per (seed, device, purpose): adding a device changes no other device."""
    words = [seed & 0xFFFFFFFF] + [sum((i + 1) * ord(c) for i, c in enumerate(str(n))) for n in names]
    return np.random.default_rng(words)


@dataclass
class ImplantState:
    """An implant's slowly changing physical state; drawn once per device, then evolved day by day."""

    rest_hr_bpm: float
    lead_ra_ohm: float
    lead_rv_ohm: float
    hv_ohm: float
    battery_v: float
    longevity_months: float
    r_wave_mv: float
    p_wave_mv: float
    capture_v: float
    paced_ra_pct: float
    paced_rv_pct: float
    icd: bool = True
    rv_override_ohm: float | None = None

    @classmethod
    def draw(cls, rng: np.random.Generator, *, icd: bool = True) -> ImplantState:
        """A plausible device some years after implant."""
        return cls(
            rest_hr_bpm=float(rng.uniform(58, 72)),
            lead_ra_ohm=float(rng.uniform(420, 620)),
            lead_rv_ohm=float(rng.uniform(450, 700)),
            hv_ohm=float(rng.uniform(45, 75)),
            battery_v=float(rng.uniform(2.95, 3.1)),
            longevity_months=float(rng.uniform(70, 110)),
            r_wave_mv=float(rng.uniform(8, 14)),
            p_wave_mv=float(rng.uniform(2, 4)),
            capture_v=float(rng.uniform(0.6, 1.1)),
            paced_ra_pct=float(rng.uniform(5, 40)),
            paced_rv_pct=float(rng.uniform(1, 20)),
            icd=icd,
        )

    def age_one_day(self, rng: np.random.Generator) -> None:
        """Slow drift: impedance wanders a fraction of a percent, the battery runs down."""
        self.lead_ra_ohm *= 1 + float(rng.normal(0, 0.002))
        self.lead_rv_ohm *= 1 + float(rng.normal(0, 0.002))
        self.battery_v -= float(rng.uniform(0.0002, 0.0006))
        self.longevity_months = max(0.0, self.longevity_months - 1 / 30.4)


def heart_rate_hourly(
    rng: np.random.Generator, day_start: datetime, rest_bpm: float, af_hours: np.ndarray | None = None
) -> list[Sample]:
    """Hourly mean heart rate: low at night, higher by day, bursts of activity; faster in AF."""
    hours = np.arange(24)
    local_hour = (day_start.hour + hours) % 24
    circadian = 9.0 * np.sin(2 * np.pi * (local_hour - 10) / 24)
    awake = (local_hour >= 7) & (local_hour <= 22)
    activity = np.where(awake, rng.gamma(1.5, 6.0, 24), 0.0)
    hr = rest_bpm + circadian + activity + rng.normal(0, 2.0, 24)
    if af_hours is not None:
        hr = hr + af_hours * rng.uniform(25, 40, 24)  # irregular conduction in AF runs fast
    hr = np.clip(hr, 35, 180)
    return [
        (day_start + timedelta(hours=int(h)), "heart_rate_bpm", round(float(v), 1))
        for h, v in zip(hours, hr, strict=True)
    ]


def implant_daily(
    rng: np.random.Generator, state: ImplantState, at: datetime, af_burden_pct: float
) -> list[Sample]:
    """The once-a-day measurements an implant stores for its nightly upload."""
    rv = state.rv_override_ohm if state.rv_override_ohm is not None else state.lead_rv_ohm
    values = {
        "battery_voltage_v": round(state.battery_v + float(rng.normal(0, 0.002)), 3),
        "battery_longevity_months": round(state.longevity_months, 1),
        "lead_impedance_ra_ohm": round(state.lead_ra_ohm + float(rng.normal(0, 4)), 0),
        "lead_impedance_rv_ohm": round(rv + float(rng.normal(0, 4)), 0),
        "r_wave_mv": round(state.r_wave_mv + float(rng.normal(0, 0.3)), 1),
        "p_wave_mv": round(state.p_wave_mv + float(rng.normal(0, 0.15)), 1),
        "capture_threshold_rv_v": round(state.capture_v + float(rng.normal(0, 0.05)), 2),
        "paced_pct_ra": round(float(np.clip(state.paced_ra_pct + rng.normal(0, 2), 0, 100)), 1),
        "paced_pct_rv": round(float(np.clip(state.paced_rv_pct + rng.normal(0, 1), 0, 100)), 1),
        "af_burden_pct": round(float(np.clip(af_burden_pct, 0, 100)), 2),
    }
    if state.icd:
        values["hv_impedance_ohm"] = round(state.hv_ohm + float(rng.normal(0, 1.5)), 0)
        values["charge_time_s"] = round(float(rng.uniform(7.5, 9.5)), 2)
    return [(at, metric, float(v)) for metric, v in values.items()]


@dataclass
class VehicleState:
    """What persists between a car's trips: where it is, its fuel, battery and engine temperature."""

    lat: float
    lon: float
    heading_rad: float
    odometer_km: float
    fuel_pct: float
    battery_rest_v: float
    coolant_c: float
    ambient_c: float
    ltft_pct: float
    running: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> VehicleState:
        """A car somewhere around a mid-sized European city."""
        ambient = float(rng.uniform(*AMBIENT_C))
        return cls(
            lat=float(rng.uniform(48.0, 52.0)),
            lon=float(rng.uniform(8.0, 12.0)),
            heading_rad=float(rng.uniform(0, 2 * math.pi)),
            odometer_km=float(rng.uniform(20_000, 150_000)),
            fuel_pct=float(rng.uniform(45, 90)),
            battery_rest_v=float(rng.uniform(12.45, 12.7)),
            coolant_c=ambient,
            ambient_c=ambient,
            ltft_pct=float(rng.uniform(-3, 3)),
        )


def _speed_profile(rng: np.random.Generator, n: int, dt_s: float) -> np.ndarray:
    """Town-and-road speed: smoothed random targets with stops at lights; 0 at both ends."""
    targets = rng.choice([0, 30, 50, 50, 70, 100], size=max(2, n // 24 + 2))
    raw = np.repeat(targets, 24)[:n].astype(float)
    kernel = np.ones(6) / 6
    speed = np.convolve(raw, kernel, mode="same") + rng.normal(0, 1.5, n)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) * dt_s / 30)
    return np.clip(speed * ramp, 0, 180)


def trip(
    rng: np.random.Generator,
    state: VehicleState,
    start: datetime,
    duration_s: float,
    *,
    sample_s: float = 5.0,
    overheat_after_s: float | None = None,
    overheat_peak_c: float = 118.0,
) -> list[list[Sample]]:
    """Samples of one drive, one list per sample time; updates `state` (position, fuel, odometer)."""
    n = max(2, int(duration_s // sample_s))
    t = np.arange(n) * sample_s
    speed = _speed_profile(rng, n, sample_s)
    accel = np.gradient(speed) / sample_s
    gear_ratio = np.select([speed < 20, speed < 40, speed < 60, speed < 85], [95, 55, 40, 32], 26)
    rpm = np.clip(780 + speed * gear_ratio * 0.5 + rng.normal(0, 25, n), 700, 5500)
    load = np.clip(18 + speed * 0.25 + np.maximum(accel, 0) * 18 + rng.normal(0, 2, n), 10, 100)
    throttle = np.clip(load * 0.6 + rng.normal(0, 1.5, n), 0, 100)
    maf = np.clip(rpm * load / 100 * 0.012 + rng.normal(0, 0.3, n), 1.5, 250)
    noise = rng.normal(0, 0.3, n)
    coolant = coolant_c(t, state.coolant_c, overheat_after_s, overheat_peak_c) + noise
    oil = coolant - 8 + (t / max(t[-1], 1)) * 10
    km = np.cumsum(speed * sample_s / 3600)
    fuel = state.fuel_pct - np.cumsum(maf) * sample_s * 2.2e-4
    headings = state.heading_rad + np.cumsum(rng.normal(0, 0.08, n))
    dlat = speed * sample_s / 3600 * np.cos(headings) / 111.0
    dlon = speed * sample_s / 3600 * np.sin(headings) / (111.0 * math.cos(math.radians(state.lat)))
    lat, lon = state.lat + np.cumsum(dlat), state.lon + np.cumsum(dlon)
    volts = np.clip(14.1 + rng.normal(0, 0.06, n), 13.6, 14.6)
    columns = {
        "rpm": np.round(rpm, 0),
        "speed_kmh": np.round(speed, 0),
        "coolant_temp_c": np.round(coolant, 0),
        "oil_temp_c": np.round(oil, 0),
        "intake_temp_c": np.round(state.ambient_c + 4 + load * 0.05, 0),
        "engine_load_pct": np.round(load, 1),
        "throttle_pct": np.round(throttle, 1),
        "maf_gs": np.round(maf, 2),
        "short_fuel_trim_pct": np.round(rng.normal(0, 1.5, n), 1),
        "long_fuel_trim_pct": np.round(state.ltft_pct + rng.normal(0, 0.2, n), 1),
        "fuel_level_pct": np.round(fuel, 1),
        "module_voltage_v": np.round(volts, 2),
        "battery_voltage_v": np.round(volts - 0.05, 2),
        "odometer_km": np.round(state.odometer_km + km, 1),
        "lat": np.round(lat, 5),
        "lon": np.round(lon, 5),
    }
    state.lat, state.lon, state.heading_rad = float(lat[-1]), float(lon[-1]), float(headings[-1])
    state.odometer_km, state.fuel_pct = float(columns["odometer_km"][-1]), float(fuel[-1])
    state.coolant_c = float(coolant[-1])
    return [
        [(start + timedelta(seconds=float(t[i])), name, float(col[i])) for name, col in columns.items()]
        for i in range(n)
    ]


def coolant_c(
    t: np.ndarray, start_c: float, overheat_after_s: float | None = None, peak_c: float = 118.0
) -> np.ndarray:
    """Coolant temperature `t` seconds into a drive, before sensor noise.

    The thermostat holds a warmed-up engine at THERMOSTAT_C; the warm-up towards it is exponential.
    From `overheat_after_s` on, a failing cooling system adds up to `peak_c - THERMOSTAT_C` on top.
    """
    coolant = THERMOSTAT_C - (THERMOSTAT_C - start_c) * np.exp(-t / WARM_UP_S)
    if overheat_after_s is None:
        return coolant
    rise = np.clip((t - overheat_after_s) / OVERHEAT_RAMP_S, 0, 1)
    return coolant + rise * (peak_c - THERMOSTAT_C)


def seconds_to_reach(
    threshold_c: float,
    start_c: float,
    overheat_after_s: float,
    *,
    peak_c: float = 118.0,
    sample_s: float = 5.0,
) -> float:
    """The first sample time (seconds into the drive) whose reading, before noise, reaches `threshold_c`.

    With a cold engine the climb takes longer than `overheat_after_s` plus the ramp: the overheat adds
    to a warm-up that has not finished. Readings are whole degrees, as `trip` reports them.
    Raises ValueError if the curve never gets there.
    """
    horizon_s = overheat_after_s + OVERHEAT_RAMP_S + 20 * WARM_UP_S
    t = np.arange(0.0, horizon_s, sample_s)
    readings = np.round(coolant_c(t, start_c, overheat_after_s, peak_c), 0)
    reached = np.flatnonzero(readings >= threshold_c)
    if reached.size == 0:
        raise ValueError(f"coolant from {start_c} degC never reaches {threshold_c} degC (peak {peak_c})")
    return float(t[reached[0]])


def parked(rng: np.random.Generator, state: VehicleState, at: datetime, since_stop_s: float) -> list[Sample]:
    """A heartbeat's readings while parked: engine off, the battery at rest, the engine cooling."""
    coolant = state.ambient_c + (state.coolant_c - state.ambient_c) * math.exp(-since_stop_s / 2400)
    battery = state.battery_rest_v + float(rng.normal(0, 0.01))
    values = {
        "rpm": 0.0,
        "speed_kmh": 0.0,
        "coolant_temp_c": round(coolant, 0),
        "battery_voltage_v": round(battery, 2),
        "module_voltage_v": round(battery - 0.1, 2),
        "fuel_level_pct": round(state.fuel_pct, 1),
        "odometer_km": round(state.odometer_km, 1),
        "lat": round(state.lat, 5),
        "lon": round(state.lon, 5),
    }
    return [(at, name, float(v)) for name, v in values.items()]
