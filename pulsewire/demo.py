"""Demo data for `pulsewire up --demo`: orgs, owners and one login per role, created once.

The logins share a published password, so they go only into the private local stack's own
database: `require_private_database` refuses any other before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg

from pulsewire import registry
from pulsewire.errors import ConfigError

Conn = psycopg.Connection[dict[str, Any]]

CLINIC = "Demo Clinic"
GARAGE = "Demo Garage"
IMPLANT_VENDOR = "Demo Implant Vendor"
DONGLE_VENDOR = "Demo Dongle Vendor"
PATIENT = "Ada Lovelace"
DRIVER = "Dan Driver"
DEMO_PASSWORD = "pulsewire-demo"


@dataclass(frozen=True)
class DemoLogin:
    email: str
    role: str
    sees: str


DEMO_LOGINS = (
    DemoLogin("clinician@demo.pulsewire", "provider_staff", "Demo Clinic's implants, patients and alerts"),
    DemoLogin("mechanic@demo.pulsewire", "provider_staff", "Demo Garage's vehicles and alerts"),
    DemoLogin(
        "vendor@demo.pulsewire", "vendor_staff", "technical data of the implants Demo Implant Vendor made"
    ),
    DemoLogin("patient@demo.pulsewire", "owner", "Ada's own implant and messages"),
    DemoLogin("driver@demo.pulsewire", "owner", "Dan's own car and messages"),
    DemoLogin("admin@demo.pulsewire", "admin", "everything, plus the quarantine"),
)


def require_private_database(database_url: str | None, stack_database_url: str | None) -> None:
    """ConfigError unless the demo would write into the local stack's own database.

    `database_url` is PULSEWIRE_DATABASE_URL (None: the local stack's); `stack_database_url` is the
    local stack's, or None when there is no stack yet.
    """
    if database_url is None or database_url == stack_database_url:
        return
    raise ConfigError(
        f"refusing to seed the demo logins ({DEMO_LOGINS[-1].email} and the others, password "
        f"{DEMO_PASSWORD!r}) into {_where(database_url)}: PULSEWIRE_DATABASE_URL names a database other "
        "than the private local stack's, and anyone who has read the README could sign in to it. "
        "Unset PULSEWIRE_DATABASE_URL to run the demo on the local stack, or run `pulsewire up` "
        "without --demo and add users with `pulsewire users add`."
    )


def _where(url: str) -> str:
    # Host, port and database only: the URL's password does not belong in a message.
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or 'localhost'}{port}{parts.path or ''}"


def org_id(conn: Conn, name: str, kind: str) -> int:
    """The id of the org called `name`, created when missing."""
    row = conn.execute("SELECT org_id FROM orgs WHERE name = %s", (name,)).fetchone()
    return int(row["org_id"]) if row else registry.add_org(conn, name, kind)


def owner_id(conn: Conn, provider: int, full_name: str) -> int:
    """The id of the owner called `full_name` in `provider`'s care, created when missing."""
    row = conn.execute(
        "SELECT owner_id FROM owners WHERE provider_org_id = %s AND full_name = %s ORDER BY owner_id LIMIT 1",
        (provider, full_name),
    ).fetchone()
    if row:
        return int(row["owner_id"])
    email = full_name.lower().replace(" ", ".") + "@example.org"
    return registry.add_owner(
        conn, provider, full_name, email=email, phone="+1 555 0100", address="1 Demo Street, Springfield"
    )


def seed(conn: Conn) -> tuple[DemoLogin, ...]:
    """Create the demo orgs, owners and logins when missing; returns the logins."""
    clinic = org_id(conn, CLINIC, "provider")
    garage = org_id(conn, GARAGE, "provider")
    implant_vendor = org_id(conn, IMPLANT_VENDOR, "vendor")
    org_id(conn, DONGLE_VENDOR, "vendor")
    patient = owner_id(conn, clinic, PATIENT)
    driver = owner_id(conn, garage, DRIVER)
    placement: dict[str, tuple[int | None, int | None]] = {  # (org_id, owner_id)
        "clinician@demo.pulsewire": (clinic, None),
        "mechanic@demo.pulsewire": (garage, None),
        "vendor@demo.pulsewire": (implant_vendor, None),
        "patient@demo.pulsewire": (None, patient),
        "driver@demo.pulsewire": (None, driver),
        "admin@demo.pulsewire": (None, None),
    }
    for login in DEMO_LOGINS:
        exists = conn.execute("SELECT 1 FROM users WHERE email = %s", (login.email,)).fetchone()
        if not exists:
            org, owner = placement[login.email]
            registry.add_user(
                conn, login.email, role=login.role, password=DEMO_PASSWORD, org_id=org, owner_id=owner
            )
    return DEMO_LOGINS
