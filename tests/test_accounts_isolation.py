"""Accounts and devices can be shut out at once: disabled users, decommissioned devices, expiring tokens,
and answers about failed dependencies that tell what failed but nothing about where it runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dashboards.auth import SESSION_COOKIE
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.registry import DeviceCredentials
from pulsewire.settings import Settings
from pulsewire.stack import Stack, StackInfo
from tests.fix_api import ApiServer, Users, assert_error, client
from tests.fix_db import World
from tests.helpers import free_port

PASSWORD = "victim-secret-pw"
NOT_AUTHORIZED = 0x87  # Mosquitto 2.0's CONNACK for an unknown user or a wrong password
# Where nothing listens, with credentials and a database name that must never be shown.
DB_URL = "postgresql://pw_admin_user:hunter2-db-secret@127.0.0.1:{port}/pulsewire_prod"
BROKER_URL = "mqtt://pw_broker_user:hunter2-mqtt-secret@127.0.0.1:{port}"


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PULSEWIRE_DATABASE_URL": settings.require_database_url(),
        "PULSEWIRE_MQTT_URL": settings.require_mqtt_url(),
        "PULSEWIRE_STATE_DIR": str(settings.state_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "pulsewire", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _new_user(world: World, email: str) -> tuple[int, str]:
    """A provider staff member with a password and an API token."""
    with connect(world.db_url, autocommit=True) as c:
        user_id = registry.add_user(
            c, email, role="provider_staff", org_id=world.clinic_id, password=PASSWORD
        )
        return user_id, registry.issue_token(c, user_id, "test")


def _web_login(api: ApiServer, email: str, password: str) -> httpx.Response:
    """Sign in through the login form, as a browser does."""
    with httpx.Client(base_url=api.url, timeout=10) as browser:
        page = browser.get("/login").text
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match is not None
        return browser.post(
            "/login", data={"email": email, "password": password, "csrf_token": match[1], "next": "/"}
        )


def _mqtt_connect(info: StackInfo, creds: DeviceCredentials) -> int:
    """The CONNACK reason code the real broker gives this device's login."""
    got: list[int] = []
    device = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"probe-{creds.device_id}", protocol=mqtt.MQTTv5
    )
    device.username_pw_set(creds.mqtt_username, creds.mqtt_password)
    device.on_connect = lambda _c, _u, _f, rc, _p: got.append(rc.value)
    device.tls_set(ca_certs=str(info.ca_file))
    device.connect(info.mqtt_host, info.mqtt_port)
    try:
        # Drive the network loop by hand until the CONNACK is in (bounded).
        for _ in range(100):
            if got:
                break
            device.loop(timeout=0.05)
    finally:
        device.disconnect()
    assert got, "no CONNACK from the broker"
    return got[0]


