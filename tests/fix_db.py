"""Database fixtures: a fresh, migrated database per test module on the session's stack.

Storage: a test marked `@pytest.mark.storage("native")` or `("timescale")` runs on that storage; one
marked `storage("native", "timescale")` runs once on each that is installed (the database fixture is
parametrized, the test is not copied); an unmarked test runs on native storage. When TimescaleDB is
not installed, timescale variants are not generated at all (the session header says so).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.migrate import Storage, migrate
from pulsewire.registry import DeviceCredentials
from pulsewire.settings import Settings
from pulsewire.stack import Stack, StackInfo
from pulsewire.stack._postgres import bin_dir, timescaledb_available


def database_url_for(info: StackInfo, dbname: str) -> str:
    parts = urlsplit(info.database_url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def installed_storages() -> tuple[Storage, ...]:
    """The storages this machine's PostgreSQL can give a test database."""
    bindir = bin_dir()
    return ("native", "timescale") if bindir and timescaledb_available(bindir) else ("native",)


def pytest_report_header(config: pytest.Config) -> str:
    if "timescale" in installed_storages():
        return "storage: native and TimescaleDB; storage-dependent tests run on each"
    return (
        "storage: native only; TimescaleDB is not installed, so the timescale variants of "
        "storage-dependent tests are not generated"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("storage")
    if marker is None or "storage" not in metafunc.fixturenames:
        return
    storages = [s for s in marker.args if s in installed_storages()]
    if storages:
        metafunc.parametrize("storage", storages, indirect=True, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test only for a storage that is not installed is not generated (deselected, not skipped).
    def absent(item: pytest.Item) -> bool:
        marker = item.get_closest_marker("storage")
        return marker is not None and not set(marker.args) & set(installed_storages())

    gone = [item for item in items if absent(item)]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = [item for item in items if not absent(item)]


@pytest.fixture(scope="module")
def storage(request: pytest.FixtureRequest) -> Storage:
    """The storage of this module's database (parametrized by the `storage` marker; native otherwise)."""
    return getattr(request, "param", "native")


@pytest.fixture(scope="module")
def db_url(request: pytest.FixtureRequest, stack_info: StackInfo, storage: Storage) -> Iterator[str]:
    """URL of a new database for this test module, with every migration applied for `storage`."""
    module = re.sub(r"[^a-z0-9]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:30]
    dbname = f"t_{module}_{storage[:2]}_{secrets.token_hex(3)}"
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"'.encode())
    url = database_url_for(stack_info, dbname)
    migrate(url, storage)
    if storage == "timescale":
        with connect(url, autocommit=True) as c:
            # Policies run when a test says so (CALL run_job), not at moments of the scheduler's choosing.
            c.execute(
                "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
                " WHERE job_id >= 1000"
            )
    yield url
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'.encode())


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection to the module's database."""
    with connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def settings(db_url: str, stack_info: StackInfo) -> Settings:
    """Settings pointing at the module's database and the session's broker."""
    return Settings(database_url=db_url, mqtt_url=stack_info.mqtt_url, state_dir=stack_info.state_dir)


@dataclass
class World:
    """A small registry: a clinic and a garage (providers), two vendors, owners, and a way to add devices."""

    db_url: str
    stack: Stack
    clinic_id: int
    garage_id: int
    implant_vendor_id: int
    dongle_vendor_id: int
    patient_id: int
    driver_id: int

    def add_device(self, device_id: str, kind: str = "implant", **kw: Any) -> DeviceCredentials:
        """Register a device in this world and let the broker accept it at once."""
        provider = self.clinic_id if kind == "implant" else self.garage_id
        vendor = self.implant_vendor_id if kind == "implant" else self.dongle_vendor_id
        owner = self.patient_id if kind == "implant" else self.driver_id
        kw.setdefault("model", "Evera XT DR" if kind == "implant" else "OBDLink MX+")
        with connect(self.db_url, autocommit=True) as c:
            creds = registry.add_device(
                c,
                device_id,
                kind=kind,
                provider_org_id=provider,
                vendor_org_id=vendor,
                owner_id=kw.pop("owner_id", owner),
                **kw,
            )
            self.sync_broker()
        return creds

    def sync_broker(self) -> None:
        with connect(self.db_url, autocommit=True) as c:
            assert registry.sync_broker_auth(c, self.stack.state_dir)


@pytest.fixture(scope="module")
def world(db_url: str, stack: Stack) -> World:
    """The standard registry used by end-to-end tests."""
    with connect(db_url, autocommit=True) as c:
        clinic = registry.add_org(c, "Heartland Cardiology", "provider")
        garage = registry.add_org(c, "Northside Garage", "provider")
        implant_vendor = registry.add_org(c, "Cardiac Devices Inc", "vendor")
        dongle_vendor = registry.add_org(c, "DongleWorks", "vendor")
        patient = registry.add_owner(c, clinic, "Ada Patient", email="ada@example.org")
        driver = registry.add_owner(c, garage, "Dan Driver", email="dan@example.org")
    return World(db_url, stack, clinic, garage, implant_vendor, dongle_vendor, patient, driver)


@pytest.fixture(scope="module")
def state_dir(stack: Stack) -> Path:
    return stack.state_dir
