"""A hostile tenant on the real stack: org A does everything it can at once, org B's alerts still get through.

Ingest, relay and the dashboard run for real (in-process threads, as `pulsewire up` runs them) against the
session's Mosquitto and PostgreSQL. Org A registers broken, tarpit, endless and private webhooks, creates
failing rules, floods from one device, opens SSE streams past every cap, bursts bad logins and asks for
wide readings ranges, all at once. Meanwhile org B's red alert reaches B's webhook within a second and
once, every alert B's scenario names is raised, and nothing B's devices sent is lost. A only ever gets
4xx answers or errors recorded against its own rows; never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest

from devices.simulator.runner import DeviceLogin, run_scenario
from devices.simulator.scenarios import load
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import Settings
from relay.deliver import RetryPolicy
from relay.service import RelayConfig, RelayWorker
from tests.fix_api import ApiServer, Users, client, make_users
from tests.fix_db import World
from tests.ingest_support import Publisher, event, running_ingest
from tests.relay_support import Receiver, wait_for, webhook_receiver

pytestmark = pytest.mark.slow

Conn = psycopg.Connection[dict[str, Any]]
HOSTILE_DEVICES = ("icd-hostile-0", "icd-hostile-1")
HOSTILE_PASSWORD = "hostile-device-pw"
BURST = 500  # each device's message budget in this test (B's scenario stays well inside it)
FLOOD = 2000  # events from one of A's devices, far beyond its budget
SSE_STREAMS = 200


@pytest.fixture(scope="module")
def services(settings: Settings, db_url: str, default_rules: None) -> Iterator[ApiServer]:
    """Ingest, a relay worker and the dashboard, all running; private webhook targets allowed (loopback)."""
    live = {"webhook_allow_private": True, "device_burst_msgs": BURST}
    config = RelayConfig(database_url=db_url, mqtt=settings.mqtt(), poll_s=0.1, tick_s=3600,
                         retry=RetryPolicy(base_s=0.2), webhook_timeout_s=2.0)  # fmt: skip
    with running_ingest(settings, "hostile", **live) as ingest:
        relay = RelayWorker(config)
        relay.start()
        try:
            with ApiServer(ingest.settings) as server:
                yield server
        finally:
            relay.stop()


class Tenant:
    """Org A: its org, devices, user and API token."""

    def __init__(self, world: World) -> None:
        with connect(world.db_url, autocommit=True) as c:
            self.org_id = registry.add_org(c, "Hostile Clinic", "provider")
            for device in HOSTILE_DEVICES:
                registry.add_device(
                    c,
                    device,
                    kind="implant",
                    model="Evera XT DR",
                    provider_org_id=self.org_id,
                    vendor_org_id=world.implant_vendor_id,
                    password=HOSTILE_PASSWORD,
                )
            self.email = "mallory@hostile.example"
            self.user_id = registry.add_user(
                c, self.email, role="provider_staff", org_id=self.org_id, password="mallory-secret-pw"
            )
            self.token = registry.issue_token(c, self.user_id, "hostile")
        world.sync_broker()


class Answers:
    """Every HTTP status org A got, by what it tried."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[str, int, str]] = []

    def add(self, what: str, response: httpx.Response, text: str | None = None) -> None:
        with self.lock:
            self.got.append((what, response.status_code, text or response.text[:300]))

    def server_errors(self) -> list[tuple[str, int, str]]:
        return [g for g in self.got if g[1] >= 500]

    def statuses(self, what: str) -> list[int]:
        return [status for name, status, _ in self.got if name == what]


