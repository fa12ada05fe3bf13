"""Rule evaluation in event time: pure functions from (rule, state, item) to signals.

The state of each (device, rule) is a JSON-able dict the engine stores in `rule_state`, so an
evaluation resumes exactly where the last committed one stopped. Items arrive in event-time order.
Signals: `Fire` (the condition holds: open an alert, or update the open one), `Clear` (the
condition ended: resolve when the rule auto-resolves). Timestamps in state are epoch seconds.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from relay.rules import Rule, pattern

State = dict[str, Any]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_MAX_WINDOW = 1000  # bound on any window kept in state


@dataclass(frozen=True)
class Sample:
    """One reading."""

    ts: datetime
    metric: str
    value: float


@dataclass(frozen=True)
class Event:
    """One device event."""

    ts: datetime
    type: str
    data: dict[str, Any] = field(default_factory=dict)


Item = Sample | Event


@dataclass(frozen=True)
class Fire:
    """The condition holds at `ts`; it began at `started_at`."""

    ts: datetime
    started_at: datetime
    values: dict[str, Any]
    severity: str


@dataclass(frozen=True)
class Clear:
    """The condition ended at `ts`."""

    ts: datetime


Signal = Fire | Clear


def _epoch(ts: datetime) -> float:
    return ts.timestamp()


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def relevant(rule: Rule, item: Item) -> bool:
    """Whether `item` can change this rule's state (the engine skips the rest)."""
    if isinstance(item, Event):
        return ("event", item.type) in rule.reads
    return ("metric", item.metric) in rule.reads


def step(rule: Rule, state: State, item: Item) -> list[Signal]:
    """Advance one rule by one item; mutates `state`, returns what happened."""
    if rule.kind == "absence":
        # Any data ends a silence; the silence itself is detected by the clock tick.
        return [Clear(item.ts)] if state.pop("silent", False) else []
    if not relevant(rule, item):
        return []
    return stepper(rule)(rule, state, item)


def stepper(rule: Rule) -> Callable[[Rule, State, Item], list[Signal]]:
    """`step` for a rule that is not `absence`, for items already known to be `relevant` to it."""
    return _HANDLERS[rule.kind]


def _gate_ok(rule: Rule, state: State, item: Sample) -> bool:
    """Track the `when` metric's latest value; True when the gate holds (or there is none)."""
    when = rule.params.get("when")
    if not when:
        return True
    if item.metric == when["metric"]:
        state["gate"] = item.value
    gate = state.get("gate")
    return gate is not None and _OPS[when["op"]](gate, when["value"])


def _sustained(
    rule: Rule, state: State, ts: datetime, *, holds: bool, clears: bool, values: dict[str, Any]
) -> list[Signal]:
    """The `for_s` machine shared by threshold and outside: idle -> pending -> active -> idle."""
    now = _epoch(ts)
    phase = state.get("phase", "idle")
    if phase == "active":
        if clears:
            state.update(phase="idle", since=None)
            return [Clear(ts)]
        return [Fire(ts, _dt(state["since"]), values, rule.severity)] if holds else []
    if not holds:
        state.update(phase="idle", since=None)
        return []
    if phase == "idle":
        state.update(phase="pending", since=now)
    if now - state["since"] >= float(rule.params.get("for_s", 0)):
        state["phase"] = "active"
        return [Fire(ts, _dt(state["since"]), values, rule.severity)]
    return []


def _threshold(rule: Rule, state: State, item: Item) -> list[Signal]:
    assert isinstance(item, Sample)
    gate = _gate_ok(rule, state, item)
    p = rule.params
    if item.metric != p["metric"]:
        return []
    op = _OPS[p["op"]]
    holds = gate and op(item.value, p["value"])
    if "clear" in p:
        # Hysteresis: clearing needs the value back past `clear`, on the far side from `value`.
        clears = not op(item.value, p["clear"]) and item.value != p["clear"]
    else:
        clears = not op(item.value, p["value"])
    return _sustained(rule, state, item.ts, holds=holds, clears=clears, values={item.metric: item.value})


def _outside(rule: Rule, state: State, item: Item) -> list[Signal]:
    assert isinstance(item, Sample)
    gate = _gate_ok(rule, state, item)
    p = rule.params
    if item.metric not in p["metrics"]:
        return []
    latest: dict[str, float] = state.setdefault("latest", {})
    latest[item.metric] = item.value
    out = {m: v for m, v in latest.items() if not p["low"] <= v <= p["high"]}
    return _sustained(
        rule,
        state,
        item.ts,
        holds=gate and bool(out),
        clears=not out,
        values=out or {item.metric: item.value},
    )


