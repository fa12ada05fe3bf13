"""Commands cannot be turned against a device: bad arguments are refused by name, and each device takes
a bounded number of commands per window, counted across dashboard processes."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from dashboards.models import CommandCreate
from devices.simulator.device import COMMAND_HANDLERS, SimDevice
from pulsewire.db import connect
from pulsewire.settings import Settings
from schemas.commands import COMMANDS
from schemas.payloads import CommandReply, CommandRequest
from tests.fix_api import ApiServer, Users, assert_error, client
from tests.fix_db import World

LIMIT = 3  # commands per device per window in this module


@pytest.fixture(scope="module")
def limited(settings: Settings, users: Users) -> Iterator[tuple[ApiServer, ApiServer]]:
    """Two dashboard processes' worth of apps (separate pools) on one database, with a small limit."""
    tight = settings.model_copy(update={"command_limit_per_device": LIMIT, "command_limit_window_s": 3600})
    with ApiServer(tight, command_timeout_s=30.0) as one, ApiServer(tight, command_timeout_s=30.0) as two:
        yield one, two


@pytest.fixture(scope="module")
def admin(limited: tuple[ApiServer, ApiServer], users: Users, world: World) -> Iterator[httpx.Client]:
    """The admin (who may command any device), with one implant and one vehicle to refuse things to."""
    world.add_device("icd-args", "implant")
    world.add_device("veh-args", "vehicle")
    with client(limited[0], users.tokens["admin"]) as c:
        yield c


def _send(c: httpx.Client, device_id: str, body: dict[str, Any]) -> httpx.Response:
    return c.post(f"/api/v1/devices/{device_id}/commands", json=body)


def _stored(world: World, device_id: str) -> int:
    with connect(world.db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) AS n FROM commands WHERE device_id = %s", (device_id,)).fetchone()
    assert row is not None and isinstance(row["n"], int)
    return row["n"]


# --- one catalogue --------------------------------------------------------------------------------------


def _literal_values(annotation: Any) -> set[str]:
    return set(typing.get_args(annotation))


def test_api_wire_and_simulator_know_the_same_commands() -> None:
    variants = typing.get_args(typing.get_args(CommandCreate)[0])
    api_names = {name for v in variants for name in _literal_values(v.model_fields["name"].annotation)}
    wire_names = _literal_values(CommandRequest.model_fields["name"].annotation)
    assert api_names == wire_names == set(COMMANDS) == set(COMMAND_HANDLERS)


def test_the_simulator_refuses_what_the_api_refuses() -> None:
    implant = SimDevice("icd-sim", "implant")

    def answer(name: str, args: dict[str, Any]) -> CommandReply:
        raw = CommandRequest.model_validate(
            {"command_id": "c", "name": name, "args": args, "sent_at": "2026-01-01T00:00:00Z"}
        ).model_dump_json(by_alias=True)
        return CommandReply.model_validate_json(implant.answer(raw.encode()))

    assert answer("request_transmission", {"lookback_h": 12}).data == {
        "transmission": "scheduled",
        "lookback_h": 12,
    }
    refused = answer("request_transmission", {"lookback_h": 10**9})
    assert refused.status == "error" and "lookback_h" in refused.detail
    assert "extra" in answer("ping", {"n": 1}).detail.lower()
    assert answer("clear_dtc", {}).detail == "clear_dtc applies to vehicles only"


# --- arguments ------------------------------------------------------------------------------------------

TRANSMIT = "request_transmission"
BAD_COMMANDS = [
    pytest.param({"name": TRANSMIT, "args": {"lookback_h": "lots"}}, "lookback_h", id="wrong-type"),
    pytest.param({"name": TRANSMIT, "args": {"lookback_h": 1.5}}, "lookback_h", id="fraction"),
    pytest.param({"name": TRANSMIT, "args": {"lookback_h": 10**40}}, "lookback_h", id="huge"),
    pytest.param({"name": TRANSMIT, "args": {"lookback_h": 0}}, "lookback_h", id="zero"),
    pytest.param({"name": TRANSMIT, "args": {"burst": 1000}}, "burst", id="extra-arg"),
    pytest.param({"name": "ping", "args": {"n": 1}}, "args.n", id="ping-takes-nothing"),
    pytest.param({"name": "ping", "args": [1, 2]}, "args", id="args-not-an-object"),
    pytest.param({"name": "ping", "repeat": 100}, "repeat", id="extra-field"),
    pytest.param({"name": "self_destruct"}, "name", id="unknown-command"),
    pytest.param({"args": {}}, "name", id="no-command"),
    pytest.param({"name": "clear_dtc", "args": {"codes": ["P0442; DROP"]}}, "codes", id="bad-dtc-code"),
    pytest.param({"name": "clear_dtc", "args": {"codes": ["P0442"] * 33}}, "codes", id="too-many-codes"),
]


@pytest.mark.parametrize(("body", "field"), BAD_COMMANDS)
def test_bad_arguments_are_422_naming_the_field(
    admin: httpx.Client, world: World, body: dict[str, Any], field: str
) -> None:
    device = "veh-args" if body.get("name") == "clear_dtc" else "icd-args"
    error = assert_error(_send(admin, device, body), 422)
    assert field in error["message"], error
    assert _stored(world, device) == 0, "a refused command was stored"


def test_good_arguments_are_stored_with_their_defaults(admin: httpx.Client, world: World) -> None:
    world.add_device("icd-good", "implant")
    world.add_device("veh-good", "vehicle")
    sent = _send(admin, "icd-good", {"name": TRANSMIT, "args": {"lookback_h": 48}})
    assert sent.status_code == 202, sent.text
    assert sent.json()["args"] == {"lookback_h": 48}
    assert _send(admin, "icd-good", {"name": "request_transmission"}).json()["args"] == {"lookback_h": 24}
    cleared = _send(admin, "veh-good", {"name": "clear_dtc", "args": {"codes": ["P0442"]}})
    assert cleared.status_code == 202 and cleared.json()["args"] == {"codes": ["P0442"]}
    assert_error(_send(admin, "veh-good", {"name": "request_transmission"}), 422, "invalid_command")


# --- the limit ------------------------------------------------------------------------------------------


def test_the_command_past_the_limit_is_429_while_another_device_still_takes_commands(
    limited: tuple[ApiServer, ApiServer], users: Users, world: World
) -> None:
    world.add_device("icd-busy", "implant")
    world.add_device("icd-calm", "implant")
    with client(limited[0], users.tokens["provider"]) as c:
        for _ in range(LIMIT):
            assert _send(c, "icd-busy", {"name": "request_transmission"}).status_code == 202
        refused = _send(c, "icd-busy", {"name": "ping"})
        error = assert_error(refused, 429, "rate_limited")
        assert "icd-busy" in error["message"] and "3600 s" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
        assert _send(c, "icd-calm", {"name": "request_transmission"}).status_code == 202
    assert _stored(world, "icd-busy") == LIMIT


def test_concurrent_sends_through_two_dashboards_share_one_budget(
    limited: tuple[ApiServer, ApiServer], users: Users, world: World
) -> None:
    world.add_device("icd-race", "implant")
    clients = [client(server, users.tokens["provider"]) for server in limited]
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(
                pool.map(lambda i: _send(clients[i % 2], "icd-race", {"name": "ping"}).status_code, range(12))
            )
    finally:
        for c in clients:
            c.close()
    assert sorted(statuses) == [202] * LIMIT + [429] * (12 - LIMIT)
    assert _stored(world, "icd-race") == LIMIT
