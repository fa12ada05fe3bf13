"""One caller cannot exhaust the dashboard for everyone else.

Live streams share one LISTEN connection and are capped per user and per process, and each ends
within seconds of its credential ending; readings queries stay within retention, a bucket count, a
statement timeout and a per-user concurrency cap; failed sign-ins are throttled per account and per
address, and an unknown e-mail costs one argon2 verification like a wrong password.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2
import httpx
import pytest

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import Settings
from relay.sse import READY, AlertHub
from relay.visibility import Viewer
from tests.fix_api import ApiServer, Users, assert_error
from tests.fix_browser import insert_alert
from tests.fix_db import World
from tests.helpers import wait_for

PER_USER = 8
OVERALL = 24  # three users' worth
ACCOUNT_FAILURES = 3
ADDRESS_FAILURES = 6
ARGON2_SLOTS = 2
READINGS_PER_USER = 2
TUNED = {
    "sse_streams_per_user_max": PER_USER,
    "sse_streams_max": OVERALL,
    "sse_recheck_interval_s": 0.2,
    "api_statement_timeout_ms": 3000,
    "readings_queries_per_user_max": READINGS_PER_USER,
    "login_failures_per_account_max": ACCOUNT_FAILURES,
    "login_failures_per_address_max": ADDRESS_FAILURES,
    "login_window_s": 600,
    "login_argon2_concurrency_max": ARGON2_SLOTS,
    "session_secret": "isolation-test-secret",
}
# What one dashboard process may hold whatever the load: both pools at their maximum and the hub's
# two connections, plus the test's own counting connection.
CONNECTION_CEILING = 10 + 4 + 2 + 1
_rule_keys = itertools.count()


@pytest.fixture(scope="module")
def server(settings: Settings, users: Users) -> Iterator[ApiServer]:
    with ApiServer(settings.model_copy(update=TUNED), command_timeout_s=3.0) as api:
        yield api


def _hub(server: ApiServer) -> AlertHub:
    hub: AlertHub = server.app.state.alert_hub
    return hub


def _connections(db_url: str) -> int:
    with connect(db_url, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row["n"])


def _token(db_url: str, user_id: int) -> tuple[str, int]:
    with connect(db_url, autocommit=True) as c:
        token = registry.issue_token(c, user_id, "stream")
        row = c.execute(
            "SELECT max(token_id) AS id FROM api_tokens WHERE user_id = %s", (user_id,)
        ).fetchone()
    assert row is not None
    return token, int(row["id"])


def _revoke_all_stream_tokens(db_url: str) -> None:
    with connect(db_url, autocommit=True) as c:
        c.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = 'stream' AND revoked_at IS NULL")


class Stream:
    """One SSE stream read in a thread: `connected` once the server listens, `ended` once it closes."""

    def __init__(self, server: ApiServer, *, token: str | None = None, cookies: httpx.Cookies | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=server.url, headers=headers, cookies=cookies, timeout=httpx.Timeout(10, read=60)
        )
        self.status: int | None = None
        self.body: dict[str, Any] = {}
        self.lines: list[str] = []
        self.answered, self.connected, self.ended = threading.Event(), threading.Event(), threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/api/v1/alerts/stream") as response:
                self.status = response.status_code
                self.answered.set()
                if response.status_code != 200:
                    self.body = response.json() if response.read() else {}
                    return
                for line in response.iter_lines():
                    self.lines.append(line)
                    if line == ": connected":
                        self.connected.set()
        finally:
            self.answered.set()
            self.ended.set()
            self._client.close()

    def opened(self) -> Stream:
        assert self.answered.wait(15), "no answer to the stream request"
        assert self.status == 200, self.body
        assert self.connected.wait(15), "the stream never said it was listening"
        return self


def _open_streams(server: ApiServer, db_url: str, user_id: int, n: int) -> list[Stream]:
    return [Stream(server, token=_token(db_url, user_id)[0]).opened() for _ in range(n)]


def _refused(server: ApiServer, db_url: str, user_id: int) -> dict[str, Any]:
    stream = Stream(server, token=_token(db_url, user_id)[0])
    assert stream.answered.wait(15) and stream.ended.wait(15)
    assert stream.status == 429, stream.body
    return dict(stream.body["error"])


def _close_all(server: ApiServer, db_url: str, streams: list[Stream]) -> None:
    _revoke_all_stream_tokens(db_url)  # ends them the way a revocation does
    for s in streams:
        assert s.ended.wait(15)
    wait_for(lambda: _hub(server).open_streams == 0, 15, "the hub to forget the ended streams")


# --- live streams -----------------------------------------------------------------------------------


def test_streams_are_capped_and_share_one_listen_connection(
    server: ApiServer, users: Users, world: World
) -> None:
    wait_for(lambda: _hub(server).listening, 15, "the hub to LISTEN")
    before = _connections(world.db_url)
    streams = _open_streams(server, world.db_url, users.ids["provider"], PER_USER)
    error = _refused(server, world.db_url, users.ids["provider"])  # one more of the same user
    assert error["code"] == "too_many_streams" and f"at most {PER_USER}" in error["message"]
    streams += _open_streams(server, world.db_url, users.ids["vendor"], PER_USER)
    streams += _open_streams(server, world.db_url, users.ids["provider2"], OVERALL - 2 * PER_USER)
    error = _refused(server, world.db_url, users.ids["vendor2"])  # a fresh user, but the server is full
    assert error["code"] == "too_many_streams" and f"maximum of {OVERALL}" in error["message"]
    after = _connections(world.db_url)
    # The old design held two connections per stream: 2 * 24 on top of `before`.
    assert after <= CONNECTION_CEILING, (before, after)
    assert after - before < len(streams), (before, after)
    with connect(world.db_url, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN pulsewire_alerts%%'"
        ).fetchone()
    assert row is not None and row["n"] == 1
    _close_all(server, world.db_url, streams)
    Stream(server, token=_token(world.db_url, users.ids["vendor2"])[0]).opened()  # room again
    _close_all(server, world.db_url, [])


def test_stream_ends_when_its_token_is_revoked_and_others_go_on(
    server: ApiServer, users: Users, world: World
) -> None:
    token, token_id = _token(world.db_url, users.ids["vendor"])
    doomed = Stream(server, token=token).opened()
    bystander = Stream(server, token=_token(world.db_url, users.ids["provider"])[0]).opened()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.delete(f"/api/v1/tokens/{token_id}").status_code == 204
    assert doomed.ended.wait(10), "the stream outlived its revoked token"
    assert not bystander.ended.is_set()
    alert_id = insert_alert(world.db_url, users.own_device, f"implant.isolation_{next(_rule_keys)}")
    alerted = f'"alert_id":{alert_id}'
    wait_for(lambda: any(alerted in line for line in bystander.lines), 15, "the bystander's alert")
    _close_all(server, world.db_url, [bystander])


def test_stream_ends_when_the_user_is_disabled(server: ApiServer, users: Users, world: World) -> None:
    stream = Stream(server, token=_token(world.db_url, users.ids["provider2"])[0]).opened()
    with connect(world.db_url, autocommit=True) as c:
        c.execute("UPDATE users SET disabled_at = now() WHERE user_id = %s", (users.ids["provider2"],))
    try:
        assert stream.ended.wait(10), "the stream outlived its disabled user"
    finally:
        with connect(world.db_url, autocommit=True) as c:
            c.execute("UPDATE users SET disabled_at = NULL WHERE user_id = %s", (users.ids["provider2"],))
    _close_all(server, world.db_url, [])


def test_stream_ends_at_logout(server: ApiServer, users: Users, world: World) -> None:
    with _address_client(server, "127.0.0.20") as browser:
        assert _sign_in(browser, "provider@example.org", "provider-secret-pw").status_code == 303
        stream = Stream(server, cookies=browser.cookies).opened()
        page = browser.get("/fleet", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert browser.post("/logout", data={"csrf_token": _csrf_of(page.text)}).status_code == 303
    assert stream.ended.wait(10), "the stream outlived its session"


async def test_hub_ends_a_slow_subscriber_and_keeps_the_others(world: World, users: Users) -> None:
    async with AlertHub(world.db_url, queue_max=2).running() as hub:
        slow = hub.subscribe(1, Viewer("provider", world.clinic_id))
        fast = hub.subscribe(2, Viewer("provider", world.clinic_id))
        assert await asyncio.wait_for(fast.get(), 10) == READY
        for _ in range(4):
            alert_id = await asyncio.to_thread(
                insert_alert, world.db_url, users.own_device, f"implant.isolation_{next(_rule_keys)}"
            )
            item = await asyncio.wait_for(fast.get(), 10)
            assert item is not None and item["alert"]["alert_id"] == alert_id
        assert slow.ended and await slow.get() is None  # dropped, not buffered without bound
        assert hub.open_streams == 1 and not fast.ended


async def test_hub_survives_its_connection_being_killed(world: World, users: Users) -> None:
    async with AlertHub(world.db_url).running() as hub:
        first = hub.subscribe(1, Viewer("provider", world.clinic_id))
        assert await asyncio.wait_for(first.get(), 10) == READY
        with connect(world.db_url, autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN pulsewire_alerts%%' AND pid <> pg_backend_pid()"
            )
        assert await asyncio.wait_for(first.get(), 10) is None  # ended: its notifications may be lost
        second = hub.subscribe(1, Viewer("provider", world.clinic_id))
        assert await asyncio.wait_for(second.get(), 15) == READY  # reconnected by itself
        alert_id = await asyncio.to_thread(
            insert_alert, world.db_url, users.own_device, f"implant.isolation_{next(_rule_keys)}"
        )
        item = await asyncio.wait_for(second.get(), 10)
        assert item is not None and item["alert"]["alert_id"] == alert_id


# --- readings -----------------------------------------------------------------------------------------


def _readings(server: ApiServer, token: str, **params: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        return c.get("/api/v1/devices/icd-a/readings", params=params)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "0001-01-01T00:00:00Z", "bucket": "1000d"}, "start"),
        ({"start": "0001-01-01T00:00:00+14:00", "end": "0001-01-02T00:00:00Z"}, "start"),
        ({"end": "9999-12-31T23:59:59Z"}, "end"),
        ({"end": "9999-12-31T23:59:59-14:00", "start": "2026-01-01T00:00:00Z"}, "end"),
        ({"start": (datetime.now(UTC) - timedelta(days=401)).isoformat()}, "start"),
        ({"start": (datetime.now(UTC) - timedelta(days=300)).isoformat(), "bucket": "1m"}, "bucket"),
    ],
)
def test_wide_or_ancient_ranges_are_422_naming_the_field(
    server: ApiServer, users: Users, params: dict[str, str], field: str
) -> None:
    error = assert_error(_readings(server, users.tokens["provider"], **params), 422)
    assert error["message"].startswith(f"{field}:") and error["details"]["field"] == field


def _lock_readings(db_url: str) -> Any:
    conn = connect(db_url)
    conn.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
    return conn


def _blocked_readings_queries(db_url: str) -> int:
    with connect(db_url, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%FROM readings%%'"
        ).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_query_past_the_statement_timeout_is_a_clear_503(
    server: ApiServer, users: Users, world: World
) -> None:
    locker = _lock_readings(world.db_url)  # the query waits on the lock until PostgreSQL cancels it
    try:
        response = _readings(server, users.tokens["provider"])
    finally:
        locker.rollback()
        locker.close()
    error = assert_error(response, 503, "query_timeout")
    assert "narrow the range" in error["message"]
    assert _readings(server, users.tokens["provider"]).status_code == 200  # its slot came back


def test_concurrent_readings_queries_are_capped_per_user(
    server: ApiServer, users: Users, world: World
) -> None:
    # Once first: a stale token's use is recorded in the request's transaction, which would make the
    # parallel requests below wait on that row instead of on the readings table.
    assert _readings(server, users.tokens["provider"]).status_code == 200
    locker = _lock_readings(world.db_url)
    try:
        with ThreadPoolExecutor(READINGS_PER_USER) as pool:
            running = [
                pool.submit(_readings, server, users.tokens["provider"]) for _ in range(READINGS_PER_USER)
            ]
            wait_for(
                lambda: _blocked_readings_queries(world.db_url) == READINGS_PER_USER, 15, "queries to block"
            )
            assert_error(_readings(server, users.tokens["provider"]), 429, "too_many_requests")
            locker.rollback()
            assert [f.result().status_code for f in running] == [200] * READINGS_PER_USER
    finally:
        locker.close()
    assert _readings(server, users.tokens["provider"]).status_code == 200


# --- sign-in --------------------------------------------------------------------------------------


def _address_client(server: ApiServer, address: str) -> httpx.Client:
    """A client whose requests come from `address` (any 127.x.y.z reaches the loopback server)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, transport=transport, follow_redirects=False, timeout=30)