class HostileServers:
    """A tarpit (accepts, never answers) and an endless body, on loopback."""

    def __init__(self) -> None:
        self.tarpit = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold, daemon=True).start()

        class Endless(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.send_response(200)
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x" * 65536)
                except OSError:
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.endless = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
        self.endless.daemon_threads = True
        threading.Thread(target=self.endless.serve_forever, daemon=True).start()
        self.tarpit_url = f"http://127.0.0.1:{self.tarpit.getsockname()[1]}/hook"
        self.endless_url = f"http://127.0.0.1:{self.endless.server_address[1]}/hook"

    def _hold(self) -> None:
        while True:
            try:
                self.held.append(self.tarpit.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.tarpit.close()
        for sock in self.held:
            sock.close()
        self.endless.shutdown()
        self.endless.server_close()


def _webhooks(
    api: httpx.Client, answers: Answers, servers: HostileServers, conn_url: str, org_id: int
) -> None:
    refused = ["http://a..b/", "https://a..b/", "ftp://example.org/", "https://", "https://user:pw@example.org/",
               "https://exa mple.org/", "https://" + "a" * 3000 + ".org/", "javascript:alert(1)"]  # fmt: skip
    for url in refused:
        answers.add("webhook_refused", api.post("/api/v1/webhooks", json={"url": url}))
    for url in (servers.tarpit_url, servers.endless_url, "http://10.255.255.1/hook"):
        answers.add("webhook_hostile", api.post("/api/v1/webhooks", json={"url": url}))
    # Rows saved before URLs were validated still exist in old databases: they must fail alone.
    with connect(conn_url, autocommit=True) as c:
        for url in ("http://a..b/", "http://169.254.169.254/latest/meta-data/"):
            c.execute("INSERT INTO webhooks (org_id, url, secret) VALUES (%s, %s, 'legacy')", (org_id, url))


def _rules(api: httpx.Client, answers: Answers, conn_url: str, org_id: int) -> None:
    for pattern in ("^[", "^(a+)+$" * 200):
        body = {
            "key": "implant.hostile_regex",
            "name": "Hostile regex",
            "device_kind": "implant",
            "kind": "event",
            "params": {"event_type": "device_reset", "match": {"reason": pattern}},
            "severity": "red",
            "class": "technical",
        }
        answers.add("rule_refused", api.post("/api/v1/rules", json=body))
    # And the same rules stored before validation existed: evaluation records their errors.
    with connect(conn_url, autocommit=True) as c:
        for key, pattern in (("implant.hostile_bad", "^["), ("implant.hostile_slow", "^(a+)+$")):
            c.execute(
                """INSERT INTO rules (key, name, device_kind, provider_org_id, kind, params, severity, class)
                   VALUES (%s, %s, 'implant', %s, 'event', %s, 'red', 'technical')""",
                (key, f"Hostile\r\nBcc: all@example.org {key}", org_id,
                 json.dumps({"event_type": "device_reset", "match": {"reason": pattern}})),
            )  # fmt: skip


def _flood(settings: Settings) -> None:
    device = HOSTILE_DEVICES[0]
    publisher = Publisher(settings.mqtt().devices or settings.mqtt(), device, HOSTILE_PASSWORD)
    try:
        now = datetime.now(UTC)
        publisher.publish_all(
            [event(device, seq, "device_reset", {"reason": "a" * 40 + "!"}, ts=now) for seq in range(FLOOD)]
        )
    finally:
        publisher.close()


def _streams(server: ApiServer, token: str, answers: Answers, stop: threading.Event) -> None:
    limits = httpx.Limits(max_connections=SSE_STREAMS + 10)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, limits=limits, timeout=10) as api:
        opened = []
        for _ in range(SSE_STREAMS):
            response = api.send(api.build_request("GET", "/api/v1/alerts/stream"), stream=True)
            if response.status_code == 200:
                opened.append(response)
                answers.add("sse", response, text="(stream)")
            else:
                response.read()
                answers.add("sse", response)
        stop.wait(60)
        for response in opened:
            response.close()


def _logins(server: ApiServer, email: str, answers: Answers) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as web:
        for n in range(40):
            page = web.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            form = {"email": email if n % 2 else f"nobody{n}@hostile.example", "password": "wrong",
                    "csrf_token": token[1] if token else ""}  # fmt: skip
            answers.add("login", web.post("/login", data=form))


def _queries(api: httpx.Client, answers: Answers) -> None:
    path = f"/api/v1/devices/{HOSTILE_DEVICES[1]}/readings"
    for params in (
        {"metric": "heart_rate_bpm", "bucket": "1000d", "agg": "avg", "start": "0001-01-01T00:00:00Z"},
        {"metric": "heart_rate_bpm", "bucket": "1s", "agg": "avg", "start": "2000-01-01T00:00:00Z",
         "end": "2030-01-01T00:00:00Z"},
        {"metric": "heart_rate_bpm", "start": "9999-12-31T00:00:00Z"},
        {"metric": "heart_rate_bpm", "start": "2026-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
    ):  # fmt: skip
        answers.add("query", api.get(path, params=params))


class Background:
    """Jobs in threads; any exception in one fails the test at `join`."""

    def __init__(self, *jobs: Callable[[], None]) -> None:
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(job,), daemon=True) for job in jobs]
        for thread in self.threads:
            thread.start()

    def _guard(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            self.errors.append(exc)

    def join(self, timeout_s: float = 120) -> None:
        for thread in self.threads:
            thread.join(timeout_s)
            assert not thread.is_alive(), "a hostile job did not finish"
        assert not self.errors, self.errors


def _probe_red_alert(settings: Settings, device: str, password: str, receiver: Receiver) -> float:
    """Publish a device reset (a red alert) and return seconds until B's webhook got it."""
    publisher = Publisher(settings.mqtt().devices or settings.mqtt(), device, password)
    try:
        sent = time.perf_counter()
        publisher.publish_all([event(device, 1, "device_reset", {"reason": "watchdog"})])
        wait_for(lambda: _opened(receiver, device), timeout_s=30, what="B's red alert at B's webhook")
        return time.perf_counter() - sent
    finally:
        publisher.close()


def _opened(receiver: Receiver, device: str) -> list[dict[str, Any]]:
    bodies = receiver.bodies()
    return [b for b in bodies if b["event"] == "opened" and b["alert"]["device"]["device_id"] == device]


def _count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row["n"])