def _jump(rule: Rule, state: State, item: Item) -> list[Signal]:
    assert isinstance(item, Sample)
    n = int(rule.params.get("baseline_n", 7))
    window: list[float] = state.setdefault("windows", {}).setdefault(item.metric, [])
    signals: list[Signal] = []
    if len(window) >= min(n, 3):
        baseline = float(statistics.median(window))  # a few values: faster than numpy here
        if baseline > 0 and abs(item.value - baseline) / baseline > rule.params["change_pct"] / 100:
            values = {item.metric: item.value, f"{item.metric}_baseline": baseline}
            signals.append(Fire(item.ts, item.ts, values, rule.severity))
    window.append(item.value)
    del window[:-n]
    return signals


def _drop(rule: Rule, state: State, item: Item) -> list[Signal]:
    assert isinstance(item, Sample)
    gate = _gate_ok(rule, state, item)
    p = rule.params
    if item.metric != p["metric"]:
        return []
    if not gate:
        state["window"] = []
        return []
    now = _epoch(item.ts)
    window = [w for w in state.get("window", []) if now - w[0] <= p["window_s"]][-_MAX_WINDOW:]
    signals: list[Signal] = []
    if window:
        top_ts, top = max(window, key=lambda w: w[1])
        if top - item.value >= p["drop"]:
            values = {p["metric"]: item.value, f"{p['metric']}_before": top}
            signals.append(Fire(item.ts, _dt(top_ts), values, rule.severity))
            window = []  # the drop is reported; start again from the new level
    window.append([now, item.value])
    state["window"] = window
    return signals


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list):
        return any(_matches(e, actual) for e in expected)
    if isinstance(expected, str) and expected.startswith("^"):
        # RE2: linear in the input whatever the pattern, so a rule cannot stall the engine.
        return isinstance(actual, str) and pattern(expected).fullmatch(actual) is not None
    return bool(expected == actual)


def _event(rule: Rule, state: State, item: Item) -> list[Signal]:
    assert isinstance(item, Event)
    match = rule.params.get("match") or {}
    if not all(_matches(v, item.data.get(k)) for k, v in match.items()):
        return []
    red_if = rule.params.get("red_if") or {}
    red = bool(red_if) and all(_matches(v, item.data.get(k)) for k, v in red_if.items())
    values = {"event_type": item.type, **item.data}
    return [Fire(item.ts, item.ts, values, "red" if red else rule.severity)]


def _count(rule: Rule, state: State, item: Item) -> list[Signal]:
    assert isinstance(item, Event)
    now = _epoch(item.ts)
    window = [t for t in state.get("times", []) if now - t <= rule.params["window_s"]]
    window = [*window, now][-_MAX_WINDOW:]
    state["times"] = window
    if len(window) < rule.params["count"]:
        return []
    return [Fire(item.ts, _dt(window[0]), {"count": len(window), "event_type": item.type}, rule.severity)]


def _anomaly(rule: Rule, state: State, item: Item) -> list[Signal]:
    """Rolling z-score (default) or EWMA (`method: ewma`, `alpha`) of one metric."""
    assert isinstance(item, Sample)
    p = rule.params
    n = int(p.get("window_n", 30))
    window: list[float] = state.setdefault("window", [])
    z = _zscore(window, item.value, p) if len(window) >= n else 0.0
    window.append(item.value)
    del window[:-n]
    values = {item.metric: item.value, "z": round(z, 3)}
    holds, clears = abs(z) > p["z"], abs(z) < p["z"] / 2
    if state.get("phase") == "active":
        if clears:
            state["phase"] = "idle"
            return [Clear(item.ts)]
        return [Fire(item.ts, _dt(state["since"]), values, rule.severity)] if holds else []
    if holds:
        state.update(phase="active", since=_epoch(item.ts))
        return [Fire(item.ts, item.ts, values, rule.severity)]
    return []


def _zscore(window: list[float], value: float, p: dict[str, Any]) -> float:
    data = np.asarray(window, dtype=float)
    if p.get("method") == "ewma":
        alpha = float(p.get("alpha", 0.3))
        weights = (1 - alpha) ** np.arange(len(data))[::-1]
        mean = float(np.average(data, weights=weights))
        std = math.sqrt(float(np.average((data - mean) ** 2, weights=weights)))
    else:
        mean, std = float(data.mean()), float(data.std())
    return (value - mean) / std if std > 1e-9 else 0.0


_HANDLERS: dict[str, Callable[[Rule, State, Item], list[Signal]]] = {
    "threshold": _threshold,
    "outside": _outside,
    "jump": _jump,
    "drop": _drop,
    "event": _event,
    "count": _count,
    "anomaly": _anomaly,
}


def silence(rule: Rule, state: State, heartbeat_s: float, silent_for_s: float) -> bool:
    """Absence: True when a silence longer than the rule allows newly begins (marks the state)."""
    limit = float(rule.params.get("after_s") or rule.params.get("factor", 1.5) * heartbeat_s)
    if silent_for_s <= limit or state.get("silent"):
        return False
    state["silent"] = True
    return True
