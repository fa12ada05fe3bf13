"""What the REST API calls: alerts, webhooks, deliveries and rules, scoped to the caller.

Every function takes an autocommit connection and the caller's scope: a `Viewer` for alerts
(`relay.visibility` decides which it sees), an org id for the rest. An object out of scope is
`NotFound` (the API answers 404, never 403). Vendors see only technical alerts, as their minimal
view; only the provider acknowledges and resolves. Bad input raises `InvalidInput` (or its
`RuleError`), a state that forbids the change raises `Conflict` (`pulsewire.errors`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pulsewire.errors import Conflict, InvalidInput, NotFound
from relay import alerts, visibility
from relay.egress import EgressPolicy, EgressRefused, check_destination
from relay.rules import RuleError, derived_class, validate
from relay.signing import new_secret
from relay.views import ALERT_SELECT, view_as
from relay.visibility import Viewer

Conn = psycopg.Connection[dict[str, Any]]
__all__ = ["Conflict", "InvalidInput", "NotFound", "RuleError", "Viewer"]


def list_alerts(
    conn: Conn,
    viewer: Viewer,
    *,
    state: str | None = None,
    severity: str | None = None,
    device_id: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """The alerts the viewer sees, in its view, newest first (`before_id` pages back)."""
    where, params = visibility.sql(viewer)
    for name, value in (("state", state), ("severity", severity), ("device_id", device_id)):
        if value is not None:
            where += f" AND a.{name} = %({name})s"
            params[name] = value
    if before_id is not None:
        where += " AND a.alert_id < %(before_id)s"
        params["before_id"] = before_id
    params["limit"] = max(1, min(limit, 1000))
    rows = conn.execute(ALERT_SELECT + f" WHERE {where} ORDER BY a.alert_id DESC LIMIT %(limit)s", params)
    return [v for r in rows if (v := view_as(viewer, r)) is not None]


def get_alert(conn: Conn, viewer: Viewer, alert_id: int) -> dict[str, Any]:
    """One alert in the viewer's view; the provider's view carries its history."""
    row = _alert_row(conn, viewer, alert_id)
    view = view_as(viewer, row)
    assert view is not None
    if viewer.view == "provider":
        view["history"] = [
            {
                "at": h["at"].isoformat(),
                "action": h["action"],
                "actor": h["actor"],
                "user_id": h["user_id"],
                "detail": h["detail"],
            }
            for h in conn.execute(
                "SELECT * FROM alert_history WHERE alert_id = %s ORDER BY history_id", (alert_id,)
            )
        ]
    return view


def _alert_row(conn: Conn, viewer: Viewer, alert_id: int) -> dict[str, Any]:
    where, params = visibility.sql(viewer)
    row = conn.execute(
        ALERT_SELECT + f" WHERE a.alert_id = %(alert_id)s AND {where}", params | {"alert_id": alert_id}
    ).fetchone()
    if row is None:
        raise NotFound(f"no alert {alert_id}")
    return row


def acknowledge(conn: Conn, org_id: int, alert_id: int, user_id: int) -> dict[str, Any]:
    """Acknowledge an open alert of the provider org, as `user_id`; returns the new view."""
    return _change(conn, org_id, alert_id, user_id, "acknowledged")


def resolve(conn: Conn, org_id: int, alert_id: int, user_id: int) -> dict[str, Any]:
    """Resolve an alert of the provider org, as `user_id`; returns the new view."""
    return _change(conn, org_id, alert_id, user_id, "resolved")


def _change(conn: Conn, org_id: int, alert_id: int, user_id: int, action: str) -> dict[str, Any]:
    with conn.transaction():
        provider = Viewer("provider", org_id)
        row = _alert_row(conn, provider, alert_id)
        if not alerts.set_state(conn, alert_id, action, user_id, f"user:{user_id}"):
            raise Conflict(f"alert {alert_id} is {row['state']}; it cannot be {action}")
        if action == "resolved":
            alerts.enqueue(conn, alert_id, "resolved", email=False)
        else:
            alerts.notify(conn, row, action)
        new = conn.execute(ALERT_SELECT + " WHERE a.alert_id = %s", (alert_id,)).fetchone()
    view = view_as(provider, new) if new is not None else None
    assert view is not None
    return view


_WEBHOOK_COLUMNS = "webhook_id, org_id, url, enabled, created_at"
WEBHOOKS_PER_ORG_MAX = 20


def _checked_url(url: str, egress: EgressPolicy | None) -> str:
    try:
        check_destination(url, egress or EgressPolicy.from_env())
    except EgressRefused as exc:
        raise InvalidInput(f"url: the webhook URL {exc}", field="url") from exc
    return url


def create_webhook(
    conn: Conn,
    org_id: int,
    url: str,
    *,
    egress: EgressPolicy | None = None,
    max_per_org: int = WEBHOOKS_PER_ORG_MAX,
) -> dict[str, Any]:
    """Register a webhook for the org; the returned dict holds the signing `secret`, shown only now.

    `url` must pass the egress policy (`egress`, or the process settings' when None); an org has
    at most `max_per_org` webhooks.
    """
    _checked_url(url, egress)
    secret = new_secret()
    with conn.transaction():
        # The org's row serializes concurrent creates, so the cap holds under races.
        org = conn.execute("SELECT 1 FROM orgs WHERE org_id = %s FOR NO KEY UPDATE", (org_id,)).fetchone()
        if org is None:
            raise NotFound(f"no org {org_id}")
        count = conn.execute("SELECT count(*) AS n FROM webhooks WHERE org_id = %s", (org_id,)).fetchone()
        if count is not None and count["n"] >= max_per_org:
            raise Conflict(f"an org may have at most {max_per_org} webhooks; delete one first")
        row = conn.execute(
            f"INSERT INTO webhooks (org_id, url, secret) VALUES (%s, %s, %s) RETURNING {_WEBHOOK_COLUMNS}",
            (org_id, url, secret),
        ).fetchone()
    assert row is not None
    return {**row, "secret": secret}


def update_webhook(
    conn: Conn,
    org_id: int,
    webhook_id: int,
    *,
    url: str | None = None,
    enabled: bool | None = None,
    egress: EgressPolicy | None = None,
) -> dict[str, Any]:
    """Change a webhook's URL (checked as on create) or switch it on or off; the secret stays."""
    if url is not None:
        _checked_url(url, egress)
    row = conn.execute(
        f"""UPDATE webhooks SET url = coalesce(%s, url), enabled = coalesce(%s, enabled)
            WHERE webhook_id = %s AND org_id = %s RETURNING {_WEBHOOK_COLUMNS}""",
        (url, enabled, webhook_id, org_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"no webhook {webhook_id}")
    return row


def list_webhooks(conn: Conn, org_id: int) -> list[dict[str, Any]]:
    """The org's webhooks, without their secrets."""
    return list(
        conn.execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE org_id = %s ORDER BY webhook_id",
            (org_id,),
        )
    )


def delete_webhook(conn: Conn, org_id: int, webhook_id: int) -> None:
    """Delete one of the org's webhooks; its pending deliveries go `dead` when next tried."""
    cur = conn.execute("DELETE FROM webhooks WHERE webhook_id = %s AND org_id = %s", (webhook_id, org_id))
    if cur.rowcount == 0:
        raise NotFound(f"no webhook {webhook_id}")


def list_deliveries(
    conn: Conn, org_id: int, *, state: str | None = None, alert_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The org's deliveries (newest first), each with its attempts."""
    where, params = "o.org_id = %s", list[Any]([org_id])
    for column, value in (("o.state", state), ("o.alert_id", alert_id)):
        if value is not None:
            where += f" AND {column} = %s"
            params.append(value)
    params.append(max(1, min(limit, 1000)))
    rows = conn.execute(
        f"""SELECT o.delivery_id, o.alert_id, o.event, o.audience, o.channel, o.webhook_id, o.state,
                   o.attempts, o.next_attempt_at, o.last_error, o.created_at, o.delivered_at,
                   coalesce((SELECT jsonb_agg(jsonb_build_object(
                                 'at', t.at, 'ok', t.ok, 'status_code', t.status_code,
                                 'error', t.error, 'duration_ms', t.duration_ms) ORDER BY t.attempt_id)
                             FROM delivery_attempts t WHERE t.delivery_id = o.delivery_id),
                            '[]') AS attempt_log
            FROM outbox o WHERE {where} ORDER BY o.delivery_id DESC LIMIT %s""",
        params,
    )
    return list(rows)


_RULE_COLUMNS = (
    "rule_id, key, name, device_kind, model, device_id, provider_org_id, kind, params, "
    "severity, class, auto_resolve, enabled, created_at, updated_at, last_error, error_count, last_error_at"
)


def list_rules(conn: Conn, org_id: int, device_kind: str | None = None) -> list[dict[str, Any]]:
    """The global defaults and the org's own rules, each with the class it is evaluated with."""
    where, params = "(provider_org_id IS NULL OR provider_org_id = %s)", list[Any]([org_id])
    if device_kind is not None:
        where += " AND device_kind = %s"
        params.append(device_kind)
    rows = conn.execute(f"SELECT {_RULE_COLUMNS} FROM rules WHERE {where} ORDER BY key, rule_id", params)
    # A row stored before the class was derived says what the engine does with it, not what it holds.
    return [r | {"class": derived_class(r["device_kind"], r["kind"], r["params"], r["class"])} for r in rows]


def create_rule(conn: Conn, org_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Add a rule of the org, scoped to a device kind, a model or one of its devices."""
    rule = _rule_fields(data)
    if rule["device_id"] is not None:
        owned = conn.execute(
            "SELECT kind FROM devices WHERE device_id = %s AND provider_org_id = %s",
            (rule["device_id"], org_id),
        ).fetchone()
        if owned is None or owned["kind"] != rule["device_kind"]:
            raise NotFound(f"no {rule['device_kind']} device {rule['device_id']}")
    try:
        row = conn.execute(
            f"""INSERT INTO rules (key, name, device_kind, model, device_id, provider_org_id, kind, params,
                                   severity, class, auto_resolve, enabled)
                VALUES (%(key)s, %(name)s, %(device_kind)s, %(model)s, %(device_id)s, %(org)s, %(kind)s,
                        %(params)s, %(severity)s, %(class)s, %(auto_resolve)s, %(enabled)s)
                RETURNING {_RULE_COLUMNS}""",
            {**rule, "org": org_id, "params": Jsonb(rule["params"])},
        ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(f"a rule {rule['key']!r} with this scope already exists") from exc
    except psycopg.errors.CheckViolation as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from exc
    assert row is not None
    return row


def _rule_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The columns of a rule from API input, validated (RuleError names the field), class derived.

    A rule that reads a clinical metric or event is stored as clinical even when `technical` was
    asked: no 422, the answer carries the class the rule has.
    """
    missing = [k for k in ("key", "name", "device_kind", "kind", "severity", "class") if k not in data]
    if missing:
        raise InvalidInput(f"a rule needs {', '.join(missing)}")
    params = data.get("params") or {}
    validate(data["device_kind"], data["kind"], params, data["severity"], data["class"])
    return {
        "key": data["key"],
        "name": data["name"],
        "device_kind": data["device_kind"],
        "model": data.get("model"),
        "device_id": data.get("device_id"),
        "kind": data["kind"],
        "params": params,
        "severity": data["severity"],
        "class": derived_class(data["device_kind"], data["kind"], params, data["class"]),
        "auto_resolve": bool(data.get("auto_resolve", False)),
        "enabled": bool(data.get("enabled", True)),
    }


def patch_rule(conn: Conn, org_id: int, rule_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Tune a rule. The org's own rule changes in place; a global default gets an org override
    (same key and scope, for this provider only), so other providers keep the default. The change
    is validated as a new rule is, and clears the errors recorded on the rule."""
    allowed = {"name", "params", "severity", "class", "auto_resolve", "enabled"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}")
    current = conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM rules WHERE rule_id = %s AND (provider_org_id IS NULL"
        " OR provider_org_id = %s)",
        (rule_id, org_id),
    ).fetchone()
    if current is None:
        raise NotFound(f"no rule {rule_id}")
    merged = {**current, **changes}
    merged["params"] = {**current["params"], **(changes.get("params") or {})}
    fields = _rule_fields(merged)
    if current["provider_org_id"] is None:
        return create_rule(conn, org_id, fields)
    row = conn.execute(
        f"""UPDATE rules SET name = %(name)s, params = %(params)s, severity = %(severity)s,
                   class = %(class)s, auto_resolve = %(auto_resolve)s, enabled = %(enabled)s,
                   last_error = NULL, error_count = 0, last_error_at = NULL, updated_at = now()
            WHERE rule_id = %(rule_id)s RETURNING {_RULE_COLUMNS}""",
        {**fields, "params": Jsonb(fields["params"]), "rule_id": rule_id},
    ).fetchone()
    assert row is not None
    return row


def set_contacts(conn: Conn, org_id: int, emails: list[str]) -> None:
    """Replace the org's e-mail recipients for alerts."""
    with conn.transaction():
        conn.execute("DELETE FROM org_contacts WHERE org_id = %s", (org_id,))
        for email in emails:
            try:
                conn.execute("INSERT INTO org_contacts (org_id, email) VALUES (%s, %s)", (org_id, email))
            except psycopg.errors.CheckViolation as exc:
                raise InvalidInput(f"not an e-mail address: {email!r}") from exc
