"""The registry: orgs, owners, devices, users and API tokens.

Used by the CLI and the API alike. Secrets (device MQTT passwords, API tokens) are returned
once by the call that creates them and stored only as hashes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from pulsewire.brokerauth import hash_password as hash_mqtt_password
from pulsewire.brokerauth import new_password
from pulsewire.errors import DuplicateRecord, InvalidRecord, UnknownRecord

Conn = psycopg.Connection[dict[str, Any]]
ORG_KINDS = ("provider", "vendor", "operator")
ROLES = ("provider_staff", "vendor_staff", "owner", "admin")
DEVICE_KINDS = ("implant", "vehicle")
TOKEN_PREFIX = "pw_"
# A device's id is its broker login: one naming a service login (`pulsewire`, the local stack's, and
# any `pulsewire...` name kept for services) would clash with it in the password file and wedge the sync.
RESERVED_DEVICE_ID_PREFIX = "pulsewire"
_hasher = PasswordHasher()


@dataclass(frozen=True)
class DeviceCredentials:
    """What a device needs to log in to the broker; the password is not stored anywhere."""

    device_id: str
    mqtt_username: str
    mqtt_password: str


def add_org(conn: Conn, name: str, kind: str) -> int:
    """Create an organisation; returns its id."""
    if kind not in ORG_KINDS:
        raise InvalidRecord(f"org kind must be one of {', '.join(ORG_KINDS)}, got {kind!r}")
    row = _insert(
        conn,
        "INSERT INTO orgs (name, kind) VALUES (%s, %s) RETURNING org_id",
        (name, kind),
        conflict=f"an org named {name!r} already exists",
    )
    return int(row["org_id"])


def add_owner(
    conn: Conn,
    provider_org_id: int,
    full_name: str,
    *,
    birth_date: date | None = None,
    email: str | None = None,
    phone: str | None = None,
    address: str | None = None,
) -> int:
    """Register a device owner (a patient or a car owner) in a provider's care; returns its id."""
    _require_org(conn, provider_org_id, "provider")
    row = _insert(
        conn,
        """INSERT INTO owners (provider_org_id, full_name, birth_date, email, phone, address)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING owner_id""",
        (provider_org_id, full_name, birth_date, email, phone, address),
    )
    return int(row["owner_id"])


def add_device(
    conn: Conn,
    device_id: str,
    *,
    kind: str,
    model: str,
    provider_org_id: int,
    vendor_org_id: int,
    serial: str | None = None,
    firmware: str = "",
    owner_id: int | None = None,
    heartbeat_s: int | None = None,
    password: str | None = None,
) -> DeviceCredentials:
    """Register a device and create its MQTT credentials, returned once."""
    if is_reserved_device_id(device_id):
        raise InvalidRecord(f"device_id {device_id!r} is reserved: ids starting with "
                            f"{RESERVED_DEVICE_ID_PREFIX!r} name service logins")  # fmt: skip
    if kind not in DEVICE_KINDS:
        raise InvalidRecord(f"device kind must be one of {', '.join(DEVICE_KINDS)}, got {kind!r}")
    _require_org(conn, provider_org_id, "provider")
    _require_org(conn, vendor_org_id, "vendor")
    password = password or new_password()
    heartbeat = heartbeat_s or (86_400 if kind == "implant" else 3_600)
    _insert(
        conn,
        """INSERT INTO devices (device_id, kind, model, serial, firmware, owner_id, provider_org_id,
                                vendor_org_id, mqtt_password_hash, heartbeat_s)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING device_id""",
        (
            device_id,
            kind,
            model,
            serial or device_id.upper(),
            firmware,
            owner_id,
            provider_org_id,
            vendor_org_id,
            hash_mqtt_password(password),
            heartbeat,
        ),
        conflict=f"a device with id {device_id!r} already exists",
    )
    return DeviceCredentials(device_id, device_id, password)


def reset_device_password(conn: Conn, device_id: str) -> DeviceCredentials:
    """Give a device a new MQTT password, returned once (the old one stops working at the next sync)."""
    password = new_password()
    cur = conn.execute(
        "UPDATE devices SET mqtt_password_hash = %s WHERE device_id = %s AND decommissioned_at IS NULL",
        (hash_mqtt_password(password), device_id),
    )
    if cur.rowcount != 1:
        raise UnknownRecord(f"no device in service with id {device_id!r}")
    return DeviceCredentials(device_id, device_id, password)


def decommission_device(conn: Conn, device_id: str) -> datetime:
    """Retire a device for good; returns when. Idempotent.

    Its history stays (retention decides), its open commands fail, and the next broker sync
    (`sync_broker_auth`) drops its login. The id stays taken, so nothing can come back as it.
    """
    with conn.transaction():
        row = conn.execute(
            """UPDATE devices SET decommissioned_at = coalesce(decommissioned_at, now()), online = false
               WHERE device_id = %s RETURNING decommissioned_at""",
            (device_id,),
        ).fetchone()
        if row is None:
            raise UnknownRecord(f"no device with id {device_id!r}")
        conn.execute(
            """UPDATE commands SET status = 'failed', detail = 'device decommissioned', finished_at = now()
               WHERE device_id = %s AND status IN ('pending', 'sent', 'acknowledged')""",
            (device_id,),
        )
    when: datetime = row["decommissioned_at"]
    return when


def is_reserved_device_id(device_id: str) -> bool:
    """Whether `device_id` names (or could name) a service login of the broker, in any letter case."""
    return device_id.lower().startswith(RESERVED_DEVICE_ID_PREFIX)


