"""Scenarios as data: a timeline in event time plus the alerts it must produce.

A scenario file (`scenarios/*.yaml`)::

    name: af_episode
    kind: implant                 # implant | vehicle
    length: 6d                    # event time covered; the clock ends just before now
    time_scale: 172800            # event seconds per wall second when run
    timeline:
      - {at: 5d6h, do: af_episode, duration_s: 28800, max_v_rate_bpm: 112}
    faults: {malformed: {}}       # optional, see faults.py
    base: normal_commute          # optional: inherit kind, length, timeline from another scenario
    expect:
      - {rule: implant.af_burden_high, severity: yellow, audience: [provider]}

Expected alerts are checked against `schemas/rules/defaults.yaml` when loaded: the rule must exist
for the kind, and the audience must follow its class (technical: provider and vendor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

import schemas
from devices.simulator import faults, implant, vehicle
from devices.simulator.device import Message, SimDevice
from devices.simulator.implant import Step
from devices.simulator.signals import rng_for
from pulsewire.errors import ScenarioError

SCENARIO_DIR = Path(__file__).parent / "scenarios"
RULES_FILE = Path(schemas.__file__).parent / "rules" / "defaults.yaml"
_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$"
)
# The nightly upload lands up to 2 h 15 min after the last day closes; keep it in the past.
END_MARGIN_S = {"implant": 3 * 3600, "vehicle": 120}


@dataclass(frozen=True)
class ExpectedAlert:
    """An alert a scenario must produce: rule key, severity and who receives it."""

    rule: str
    severity: str
    audience: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """As written in the scenario file."""
        return {"rule": self.rule, "severity": self.severity, "audience": list(self.audience)}


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario."""

    name: str
    kind: str
    length_s: float
    timeline: tuple[Step, ...]
    expect: tuple[ExpectedAlert, ...]
    description: str = ""
    model: str = ""
    time_scale: float = 86_400.0
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def default_start(self, now: datetime | None = None) -> datetime:
        """Where the simulated clock starts so the scenario ends just before now."""
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=self.length_s + END_MARGIN_S[self.kind])


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `"90s"`, `"7h30m"`, `"5d6h"`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value).strip())
    if not match or not any(match.groups()):
        raise ScenarioError(f"not a duration: {value!r} (use e.g. 90, '90s', '7h30m', '5d6h')")
    d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return d * 86_400 + h * 3600 + m * 60 + s


def available() -> list[str]:
    """Names of the bundled scenarios."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"no scenario {name_or_path!r}; bundled: {', '.join(available())}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping")
    return parse(raw, source=str(path))


def parse(raw: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a scenario mapping (see the module docstring)."""
    if "base" in raw:
        base = load(str(raw["base"]))
        raw = {
            "kind": base.kind,
            "length": base.length_s,
            "model": base.model,
            "time_scale": base.time_scale,
            "_steps": base.timeline,
            **raw,
        }
    kind = raw.get("kind")
    if kind not in ("implant", "vehicle"):
        raise ScenarioError(f"{source}: kind must be implant or vehicle, got {kind!r}")
    steps = (
        tuple(raw["_steps"])
        if "_steps" in raw
        else tuple(_step(s, kind, source) for s in raw.get("timeline") or [])
    )
    unknown = set(raw.get("faults") or {}) - set(faults.FAULTS)
    if unknown:
        raise ScenarioError(f"{source}: unknown faults {sorted(unknown)}; known: {sorted(faults.FAULTS)}")
    return Scenario(
        name=str(raw.get("name") or Path(source).stem),
        kind=kind,
        length_s=parse_duration(raw.get("length", "1d")),
        timeline=steps,
        expect=tuple(_expected(e, kind, source) for e in raw.get("expect") or []),
        description=str(raw.get("description", "")).strip(),
        model=str(raw.get("model", "")),
        time_scale=float(raw.get("time_scale", 86_400)),
        faults={k: dict(v or {}) for k, v in (raw.get("faults") or {}).items()},
    )


def _step(raw: Any, kind: str, source: str) -> Step:
    if not isinstance(raw, dict) or "at" not in raw or "do" not in raw:
        raise ScenarioError(f"{source}: a timeline entry needs `at` and `do`, got {raw!r}")
    actions = implant.ACTIONS if kind == "implant" else vehicle.ACTIONS
    if raw["do"] not in actions:
        raise ScenarioError(f"{source}: {kind} action {raw['do']!r} unknown; known: {sorted(actions)}")
    args = {k: v for k, v in raw.items() if k not in ("at", "do")}
    for key in ("duration_s", "for_s", "over_s", "overheat_after_s"):
        if key in args:
            args[key] = parse_duration(args[key])
    return Step(parse_duration(raw["at"]), str(raw["do"]), args)


def _expected(raw: Any, kind: str, source: str) -> ExpectedAlert:
    try:
        rule, severity, audience = raw["rule"], raw["severity"], tuple(raw["audience"])
    except (KeyError, TypeError) as exc:
        raise ScenarioError(f"{source}: an expected alert needs rule, severity, audience: {raw!r}") from exc
    known = default_rules().get(kind, {})
    if rule not in known:
        raise ScenarioError(f"{source}: no {kind} rule {rule!r} in {RULES_FILE.name}")
    spec = known[rule]
    want = ("provider", "vendor") if spec["class"] == "technical" else ("provider",)
    if tuple(sorted(audience)) != want:
        raise ScenarioError(f"{source}: {rule} is {spec['class']}, so its audience is {list(want)}")
    if severity not in ("red", "yellow", "info"):
        raise ScenarioError(f"{source}: severity must be red, yellow or info, got {severity!r}")
    if severity != spec["severity"] and "red_if" not in spec:
        raise ScenarioError(f"{source}: {rule} has severity {spec['severity']}, not {severity}")
    return ExpectedAlert(rule, severity, want)


@cache
def default_rules() -> dict[str, dict[str, dict[str, Any]]]:
    """The default rules by kind and key, as the relay seeds them."""
    raw = yaml.safe_load(RULES_FILE.read_text())
    return {kind: {r["key"]: r for r in rules} for kind, rules in raw.items()}


def build_plan(
    scenario: Scenario,
    device: SimDevice,
    *,
    seed: int,
    start: datetime | None = None,
    wall_now: datetime | None = None,
) -> list[Message]:
    """Every message `device` sends in `scenario`, in send order; the same seed gives the same readings."""
    wall_now = wall_now or datetime.now(UTC)
    start = start or scenario.default_start(wall_now)
    rng = rng_for(seed, device.device_id, scenario.name)
    builder: implant.ImplantPlan | vehicle.VehiclePlan
    if scenario.kind == "implant":
        builder = implant.ImplantPlan(device, rng, start, icd=scenario.model != "pacemaker")
    else:
        builder = vehicle.VehiclePlan(device, rng, start)
    messages = builder.build(scenario.length_s, list(scenario.timeline))
    for name, params in scenario.faults.items():
        messages = faults.FAULTS[name](messages, device, rng, params, wall_now)
    return messages