class _Online:
    """A device connected and staying connected, noting when the broker drops it."""

    def __init__(self, info: StackInfo, creds: DeviceCredentials) -> None:
        self.connected, self.dropped = threading.Event(), threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"live-{creds.device_id}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(creds.mqtt_username, creds.mqtt_password)
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_disconnect = lambda *_: self.dropped.set()
        self.client.reconnect_delay_set(60, 60)  # one session: no reconnect within the test
        self.client.tls_set(ca_certs=str(info.ca_file))
        self.client.connect(info.mqtt_host, info.mqtt_port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- disabling a user -----------------------------------------------------------------------------------


def test_a_disabled_user_is_shut_out_at_once(
    api: ApiServer, clients: dict[str, httpx.Client], world: World
) -> None:
    email = "victim@example.org"
    user_id, token = _new_user(world, email)
    signed_in = _web_login(api, email, PASSWORD)
    assert signed_in.status_code == 303, signed_in.text
    cookie = signed_in.cookies[SESSION_COOKIE]
    with (
        client(api, token) as by_token,
        httpx.Client(base_url=api.url, cookies={SESSION_COOKIE: cookie}) as by_cookie,
    ):
        assert by_token.get("/api/v1/me").status_code == 200
        assert by_cookie.get("/api/v1/me").status_code == 200

        disabled = clients["admin"].post(f"/api/v1/users/{user_id}/disable")
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["disabled_at"] is not None

        assert_error(by_token.get("/api/v1/me"), 401)
        assert_error(by_cookie.get("/api/v1/me"), 401)
        assert_error(by_token.get("/api/v1/devices"), 401)

    wrong = _web_login(api, email, "not-the-password")
    right_but_disabled = _web_login(api, email, PASSWORD)
    assert right_but_disabled.status_code == wrong.status_code == 401
    assert SESSION_COOKIE not in right_but_disabled.cookies
    for page in (wrong, right_but_disabled):
        assert "Wrong e-mail or password." in page.text

    listed = clients["admin"].get("/api/v1/users", params={"limit": 500}).json()["items"]
    assert [u["disabled_at"] is not None for u in listed if u["user_id"] == user_id] == [True]


def test_enabling_restores_tokens_but_not_old_sessions(
    api: ApiServer, clients: dict[str, httpx.Client], world: World
) -> None:
    email = "returner@example.org"
    user_id, token = _new_user(world, email)
    cookie = _web_login(api, email, PASSWORD).cookies[SESSION_COOKIE]
    assert clients["admin"].post(f"/api/v1/users/{user_id}/disable").status_code == 200
    enabled = clients["admin"].post(f"/api/v1/users/{user_id}/enable")
    assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
    with (
        client(api, token) as by_token,
        httpx.Client(base_url=api.url, cookies={SESSION_COOKIE: cookie}) as by_cookie,
    ):
        assert by_token.get("/api/v1/me").status_code == 200
        assert_error(by_cookie.get("/api/v1/me"), 401)
    assert _web_login(api, email, PASSWORD).status_code == 303


def test_only_admins_disable_users_and_never_themselves(
    clients: dict[str, httpx.Client], users: Users
) -> None:
    target = users.ids["vendor"]
    for who in ("provider", "vendor", "owner"):
        assert_error(clients[who].post(f"/api/v1/users/{target}/disable"), 403)
    assert_error(clients["admin"].post(f"/api/v1/users/{users.ids['admin']}/disable"), 409)
    assert_error(clients["admin"].post("/api/v1/users/999999/disable"), 404)
    assert_error(clients["admin"].post(f"/api/v1/users/{2**63}/disable"), 422)
    assert clients["vendor"].get("/api/v1/me").status_code == 200


def test_cli_disables_and_enables_a_user(api: ApiServer, settings: Settings, world: World) -> None:
    email = "cli-victim@example.org"
    _, token = _new_user(world, email)
    result = _cli(settings, "users", "disable", email.upper(), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["disabled_at"] is not None
    with client(api, token) as c:
        assert_error(c.get("/api/v1/me"), 401)
        assert _cli(settings, "users", "enable", email).returncode == 0
        assert c.get("/api/v1/me").status_code == 200
    unknown = _cli(settings, "users", "disable", "nobody@example.org")
    assert unknown.returncode == 1 and "no user" in unknown.stderr


# --- decommissioning a device ---------------------------------------------------------------------------


def test_a_decommissioned_device_loses_its_broker_login_and_keeps_its_history(
    clients: dict[str, httpx.Client], world: World, stack_info: StackInfo
) -> None:
    creds = world.add_device("icd-retired", "implant")
    assert _mqtt_connect(stack_info, creds) == 0
    online = _Online(stack_info, creds)
    with connect(world.db_url, autocommit=True) as c:
        c.execute(
            """INSERT INTO readings (ts, device_id, metric, value)
               VALUES (now() - interval '1 hour', %s, %s, 540)""",
            (creds.device_id, "lead_impedance_rv_ohm"),
        )
    assert_error(clients["provider"].post(f"/api/v1/devices/{creds.device_id}/decommission"), 403)

    retired = clients["admin"].post(f"/api/v1/devices/{creds.device_id}/decommission")
    assert retired.status_code == 200, retired.text
    assert retired.json()["broker_synced"] is True
    assert retired.json()["device"]["decommissioned_at"] is not None

    assert _mqtt_connect(stack_info, creds) == NOT_AUTHORIZED
    # Mosquitto re-checks connected clients when it reloads its password file: the session ends too.
    assert online.dropped.wait(10), "the decommissioned device stayed connected"
    online.close()
    shown = clients["provider"].get(f"/api/v1/devices/{creds.device_id}").json()
    assert shown["decommissioned_at"] == retired.json()["device"]["decommissioned_at"]
    readings = clients["provider"].get(
        f"/api/v1/devices/{creds.device_id}/readings", params={"metric": "lead_impedance_rv_ohm"}
    )
    assert [p["value"] for p in readings.json()["series"][0]["points"]] == [540.0]
    refused = clients["provider"].post(f"/api/v1/devices/{creds.device_id}/commands", json={"name": "ping"})
    assert_error(refused, 409, "decommissioned")
    again = clients["admin"].post(f"/api/v1/devices/{creds.device_id}/decommission")
    assert again.json()["device"]["decommissioned_at"] == retired.json()["device"]["decommissioned_at"]


def test_cli_decommissions_a_device(settings: Settings, world: World, stack_info: StackInfo) -> None:
    creds = world.add_device("veh-retired", "vehicle")
    assert _mqtt_connect(stack_info, creds) == 0
    result = _cli(settings, "devices", "decommission", creds.device_id, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["broker_updated"] is True
    assert _mqtt_connect(stack_info, creds) == NOT_AUTHORIZED
    # Other devices keep their logins.
    assert _mqtt_connect(stack_info, world.add_device("veh-still-here", "vehicle")) == 0


# --- expiring tokens ------------------------------------------------------------------------------------


def test_an_expired_token_is_401_saying_so(
    api: ApiServer, clients: dict[str, httpx.Client], world: World
) -> None:
    soon = datetime.now(UTC) + timedelta(days=1)
    made = clients["provider"].post("/api/v1/tokens", json={"name": "short", "expires_at": soon.isoformat()})
    assert made.status_code == 201, made.text
    assert datetime.fromisoformat(made.json()["expires_at"]) == soon
    with client(api, made.json()["token"]) as c:
        assert c.get("/api/v1/me").status_code == 200
        # Time passes (moved, not waited for): the token is now past its expiry.
        with connect(world.db_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE token_id = %s",
                (made.json()["token_id"],),
            )
        error = assert_error(c.get("/api/v1/me"), 401)
        assert "expired" in error["message"]
    revoked = assert_error(
        httpx.get(f"{api.url}/api/v1/me", headers={"Authorization": "Bearer pw_nope"}), 401
    )
    assert "expired" not in revoked["message"]


@pytest.mark.parametrize(
    "expires_at",
    ["2001-01-01T00:00:00Z", "2999-01-01T00:00:00", "tomorrow", 12],
    ids=["past", "no-zone", "words", "number"],
)
def test_token_expiry_must_be_a_future_time_with_a_zone(
    clients: dict[str, httpx.Client], expires_at: Any
) -> None:
    error = assert_error(clients["provider"].post("/api/v1/tokens", json={"expires_at": expires_at}), 422)
    assert "expires_at" in error["message"]


def test_cli_tokens_can_expire(api: ApiServer, settings: Settings, users: Users) -> None:
    result = _cli(settings, "users", "token", "owner@example.org", "--expires-in", "2h", "--json")
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    expires_at = datetime.fromisoformat(made["expires_at"])
    assert timedelta(minutes=119) < expires_at - datetime.now(UTC) <= timedelta(hours=2)
    with client(api, made["token"]) as c:
        assert c.get("/api/v1/me").json()["user_id"] == users.ids["owner"]
    for bad in ("0m", "forever", "-1d", "99999d"):
        refused = _cli(settings, "users", "token", "owner@example.org", "--expires-in", bad)
        assert refused.returncode == 2 and "--expires-in" in refused.stderr


# --- what failed, and nothing about where -------------------------------------------------------------


def _secrets_of(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.hostname or "", str(parts.port or ""), parts.username or "", parts.password or ""]
    return [s for s in found if s]


def _assert_tells_nothing(response: httpx.Response, *urls: str) -> None:
    for secret in (s for url in urls for s in _secrets_of(url)):
        assert secret not in response.text, f"{secret!r} leaked in {response.text}"


@contextmanager
def _unreachable(settings: Settings, setting: str, template: str) -> Iterator[tuple[ApiServer, str]]:
    """The dashboard with `setting` at `template` on a free port, where nothing listens; and the URL."""
    url = template.format(port=free_port())
    with ApiServer(settings.model_copy(update={setting: url})) as server:
        yield server, url


@pytest.fixture
def unreachable_db(settings: Settings) -> Iterator[tuple[ApiServer, str]]:
    with _unreachable(settings, "database_url", DB_URL) as served:
        yield served


def test_readyz_and_503s_name_the_database_without_its_address(
    unreachable_db: tuple[ApiServer, str], users: Users
) -> None:
    server, url = unreachable_db
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    error = assert_error(ready, 503, "unavailable")
    assert error["message"] == "database unavailable"
    _assert_tells_nothing(ready, url)
    with client(server, users.tokens["admin"]) as c:
        answer = c.get("/api/v1/devices")
    assert assert_error(answer, 503, "unavailable")["message"] == "database unavailable"
    _assert_tells_nothing(answer, url)


@pytest.fixture
def unreachable_broker(settings: Settings) -> Iterator[tuple[ApiServer, str]]:
    with _unreachable(settings, "mqtt_url", BROKER_URL) as served:
        yield served


def test_readyz_and_503s_name_the_broker_without_its_address(
    unreachable_broker: tuple[ApiServer, str], users: Users, world: World
) -> None:
    server, url = unreachable_broker
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert assert_error(ready, 503, "unavailable")["message"] == "broker unavailable"
    _assert_tells_nothing(ready, url)
    world.add_device("icd-no-broker", "implant")
    with client(server, users.tokens["admin"]) as c:
        sent = c.post("/api/v1/devices/icd-no-broker/commands", json={"name": "ping"})
        assert assert_error(sent, 503, "unavailable")["message"] == "broker unavailable"
        stored = c.get("/api/v1/devices/icd-no-broker/commands").json()["items"]
    assert [(s["status"], s["detail"]) for s in stored] == [
        ("failed", "broker unavailable, command not sent")
    ]
    _assert_tells_nothing(sent, url)


@pytest.mark.slow
def test_a_stopped_database_is_named_without_its_address(
    clients: dict[str, httpx.Client], settings: Settings, stack: Stack
) -> None:
    url = settings.require_database_url()
    assert clients["admin"].get("/api/v1/devices").status_code == 200  # the pool holds live connections
    stack.stop_postgres()
    try:
        answers = [clients["anon"].get("/readyz"), clients["admin"].get("/api/v1/devices")]
        answers += [clients["admin"].get("/api/v1/me")]
    finally:
        stack.start_postgres()
    for answer in answers:
        assert assert_error(answer, 503, "unavailable")["message"] == "database unavailable"
        _assert_tells_nothing(answer, url)
