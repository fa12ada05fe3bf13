"""Test session: a private Mosquitto and PostgreSQL started by the session itself (fix_stack), a fresh
migrated database per test module (fix_db), API users and servers (fix_api), headless Chromium
(fix_browser), simulated devices (fix_simulator) and the default rules (fix_relay)."""

import os

# Test receivers listen on loopback over http: allowed for the whole session, as in development.
# Tests that prove the refusal build a strict `relay.egress.EgressPolicy` for themselves.
os.environ["PULSEWIRE_WEBHOOK_ALLOW_PRIVATE"] = "1"
# Likewise the SMTP test servers speak plain SMTP on loopback; tests/test_smtp_tls.py proves TLS and
# the refusals with policies of its own.
os.environ["PULSEWIRE_SMTP_ALLOW_PLAIN_LOOPBACK"] = "1"

pytest_plugins = [
    "tests.fix_stack",
    "tests.fix_db",
    "tests.fix_api",
    "tests.fix_browser",
    "tests.fix_simulator",
    "tests.fix_relay",
]
