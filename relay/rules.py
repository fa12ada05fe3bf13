"""Alert rules: the default set from `schemas/rules/defaults.yaml`, validation, and scope resolution.

A rule row has a key, a scope (device kind, optionally one provider org, one model or one device)
and kind-specific `params`. For a given device, the narrowest enabled rule of each key applies:
device > model > kind, and a provider's own rule beats the global default at the same level.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import psycopg
import re2
import yaml
from psycopg.types.json import Jsonb

from pulsewire.errors import InvalidInput
from relay.faults import RuleFault
from schemas.catalogue import CATALOGUE, EVENT_TYPES, DeviceKind, is_clinical_event, metric_for

Conn = psycopg.Connection[dict[str, Any]]

KINDS = ("threshold", "outside", "jump", "drop", "absence", "event", "count", "anomaly")
SEVERITIES = ("red", "yellow", "info")
CLASSES = ("clinical", "technical")
OPS = ("<", "<=", ">", ">=", "==", "!=")
# Fields of a rule that are columns; everything else in a YAML entry is a kind parameter.
_COLUMNS = ("key", "name", "kind", "severity", "class", "auto_resolve", "enabled")
_REQUIRED: dict[str, tuple[str, ...]] = {
    "threshold": ("metric", "op", "value"),
    "outside": ("metrics", "low", "high"),
    "jump": ("metrics", "change_pct"),
    "drop": ("metric", "drop", "window_s"),
    "absence": (),
    "event": ("event_type",),
    "count": ("event_types", "count", "window_s"),
    "anomaly": ("metric", "z"),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "threshold": ("clear", "for_s", "when"),
    "outside": ("for_s", "when"),
    "jump": ("baseline_n",),
    "drop": ("when",),
    "absence": ("factor", "after_s"),
    "event": ("match", "red_if"),
    "count": (),
    "anomaly": ("window_n", "method", "alpha"),
}
_DAY_S = 86_400
_VALUE_LIMIT = 1e12  # far beyond any catalogue range, short of float trouble
# The range each number parameter must lie in: (low, high, low excluded, whole numbers only).
# Window lengths are capped by the engine's windows (at most 1,000 entries kept in state).
_NUMBERS: dict[str, tuple[float, float, bool, bool]] = {
    "value": (-_VALUE_LIMIT, _VALUE_LIMIT, False, False),
    "clear": (-_VALUE_LIMIT, _VALUE_LIMIT, False, False),
    "low": (-_VALUE_LIMIT, _VALUE_LIMIT, False, False),
    "high": (-_VALUE_LIMIT, _VALUE_LIMIT, False, False),
    "change_pct": (0, 100_000, True, False),
    "drop": (0, _VALUE_LIMIT, True, False),
    "window_s": (0, 31 * _DAY_S, True, False),
    "for_s": (0, 7 * _DAY_S, False, False),
    "after_s": (0, 366 * _DAY_S, True, False),
    "factor": (0, 1_000, True, False),
    "z": (0, 1_000, True, False),
    "alpha": (0, 1, True, False),
    "count": (1, 1_000, False, True),
    "baseline_n": (1, 1_000, False, True),
    "window_n": (2, 1_000, False, True),
}
METHODS = ("zscore", "ewma")
_DEVICE_KINDS = tuple(k.value for k in DeviceKind)
PATTERN_MAX_CHARS = 256
_MATCH_MAX_FIELDS = 20
_MATCH_MAX_CHOICES = 50
_MATCH_VALUE_MAX_CHARS = 256
_NAMES_MAX = 20
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the caller's error, answered; not the log's


class RuleError(InvalidInput):
    """A rule definition is invalid; `field` names the offending field (`params.match.code`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)


@dataclass(frozen=True)
class Rule:
    """One rule as evaluated: identity, kind, parameters and what an alert of it looks like."""

    key: str
    name: str
    kind: str
    severity: str
    klass: str
    params: dict[str, Any] = field(default_factory=dict)
    auto_resolve: bool = False
    rule_id: int | None = None

    @cached_property
    def reads(self) -> frozenset[tuple[str, str]]:
        """("metric", name) and ("event", type) pairs of everything this rule reads (cached)."""
        pairs = {("metric", m) for m in self.metrics()}
        pairs |= {("event", t) for t in self.event_types()}
        return frozenset(pairs)

    def metrics(self) -> tuple[str, ...]:
        """Every metric this rule reads, including its `when` gate."""
        return _metrics_of(self.params)

    def event_types(self) -> tuple[str, ...]:
        """Every event type this rule reads (event and count kinds)."""
        return _event_types_of(self.kind, self.params)


