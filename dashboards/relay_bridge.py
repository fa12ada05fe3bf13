"""Calls into `relay.store` (synchronous, autocommit) from async routes, with its errors as 4xx.

Also decides which org and audience a caller acts for, the one place that maps roles to relay scopes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from dashboards.auth import Principal
from dashboards.errors import ApiError, forbidden, invalid, not_found
from dashboards.queries import AConn
from pulsewire import registry
from relay import store

T = TypeVar("T")
log = logging.getLogger("pulsewire.dashboards")


def audience_of(p: Principal) -> str:
    """Relay audience of the caller: providers see every alert of theirs, vendors technical ones only."""
    if p.role == "provider_staff":
        return "provider"
    if p.role == "vendor_staff":
        return "vendor"
    raise forbidden(f"a {p.role} has no alert inbox")


async def acting_org(conn: AConn, p: Principal, org_id: int | None, action: str) -> int:
    """The provider org a rules/webhooks call acts for: the caller's own, or `org_id` for an admin."""
    if p.role == "provider_staff" and p.org_id is not None:
        if org_id is not None and org_id != p.org_id:
            raise not_found(f"org {org_id}")
        return p.org_id
    if p.role != "admin":
        raise forbidden(f"a {p.role} may not {action}")
    if org_id is None:
        raise invalid(f"an admin must name the org (org_id) to {action}", code="missing_org")
    cur = await conn.execute("SELECT 1 FROM orgs WHERE org_id = %s AND kind = 'provider'", (org_id,))
    if await cur.fetchone() is None:
        raise not_found(f"provider org {org_id}")
    return org_id


async def call(pool: ConnectionPool[registry.Conn], fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run a relay.store function in a worker thread on an autocommit connection."""
    return await run_in_threadpool(_run, pool, fn, args, kw)


def _run(pool: ConnectionPool[registry.Conn], fn: Callable[..., T], args: Any, kw: Any) -> T:
    with pool.connection() as conn:
        conn.autocommit = True
        try:
            return fn(conn, *args, **kw)
        except store.NotFound as exc:
            raise ApiError(404, str(exc)) from exc
        except store.Conflict as exc:
            raise ApiError(409, str(exc)) from exc
        except (store.InvalidInput, store.RuleError) as exc:
            raise invalid(str(exc)) from exc
        except psycopg.errors.IntegrityError as exc:
            # A reference the store did not check itself (e.g. a rule for a device of another kind).
            log.warning("relay.store.%s refused by the database: %s", fn.__name__, exc)
            raise invalid(str(exc).splitlines()[0], code="constraint_violation") from exc
        finally:
            conn.autocommit = False
