"""`pulsewire up --simulate N`: the whole system from one command, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys

import httpx
import pytest

from pulsewire.db import connect
from pulsewire.stack import Stack
from tests.fix_stack import new_state_dir
from tests.helpers import free_port, wait_for


@pytest.mark.slow
def test_up_runs_everything_and_ctrl_c_stops_it() -> None:
    state_dir = new_state_dir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWIRE_")}
    env.update(PULSEWIRE_STATE_DIR=str(state_dir), PULSEWIRE_API_PORT=str(port))
    log = (state_dir / "up.log").open("wb")
    ca = str(state_dir / "pki" / "ca.crt")
    up = subprocess.Popen(
        [sys.executable, "-m", "pulsewire", "up", "--demo", "--simulate", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (
                httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=2, verify=trusting(ca)).status_code
                == 200
            ),
            90,
            "the dashboard over HTTPS, with a certificate of the stack's CA",
            interval_s=0.5,
            # refused or reset while it starts; no CA file before the stack is up
            ignoring=(httpx.TransportError, OSError),
        )
        info = Stack(state_dir).status()
        assert info is not None and info.running

        def readings_stored() -> bool:
            with connect(info.database_url) as conn:
                row = conn.execute("SELECT count(*) AS n FROM readings").fetchone()
            return row is not None and int(str(row["n"])) > 0

        try:
            wait_for(readings_stored, 90, "simulated readings to be stored", interval_s=0.5)
        except AssertionError as exc:  # say what the services said
            log.flush()
            tail = (state_dir / "up.log").read_text(errors="replace")[-6000:]
            raise AssertionError(f"{exc}; the end of up.log:\n{tail}") from None
        # Each component logs in as itself (least privilege), never as the operator's full-access login.
        broker_log = (state_dir / "mosquitto" / "mosquitto.log").read_text()
        assert "u'pulsewire-ingest')" in broker_log and "u'pulsewire')" not in broker_log
        # The simulated devices log in with their certificates (mutual TLS), none with a password.
        assert logged_in_on(broker_log, info.mqtts_port)
        # The stack's own readiness probe opens (and closes) a TCP connection there; nobody logs in.
        assert not logged_in_on(broker_log, info.mqtt_port)
        banner = (state_dir / "up.log").read_text()
        assert f"https://127.0.0.1:{port}/" in banner and "clinician@demo.pulsewire" in banner

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=40) == 0
        after = Stack(state_dir).status()
        assert after is not None and not after.postgres_running and not after.broker_running
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        Stack(state_dir).down()
        log.close()
        shutil.rmtree(state_dir, ignore_errors=True)


def logged_in_on(broker_log: str, port: int) -> list[str]:
    """The clients that logged in (sent CONNECT and were accepted) through the listener at `port`.

    Mosquitto logs `New connection from ADDR on port P.` when it accepts a socket, then
    `New client connected from ADDR as ID (...)` once the client has authenticated.
    """
    lines = broker_log.splitlines()
    suffix = f" on port {port}."
    addresses = {
        line.split("New connection from ", 1)[1].removesuffix(suffix)
        for line in lines
        if "New connection from " in line and line.endswith(suffix)
    }
    return [
        line
        for line in lines
        if "New client connected from " in line
        and line.split("New client connected from ", 1)[1].split(" ", 1)[0] in addresses
    ]


def trusting(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (OSError while it does not exist yet)."""
    return ssl.create_default_context(cafile=ca_file)