def _metrics_of(params: dict[str, Any]) -> tuple[str, ...]:
    names = list(params.get("metrics") or [])
    if "metric" in params:
        names.append(params["metric"])
    when = params.get("when")
    if isinstance(when, dict) and "metric" in when:
        names.append(when["metric"])
    return tuple(dict.fromkeys(str(n) for n in names))


def _event_types_of(kind: str, params: dict[str, Any]) -> tuple[str, ...]:
    if kind not in ("event", "count"):
        return ()
    types = params.get("event_types") or [params.get("event_type")]
    return tuple(dict.fromkeys(str(t) for t in types if t))


@lru_cache(maxsize=4096)
def pattern(text: str) -> re2._Regexp[str]:
    """A rule's regex compiled by RE2 (linear time: no pattern can stall evaluation); cached."""
    return re2.compile(text, _RE2_OPTIONS)


def validate(device_kind: str, kind: str, params: dict[str, Any], severity: str, klass: str) -> None:
    """Raise RuleError, naming the field, unless this makes a usable rule for devices of `device_kind`.

    Checks the columns, then the kind's parameters: every one known, required ones present, numbers
    finite and in range, metrics and event types in the catalogue for the device kind, regexes
    (strings starting with `^` in `match` and `red_if`) accepted by RE2 and at most
    PATTERN_MAX_CHARS long.
    """
    if kind not in KINDS:
        raise RuleError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if severity not in SEVERITIES:
        raise RuleError("severity", f"must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if klass not in CLASSES:
        raise RuleError("class", f"must be one of {', '.join(CLASSES)}, got {klass!r}")
    if device_kind not in _DEVICE_KINDS:
        raise RuleError("device_kind", f"must be implant or vehicle, got {device_kind!r}")
    if not isinstance(params, dict):
        raise RuleError("params", "must be an object")
    missing = [name for name in _REQUIRED[kind] if name not in params]
    if missing:
        raise RuleError("params", f"a {kind} rule needs {', '.join(missing)}")
    allowed = _REQUIRED[kind] + _OPTIONAL[kind]
    for name in params:
        if name not in allowed:
            raise RuleError(
                f"params.{name}", f"not a parameter of a {kind} rule (it takes {', '.join(allowed)})"
            )
    _check_shape(params)
    _check_catalogue(DeviceKind(device_kind), kind, params)
    for name in ("match", "red_if"):
        if name in params:
            _check_match(f"params.{name}", params[name])


def _check_shape(params: dict[str, Any]) -> None:
    if "op" in params and params["op"] not in OPS:
        raise RuleError("params.op", f"op must be one of {' '.join(OPS)}, got {params['op']!r}")
    for name, value in params.items():
        if name in _NUMBERS:
            _check_number(f"params.{name}", name, value)
    when = params.get("when")
    if when is not None:
        if not (isinstance(when, dict) and set(when) == {"metric", "op", "value"}):
            raise RuleError("params.when", "`when` needs metric, op and value (and nothing else)")
        if when["op"] not in OPS:
            raise RuleError("params.when.op", f"must be one of {' '.join(OPS)}, got {when['op']!r}")
        _check_number("params.when.value", "value", when["value"])
    if "low" in params and "high" in params and params["low"] > params["high"]:
        raise RuleError("params.low", f"low ({params['low']}) is above high ({params['high']})")
    if "method" in params and params["method"] not in METHODS:
        raise RuleError("params.method", f"must be one of {', '.join(METHODS)}, got {params['method']!r}")


def _check_number(where: str, name: str, value: Any) -> None:
    low, high, low_open, whole = _NUMBERS[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(where, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RuleError(where, f"must be a finite number, got {value!r}")
    if whole and value != int(value):
        raise RuleError(where, f"must be a whole number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        raise RuleError(where, f"must be {bound} and at most {high:g}, got {value!r}")


def _check_catalogue(device_kind: DeviceKind, kind: str, params: dict[str, Any]) -> None:
    for name in ("metric", "event_type"):
        if name in params and not isinstance(params[name], str):
            raise RuleError(f"params.{name}", f"must be a name, got {params[name]!r}")
    for name in ("metrics", "event_types"):
        names = params.get(name)
        if name in params and not (
            isinstance(names, list)
            and 0 < len(names) <= _NAMES_MAX
            and all(isinstance(n, str) for n in names)
        ):
            raise RuleError(f"params.{name}", f"must be a list of 1 to {_NAMES_MAX} names, got {names!r}")
    when = params.get("when")
    if isinstance(when, dict) and not isinstance(when["metric"], str):
        raise RuleError("params.when.metric", f"must be a name, got {when['metric']!r}")
    for metric in _metrics_of(params):
        if metric_for(device_kind, metric) is None:
            raise RuleError(
                _where(params, "metric", metric), f"unknown metric for {device_kind} devices: {metric!r}"
            )
    known = EVENT_TYPES[device_kind]
    for event_type in _event_types_of(kind, params):
        if event_type not in known:
            raise RuleError(
                _where(params, "event_type", event_type),
                f"unknown event type for {device_kind} devices: {event_type!r}",
            )


def _where(params: dict[str, Any], single: str, name: str) -> str:
    """The field that holds `name`: `params.metric`, `params.metrics`, `params.when.metric`, ..."""
    if params.get(single) == name:
        return f"params.{single}"
    if single == "metric" and name not in (params.get("metrics") or []):
        return "params.when.metric"
    return f"params.{single}s"


def _check_match(where: str, match: Any) -> None:
    if not isinstance(match, dict) or len(match) > _MATCH_MAX_FIELDS:
        raise RuleError(where, f"must be an object of at most {_MATCH_MAX_FIELDS} fields")
    for key, expected in match.items():
        choices = expected if isinstance(expected, list) else [expected]
        if len(choices) > _MATCH_MAX_CHOICES:
            raise RuleError(f"{where}.{key}", f"at most {_MATCH_MAX_CHOICES} choices")
        for choice in choices:
            _check_choice(f"{where}.{key}", choice)


def _check_choice(where: str, choice: Any) -> None:
    if choice is not None and not isinstance(choice, str | int | float | bool):
        raise RuleError(
            where, f"must be a string, number, boolean or null (or a list of them), got {choice!r}"
        )
    if isinstance(choice, float) and not math.isfinite(choice):
        raise RuleError(where, f"must be a finite number, got {choice!r}")
    if not isinstance(choice, str):
        return
    if len(choice) > _MATCH_VALUE_MAX_CHARS:
        raise RuleError(where, f"at most {_MATCH_VALUE_MAX_CHARS} characters")
    if choice.startswith("^"):
        if len(choice) > PATTERN_MAX_CHARS:
            raise RuleError(where, f"a pattern has at most {PATTERN_MAX_CHARS} characters")
        try:
            pattern(choice)
        except re2.error as exc:
            reason = (
                exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            )
            raise RuleError(where, f"not a valid RE2 pattern ({reason}): {choice!r}") from exc


def derived_class(device_kind: str, kind: str, params: dict[str, Any], requested: str) -> str:
    """`clinical` when the rule reads a clinical metric or event of that device kind; else `requested`.

    A provider may make any rule clinical (the vendor is not told), never a rule about the patient
    (or a car's location) technical: its alerts would reach the vendor.
    """
    catalogue = CATALOGUE[DeviceKind(device_kind)] if device_kind in _DEVICE_KINDS else {}
    if any((m := catalogue.get(name)) is not None and m.clinical for name in _metrics_of(params)):
        return "clinical"
    if any(is_clinical_event(t) for t in _event_types_of(kind, params)):
        return "clinical"
    return requested


def load_defaults() -> dict[str, list[dict[str, Any]]]:
    """The default rules per device kind, as column dicts, from the YAML file."""
    text = resources.files("schemas").joinpath("rules/defaults.yaml").read_text()
    data = yaml.safe_load(text)
    out: dict[str, list[dict[str, Any]]] = {}
    for device_kind, entries in data.items():
        out[device_kind] = [_entry_to_row(device_kind, entry) for entry in entries]
    return out


def _entry_to_row(device_kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in entry.items() if k not in _COLUMNS}
    row = {
        "key": entry["key"],
        "name": entry["name"],
        "kind": entry["kind"],
        "device_kind": device_kind,
        "severity": entry["severity"],
        "class": entry["class"],
        "auto_resolve": bool(entry.get("auto_resolve", False)),
        "params": params,
    }
    validate(device_kind, row["kind"], params, row["severity"], row["class"])
    row["class"] = derived_class(device_kind, row["kind"], params, row["class"])
    return row


def seed_defaults(conn: Conn) -> int:
    """Insert or refresh the global default rules; idempotent. Keeps an operator's `enabled` choice."""
    count = 0
    with conn.transaction():
        for rows in load_defaults().values():
            for row in rows:
                conn.execute(
                    """INSERT INTO rules (key, name, device_kind, kind, params, severity, class, auto_resolve)
                       VALUES (%(key)s, %(name)s, %(device_kind)s, %(kind)s, %(params)s, %(severity)s,
                               %(class)s, %(auto_resolve)s)
                       ON CONFLICT (key, device_kind, coalesce(provider_org_id, 0), coalesce(model, ''),
                                    coalesce(device_id, ''))
                       DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, params = EXCLUDED.params,
                                     severity = EXCLUDED.severity, class = EXCLUDED.class,
                                     auto_resolve = EXCLUDED.auto_resolve, updated_at = now()""",
                    {**row, "params": Jsonb(row["params"])},
                )
                count += 1
    return count


def rule_from_row(row: dict[str, Any]) -> Rule:
    """A Rule from a `rules` table row; its class derived again (rows may predate the derivation)."""
    params = dict(row["params"])
    return Rule(
        key=row["key"],
        name=row["name"],
        kind=row["kind"],
        severity=row["severity"],
        klass=derived_class(row["device_kind"], row["kind"], params, row["class"]),
        params=params,
        auto_resolve=bool(row["auto_resolve"]),
        rule_id=int(row["rule_id"]),
    )


# The narrowest rule of each key wins; DISTINCT ON keeps the first row of each key in this order.
EFFECTIVE_SQL = """
SELECT DISTINCT ON (r.key) r.*
FROM rules r JOIN devices d ON d.device_id = %s
WHERE r.device_kind = d.kind
  AND (r.provider_org_id IS NULL OR r.provider_org_id = d.provider_org_id)
  AND (r.model IS NULL OR r.model = d.model)
  AND (r.device_id IS NULL OR r.device_id = d.device_id)
ORDER BY r.key, (r.device_id IS NOT NULL) DESC, (r.model IS NOT NULL) DESC,
         (r.provider_org_id IS NOT NULL) DESC
"""


def effective_rules(conn: Conn, device_id: str) -> list[Rule]:
    """The rules that apply to one device, narrowest scope first per key; disabled, unusable ones dropped."""
    return usable_rules(conn, device_id)[0]


def usable_rules(
    conn: Conn, device_id: str, kinds: tuple[str, ...] = KINDS
) -> tuple[list[Rule], list[RuleFault]]:
    """The enabled rules (of `kinds`) that apply to one device, and a fault for each that fails validation.

    Rows stored before validation existed (or written around it) are checked here again, so a bad
    one is skipped for this device instead of failing the evaluation of every other rule.
    """
    return usable_rules_of(conn.execute(EFFECTIVE_SQL, (device_id,)).fetchall(), device_id, kinds)


def usable_rules_of(
    rows: list[dict[str, Any]], device_id: str, kinds: tuple[str, ...] = KINDS
) -> tuple[list[Rule], list[RuleFault]]:
    """`usable_rules` from rows already read with `EFFECTIVE_SQL` (the engine reads them in a pipeline)."""
    rules: list[Rule] = []
    faults: list[RuleFault] = []
    for row in rows:
        if not row["enabled"] or row["kind"] not in kinds:
            continue
        rule = _checked_rule(row)
        if isinstance(rule, Rule):
            rules.append(rule)
        else:  # any malformed row is that rule's fault, and only its own
            faults.append(RuleFault.of(int(row["rule_id"]), str(row["key"]), device_id, rule))
    return rules, faults


# What a rule's validation depends on, and its verdict: a Rule or the exception that refused it.
# Rows are validated once per content, not once per device evaluation; rules are shared read-only.
_RULE_FIELDS = (
    "rule_id", "key", "name", "device_kind", "kind", "params", "severity", "class", "auto_resolve",
)  # fmt: skip
_CHECKED: dict[str, Rule | Exception] = {}
_CHECKED_MAX = 4096


def _checked_rule(row: dict[str, Any]) -> Rule | Exception:
    content = json.dumps([row[f] for f in _RULE_FIELDS], sort_keys=True, default=str)
    verdict = _CHECKED.get(content)
    if verdict is None:
        try:
            validate(row["device_kind"], row["kind"], row["params"], row["severity"], row["class"])
            verdict = rule_from_row(row)
        except Exception as exc:
            verdict = exc
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()  # edited rules leave old entries behind: start again
        _CHECKED[content] = verdict
    return verdict
