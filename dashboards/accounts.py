"""API tokens of the caller: issue (shown once), list, revoke, scoped to the caller's own user.
Users as an admin manages them: list, disable, enable."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from dashboards.queries import PageRequest, audit, require_role
from dashboards.types import AConn, Principal, Row
from pulsewire import db, registry
from pulsewire.errors import Conflict
from pulsewire.registry import TOKEN_PREFIX, hash_token

_MAX_TOKEN_ID = 2**63 - 1


async def list_tokens(conn: AConn, p: Principal, page: PageRequest) -> list[Row]:
    """The caller's tokens, newest first."""
    cur = await conn.execute(
        """SELECT token_id, name, created_at, last_used_at, revoked_at, expires_at FROM api_tokens
           WHERE user_id = %s ORDER BY token_id DESC LIMIT %s OFFSET %s""",
        (p.user_id, page.limit, page.offset),
    )
    return await cur.fetchall()


async def create_token(conn: AConn, p: Principal, name: str, expires_at: datetime | None = None) -> Row:
    """A new token for the caller, valid until revoked or `expires_at`; the row has the token, this once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    cur = await conn.execute(
        """INSERT INTO api_tokens (user_id, token_hash, name, expires_at) VALUES (%s, %s, %s, %s)
           RETURNING token_id, name, created_at, last_used_at, revoked_at, expires_at""",
        (p.user_id, hash_token(token), name, expires_at),
    )
    row = await cur.fetchone()
    assert row is not None
    await audit(conn, p, "token.create", "token", str(row["token_id"]))
    return row | {"token": token}


async def revoke_token(conn: AConn, p: Principal, token_id: int) -> bool:
    """Revoke one of the caller's own tokens; False when there is no such token of theirs."""
    if not 0 < token_id <= _MAX_TOKEN_ID:
        return False
    cur = await conn.execute(
        """UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
           WHERE token_id = %s AND user_id = %s RETURNING token_id""",
        (token_id, p.user_id),
    )
    if await cur.fetchone() is None:
        return False
    await audit(conn, p, "token.revoke", "token", str(token_id))
    return True


async def list_users(conn: AConn, p: Principal, page: PageRequest) -> list[Row]:
    """Every user, by id (admins only)."""
    require_role(p, ("admin",), "list users")
    cur = await conn.execute(
        """SELECT user_id, email, display_name, role, org_id, disabled_at FROM users
           ORDER BY user_id LIMIT %s OFFSET %s""",
        (page.limit, page.offset),
    )
    return await cur.fetchall()


async def set_disabled(state: Any, conn: AConn, p: Principal, user_id: int, *, disabled: bool) -> Row:
    """Disable or enable a user (admins only, never themselves); the registry does the work."""
    require_role(p, ("admin",), "disable or enable users")
    if user_id == p.user_id:
        raise Conflict("an admin cannot disable or enable themselves", code="self")
    pool: ConnectionPool[registry.Conn] = state.sync_pool
    row = await run_in_threadpool(_set_disabled, pool, user_id, disabled)
    await audit(conn, p, "user.disable" if disabled else "user.enable", "user", str(user_id))
    return row


def _set_disabled(pool: ConnectionPool[registry.Conn], user_id: int, disabled: bool) -> Row:
    # The registry is synchronous (the CLI shares it); this runs in a worker thread.
    with db.borrowed_sync(pool) as sync_conn:
        return registry.set_user_disabled(sync_conn, user_id, disabled)  # UnknownRecord: a NotFound
