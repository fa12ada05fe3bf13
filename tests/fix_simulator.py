"""Simulator fixtures: a simulated device or fleet for a test, on the session's stack.

A pytest plugin of the test suite (tests/conftest.py loads it after `tests.fix_db`, whose `world`
and `settings` fixtures it uses)::

    async def test_overheating(sim):
        run = await sim.scenario("overheating", seed=3)
        assert run.scenario.expect[0].rule == "vehicle.overheating"
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import pytest

from devices.simulator.fleet import Fleet
from devices.simulator.runner import DeviceLogin, ScenarioRun, run_scenario
from devices.simulator.scenarios import load
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import Settings
from tests.fix_db import World

FAST = 1e12  # time scale for tests: no waiting between messages


class Simulator:
    """Registers simulated devices in the test's world and runs scenarios or fleets as them."""

    def __init__(self, world: World, settings: Settings) -> None:
        self.world, self.settings = world, settings
        self._ids = itertools.count(1)
        self._tag = secrets.token_hex(2)

    def device(self, kind: str = "implant", **kw: Any) -> DeviceLogin:
        """Register a new device (unique id) and return its login."""
        short = "icd" if kind == "implant" else "veh"
        device_id = f"sim-{short}-{self._tag}-{next(self._ids):04d}"
        creds = self.world.add_device(device_id, kind, **kw)
        return DeviceLogin(creds.device_id, kind, creds.mqtt_password, kw.get("model", ""))

    async def scenario(
        self, name: str, *, seed: int = 1, time_scale: float = FAST, login: DeviceLogin | None = None
    ) -> ScenarioRun:
        """Run a bundled scenario as a freshly registered device (or `login`)."""
        scenario = load(name)
        login = login or self.device(scenario.kind)
        return await run_scenario(scenario, login, self.settings.mqtt(), seed=seed, time_scale=time_scale)

    def fleet(self, n: int, kind: str = "vehicle", *, seed: int = 1) -> Fleet:
        """`n` freshly registered devices as a Fleet (call `connect()`, then `run_load()`, `close()`)."""
        w = self.world
        provider, vendor = (
            (w.clinic_id, w.implant_vendor_id) if kind == "implant" else (w.garage_id, w.dongle_vendor_id)
        )
        short = "icd" if kind == "implant" else "veh"
        logins = []
        # One broker reload for the whole fleet, not one per device.
        with connect(w.db_url, autocommit=True) as conn:
            for _ in range(n):
                device_id = f"sim-{short}-{self._tag}-{next(self._ids):04d}"
                creds = registry.add_device(
                    conn, device_id, kind=kind, model="sim", provider_org_id=provider, vendor_org_id=vendor
                )
                logins.append(DeviceLogin(device_id, kind, creds.mqtt_password))
        w.sync_broker()
        return Fleet(logins, self.settings.mqtt(), seed=seed)


@pytest.fixture
def sim(world: World, settings: Settings) -> Simulator:
    """A `Simulator` bound to the module's world (registry) and the session's broker."""
    return Simulator(world, settings)