def test_hostile_tenant_cannot_delay_or_lose_another_tenants_alerts(
    services: ApiServer, world: World, settings: Settings, db_url: str, conn: Conn
) -> None:
    users: Users = make_users(world)
    tenant = Tenant(world)
    servers, answers, stop = HostileServers(), Answers(), threading.Event()
    a_api, b_api = client(services, tenant.token), client(services, users.tokens["provider"])
    probe = world.add_device("icd-b-probe", "implant")
    lead = world.add_device("icd-b-lead", "implant")
    with webhook_receiver() as receiver:
        assert b_api.post("/api/v1/webhooks", json={"url": receiver.url}).status_code == 201
        # A settles in: broken and hostile webhooks, failing rules; then everything else at once.
        _webhooks(a_api, answers, servers, db_url, tenant.org_id)
        _rules(a_api, answers, db_url, tenant.org_id)
        attack = Background(
            lambda: _flood(settings),
            lambda: _streams(services, tenant.token, answers, stop),
            lambda: _logins(services, tenant.email, answers),
            lambda: _queries(a_api, answers),
        )
        wait_for(
            lambda: _count(conn, "SELECT count(*) AS n FROM outbox WHERE org_id = %s AND attempts > 0",
                           tenant.org_id) > 0,
            timeout_s=30,
            what="A's hostile deliveries to be under way",
        )  # fmt: skip
        # B goes about its day: a scenario from one implant, a live red alert from another.
        scenario = load("lead_fracture")
        run = asyncio.run(
            run_scenario(scenario, DeviceLogin("icd-b-lead", "implant", lead.mqtt_password), settings.mqtt(),
                         seed=7, time_scale=scenario.time_scale * 4)
        )  # fmt: skip
        latency_s = _probe_red_alert(settings, "icd-b-probe", probe.mqtt_password, receiver)
        stop.set()
        attack.join()
        _assert_b_whole(conn, receiver, run, scenario)
    servers.close()
    stages = _stages(conn, "icd-b-probe")
    print(f"B's red alert reached B's webhook {latency_s * 1000:.0f} ms after it was published; {stages}")
    # The relay's part (ingest's receipt -> alert -> delivered) stays within a second. The wait before
    # ingest's receipt (behind A's flood in the one shared subscription) is printed, not asserted:
    # on a loaded two-core host it reached 3 s (docs/benchmarks.md, issue 8 still open on it).
    relay_ms = stages["to_alert"] + stages["to_delivery"]
    assert relay_ms <= 1000, f"B's red alert took {relay_ms:.0f} ms in the relay ({latency_s:.2f} s in all)"
    _assert_a_contained(conn, answers, tenant, servers)


def _stages(conn: Conn, device: str) -> dict[str, float]:
    """Milliseconds from ingest's receipt to the alert, and from the alert to its delivery."""
    row = conn.execute(
        """SELECT extract(epoch FROM a.opened_at - e.received_at) * 1000 AS to_alert,
                  extract(epoch FROM o.delivered_at - a.opened_at) * 1000 AS to_delivery
           FROM alerts a JOIN events e ON e.device_id = a.device_id AND e.ts = a.started_at
           JOIN outbox o ON o.alert_id = a.alert_id AND o.channel = 'webhook' AND o.audience = 'provider'
           WHERE a.device_id = %s""",
        (device,),
    ).fetchone()
    return {k: round(float(v), 1) for k, v in (row or {}).items() if v is not None}


