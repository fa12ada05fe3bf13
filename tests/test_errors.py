"""The error tree: every error class has a status, the docstring draws every one, and driver errors
are converted at the database boundary (against a real PostgreSQL)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import psycopg
import pytest

import pulsewire.errors
from dashboards.errors import STATUS, answer_for, status_of
from pulsewire import db, registry
from pulsewire.errors import (
    Conflict,
    DatabaseError,
    DuplicateRecord,
    InvalidInput,
    InvalidRecord,
    NotFound,
    PulsewireError,
    QueryTimeout,
    RateLimited,
    RegistryError,
    UnknownRecord,
)
from tests.helpers import free_port

PACKAGES = ("schemas", "pulsewire", "ingest", "relay", "devices", "dashboards")


def _every_error_class() -> set[type[PulsewireError]]:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith("__main__"):  # runs a program when imported
                importlib.import_module(info.name)
    found: set[type[PulsewireError]] = set()
    todo = [PulsewireError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


ERRORS = sorted(_every_error_class(), key=lambda c: c.__name__)


@pytest.mark.parametrize("kind", ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_a_status_of_its_own_kind(kind: type[PulsewireError]) -> None:
    # The base's row is the documented default for a bug (500): no error we raise may end there.
    assert status_of(kind) is not STATUS[PulsewireError], f"{kind.__name__} has no row in STATUS"


@pytest.mark.parametrize("kind", ERRORS, ids=lambda c: c.__name__)
def test_the_tree_in_the_docstring_names_every_error(kind: type[PulsewireError]) -> None:
    assert f" {kind.__name__} " in pulsewire.errors.__doc__ or ""


def test_registry_refusals_keep_their_kind() -> None:
    assert (status_of(UnknownRecord).status, status_of(DuplicateRecord).status) == (404, 409)
    assert status_of(InvalidRecord).status == 422
    assert all(issubclass(k, RegistryError) for k in (UnknownRecord, DuplicateRecord, InvalidRecord))


def test_answers_carry_code_details_and_retry_after() -> None:
    invalid = answer_for(InvalidInput("bucket: too small", field="bucket", code="invalid_bucket"))
    assert (invalid.status, invalid.code, invalid.details) == (422, "invalid_bucket", {"field": "bucket"})
    limited = answer_for(RateLimited("slow down", retry_after_s=7))
    assert (limited.status, limited.headers) == (429, {"Retry-After": "7"})
    hidden = answer_for(DatabaseError("connection to 10.1.2.3:5432 failed for user pw_admin"))
    assert (hidden.status, hidden.message) == (503, "database unavailable")
    timeout = answer_for(QueryTimeout("narrow the range", retry_after_s=5))
    assert (timeout.status, timeout.code, timeout.message) == (503, "query_timeout", "narrow the range")


def _raised(db_url: str, sql: str, params: Any = None) -> BaseException:
    with pytest.raises(Exception) as info, db.connect(db_url, autocommit=True) as conn, db.errors_converted():
        conn.execute("SET statement_timeout = '50ms'")
        conn.execute(sql, params)
    return info.value


def test_driver_errors_leave_the_boundary_as_ours(db_url: str) -> None:
    cancelled = _raised(db_url, "SELECT pg_sleep(5)")
    assert isinstance(cancelled, QueryTimeout) and isinstance(
        cancelled.__cause__, psycopg.errors.QueryCanceled
    )
    bad_value = _raised(db_url, "SELECT %s::timestamptz", ("not a time",))
    assert isinstance(bad_value, InvalidInput) and str(bad_value).startswith("invalid value:")
    dangling = _raised(db_url, "INSERT INTO owners (provider_org_id, full_name) VALUES (999999, 'x')")
    assert isinstance(dangling, InvalidInput) and dangling.code == "constraint_violation"
    # A bug stays a bug: bad SQL is not turned into a 4xx or a 503.
    assert isinstance(_raised(db_url, "SELECT no_such_column FROM orgs"), psycopg.errors.UndefinedColumn)


def test_an_unreachable_server_is_a_database_error() -> None:
    with pytest.raises(DatabaseError), db.errors_converted():
        psycopg.connect(f"postgresql://nobody@127.0.0.1:{free_port()}/none", connect_timeout=2)


def test_the_registry_raises_conflict_and_not_found(db_url: str) -> None:
    with db.connect(db_url, autocommit=True) as conn:
        clinic = registry.add_org(conn, "Errors Clinic", "provider")
        vendor = registry.add_org(conn, "Errors Vendor", "vendor")
        device = {"kind": "implant", "model": "M", "provider_org_id": clinic, "vendor_org_id": vendor}
        registry.add_device(conn, "icd-err-1", **device)
        with pytest.raises(Conflict, match="already exists"):
            registry.add_device(conn, "icd-err-1", **device)
        with pytest.raises(NotFound):
            registry.decommission_device(conn, "icd-no-such")
        with pytest.raises(InvalidInput):
            registry.add_org(conn, "Errors Bank", "bank")
