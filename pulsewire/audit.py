"""The access audit: who read or did what, to whose data, from where (table `access_audit`).

Entries are written in the caller's transaction, so an entry exists exactly when what it records
was served: the dashboard commits before the response leaves. `record` is one statement (one row
per owner concerned); `insert_for_rows` is the same entry as a CTE of the statement that reads the
rows, which is how a device read is recorded without a round trip of its own (`bench/audit_bench.py`,
figures in `docs/benchmarks.md`).
The table is append-only for the application (migration 0040): nothing here updates or deletes.

Actions::

    read            owner identity, readings, events, alerts (web pages and API)
    export          a FHIR or VSS export
    download        an owner's download of their own records
    login           a password sign-in; `login_failed` when refused
    token_use       a request authenticated by an API token (at most once a minute per token)
    admin:<what>    an act of an admin (or of staff on the registry): `admin:user.disable`, ...
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

AConn = psycopg.AsyncConnection[dict[str, Any]]
Conn = psycopg.Connection[dict[str, Any]]
Row = dict[str, Any]

READ, EXPORT, DOWNLOAD = "read", "export", "download"
LOGIN, LOGIN_FAILED, TOKEN_USE = "login", "login_failed", "token_use"
_INSERT = """INSERT INTO access_audit (actor_user_id, actor_label, org_id, role, credential, action,
                 object_type, object_id, owner_id, client_addr, detail)
             SELECT %s, %s, %s, %s, %s, %s, %s, %s, o, %s, %s FROM unnest(%s::bigint[]) AS o"""
_TOKEN_USE_EVERY_S = 60.0
_TOKEN_USE_REMEMBERED_MAX = 10_000


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (or the CLI), in which org and role, with which credential, from where."""

    user_id: int | None
    label: str
    org_id: int | None = None
    role: str | None = None
    credential: str | None = None
    client_addr: str | None = None


@dataclass(frozen=True)
class Entry:
    """One thing done: `action` on `object_type`/`object_id`, concerning these owners (maybe none)."""

    action: str
    object_type: str
    object_id: str | None = None
    owner_ids: tuple[int, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)


def token_credential(token: str) -> str:
    """How an entry names an API token: the start of its stored SHA-256, never the token itself."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _params(actor: Actor, entry: Entry) -> tuple[Any, ...]:
    # One row per owner concerned, or one row without an owner: `unnest` of [NULL].
    owners: list[int | None] = list(dict.fromkeys(entry.owner_ids)) or [None]
    return (
        actor.user_id,
        actor.label,
        actor.org_id,
        actor.role,
        actor.credential,
        entry.action,
        entry.object_type,
        entry.object_id,
        actor.client_addr,
        Jsonb(dict(entry.detail)),
        owners,
    )


async def record(conn: AConn, actor: Actor, entry: Entry) -> None:
    """Write `entry` in the caller's transaction (one statement, one row per owner concerned)."""
    await conn.execute(_INSERT, _params(actor, entry))


def insert_for_rows(
    source: str, actor: Actor, entry: Entry, *, lazy_commit: bool = False
) -> tuple[str, dict[str, Any]]:
    """`entry` as a data-modifying CTE (`audit AS (INSERT ...)`): one row per row of the CTE `source`,
    whose `owner_id` column names the owner concerned. Put in the statement that reads those rows,
    it records them without a round trip of its own (`docs/benchmarks.md` has the figures).

    `lazy_commit` is for a transaction that writes nothing else (a GET): its commit then does not
    wait for the disk flush, which the entry would otherwise add to a read. Only a crash of
    PostgreSQL itself within a fraction of a second can lose such an entry.
    """
    lazy = " WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL" if lazy_commit else ""
    sql = f"""audit AS (
        INSERT INTO access_audit (actor_user_id, actor_label, org_id, role, credential, action,
            object_type, object_id, owner_id, client_addr, detail)
        SELECT %(audit_user)s, %(audit_label)s, %(audit_org)s, %(audit_role)s, %(audit_credential)s,
            %(audit_action)s, %(audit_type)s, %(audit_object)s, {source}.owner_id, %(audit_addr)s,
            %(audit_detail)s FROM {source}{lazy})"""
    return sql, {
        "audit_user": actor.user_id,
        "audit_label": actor.label,
        "audit_org": actor.org_id,
        "audit_role": actor.role,
        "audit_credential": actor.credential,
        "audit_action": entry.action,
        "audit_type": entry.object_type,
        "audit_object": entry.object_id,
        "audit_addr": actor.client_addr,
        "audit_detail": Jsonb(dict(entry.detail)),
    }


def record_sync(conn: Conn, actor: Actor, entry: Entry) -> None:
    """`record` for synchronous callers (the CLI)."""
    conn.execute(_INSERT, _params(actor, entry))


class TokenUses:
    """Which tokens had their use recorded in the last minute, so a busy client is one row a minute.

    Per process and bounded: when full, the oldest half is forgotten (those tokens are simply
    recorded again on their next use).
    """

    def __init__(self, every_s: float = _TOKEN_USE_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def due(self, credential: str) -> bool:
        """Whether this token's use should be recorded now (and remember that it was)."""
        now = time.monotonic()
        last = self._last.get(credential)
        if last is not None and now - last < self.every_s:
            return False
        if len(self._last) >= _TOKEN_USE_REMEMBERED_MAX:
            for key in list(self._last)[: _TOKEN_USE_REMEMBERED_MAX // 2]:
                del self._last[key]
        self._last.pop(credential, None)
        self._last[credential] = now
        return True


@dataclass(frozen=True)
class TrailQuery:
    """A filter on the trail: by owner (patient), actor and time; `provider_org_id` limits it to the
    owners of one provider (what a provider may see)."""

    owner_id: int | None = None
    actor_user_id: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    provider_org_id: int | None = None
    limit: int = 100
    offset: int = 0


async def trail(conn: AConn, q: TrailQuery) -> list[Row]:
    """Entries matching `q`, newest first."""
    cur = await conn.execute(
        """SELECT a.audit_id, a.at, a.actor_user_id, a.actor_label, a.org_id, a.role, a.credential,
                  a.action, a.object_type, a.object_id, a.owner_id, a.client_addr, a.detail
           FROM access_audit a
           WHERE (%(owner)s::bigint IS NULL OR a.owner_id = %(owner)s)
             AND (%(actor)s::bigint IS NULL OR a.actor_user_id = %(actor)s)
             AND (%(start)s::timestamptz IS NULL OR a.at >= %(start)s)
             AND (%(end)s::timestamptz IS NULL OR a.at < %(end)s)
             AND (%(org)s::bigint IS NULL OR a.owner_id IN
                  (SELECT owner_id FROM owners WHERE provider_org_id = %(org)s))
           ORDER BY a.at DESC, a.audit_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "owner": q.owner_id,
            "actor": q.actor_user_id,
            "start": q.start,
            "end": q.end,
            "org": q.provider_org_id,
            "limit": q.limit,
            "offset": q.offset,
        },
    )
    return await cur.fetchall()


def owners_of(rows: Iterable[Row], key: str = "owner_id") -> tuple[int, ...]:
    """The distinct owner ids of rows (devices, alerts) that have one."""
    return tuple(dict.fromkeys(int(r[key]) for r in rows if r.get(key) is not None))
