"""Who is calling: bearer tokens for the API, signed session cookies and CSRF tokens for the web.

Tokens and session ids are long random strings; only their SHA-256 is stored. The session cookie
carries `<session id>.<HMAC>` so a forged or truncated cookie is refused before any query runs.
The CSRF token of a form is derived from the session id (HMAC), so it needs no storage.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from starlette.concurrency import run_in_threadpool

from dashboards.types import AConn, Principal
from pulsewire.registry import hash_token, verify_user_password

SESSION_COOKIE = "pw_session"
SESSION_TTL = timedelta(hours=12)

REFUSED = "missing, invalid or revoked credentials"
TOKEN_EXPIRED = "API token expired: create a new one"
_PRINCIPAL_COLUMNS = """u.user_id, u.role, u.org_id, o.kind AS org_kind, u.owner_id, u.display_name"""


@dataclass(frozen=True)
class SessionConfig:
    """How web sessions are signed and what their cookie looks like."""

    secret: bytes
    secure_cookies: bool = False
    ttl: timedelta = SESSION_TTL

    @classmethod
    def create(cls, secret: str | None, secure_cookies: bool) -> SessionConfig:
        # Without a configured secret, sessions last as long as this process (and one instance).
        key = secret.encode() if secret else secrets.token_bytes(32)
        return cls(secret=key, secure_cookies=secure_cookies)


async def principal_from_token(conn: AConn, token: str) -> Principal | None:
    """The user behind an API token, or None when unknown, revoked, expired or disabled."""
    cur = await conn.execute(
        f"""SELECT {_PRINCIPAL_COLUMNS}, t.token_id,
                   t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute' AS stale
            FROM api_tokens t JOIN users u ON u.user_id = t.user_id
            LEFT JOIN orgs o ON o.org_id = u.org_id
            WHERE t.token_hash = %s AND t.revoked_at IS NULL AND NOT u.disabled
              AND (t.expires_at IS NULL OR t.expires_at > now())""",
        (hash_token(token),),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    if row["stale"]:
        # At most once a minute per token: busy clients do not turn every read into a write.
        await conn.execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE token_id = %s", (row["token_id"],)
        )
    return Principal.from_row(row)


async def token_refusal(conn: AConn, token: str) -> str:
    """Why `principal_from_token` refused a token, in words for its holder.

    Only an expiry is named: the holder knows when the token was issued, and it tells them to get
    a new one. Revoked, unknown and disabled stay one answer, which tells nobody anything.
    """
    cur = await conn.execute(
        """SELECT 1 FROM api_tokens
           WHERE token_hash = %s AND revoked_at IS NULL AND expires_at <= now()""",
        (hash_token(token),),
    )
    return TOKEN_EXPIRED if await cur.fetchone() else REFUSED


async def principal_from_login(conn: AConn, email: str, password: str) -> Principal | None:
    """The user with this e-mail and password, or None (same answer for unknown e-mail)."""
    cur = await conn.execute(
        f"""SELECT {_PRINCIPAL_COLUMNS}, u.password_hash FROM users u
            LEFT JOIN orgs o ON o.org_id = u.org_id WHERE u.email = %s AND NOT u.disabled""",
        (email.strip().lower(),),
    )
    row = await cur.fetchone()
    stored = str(row["password_hash"]) if row and row["password_hash"] else None
    # argon2 takes tens of milliseconds: keep it off the event loop.
    ok = await run_in_threadpool(_check_password, stored, password)
    return Principal.from_row(row) if ok and row else None


def _check_password(stored: str | None, password: str) -> bool:
    # An unknown e-mail (or a user without a password) is checked against a dummy hash: the same
    # argon2 work as a wrong password, so the answer's timing does not tell which accounts exist.
    ok = verify_user_password(stored or _dummy_hash(), password)
    return ok and stored is not None


@functools.cache
def _dummy_hash() -> str:
    # The library's default parameters, the same as every stored password's.
    return PasswordHasher().hash(secrets.token_urlsafe(24))


async def create_session(conn: AConn, config: SessionConfig, user_id: int) -> str:
    """Start a web session; returns the signed cookie value."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO web_sessions (session_hash, user_id, expires_at) VALUES (%s, %s, now() + %s)",
        (hash_token(session_id), user_id, config.ttl),
    )
    return f"{session_id}.{_sign(config, session_id)}"


async def principal_from_session(conn: AConn, config: SessionConfig, cookie: str) -> Principal | None:
    """The user of a live session cookie, or None when forged, expired or ended."""
    session_id = _verified_session_id(config, cookie)
    if session_id is None:
        return None
    cur = await conn.execute(
        f"""SELECT {_PRINCIPAL_COLUMNS} FROM web_sessions s JOIN users u ON u.user_id = s.user_id
            LEFT JOIN orgs o ON o.org_id = u.org_id
            WHERE s.session_hash = %s AND s.expires_at > now() AND NOT u.disabled""",
        (hash_token(session_id),),
    )
    row = await cur.fetchone()
    return Principal.from_row(row) if row else None


async def end_session(conn: AConn, config: SessionConfig, cookie: str) -> None:
    """Log out: the session id stops working even if the cookie is kept."""
    session_id = _verified_session_id(config, cookie)
    if session_id is not None:
        await conn.execute("DELETE FROM web_sessions WHERE session_hash = %s", (hash_token(session_id),))


def csrf_token(config: SessionConfig, cookie: str) -> str:
    """The CSRF token to embed in forms of this session."""
    session_id = _verified_session_id(config, cookie) or ""
    return _sign(config, "csrf:" + session_id)


def csrf_valid(config: SessionConfig, cookie: str | None, token: str | None) -> bool:
    """Whether a submitted form's CSRF token belongs to this session."""
    if not cookie or not token or _verified_session_id(config, cookie) is None:
        return False
    return hmac.compare_digest(csrf_token(config, cookie), token)


def _sign(config: SessionConfig, value: str) -> str:
    mac = hmac.new(config.secret, value.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _verified_session_id(config: SessionConfig, cookie: str) -> str | None:
    session_id, _, signature = cookie.rpartition(".")
    if not session_id or not hmac.compare_digest(_sign(config, session_id), signature):
        return None
    return session_id
