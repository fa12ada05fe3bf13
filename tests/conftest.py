"""Test session: a private Mosquitto and PostgreSQL started by the session itself (fix_stack),
a fresh migrated database per test module (fix_db)."""

pytest_plugins = ["tests.fix_stack", "tests.fix_db", "tests.fix_api", "tests.fix_browser", "devices.simulator.fixture"]