def device_credentials(conn: Conn) -> list[tuple[str, str]]:
    """(device_id, Mosquitto password hash) of every device in service, for the broker's password file."""
    rows = conn.execute(
        """SELECT device_id, mqtt_password_hash FROM devices
           WHERE decommissioned_at IS NULL ORDER BY device_id"""
    )
    # A reserved id registered before the rule existed gets no login, rather than wedging every sync.
    return [
        (str(r["device_id"]), str(r["mqtt_password_hash"]))
        for r in rows
        if not is_reserved_device_id(str(r["device_id"]))
    ]


def add_user(
    conn: Conn,
    email: str,
    *,
    role: str,
    display_name: str | None = None,
    org_id: int | None = None,
    owner_id: int | None = None,
    password: str | None = None,
) -> int:
    """Create a user; `password` (optional) enables web login. Returns the user id."""
    if role not in ROLES:
        raise InvalidRecord(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role in ("provider_staff", "vendor_staff") and org_id is None:
        raise InvalidRecord(f"a {role} user needs an org")
    if role == "owner" and owner_id is None:
        raise InvalidRecord("an owner user needs an owner record")
    if org_id is not None:
        _require_org(conn, org_id, {"provider_staff": "provider", "vendor_staff": "vendor"}.get(role))
    row = _insert(
        conn,
        """INSERT INTO users (email, display_name, role, org_id, owner_id, password_hash)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING user_id""",
        (
            email.lower(),
            display_name or email.split("@", maxsplit=1)[0],
            role,
            org_id,
            owner_id,
            hash_user_password(password) if password else None,
        ),
        conflict=f"a user with e-mail {email!r} already exists",
    )
    return int(row["user_id"])


def hash_user_password(password: str) -> str:
    """Argon2id hash of a login password."""
    return _hasher.hash(password)


def verify_user_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; constant-time in the library."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def issue_token(conn: Conn, user_id: int, name: str = "api", *, expires_at: datetime | None = None) -> str:
    """Create an API token for a user, valid until revoked or `expires_at`; returned once, stored hashed."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api_tokens (user_id, token_hash, name, expires_at) VALUES (%s, %s, %s, %s)",
        (user_id, hash_token(token), name, expires_at),
    )
    return token


def user_id_by_email(conn: Conn, email: str) -> int:
    """The id of the user with this e-mail; UnknownRecord when there is none."""
    row = conn.execute("SELECT user_id FROM users WHERE email = %s", (email.strip().lower(),)).fetchone()
    if row is None:
        raise UnknownRecord(f"no user with e-mail {email!r}")
    return int(row["user_id"])


def set_user_disabled(conn: Conn, user_id: int, disabled: bool) -> dict[str, Any]:
    """Disable or enable a user; returns the user (without secrets). Idempotent.

    A disabled user's tokens and sessions are refused at once (every check reads `disabled`); their
    sessions are also ended, so enabling them again needs a fresh login. Tokens are kept: enabling
    the user again restores them (revoke them separately when they may be stolen).
    """
    with conn.transaction():
        row = conn.execute(
            """UPDATE users SET disabled_at = CASE WHEN %(disabled)s THEN coalesce(disabled_at, now()) END
               WHERE user_id = %(user_id)s
               RETURNING user_id, email, display_name, role, org_id, disabled_at""",
            {"user_id": user_id, "disabled": disabled},
        ).fetchone()
        if row is None:
            raise UnknownRecord(f"no user with id {user_id}")
        if disabled:
            conn.execute("DELETE FROM web_sessions WHERE user_id = %s", (user_id,))
    return dict(row)


def hash_token(token: str) -> bytes:
    """Tokens are long random strings, so a fast hash is enough (no KDF needed)."""
    return hashlib.sha256(token.encode()).digest()


def list_rows(conn: Conn, table: str) -> list[dict[str, Any]]:
    """Registry listing for the CLI: orgs, owners, devices or users, without secrets."""
    queries = {
        "orgs": "SELECT org_id, name, kind, created_at FROM orgs ORDER BY org_id",
        "owners": "SELECT owner_id, provider_org_id, full_name, email FROM owners ORDER BY owner_id",
        "devices": """SELECT device_id, kind, model, serial, firmware, provider_org_id, vendor_org_id,
                             owner_id, online, last_seen_at, decommissioned_at
                      FROM devices ORDER BY device_id""",
        "users": """SELECT user_id, email, display_name, role, org_id, owner_id, disabled_at
                    FROM users ORDER BY user_id""",
    }
    return list(conn.execute(queries[table]).fetchall())


def _require_org(conn: Conn, org_id: int, kind: str | None) -> None:
    row = conn.execute("SELECT kind FROM orgs WHERE org_id = %s", (org_id,)).fetchone()
    if row is None:
        raise InvalidRecord(f"no org with id {org_id}")
    if kind is not None and row["kind"] != kind:
        raise InvalidRecord(f"org {org_id} is a {row['kind']}, not a {kind}")


def _insert(conn: Conn, query: str, params: Iterable[Any], *, conflict: str = "") -> dict[str, Any]:
    try:
        with conn.transaction():
            row = conn.execute(query.encode(), tuple(params)).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise DuplicateRecord(conflict or str(exc)) from exc
    except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as exc:
        raise InvalidRecord(str(exc).splitlines()[0]) from exc
    assert row is not None
    return row


def sync_broker_auth(conn: Conn, state_dir: Path) -> bool:
    """Rewrite the local broker's password file and ACL from the registry and reload it.

    Returns False when no local stack runs under `state_dir` (an external broker is then
    provisioned from `device_credentials` by its operator's own tooling).
    """
    from pulsewire.stack import Stack

    stack = Stack(state_dir)
    info = stack.status()
    if info is None:
        return False
    stack.reload_broker_auth(device_credentials(conn))
    return True
