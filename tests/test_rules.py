"""Rule kinds, evaluated in event time as pure functions (no database needed for the logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.engine import _Indexed
from relay.evaluate import Clear, Event, Fire, Item, Sample, Signal, State, relevant, silence, step
from relay.rules import Rule, RuleError, load_defaults, validate
from relay.signing import sign, verify

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def _rule(
    kind: str, severity: str = "red", auto_resolve: bool = True, key: str | None = None, **params: Any
) -> Rule:
    return Rule(
        key=key or f"t.{kind}",
        name=kind,
        kind=kind,
        severity=severity,
        klass="technical",
        params=params,
        auto_resolve=auto_resolve,
    )


def _run(rule: Rule, items: list[Item], state: State | None = None) -> list[Signal]:
    state = {} if state is None else state
    return [s for item in items for s in step(rule, state, item)]


def _samples(metric: str, values: list[float], every_s: int = 10) -> list[Item]:
    return [Sample(T0 + timedelta(seconds=i * every_s), metric, v) for i, v in enumerate(values)]


def test_defaults_are_valid_and_cover_both_kinds() -> None:
    defaults = load_defaults()
    assert set(defaults) == {"implant", "vehicle"}
    keys = [r["key"] for rows in defaults.values() for r in rows]
    assert len(keys) == len(set(keys)) == 24
    vehicle_health = [
        r for r in defaults["vehicle"] if r["key"] != "vehicle.dongle_unplugged" and r["kind"] != "absence"
    ]
    assert all(r["class"] == "clinical" for r in vehicle_health)


def test_validate_names_the_problem() -> None:
    with pytest.raises(RuleError, match="needs metric"):
        validate("implant", "threshold", {"op": ">", "value": 1}, "red", "technical")
    with pytest.raises(RuleError, match="op must be"):
        validate("implant", "threshold", {"metric": "x", "op": "=>", "value": 1}, "red", "technical")
    with pytest.raises(RuleError, match="severity"):
        validate("implant", "event", {"event_type": "x"}, "orange", "technical")


def test_threshold_needs_for_duration_and_clears_with_hysteresis() -> None:
    rule = _rule("threshold", metric="coolant_temp_c", op=">=", value=110, clear=100, for_s=60)
    state: State = {}
    # 30 s above is not enough; then 70 s above fires once, started when it began.
    signals = _run(
        rule, _samples("coolant_temp_c", [112, 113, 114, 90, 111, 112, 113, 114, 115, 116, 117, 118]), state
    )
    fires = [s for s in signals if isinstance(s, Fire)]
    assert fires[0].started_at == T0 + timedelta(seconds=40)
    assert fires[0].ts == T0 + timedelta(seconds=100)
    assert not any(isinstance(s, Clear) for s in signals)
    # 105 is below `value` but above `clear`: still hot (hysteresis); 99 clears.
    later = [
        Sample(T0 + timedelta(seconds=200), "coolant_temp_c", 105),
        Sample(T0 + timedelta(seconds=210), "coolant_temp_c", 99),
    ]
    assert _run(rule, later, state) == [Clear(T0 + timedelta(seconds=210))]


def test_threshold_gate_on_another_metric() -> None:
    rule = _rule(
        "threshold",
        metric="coolant_temp_c",
        op=">=",
        value=110,
        for_s=0,
        when={"metric": "rpm", "op": ">", "value": 0},
    )
    engine_off = [Sample(T0, "rpm", 0), Sample(T0, "coolant_temp_c", 120)]
    assert _run(rule, engine_off) == []
    engine_on = [Sample(T0, "rpm", 900), Sample(T0, "coolant_temp_c", 120)]
    assert [type(s) for s in _run(rule, engine_on)] == [Fire]


def test_outside_any_metric_and_resolves_when_all_back() -> None:
    rule = _rule("outside", metrics=["lead_a", "lead_b"], low=200, high=3000, for_s=0)
    items = [
        Sample(T0, "lead_a", 500),
        Sample(T0, "lead_b", 4000),
        Sample(T0 + timedelta(seconds=1), "lead_b", 3500),
        Sample(T0 + timedelta(seconds=2), "lead_b", 600),
    ]
    signals = _run(rule, items)
    assert [type(s) for s in signals] == [Fire, Fire, Clear]
    first = signals[0]
    assert isinstance(first, Fire) and first.values == {"lead_b": 4000}


def test_jump_from_median_baseline() -> None:
    rule = _rule("jump", metrics=["lead_rv"], change_pct=30, baseline_n=7)
    signals = _run(rule, _samples("lead_rv", [500, 510, 495, 505, 500, 498, 502, 900]))
    assert len(signals) == 1
    fire = signals[0]
    assert isinstance(fire, Fire) and fire.values["lead_rv_baseline"] == 500


def test_drop_while_gate_holds() -> None:
    rule = _rule(
        "drop", metric="fuel", drop=20, window_s=3600, when={"metric": "rpm", "op": "==", "value": 0}
    )
    items: list[Item] = [Sample(T0, "rpm", 0), *_samples("fuel", [60, 59, 58, 35])]
    assert [type(s) for s in _run(rule, items)] == [Fire]
    driving: list[Item] = [Sample(T0, "rpm", 2000), *_samples("fuel", [60, 50, 40, 30])]
    assert _run(rule, driving) == []


def test_event_match_and_red_if() -> None:
    rule = _rule(
        "event",
        severity="yellow",
        event_type="dtc_set",
        match={"state": "confirmed"},
        red_if={"code": "^P030[0-9A-F]$"},
    )
    pending = Event(T0, "dtc_set", {"code": "P0171", "state": "pending"})
    lean = Event(T0, "dtc_set", {"code": "P0171", "state": "confirmed"})
    misfire = Event(T0, "dtc_set", {"code": "P0302", "state": "confirmed"})
    assert _run(rule, [pending]) == []
    assert [s.severity for s in _run(rule, [lean, misfire]) if isinstance(s, Fire)] == ["yellow", "red"]


def test_event_list_match() -> None:
    rule = _rule("event", event_type="battery_status", match={"status": ["ERI", "EOS"]})
    assert _run(rule, [Event(T0, "battery_status", {"status": "BOS"})]) == []
    assert len(_run(rule, [Event(T0, "battery_status", {"status": "ERI"})])) == 1


def test_count_within_window() -> None:
    rule = _rule("count", event_types=["vt_episode", "vf_episode"], count=3, window_s=172800)
    spread = [Event(T0 + timedelta(days=3 * i), "vt_episode") for i in range(3)]
    assert _run(rule, spread) == []
    cluster = [
        Event(T0 + timedelta(hours=i), t) for i, t in enumerate(["vt_episode", "vf_episode", "vt_episode"])
    ]
    signals = _run(rule, cluster)
    assert len(signals) == 1 and isinstance(signals[0], Fire) and signals[0].started_at == T0


@pytest.mark.parametrize("method", ["zscore", "ewma"])
def test_anomaly_flags_an_outlier_and_recovers(method: str) -> None:
    rule = _rule("anomaly", metric="r_wave_mv", z=4, window_n=20, method=method)
    normal = [10 + 0.1 * ((i * 7) % 5) for i in range(30)]
    signals = _run(rule, _samples("r_wave_mv", [*normal, 2.0, 10.2, 10.1]))
    assert [type(s) for s in signals] == [Fire, Clear]


def test_absence_fires_once_per_silence() -> None:
    rule = _rule("absence", factor=1.5)
    state: State = {}
    assert not silence(rule, state, heartbeat_s=100, silent_for_s=140)
    assert silence(rule, state, heartbeat_s=100, silent_for_s=160)
    assert not silence(rule, state, heartbeat_s=100, silent_for_s=500)
    assert step(rule, state, Sample(T0, "x", 1)) == [Clear(T0)]
    assert step(rule, state, Sample(T0, "x", 1)) == []


def test_signature_recipe() -> None:
    body = b'{"event":"opened"}'
    header = sign("whsec_test", body, timestamp=1_800_000_000)
    assert header.startswith("t=1800000000,v1=")
    assert verify("whsec_test", header, body, 300, now=1_800_000_100)
    assert not verify("whsec_test", header, body + b" ", 300, now=1_800_000_100)
    assert not verify("other", header, body, 300, now=1_800_000_100)
    assert not verify("whsec_test", header, body, 300, now=1_800_000_400)
    assert not verify("whsec_test", "garbage", body, 300)


def test_each_default_rule_walks_exactly_the_items_it_reads() -> None:
    # The engine indexes a batch's items by what reads them (relay/engine.py `_Indexed`); each
    # rule must get the same items, in the same order, as testing every item with `relevant`.
    rules = [
        _rule(row["kind"], key=row["key"], **row["params"])
        for rows in load_defaults().values()
        for row in rows
    ]
    metrics = [*sorted({m for rule in rules for m in rule.metrics()}), "unread_metric"]
    types = [*sorted({t for rule in rules for t in rule.event_types()}), "unread_event"]
    items: list[Item] = []
    for i in range(600):
        ts = T0 + timedelta(seconds=i // 3)  # several items share an instant
        if i % 5 == 0:
            items.append(Event(ts, types[i % len(types)], {}))
        else:
            items.append(Sample(ts, metrics[i % len(metrics)], float(i)))
    indexed = _Indexed(items)
    assert any(len(rule.reads) > 1 for rule in rules)  # gated and multi-metric rules are covered
    for rule in rules:
        expected = [n for n, item in enumerate(items) if relevant(rule, item)]
        assert list(indexed.read_by(rule)) == expected, rule.key
        assert indexed.epochs == [item.ts.timestamp() for item in items]
