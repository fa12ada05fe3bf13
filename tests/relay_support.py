"""Helpers of the relay tests: committed batches as ingest writes them, engine rounds, a webhook receiver."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from aiosmtpd.controller import Controller
from psycopg.types.json import Jsonb

from pulsewire.db import connect
from pulsewire.wire import queue_evaluation
from relay.engine import EngineConfig, evaluate_pending
from schemas.catalogue import CLINICAL_EVENTS, is_clinical_metric
from tests.helpers import (
    free_port,
    serving,
    wait_for,  # noqa: F401 (re-exported: the relay tests import it from here)
)

Conn = psycopg.Connection[dict[str, Any]]
_seq = itertools.count(1)


def commit_batch(
    conn: Conn,
    device_id: str,
    readings: Sequence[tuple[datetime, str, float]] = (),
    events: Sequence[tuple[datetime, str, dict[str, Any]]] = (),
) -> None:
    """Write readings and events and queue their range in one transaction, as ingest does."""
    stamps = [r[0] for r in readings] + [e[0] for e in events]
    with conn.transaction():
        for ts, metric, value in readings:
            conn.execute(
                "INSERT INTO readings (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
                (ts, device_id, metric, value),
            )
        for ts, type_, data in events:
            conn.execute(
                "INSERT INTO events (ts, device_id, boot_id, seq, type, data)"
                " VALUES (%s, %s, 't', %s, %s, %s)",
                (ts, device_id, next(_seq), type_, Jsonb(data)),
            )
        queue_evaluation(conn, {device_id: (min(stamps), max(stamps))}, {device_id} if events else ())


def evaluate(db_url: str, cfg: EngineConfig | None = None) -> int:
    """Run the engine until the queue is empty; returns batches consumed."""
    total = 0
    with connect(db_url) as conn:
        while n := evaluate_pending(conn, cfg or EngineConfig()):
            total += n
    return total


OWNER_STRINGS = ("Ada Patient", "ada@example.org", "Dan Driver", "dan@example.org")
_FORBIDDEN_KEYS = {"owner", "owner_id", "device_id", "lat", "lon", "name", "email", "history"}


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def assert_vendor_safe(body: Any) -> None:
    """No owner data, no device id, no location and no clinical metric or event anywhere in `body`."""
    text = json.dumps(body)
    assert not any(s in text for s in OWNER_STRINGS), text
    keys = set(_keys(body))
    assert not keys & _FORBIDDEN_KEYS, keys & _FORBIDDEN_KEYS
    assert not any(is_clinical_metric(k) for k in keys), keys
    assert not any(e in text for e in CLINICAL_EVENTS), text


def alerts_of(conn: Conn, device_id: str) -> list[dict[str, Any]]:
    return list(conn.execute("SELECT * FROM alerts WHERE device_id = %s ORDER BY alert_id", (device_id,)))


@dataclass
class Received:
    """What a test webhook receiver got: one entry per request."""

    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 answering with the next scripted status (then 200)."""

    url: str
    script: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if r.status < 300]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.accepted()]


@contextmanager
def webhook_receiver(script: Sequence[int] = (), delay_s: float = 0.0) -> Iterator[Receiver]:
    """Start a receiver; `script` lists the statuses of the first requests."""
    receiver = Receiver(url="", script=list(script), delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(receiver.delay_s)
            with receiver.lock:
                status = receiver.script.pop(0) if receiver.script else 200
                receiver.requests.append(Received(dict(self.headers.items()), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    with serving(server):
        yield receiver


@dataclass
class SmtpInbox:
    """What a real SMTP server on 127.0.0.1 received: (recipients, parsed message) per e-mail."""

    url: str = ""
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"


@contextmanager
def smtp_inbox() -> Iterator[SmtpInbox]:
    """An SMTP server (aiosmtpd) on a free loopback port for the block; `inbox.url` is its smtp:// URL."""
    port = free_port()
    inbox = SmtpInbox(url=f"smtp://127.0.0.1:{port}")
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
