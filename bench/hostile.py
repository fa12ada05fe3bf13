"""A hostile tenant for `bench.alert_latency_bench --hostile`: everything org A can do at once.

Org A (a provider with its own implants) has, stored as if saved before validation existed:
webhooks with broken URLs, a tarpit that accepts and never answers, an endless body, cloud metadata
and private addresses; event rules with an invalid and a catastrophic regex; a backlog of failing
deliveries. While the probes run, one of its devices floods events far beyond its budget, and its
user opens SSE streams past every cap, bursts bad logins and asks for wide readings ranges. Every
answer it gets is counted by status class; a 5xx is a finding.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import secrets
import socket
import threading
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench import pacing
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import MqttTarget
from schemas import topics

DEVICES = [f"icd-hostile-{i}" for i in range(3)]
BACKLOG = 3000  # failing deliveries of org A, due now, before the probes start
SSE_STREAMS = 200
PARTS = ("deliveries", "rules", "flood", "web")  # what org A does; `--hostile-parts` picks some
PASSWORD = "hostile-password"


class Tarpit:
    """Accepts TCP connections and never answers (the sockets stay open until `close`)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Endless:
    """Answers 200 and then streams a body that never ends."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.send_response(200)
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    while True:
                        self.wfile.write(chunk)
                except OSError:
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _broken_urls(tarpit: Tarpit, endless: Endless) -> list[str]:
    return [
        "http://a..b/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.255.255.1/hook",
        "https://no-such-host.invalid/hook",
        tarpit.url,
        endless.url,
    ]


def setup(db_url: str, vendor: int, tarpit: Tarpit, endless: Endless, *, parts: set[str]) -> dict[str, Any]:
    """Org A with its devices and user; with `parts`, broken webhooks and a backlog, failing rules."""
    with connect(db_url, autocommit=True) as c:
        org = registry.add_org(c, "Hostile Clinic", "provider")
        for device in DEVICES:
            registry.add_device(
                c,
                device,
                kind="implant",
                model="M",
                provider_org_id=org,
                vendor_org_id=vendor,
                password=PASSWORD,
            )
        user = registry.add_user(
            c, "hostile@example.org", role="provider_staff", org_id=org, password=PASSWORD
        )
        token = registry.issue_token(c, user, "hostile")
        if "deliveries" in parts:
            _webhooks_and_backlog(c, org, vendor, tarpit, endless)
        if "rules" in parts:
            _rules(c, org)
    return {"org": org, "user": user, "token": token}


def _webhooks_and_backlog(c: Any, org: int, vendor: int, tarpit: Tarpit, endless: Endless) -> None:
    hooks = [
        c.execute(
            "INSERT INTO webhooks (org_id, url, secret) VALUES (%s, %s, %s) RETURNING webhook_id",
            (org, url, secrets.token_hex(16)),
        ).fetchone()["webhook_id"]  # type: ignore[index]
        for url in _broken_urls(tarpit, endless)
    ]
    _backlog(c, org, vendor, hooks)


def _rules(c: Any, org: int) -> None:
    for key, pattern in (("hostile.bad_regex", "^["), ("hostile.catastrophic", "^(a+)+$")):
        c.execute(
            """INSERT INTO rules (key, name, device_kind, provider_org_id, kind, params, severity, class)
                   VALUES (%s, %s, 'implant', %s, 'event', %s, 'red', 'technical')""",
            (
                key,
                f"Hostile\r\nBcc: everyone@example.org {key}",
                org,
                json.dumps({"event_type": "device_reset", "match": {"reason": pattern}}),
            ),
        )


def _backlog(c: Any, org: int, vendor: int, hooks: list[int]) -> None:
    alert = c.execute(
        """INSERT INTO alerts (device_id, rule_key, rule_name, severity, class, provider_org_id,
                               vendor_org_id, started_at, last_seen_at)
           VALUES (%s, 'hostile.backlog', 'Backlog', 'red', 'technical', %s, %s, now(), now())
           RETURNING alert_id""",
        (DEVICES[0], org, vendor),
    ).fetchone()["alert_id"]
    c.execute(
        """INSERT INTO outbox (alert_id, event, audience, org_id, channel, webhook_id, body)
           SELECT %s, 'opened', 'provider', %s, 'webhook', (%s::bigint[])[1 + i %% %s], '{}'
           FROM generate_series(1, %s) AS i""",
        (alert, org, hooks, len(hooks), BACKLOG),
    )


def flood(device_url: str, ca_file: str, rate: float, stop: Any, nice: int = 0) -> None:
    """Publish ~rate events/s from org A's first device until `stop` is set (its own process).

    The device logs in with its password on the devices' TLS listener at `device_url`.
    """
    os.nice(nice)
    device = DEVICES[0]
    target = replace(MqttTarget.parse(device_url), ca_file=Path(ca_file))
    client = pacing.client(target, device, (device, PASSWORD))
    for seq in pacing.paced(rate, stop):
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        body = {
            "schema": "pulsewire.event/1",
            "device_id": device,
            "boot_id": f"flood{os.getpid()}",
            "seq": seq,
            "ts": now,
            "type": "device_reset",
            "data": {"reason": "a" * 40 + "!"},
        }
        client.publish(topics.event(device), json.dumps(body), qos=1)
    client.loop_stop()
    client.disconnect()


class WebAttack:
    """Org A's user against the dashboard: SSE streams past the caps, bad logins, wide queries."""

    def __init__(self, base_url: str, token: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.base_url = base_url
        self.token = token
        self.stop = threading.Event()
        self.statuses: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._streams, daemon=True),
            threading.Thread(target=self._logins, daemon=True),
            threading.Thread(target=self._queries, daemon=True),
        ]

    def start(self) -> None:
        if not self.enabled:
            self.threads = []
        for thread in self.threads:
            thread.start()

    def close(self) -> dict[str, int]:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return dict(self.statuses)

    def _count(self, what: str, status: int) -> None:
        with self.lock:
            self.statuses[f"{what}_{status // 100}xx"] += 1

    def _streams(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        limits = httpx.Limits(max_connections=SSE_STREAMS + 10)
        with httpx.Client(base_url=self.base_url, headers=headers, limits=limits, timeout=10) as client:
            opened = []
            for _ in range(SSE_STREAMS):
                if self.stop.is_set():
                    break
                try:
                    response = client.send(client.build_request("GET", "/api/v1/alerts/stream"), stream=True)
                except httpx.HTTPError:
                    self._count("sse", 0)
                    continue
                self._count("sse", response.status_code)
                if response.status_code == 200:
                    opened.append(response)
                else:
                    response.close()
            self.stop.wait()
            for response in opened:
                response.close()

    def _logins(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                page = client.get("/login")
                match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                form = {
                    "email": "hostile@example.org",
                    "password": "wrong",
                    "csrf_token": match[1] if match else "",
                }
                self._count("login", client.post("/login", data=form).status_code)
                self.stop.wait(0.05)

    def _queries(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        path = f"/api/v1/devices/{DEVICES[0]}/readings"
        wide = [
            {"metric": "heart_rate_bpm", "bucket": "1000d", "agg": "avg", "start": "0001-01-01T00:00:00Z"},
            {
                "metric": "heart_rate_bpm",
                "bucket": "1s",
                "agg": "avg",
                "start": "2000-01-01T00:00:00Z",
                "end": "2030-01-01T00:00:00Z",
            },
            {"metric": "heart_rate_bpm", "start": "9999-12-31T00:00:00Z"},
        ]
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                self._count("query", client.get(path, params=wide[n % len(wide)]).status_code)
                n += 1
                self.stop.wait(0.05)


def start_flood(device_url: str, ca_file: str, rate: float, nice: int = 0) -> tuple[mp.Process, Any]:
    """The flooding device, in its own process (at `nice`); set the returned event to stop it."""
    stop = mp.Event()
    proc = mp.Process(target=flood, args=(device_url, ca_file, rate, stop, nice), daemon=True)
    proc.start()
    return proc, stop


class WebAttackProcess:
    """`WebAttack` in a process of its own (at `nice`): org A's browsers are other machines, and do
    not share an interpreter with org B's webhook receiver in the benchmark's process."""

    def __init__(self, base_url: str, token: str, *, enabled: bool = True, nice: int = 0) -> None:
        self._stop = mp.Event()
        self._out: mp.Queue[dict[str, int]] = mp.Queue()
        attack = WebAttack(base_url, token, enabled=enabled)  # started in the child: no thread runs here
        self._proc = mp.Process(target=_web_attack, args=(attack, nice, self._stop, self._out), daemon=True)

    def start(self) -> None:
        self._proc.start()

    def close(self) -> dict[str, int]:
        """Stop the attack; what the dashboard answered, counted by kind and status class."""
        self._stop.set()
        statuses = self._out.get(timeout=60)
        self._proc.join(10)
        return statuses


def _web_attack(attack: WebAttack, nice: int, stop: Any, out: Any) -> None:
    os.nice(nice)
    attack.start()
    stop.wait()
    out.put(attack.close())


def ledger(db_url: str, org: int) -> dict[str, int]:
    """What the relay made of org A's deliveries and rules, from the database."""
    with connect(db_url, autocommit=True) as c:
        row = c.execute(
            """SELECT count(*) FILTER (WHERE state = 'pending' AND attempts = 0) AS never_tried,
                      count(*) FILTER (WHERE attempts > 0) AS tried,
                      count(*) FILTER (WHERE state = 'dead') AS dead
               FROM outbox WHERE org_id = %s""",
            (org,),
        ).fetchone()
        quarantined = c.execute(
            "SELECT coalesce(sum(copies), 0) AS n, count(*) AS rows FROM quarantine"
            " WHERE device_id = ANY(%s)",
            (DEVICES,),
        ).fetchone()
        others = c.execute(
            "SELECT reason, sum(copies) AS n FROM quarantine WHERE NOT coalesce(device_id = ANY(%s), false)"
            " GROUP BY reason",
            (DEVICES,),
        ).fetchall()

    assert row is not None and quarantined is not None
    return {
        **{f"hostile_deliveries_{k}": int(v) for k, v in row.items()},
        "hostile_quarantined": int(quarantined["n"]),
        "hostile_quarantine_rows": int(quarantined["rows"]),
        "others_quarantined": sum(int(r["n"]) for r in others),
    }
