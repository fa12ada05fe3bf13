"""Database fixtures: a fresh, migrated database per test module on the session's stack."""

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
from pulsewire.migrate import migrate
from pulsewire.registry import DeviceCredentials
from pulsewire.settings import Settings
from pulsewire.stack import Stack, StackInfo


def database_url_for(info: StackInfo, dbname: str) -> str:
    parts = urlsplit(info.database_url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="module")
def db_url(request: pytest.FixtureRequest, stack_info: StackInfo) -> Iterator[str]:
    """URL of a new database for this test module, with every migration applied."""
    module = re.sub(r"[^a-z0-9]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:30]
    dbname = f"t_{module}_{secrets.token_hex(3)}"
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"'.encode())
    url = database_url_for(stack_info, dbname)
    migrate(url)
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
