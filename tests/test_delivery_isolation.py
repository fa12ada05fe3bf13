"""One delivery's fault stays in that delivery: broken URLs, refused destinations, a tarpit, an endless
body, a trickle, redirects and bad e-mail headers are failed attempts in the ledger, and other orgs'
deliveries (and other webhooks of the same org) go out meanwhile. Real PostgreSQL, real loopback servers."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
import pytest

from pulsewire.settings import Settings
from relay import store
from relay.channels import Channels, Delivery
from relay.deliver import RetryPolicy
from relay.egress import EgressPolicy
from relay.service import RelayConfig, RelayWorker
from tests.fix_api import ApiServer, Users, assert_error, client
from tests.fix_db import World
from tests.relay_support import commit_batch, evaluate, smtp_inbox, wait_for, webhook_receiver

Conn = psycopg.Connection[dict[str, Any]]
DEV = EgressPolicy(allow_private=True)
STRICT = EgressPolicy(allow_private=False)
FAST_RETRY = RetryPolicy(max_attempts=3, base_s=0.05, cap_s=0.1)


pytestmark = pytest.mark.usefixtures("default_rules")


@contextmanager
def relay(settings: Settings, **kw: Any) -> Iterator[RelayWorker]:
    """A relay worker for the module's database, stopped on exit."""
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("egress", DEV)
    worker = RelayWorker(
        RelayConfig(
            database_url=settings.require_database_url(), mqtt=settings.mqtt(), poll_s=0.1, tick_s=3600, **kw
        )
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


# --- hostile servers on loopback -----------------------------------------------------------------


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1 that runs `serve(conn, server)` for each connection in a thread."""

    serve: Callable[[socket.socket, RawServer], None]
    port: int = 0
    accepted: int = 0
    open_now: int = 0
    finished: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def handle(self, conn: socket.socket) -> None:
        with self.lock:
            self.accepted += 1
            self.open_now += 1
        try:
            self.serve(conn, self)
        except OSError as exc:
            self.finished.append(type(exc).__name__)
        finally:
            conn.close()
            with self.lock:
                self.open_now -= 1


@contextmanager
def raw_server(serve: Callable[[socket.socket, RawServer], None]) -> Iterator[RawServer]:
    server = RawServer(serve)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    server.port = listener.getsockname()[1]

    def accept_loop() -> None:
        while not server.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=server.handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        thread.join(5)
        listener.close()
        wait_for(lambda: server.open_now == 0, timeout_s=10, what="hostile connections closed")


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def tarpit(conn: socket.socket, server: RawServer) -> None:
    """Accept, never answer; hold the connection until the test ends or the client gives up."""
    conn.settimeout(0.1)
    while not server.stop.is_set():
        try:
            if conn.recv(65536) == b"":
                server.finished.append("client closed")
                return
        except TimeoutError:
            continue


def endless_body(conn: socket.socket, server: RawServer) -> None:
    """Answer 500 with a body that never ends."""
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n")
    chunk = b"x" * 65536
    while not server.stop.is_set():
        conn.sendall(chunk)


def trickle(conn: socket.socket, server: RawServer) -> None:
    """Answer one byte of a status line at a time, never finishing the headers."""
    _read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
        if server.stop.wait(0.05):
            return
        conn.sendall(bytes([byte]))


def redirect_to(location: str) -> Callable[[socket.socket, RawServer], None]:
    def serve(conn: socket.socket, server: RawServer) -> None:
        _read_request(conn)
        conn.sendall(
            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        server.finished.append("redirected")

    return serve


# --- helpers ---------------------------------------------------------------------------------------


def _raw_webhook(conn: Conn, org_id: int, url: str) -> int:
    # A row as stored before URLs were checked (or by hand): delivery must cope with anything.
    row = conn.execute(
        "INSERT INTO webhooks (org_id, url, secret) VALUES (%s, %s, 'whsec_x') RETURNING webhook_id",
        (org_id, url),
    ).fetchone()
    assert row is not None
    return int(row["webhook_id"])


def _rows(conn: Conn, webhook_id: int) -> list[dict[str, Any]]:
    return list(
        conn.execute("SELECT * FROM outbox WHERE webhook_id = %s ORDER BY delivery_id", (webhook_id,))
    )


def _dead(conn: Conn, webhook_id: int) -> list[dict[str, Any]]:
    return [r for r in _rows(conn, webhook_id) if r["state"] == "dead"]


def _errors(conn: Conn, webhook_id: int) -> list[str]:
    return [
        str(r["error"])
        for r in conn.execute(
            """SELECT t.error FROM delivery_attempts t JOIN outbox o USING (delivery_id)
               WHERE o.webhook_id = %s ORDER BY t.attempt_id""",
            (webhook_id,),
        )
    ]


def _cleanup(conn: Conn) -> None:
    # Deleting webhooks detaches their rows; nothing of one test is left for the next to deliver.
    conn.execute("DELETE FROM webhooks")
    conn.execute("UPDATE outbox SET state = 'dead' WHERE state = 'pending'")


@pytest.fixture(autouse=True)
def clean(conn: Conn) -> Iterator[None]:
    yield
    _cleanup(conn)


def _alert(conn: Conn, device_id: str) -> None:
    """An event that pages: a reset of an implant (`icd-*`), a check-engine light of a car (`veh-*`)."""
    event = "mil_on" if device_id.startswith("veh-") else "device_reset"
    commit_batch(conn, device_id, events=[(datetime.now(UTC), event, {})])


# --- tests -----------------------------------------------------------------------------------------


def test_broken_urls_become_failed_attempts_then_dead_and_others_are_delivered(
    conn: Conn, world: World, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    world.add_device("veh-broken", kind="vehicle")
    world.add_device("icd-healthy")
    broken = [
        "http://a..b/",
        "https://xn--zz.com/",
        "http://[::1/",
        "http://no-such-host.invalid/hook",
        "https://127.0.0.1:1/hook",
        "http://127.0.0.1:99999/hook",
    ]
    with webhook_receiver() as rx, caplog.at_level(logging.WARNING, logger="pulsewire.relay"):
        hooks = [_raw_webhook(conn, world.garage_id, url) for url in broken]
        healthy = store.create_webhook(conn, world.clinic_id, rx.url, egress=DEV)
        with relay(settings):
            _alert(conn, "veh-broken")
            _alert(conn, "icd-healthy")
            wait_for(rx.accepted, what="the healthy delivery")
            for hook in hooks:
                wait_for(partial(_dead, conn, hook), what=f"{hook} dead")
    for hook, url in zip(hooks, broken, strict=True):
        [row] = _rows(conn, hook)
        assert row["attempts"] == FAST_RETRY.max_attempts, url
        errors = _errors(conn, hook)
        assert len(errors) == FAST_RETRY.max_attempts and all(errors), (url, errors)
        assert all("\n" not in e and len(e) <= 300 for e in errors), errors
    [delivered] = _rows(conn, healthy["webhook_id"])
    assert delivered["state"] == "delivered" and delivered["attempts"] == 1
    assert not [r for r in caplog.records if "retrying in" in r.getMessage()]


def test_a_refused_destination_is_checked_again_at_delivery(
    conn: Conn, world: World, settings: Settings
) -> None:
    world.add_device("icd-private")
    with webhook_receiver() as rx:
        port = rx.url.split(":")[2].split("/")[0]
        # Accepted while development mode was on; the strict worker refuses them on every attempt.
        hooks = [
            store.create_webhook(conn, world.clinic_id, f"https://{host}:{port}/hook", egress=DEV)[
                "webhook_id"
            ]
            for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]")
        ]
        with relay(settings, egress=STRICT):
            _alert(conn, "icd-private")
            for hook in hooks:
                wait_for(partial(_dead, conn, hook), what=f"{hook} dead")
    assert rx.requests == []
    for hook in hooks:
        errors = _errors(conn, hook)
        assert len(errors) == FAST_RETRY.max_attempts, errors
        assert all(e.startswith("destination refused: url host") and "loopback" in e for e in errors), errors


def test_endless_body_trickle_and_redirect_are_bounded_failed_attempts(conn: Conn) -> None:
    with (
        raw_server(endless_body) as endless,
        raw_server(trickle) as slow,
        webhook_receiver() as rx,
        raw_server(redirect_to("/elsewhere")) as redirect,
    ):
        channels = Channels(None, None, "relay@test", timeout_s=1.0, egress_policy=DEV)
        try:
            body = json.dumps({"event": "opened"})
            outcomes = {
                name: channels.send(Delivery(1, "webhook", 1, body, "opened", url=url, secret="whsec_x"))
                for name, url in (("endless", endless.url), ("trickle", slow.url), ("redirect", redirect.url))
            }
            redirect_elsewhere = raw_server(redirect_to(rx.url))
            with redirect_elsewhere as cross:
                outcomes["cross"] = channels.send(
                    Delivery(2, "webhook", 1, body, "opened", url=cross.url, secret="whsec_x")
                )
        finally:
            channels.close()
    # The endless body is cut after 64 KiB: its 500 is recorded, not a deadline.
    assert (outcomes["endless"].ok, outcomes["endless"].status_code) == (False, 500)
    assert outcomes["endless"].error is not None and outcomes["endless"].error.startswith("HTTP 500: xxx")
    assert len(outcomes["endless"].error) <= 300
    assert outcomes["trickle"].error == "no complete answer within 1 s"
    for name in ("redirect", "cross"):
        assert outcomes[name].status_code == 307 and not outcomes[name].ok and not outcomes[name].permanent
        assert outcomes[name].error == "HTTP 307: redirects are not followed"
    assert rx.requests == []


def _delivered(conn: Conn, webhook_id: int) -> int:
    return len([r for r in _rows(conn, webhook_id) if r["state"] == "delivered"])


def test_tarpits_and_endless_bodies_do_not_pin_the_delivery_threads(
    conn: Conn, world: World, settings: Settings
) -> None:
    world.add_device("veh-hostile", kind="vehicle")
    world.add_device("icd-victim")
    pinned_at_arrival: list[int] = []
    # The deadline is long: a worker that waited for the tarpit would miss every wait below. The
    # worker is stopped last, after the tarpit has let go of its connections.
    with (
        relay(settings, delivery_threads=3, webhook_timeout_s=120),
        raw_server(tarpit) as pit,
        raw_server(endless_body) as endless,
        webhook_receiver() as rx,
    ):
        store.create_webhook(conn, world.garage_id, pit.url, egress=DEV)
        store.create_webhook(conn, world.garage_id, endless.url, egress=DEV)
        same_org = store.create_webhook(conn, world.garage_id, rx.url, egress=DEV)
        _alert(conn, "veh-hostile")
        wait_for(lambda: pit.open_now >= 1, what="the tarpit holding a delivery thread")
        # The hostile org's own healthy webhook: its delivery goes out while the tarpit holds on.
        wait_for(lambda: _delivered(conn, same_org["webhook_id"]) == 1, what="the same org's delivery")
        pinned_at_arrival.append(pit.open_now)
        assert endless.finished, "the endless body was not cut off"

        # More tarpits than the worker has threads, and more alerts: the garage holds all it may.
        for _ in range(3):
            store.create_webhook(conn, world.garage_id, pit.url, egress=DEV)
        for n in range(2):
            world.add_device(f"veh-hostile-{n}", kind="vehicle")
            _alert(conn, f"veh-hostile-{n}")
        wait_for(lambda: pit.open_now >= 2, what="the tarpit holding two delivery threads")
        victim = store.create_webhook(conn, world.clinic_id, rx.url, egress=DEV)
        _alert(conn, "icd-victim")
        wait_for(lambda: _delivered(conn, victim["webhook_id"]) == 1, what="the other org's delivery")
        pinned_at_arrival.append(pit.open_now)
        pit.stop.set()  # the tarpit lets go: its attempts end now, not at the deadline
    assert pinned_at_arrival[0] >= 1 and pinned_at_arrival[1] >= 2, pinned_at_arrival


def test_one_orgs_backlog_does_not_delay_another_orgs_first_attempt(
    conn: Conn, world: World, settings: Settings
) -> None:
    world.add_device("veh-backlog", kind="vehicle")
    world.add_device("icd-first")
    with webhook_receiver(script=[500] * 100_000, delay_s=0.02) as slow, webhook_receiver() as rx:
        floods = [
            store.create_webhook(conn, world.garage_id, slow.url, egress=DEV)["webhook_id"] for _ in range(3)
        ]
        _alert(conn, "veh-backlog")
        evaluate(settings.require_database_url())
        seed = _rows(conn, floods[0])[0]
        # Three thousand due deliveries of the garage over three webhooks, all older than the clinic's alert.
        conn.execute(
            """INSERT INTO outbox (alert_id, event, audience, org_id, channel, webhook_id, body,
                                   next_attempt_at)
               SELECT alert_id, event, audience, org_id, channel, (%s::bigint[])[1 + i %% 3], body,
                      now() - interval '1 hour'
               FROM outbox, generate_series(1, 3000) AS i WHERE delivery_id = %s""",
            (floods, seed["delivery_id"]),
        )
        victim = store.create_webhook(conn, world.clinic_id, rx.url, egress=DEV)
        with relay(settings, delivery_threads=2):
            wait_for(lambda: slow.requests, what="the backlog being worked on")
            _alert(conn, "icd-first")
            wait_for(lambda: _delivered(conn, victim["webhook_id"]) == 1, what="the clinic's first attempt")
            untried = conn.execute(
                "SELECT count(*) AS n FROM outbox WHERE org_id = %s AND state = 'pending' AND attempts = 0",
                (world.garage_id,),
            ).fetchone()
    assert untried is not None and untried["n"] > 2000, untried


def test_rule_names_with_line_breaks_do_not_break_email(conn: Conn, world: World, settings: Settings) -> None:
    world.add_device("icd-header")
    conn.execute(
        """INSERT INTO rules (key, name, device_kind, device_id, provider_org_id, kind, params,
                              severity, class)
           VALUES ('implant.header_test', %s, 'implant', 'icd-header', %s, 'event',
                   '{"event_type": "device_reset"}', 'red', 'technical')""",
        ("Reset\r\nBcc: thief@evil.example\r\n\r\nforged body", world.clinic_id),
    )
    with smtp_inbox() as inbox, contacts(conn, world.clinic_id), relay(settings, smtp_url=inbox.url):
        _alert(conn, "icd-header")
        wait_for(lambda: len(inbox.messages) >= 2, what="two e-mails (the default rule and the hostile one)")
    for rcpt, msg in inbox.messages:
        assert rcpt == ["oncall@clinic.example"]
        assert msg["Bcc"] is None
        assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    subjects = [m["Subject"] for _, m in inbox.messages]
    assert any("Reset Bcc: thief@evil.example forged body" in s for s in subjects), subjects


def test_an_email_row_that_cannot_be_built_fails_alone(conn: Conn, world: World, settings: Settings) -> None:
    world.add_device("icd-badmail")
    _alert(conn, "icd-badmail")
    evaluate(settings.require_database_url())
    # Next to the alert's provider copy as an e-mail, a row whose body is no alert at all.
    rows = conn.execute(
        """INSERT INTO outbox (alert_id, event, audience, org_id, channel, body)
           SELECT o.alert_id, o.event, o.audience, o.org_id, 'email', b.body
           FROM outbox o JOIN alerts a USING (alert_id),
                (VALUES (1, 'not json'), (2, 'placeholder')) AS b(n, body)
           WHERE a.device_id = 'icd-badmail' AND o.audience = 'provider' AND o.channel = 'mqtt'
           ORDER BY b.n
           RETURNING delivery_id""",
    ).fetchall()
    conn.execute(
        """UPDATE outbox SET body = (SELECT body FROM outbox o WHERE o.alert_id = outbox.alert_id
                                     AND o.channel = 'mqtt' AND o.audience = 'provider')
           WHERE delivery_id = %s""",
        (rows[1]["delivery_id"],),
    )
    bad, good = (int(r["delivery_id"]) for r in rows)
    with smtp_inbox() as inbox, contacts(conn, world.clinic_id), relay(settings, smtp_url=inbox.url):
        wait_for(lambda: _state(conn, bad)["state"] == "dead", what="the bad row dead")
        wait_for(lambda: _state(conn, good)["state"] == "delivered", what="the good row delivered")
    assert len(inbox.messages) == 1
    row = _state(conn, bad)
    assert row["attempts"] == FAST_RETRY.max_attempts and row["last_error"].startswith("JSONDecodeError"), row


@contextmanager
def contacts(conn: Conn, org_id: int) -> Iterator[None]:
    """The org's on-call address for the block, none after it."""
    store.set_contacts(conn, org_id, ["oncall@clinic.example"])
    try:
        yield
    finally:
        store.set_contacts(conn, org_id, [])


def _state(conn: Conn, delivery_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT state, attempts, last_error FROM outbox WHERE delivery_id = %s", (delivery_id,)
    ).fetchone()
    assert row is not None
    return row


def test_webhooks_per_org_are_capped(conn: Conn, world: World) -> None:
    made = [
        store.create_webhook(conn, world.garage_id, f"https://1.1.1.{i}/hook", max_per_org=3)
        for i in range(3)
    ]
    with pytest.raises(store.Conflict, match="at most 3 webhooks"):
        store.create_webhook(conn, world.garage_id, "https://1.1.1.9/hook", max_per_org=3)
    store.delete_webhook(conn, world.garage_id, made[0]["webhook_id"])
    store.create_webhook(conn, world.garage_id, "https://1.1.1.9/hook", max_per_org=3)


def test_api_refuses_bad_webhook_urls_with_422_naming_url(
    settings: Settings, users: Users, world: World
) -> None:
    strict = settings.model_copy(update={"webhook_allow_private": False, "webhooks_per_org_max": 2})
    with ApiServer(strict) as server, client(server, users.tokens["provider"]) as api:
        for url in (
            "http://a..b/",
            "https://a..b/",
            "https://xn--zz.com/",
            "http://93.184.215.14/hook",
            "https://127.0.0.1/hook",
            "https://localhost:8443/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:10.0.0.1]/hook",
            "https://user:pw@93.184.215.14/hook",
            "ftp://x",
            "https://h.example/" + "p" * 2000,
        ):
            error = assert_error(api.post("/api/v1/webhooks", json={"url": url}), 422)
            assert "url" in error["message"] or "url" in json.dumps(error["details"]), (url, error)
        first = api.post("/api/v1/webhooks", json={"url": "https://93.184.215.14/hook"})
        assert first.status_code == 201, first.text
        hook_id = first.json()["webhook_id"]
        assert api.post("/api/v1/webhooks", json={"url": "https://1.1.1.1/hook"}).status_code == 201
        assert (
            "at most 2 webhooks"
            in assert_error(api.post("/api/v1/webhooks", json={"url": "https://1.1.1.2/hook"}), 409)[
                "message"
            ]
        )
        refused = api.patch(f"/api/v1/webhooks/{hook_id}", json={"url": "https://10.1.2.3/hook"})
        assert "url" in assert_error(refused, 422)["message"]
        changed = api.patch(
            f"/api/v1/webhooks/{hook_id}", json={"url": "https://1.0.0.1/in", "enabled": False}
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["url"], changed.json()["enabled"]) == ("https://1.0.0.1/in", False)
        with client(server, users.tokens["provider2"]) as other:
            assert_error(other.patch(f"/api/v1/webhooks/{hook_id}", json={"enabled": True}), 404)


def _commits(conn: Conn) -> int:
    row = conn.execute(
        "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_threads_that_find_nothing_to_claim_wait_instead_of_spinning(
    conn: Conn, world: World, settings: Settings
) -> None:
    """A row held by a tarpit and its webhook's other due rows: the other threads wait for a wake-up.

    They used to wake one another each time a claim found nothing, so they ran claim after claim
    (a CPU each) for as long as the tarpit held on.
    """
    world.add_device("veh-spin", kind="vehicle")
    world.add_device("veh-spin-2", kind="vehicle")
    with relay(settings, delivery_threads=3, webhook_timeout_s=120), raw_server(tarpit) as pit:
        store.create_webhook(conn, world.garage_id, pit.url, egress=DEV)
        _alert(conn, "veh-spin")
        _alert(conn, "veh-spin-2")  # a second due row for the busy webhook: not claimable meanwhile
        wait_for(lambda: pit.open_now >= 1, what="the tarpit holding a delivery thread")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        before = _commits(conn)
        threading.Event().wait(3.0)  # statistics reach pg_stat_database about once a second
        conn.execute("SELECT pg_stat_clear_snapshot()")
        per_s = (_commits(conn) - before) / 3.0
        pit.stop.set()
    # Polling: each loop of the worker wakes every 0.1 s (some 10 transactions a second each).
    assert per_s < 200, f"{per_s:.0f} transactions/s while one delivery was in flight"
