"""Test session: a private Mosquitto and PostgreSQL started by the session itself (fix_stack), a fresh
migrated database per test module (fix_db), API users and servers (fix_api), headless Chromium
(fix_browser) and simulated devices (devices.simulator.fixture)."""

pytest_plugins = [
    "tests.fix_stack",
    "tests.fix_db",
    "tests.fix_api",
    "tests.fix_browser",
    "devices.simulator.fixture",
]
