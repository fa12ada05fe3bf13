"""Alert rules: the default set from `schemas/rules/defaults.yaml`, validation, and scope resolution.

A rule row has a key, a scope (device kind, optionally one provider org, one model or one device)
and kind-specific `params`. For a given device, the narrowest enabled rule of each key applies:
device > model > kind, and a provider's own rule beats the global default at the same level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

import psycopg
import yaml
from psycopg.types.json import Jsonb

from pulsewire.errors import PulsewireError

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


class RuleError(PulsewireError):
    """A rule definition is invalid; the message says which field and why."""


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
        if self.kind in ("event", "count"):
            types = self.params.get("event_types") or [self.params.get("event_type")]
            pairs |= {("event", str(t)) for t in types if t}
        return frozenset(pairs)

    def metrics(self) -> tuple[str, ...]:
        """Every metric this rule reads, including its `when` gate."""
        names = list(self.params.get("metrics") or [])
        if "metric" in self.params:
            names.append(self.params["metric"])
        when = self.params.get("when")
        if isinstance(when, dict) and "metric" in when:
            names.append(when["metric"])
        return tuple(dict.fromkeys(names))


def validate(kind: str, params: dict[str, Any], severity: str, klass: str) -> None:
    """Raise RuleError unless the kind, its parameters, severity and class make a usable rule."""
    if kind not in KINDS:
        raise RuleError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if severity not in SEVERITIES:
        raise RuleError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if klass not in CLASSES:
        raise RuleError(f"class must be one of {', '.join(CLASSES)}, got {klass!r}")
    missing = [name for name in _REQUIRED[kind] if name not in params]
    if missing:
        raise RuleError(f"a {kind} rule needs {', '.join(missing)}")
    if "op" in params and params["op"] not in OPS:
        raise RuleError(f"op must be one of {' '.join(OPS)}, got {params['op']!r}")
    when = params.get("when")
    if when is not None and not (isinstance(when, dict) and {"metric", "op", "value"} <= when.keys()):
        raise RuleError("`when` needs metric, op and value")
    for name in (
        "value",
        "clear",
        "low",
        "high",
        "change_pct",
        "drop",
        "window_s",
        "for_s",
        "z",
        "count",
        "factor",
        "after_s",
    ):
        if name in params and not isinstance(params[name], int | float):
            raise RuleError(f"{name} must be a number, got {params[name]!r}")


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
    validate(row["kind"], params, row["severity"], row["class"])
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
    """A Rule from a `rules` table row."""
    return Rule(
        key=row["key"],
        name=row["name"],
        kind=row["kind"],
        severity=row["severity"],
        klass=row["class"],
        params=dict(row["params"]),
        auto_resolve=bool(row["auto_resolve"]),
        rule_id=int(row["rule_id"]),
    )


# The narrowest rule of each key wins; DISTINCT ON keeps the first row of each key in this order.
_EFFECTIVE = """
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
    """The rules that apply to one device, narrowest scope first per key; disabled ones dropped."""
    rows = conn.execute(_EFFECTIVE, (device_id,)).fetchall()
    return [rule_from_row(r) for r in rows if r["enabled"]]