def _assert_b_whole(conn: Conn, receiver: Receiver, run: Any, scenario: Any) -> None:
    readings = sum(run.expected_readings().values())
    events = sum(run.expected_events().values())
    wait_for(
        lambda: (
            _count(conn, "SELECT count(*) AS n FROM readings WHERE device_id = 'icd-b-lead'") >= readings
            and _count(conn, "SELECT count(*) AS n FROM events WHERE device_id = 'icd-b-lead'") >= events
            and _count(conn, "SELECT count(*) AS n FROM eval_queue WHERE device_id LIKE 'icd-b-%%'") == 0
        ),
        timeout_s=60,
        what="B's data to be stored and evaluated",
    )
    stored = _count(conn, "SELECT count(*) AS n FROM readings WHERE device_id = 'icd-b-lead'")
    assert stored == readings, "B lost or duplicated readings"
    got = sorted(
        (a["rule_key"], a["severity"])
        for a in conn.execute("SELECT rule_key, severity FROM alerts WHERE device_id = 'icd-b-lead'")
    )
    assert got == sorted((e.rule, e.severity) for e in scenario.expect)
    [probe_alert] = conn.execute(
        "SELECT alert_id FROM alerts WHERE device_id = 'icd-b-probe' AND rule_key = 'implant.device_reset'"
    ).fetchall()
    [delivery] = conn.execute(
        "SELECT state, attempts FROM outbox WHERE alert_id = %s AND channel = 'webhook' AND event = 'opened'"
        " AND audience = 'provider'",
        (probe_alert["alert_id"],),
    ).fetchall()
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 1)
    assert len(_opened(receiver, "icd-b-probe")) == 1, "B's red alert was delivered more than once"


def _assert_a_contained(conn: Conn, answers: Answers, tenant: Tenant, servers: HostileServers) -> None:
    assert answers.server_errors() == [], answers.server_errors()
    assert set(answers.statuses("webhook_refused")) == {422}, answers.got
    assert set(answers.statuses("webhook_hostile")) == {201}, answers.got
    assert set(answers.statuses("rule_refused")) == {422}, answers.got
    sse = answers.statuses("sse")
    assert len(sse) == SSE_STREAMS and set(sse) <= {200, 429} and 429 in sse, sse
    assert 429 in answers.statuses("login") and set(answers.statuses("login")) <= {401, 429}
    assert all(400 <= s < 500 for s in answers.statuses("query")), answers.statuses("query")
    # The flood: every message is stored or quarantined with a reason, none dropped silently (past
    # the payloads kept a minute, the excess is counted in `copies`).
    device = HOSTILE_DEVICES[0]
    stored = _count(conn, "SELECT count(*) AS n FROM events WHERE device_id = %s", device)
    limited = _count(
        conn,
        "SELECT sum(copies) AS n FROM quarantine WHERE device_id = %s AND reason = 'rate_limited'",
        device,
    )
    assert limited > 0 and stored + limited == FLOOD, (stored, limited)
    # Its deliveries fail alone, each attempt in the ledger; its broken rule is recorded on the rule.
    wait_for(
        lambda: _count(conn, "SELECT count(*) AS n FROM outbox WHERE org_id = %s AND attempts = 0",
                       tenant.org_id) == 0,
        timeout_s=30,
        what="every one of A's deliveries to have been attempted",
    )  # fmt: skip
    rows = conn.execute(
        "SELECT o.state, o.attempts, o.last_error, w.url FROM outbox o JOIN webhooks w USING (webhook_id)"
        " WHERE o.org_id = %s",
        (tenant.org_id,),
    ).fetchall()
    by_url = {r["url"]: r for r in rows}
    assert len(rows) == 5 and all(r["attempts"] > 0 for r in rows), rows
    assert "invalid host" in by_url["http://a..b/"]["last_error"], rows
    tarpit = by_url[servers.tarpit_url]
    assert tarpit["state"] != "delivered" and tarpit["last_error"], rows
    # A 200 with an endless body is an accepted delivery: only its first 64 KiB were read.
    assert by_url[servers.endless_url]["state"] == "delivered", rows
    [bad] = conn.execute(
        "SELECT error_count, last_error FROM rules WHERE key = 'implant.hostile_bad'"
    ).fetchall()
    assert bad["error_count"] > 0 and bad["last_error"], bad
