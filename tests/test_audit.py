"""The access audit: append-only for the application's database role, and an entry for each read of a
patient's data, with the right actor, from the API and the web pages."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pulsewire import audit
from pulsewire.stack import StackInfo


def _insert_one(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    audit.record_sync(
        conn,  # type: ignore[arg-type]
        audit.Actor(user_id=1, label="tester", role="admin", client_addr="127.0.0.1"),
        audit.Entry(audit.READ, "device", "x", owner_ids=(7,)),
    )


@pytest.fixture(scope="module")
def app_role_url(db_url: str, stack_info: StackInfo) -> Iterator[str]:
    """A login role that is not a superuser and is a member of `pulsewire_app`, as production runs."""
    name, password = f"pw_app_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE pulsewire_app".encode())
    parts = urlsplit(db_url)
    yield urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}"))
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f"DROP ROLE {name}".encode())


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE access_audit SET actor_label = 'someone else'",
        "DELETE FROM access_audit",
        "TRUNCATE access_audit",
    ],
)
def test_the_stacks_application_role_cannot_change_the_trail(db_url: str, statement: str) -> None:
    # The dashboard connects as the stack's role (a superuser): the trigger refuses it.
    with psycopg.connect(db_url, autocommit=True) as conn:
        _insert_one(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement.encode())
        assert conn.execute("SELECT count(*) FROM access_audit").fetchone() != (0,)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE access_audit SET actor_label = 'someone else'",
        "DELETE FROM access_audit",
        "TRUNCATE access_audit",
        "ALTER TABLE access_audit DISABLE TRIGGER access_audit_no_change",
        "DROP TRIGGER access_audit_no_change ON access_audit",
    ],
)
def test_a_member_of_pulsewire_app_may_append_and_read_only(app_role_url: str, statement: str) -> None:
    with psycopg.connect(app_role_url, autocommit=True) as conn:
        _insert_one(conn)
        assert conn.execute("SELECT count(*) FROM access_audit").fetchone() != (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.encode())
