"""Which alerts a caller may see: one definition, as a SQL condition and as a Python predicate.

The rule for each kind of viewer (docs/domain.md, "Who may see what")::

    admin     every alert
    provider  the alerts of its org                     alerts.provider_org_id = org
    vendor    technical alerts of the devices it makes  alerts.vendor_org_id = org AND class = 'technical'
    owner     the alerts of their own device            devices.owner_id = owner

`RULES` holds this table once. `sql()` turns it into a WHERE condition over `alerts a JOIN devices
d` (the API, the web pages); `sees()` applies it to an alert row (what the SSE hub and the views
hand out); `may_see()` to the partial row a notification carries, where it can only rule a viewer
out. What each viewer sees *of* an alert is `relay.views`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pulsewire.errors import InvalidInput

AUDIENCES = ("admin", "provider", "vendor", "owner")


@dataclass(frozen=True)
class _Rule:
    column: str | None  # the alert-row column compared with the viewer (alias a = alerts, d = devices)
    viewer_key: str | None  # the Viewer attribute it must equal
    technical_only: bool

    @property
    def row_key(self) -> str | None:
        """The column's name in a row (`a.provider_org_id` -> `provider_org_id`)."""
        return self.column.split(".", 1)[1] if self.column else None


RULES: dict[str, _Rule] = {
    "admin": _Rule(None, None, technical_only=False),
    "provider": _Rule("a.provider_org_id", "org_id", technical_only=False),
    "vendor": _Rule("a.vendor_org_id", "org_id", technical_only=True),
    "owner": _Rule("d.owner_id", "owner_id", technical_only=False),
}


@dataclass(frozen=True)
class Viewer:
    """Who is looking: an audience and the org or owner it is scoped to."""

    audience: str
    org_id: int | None = None
    owner_id: int | None = None

    def __post_init__(self) -> None:
        rule = RULES.get(self.audience)
        if rule is None:
            raise InvalidInput(f"audience must be one of {', '.join(AUDIENCES)}, got {self.audience!r}")
        if rule.viewer_key is not None and getattr(self, rule.viewer_key) is None:
            raise InvalidInput(f"a {self.audience} viewer needs its {rule.viewer_key}", field=rule.viewer_key)

    @property
    def view(self) -> str:
        """The `relay.views` audience whose view this viewer gets: vendors their minimal one."""
        return "vendor" if self.audience == "vendor" else "provider"


def sql(viewer: Viewer) -> tuple[str, dict[str, Any]]:
    """The WHERE condition (over `alerts a JOIN devices d`) and its named parameters."""
    rule = RULES[viewer.audience]
    parts: list[str] = []
    params: dict[str, Any] = {}
    if rule.column is not None and rule.viewer_key is not None:
        parts.append(f"{rule.column} = %(visible_to)s")
        params["visible_to"] = getattr(viewer, rule.viewer_key)
    if rule.technical_only:
        parts.append("a.class = 'technical'")
    return " AND ".join(parts) or "TRUE", params


def sees(viewer: Viewer, alert: Mapping[str, Any]) -> bool:
    """Whether the viewer may see this alert row (columns as `relay.views.ALERT_SELECT` names them)."""
    return _judge(viewer, alert, partial=False)


def may_see(viewer: Viewer, partial: Mapping[str, Any]) -> bool:
    """False only when the columns present rule the viewer out; a missing column rules nobody out.

    A notification carries the alert's orgs and class but not its device's owner: it is enough to
    skip reading alerts nobody may see, and `sees` decides on the full row.
    """
    return _judge(viewer, partial, partial=True)


def _judge(viewer: Viewer, row: Mapping[str, Any], *, partial: bool) -> bool:
    rule = RULES[viewer.audience]
    key = rule.row_key
    if key is not None and rule.viewer_key is not None:
        known = key in row or not partial
        if known and row.get(key) != getattr(viewer, rule.viewer_key):
            return False
    if rule.technical_only and ("class" in row or not partial):
        return row.get("class") == "technical"
    return True
