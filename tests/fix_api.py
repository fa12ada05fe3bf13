"""API test helpers: the dashboard app served by a real uvicorn in a thread, and a user per role.

Import the fixtures into a test module with `from tests.fix_api import *` names, or use
`ApiServer` and `make_users` directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from dashboards.app import create_app
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import Settings
from tests.fix_db import World
from tests.helpers import free_port, wait_for

ROLES = ("provider", "vendor", "owner", "admin")


class ApiServer:
    """`create_app(settings)` under uvicorn on a free loopback port, in a daemon thread."""

    def __init__(self, settings: Settings, **app_kw: Any) -> None:
        self.port = free_port()
        self.app = create_app(settings, **app_kw)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="uvicorn", daemon=True
        )

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        self._thread.start()
        wait_for(lambda: self._server.started or not self._thread.is_alive(), 20, "the API server to start")
        if not self._server.started:
            raise RuntimeError("the API server did not start")
        return self

    def check_pools(self) -> None:
        """Replace the pooled connections that no longer work (after PostgreSQL restarted)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.app.state.pool.check(), self._loop).result(20)
        self.app.state.sync_pool.check()

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@dataclass
class Users:
    """One user (and token) per role, on both sides of the tenancy line."""

    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    # own device per role (all see `icd-a`), and another tenant's (`veh-b`: garage, dongle vendor, driver)
    own_device: str = "icd-a"
    other_device: str = "veh-b"


def make_users(world: World) -> Users:
    """provider/vendor/owner/admin on the clinic side, provider2/vendor2/owner2 on the garage side."""
    users = Users()
    specs = {
        "provider": {"role": "provider_staff", "org_id": world.clinic_id},
        "vendor": {"role": "vendor_staff", "org_id": world.implant_vendor_id},
        "owner": {"role": "owner", "owner_id": world.patient_id},
        "admin": {"role": "admin"},
        "provider2": {"role": "provider_staff", "org_id": world.garage_id},
        "vendor2": {"role": "vendor_staff", "org_id": world.dongle_vendor_id},
        "owner2": {"role": "owner", "owner_id": world.driver_id},
    }
    with connect(world.db_url, autocommit=True) as c:
        for name, kw in specs.items():
            user_id = registry.add_user(
                c, f"{name}@example.org", display_name=name.title(), password=f"{name}-secret-pw", **kw
            )
            users.ids[name] = user_id
            users.tokens[name] = registry.issue_token(c, user_id, "test")
    return users


def client(server: ApiServer, token: str | None) -> httpx.Client:
    """An HTTP client for the server, authenticated with `token` when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an error in the one body shape, with this status (and code)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


@pytest.fixture(scope="module")
def users(world: World) -> Users:
    """Users of every role, plus the two standard devices `icd-a` and `veh-b`."""
    made = make_users(world)
    world.add_device(made.own_device, "implant")
    world.add_device(made.other_device, "vehicle")
    return made


@pytest.fixture(scope="module")
def api(settings: Settings, users: Users) -> Iterator[ApiServer]:
    """The dashboard app, served for this module."""
    with ApiServer(settings, command_timeout_s=3.0) as server:
        yield server


@pytest.fixture(scope="module")
def clients(api: ApiServer, users: Users) -> Iterator[dict[str, httpx.Client]]:
    """An authenticated client per user name, and `anon`."""
    made = {name: client(api, token) for name, token in users.tokens.items()}
    made["anon"] = client(api, None)
    yield made
    for c in made.values():
        c.close()
