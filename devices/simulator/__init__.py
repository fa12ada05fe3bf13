"""The device simulator: virtual implants and vehicles, scenarios with expected alerts, faults, load.

Python API::

    from devices.simulator import load, run_scenario, DeviceLogin
    run = await run_scenario(load("overheating"), DeviceLogin(id, "vehicle", pw), settings.mqtt(), seed=1)
    run.scenario.expect          # ExpectedAlert(rule, severity, audience) the relay must raise
    run.expected_readings()      # what ingest must store; run.expected_quarantine(): the reasons

`Fleet` runs thousands of devices in one event loop (`connect`, `run_load`, `close`). The test
suite's `sim` fixture (tests/fix_simulator.py) registers devices and runs scenarios with them.
"""

from devices.simulator.fleet import Fleet, LoadReport
from devices.simulator.runner import DeviceLogin, ScenarioRun, run_scenario
from devices.simulator.scenarios import ExpectedAlert, Scenario, available, build_plan, load

__all__ = [
    "DeviceLogin",
    "ExpectedAlert",
    "Fleet",
    "LoadReport",
    "Scenario",
    "ScenarioRun",
    "available",
    "build_plan",
    "load",
    "run_scenario",
]
