"""Calls into `relay.store` (synchronous, autocommit) from async routes.

Also decides which scope a caller acts in: the viewer of the API's alert inbox, and the org a
rules or webhooks call acts for. The store's errors are `pulsewire.errors` already, and driver
errors are converted by `pulsewire.db`; the dashboard's one table maps both to statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from dashboards.queries import viewer_of
from dashboards.types import AConn, Principal
from pulsewire import db, registry
from pulsewire.errors import Forbidden, InvalidInput, NotFound
from relay.visibility import Viewer

T = TypeVar("T")


def inbox_viewer(p: Principal) -> Viewer:
    """The caller as the API's alert inbox scopes it; owners have none (their provider answers them)."""
    if p.role == "owner":
        raise Forbidden(f"a {p.role} has no alert inbox")
    return viewer_of(p)


async def acting_org(conn: AConn, p: Principal, org_id: int | None, action: str) -> int:
    """The provider org a rules/webhooks call acts for: the caller's own, or `org_id` for an admin."""
    if p.role == "provider_staff" and p.org_id is not None:
        if org_id is not None and org_id != p.org_id:
            raise NotFound(f"org {org_id} not found")
        return p.org_id
    if p.role != "admin":
        raise Forbidden(f"a {p.role} may not {action}")
    if org_id is None:
        raise InvalidInput(
            f"an admin must name the org (org_id) to {action}", field="org_id", code="missing_org"
        )
    cur = await conn.execute("SELECT 1 FROM orgs WHERE org_id = %s AND kind = 'provider'", (org_id,))
    if await cur.fetchone() is None:
        raise NotFound(f"provider org {org_id} not found")
    return org_id


async def call(pool: ConnectionPool[registry.Conn], fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run a relay.store function in a worker thread on an autocommit connection."""
    return await run_in_threadpool(_run, pool, fn, args, kw)


def _run(pool: ConnectionPool[registry.Conn], fn: Callable[..., T], args: Any, kw: Any) -> T:
    with db.borrowed_sync(pool) as conn:
        conn.autocommit = True
        try:
            return fn(conn, *args, **kw)
        finally:
            conn.autocommit = False