def _csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match[1]


def _sign_in(c: httpx.Client, email: str, password: str) -> httpx.Response:
    if "pw_login" not in c.cookies:
        c.get("/login")
    token = _csrf_of(c.get("/login").text)
    return c.post("/login", data={"email": email, "password": password, "csrf_token": token, "next": "/"})


def test_bad_logins_are_throttled_per_account_while_others_sign_in(server: ApiServer) -> None:
    with _address_client(server, "127.0.0.30") as c, _address_client(server, "127.0.0.31") as elsewhere:
        for _ in range(ACCOUNT_FAILURES):
            assert _sign_in(c, "vendor@example.org", "wrong").status_code == 401
        throttled = _sign_in(c, "vendor@example.org", "vendor-secret-pw")  # even the right password
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
        assert "Too many failed sign-ins" in throttled.text
        assert _sign_in(elsewhere, "VENDOR@example.org", "vendor-secret-pw").status_code == 429  # per account
        assert _sign_in(c, "owner@example.org", "owner-secret-pw").status_code == 303  # another account


def test_bad_logins_are_throttled_per_address_while_others_sign_in(server: ApiServer) -> None:
    with _address_client(server, "127.0.0.40") as c, _address_client(server, "127.0.0.41") as elsewhere:
        for n in range(ADDRESS_FAILURES):  # one try per account: only the address adds up
            assert _sign_in(c, f"nobody{n}@example.org", "guess").status_code == 401
        assert _sign_in(c, "owner2@example.org", "owner2-secret-pw").status_code == 429
        assert _sign_in(elsewhere, "owner2@example.org", "owner2-secret-pw").status_code == 303


def test_a_parallel_burst_overshoots_by_at_most_the_argon2_slots(server: ApiServer) -> None:
    with _address_client(server, "127.0.0.50") as c:
        token = _csrf_of(c.get("/login").text)
        form = {"email": "admin@example.org", "password": "wrong", "csrf_token": token, "next": "/"}
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda _: c.post("/login", data=form).status_code, range(20)))
    assert set(codes) <= {401, 429}, codes
    assert codes.count(401) <= ACCOUNT_FAILURES + ARGON2_SLOTS - 1, codes


def test_unknown_email_and_wrong_password_both_run_argon2(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real_verify = argon2.PasswordHasher.verify

    def counting_verify(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        checked.append(str(hash).split("$")[3])  # the cost parameters, m=...,t=...,p=...
        return real_verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting_verify)
    with _address_client(server, "127.0.0.60") as c:
        assert _sign_in(c, "no-such-user@example.org", "pw").status_code == 401
        assert _sign_in(c, "provider2@example.org", "wrong").status_code == 401
    assert len(checked) == 2 and checked[0] == checked[1], checked
