"""A relay worker: rule evaluation, clock ticks and deliveries, in threads of one process.

Any number of workers may run against one database. Work is found by LISTEN (`pulsewire_eval`
from ingest, `pulsewire_outbox` from alert writes) with a short poll as a safety net, and claimed
under locks (per-device advisory locks, FOR UPDATE SKIP LOCKED), so workers never collide.
Database outages are retried with capped backoff; `stop()` ends every loop within a poll period.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pulsewire.db import connect
from pulsewire.errors import DatabaseError
from pulsewire.settings import MqttTarget, Settings
from pulsewire.wire import EVAL_CHANNEL, OUTBOX_CHANNEL, event_devices
from relay.channels import Channels
from relay.deliver import InFlight, RetryPolicy, deliver_one
from relay.egress import EgressPolicy
from relay.engine import EngineConfig, due_devices, evaluate_one
from relay.mail import SmtpPolicy
from relay.rules import seed_defaults
from relay.tick import check_silences, escalate
from relay.turns import Turns

log = logging.getLogger("pulsewire.relay")
Conn = psycopg.Connection[dict[str, Any]]


@dataclass
class RelayConfig:
    """What one worker runs and how often."""

    database_url: str
    mqtt: MqttTarget | None
    smtp_url: str | None = None
    smtp_from: str = "pulsewire@localhost"
    # E-mail over TLS only; plain to a loopback relay when PULSEWIRE_SMTP_ALLOW_PLAIN_LOOPBACK (unless given).
    smtp: SmtpPolicy = field(default_factory=SmtpPolicy.from_env)
    escalate_after_s: int = 900
    late_after_s: float = 300.0
    delivery_threads: int = 4
    # Evaluators share the work (relay/turns.py): while one waits on the database for a device,
    # another evaluates the next, and one is always kept for devices with events.
    eval_threads: int = 3
    poll_s: float = 0.5
    tick_s: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Webhooks: where they may go (PULSEWIRE_WEBHOOK_ALLOW_PRIVATE unless given) and the deadline
    # of one whole attempt.
    egress: EgressPolicy = field(default_factory=EgressPolicy.from_env)
    webhook_timeout_s: float = 10.0
    evaluate: bool = True
    deliver: bool = True
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RelayConfig:
        """The config of a worker from the process settings."""
        return cls(
            database_url=settings.require_database_url(),
            mqtt=settings.mqtt(),
            smtp_url=settings.smtp_url,
            smtp_from=settings.smtp_from,
            smtp=SmtpPolicy.from_settings(settings),
            escalate_after_s=settings.escalate_after_s,
            egress=EgressPolicy.from_settings(settings),
            webhook_timeout_s=settings.webhook_timeout_s,
            **overrides,
        )


class RelayWorker:
    """One relay worker; `start()` runs its threads, `stop()` ends them."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self._stop = threading.Event()
        self._turns = Turns(cfg.eval_threads)
        self._outbox_wake = threading.Event()
        self.engine = EngineConfig(
            actor=f"system:{cfg.worker}",
            late_after_s=cfg.late_after_s,
            email=bool(cfg.smtp_url),
            on_deliveries=self._outbox_wake.set if cfg.deliver else None,
        )
        self._inflight = InFlight(cfg.delivery_threads, on_release=self._outbox_wake.set)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Seed the default rules (idempotent) and start every loop."""
        with connect(self.cfg.database_url, autocommit=True) as conn:
            seed_defaults(conn)
        loops: list[tuple[str, Callable[[], None]]] = [("listen", self._listen)]
        if self.cfg.evaluate:
            loops += [(f"eval-{i}", self._eval_loop) for i in range(self.cfg.eval_threads)]
            loops.append(("tick", self._tick_loop))
        if self.cfg.deliver:
            loops += [(f"deliver-{i}", self._deliver_loop) for i in range(self.cfg.delivery_threads)]
        for name, target in loops:
            thread = threading.Thread(target=self._guarded, args=(target,), name=f"relay-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask every loop to end and wait for them."""
        self._stop.set()
        self._turns.close()
        self._outbox_wake.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def stop_soon(self) -> None:
        """Ask the loops to end (safe from a signal handler); `wait()` then returns."""
        self._stop.set()

    def wait(self) -> None:
        """Block until stopped (Ctrl-C in the CLI)."""
        while not self._stop.wait(1.0):
            pass

    def _guarded(self, loop: Callable[[], None]) -> None:
        # Outages end a loop's current round; the loop starts again after a capped backoff.
        delay = 0.2
        while not self._stop.is_set():
            try:
                loop()
                return
            except (DatabaseError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("relay: database unavailable (%s); retrying in %.1fs", exc, delay)
            except Exception:
                # A bug must not silently end a loop: log it and go on after the backoff.
                log.exception("relay: %s failed; retrying in %.1fs", loop.__name__, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _listen(self) -> None:
        with connect(self.cfg.database_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {EVAL_CHANNEL}")
            conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            # Whatever was notified before we listened is found by the loops' first round.
            self._turns.signal()
            self._outbox_wake.set()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=self.cfg.poll_s):
                    if note.channel == EVAL_CHANNEL:
                        self._turns.signal(event_devices(note.payload))
                    else:
                        self._outbox_wake.set()

    def _eval_loop(self) -> None:
        # Autocommit: each evaluation opens its own (pipelined) transaction, and asking the queue
        # is one statement.
        with connect(self.cfg.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                device = self._turns.take(lambda: due_devices(conn), self.cfg.poll_s)
                if device is None:
                    continue
                try:
                    evaluate_one(conn, device, self.engine)
                finally:
                    self._turns.done(device)

    def _tick_loop(self) -> None:
        with connect(self.cfg.database_url, autocommit=True) as conn:
            while not self._stop.wait(self.cfg.tick_s):
                check_silences(conn, self.engine)
                escalate(conn, self.engine, self.cfg.escalate_after_s)

    def _deliver_loop(self) -> None:
        name = threading.current_thread().name
        channels = Channels(
            self.cfg.mqtt,
            self.cfg.smtp_url,
            self.cfg.smtp_from,
            timeout_s=self.cfg.webhook_timeout_s,
            client_id=f"pulsewire-relay-{self.cfg.worker}-{name}".replace(":", "-"),
            egress_policy=self.cfg.egress,
            smtp_policy=self.cfg.smtp,
        )
        try:
            with connect(self.cfg.database_url, autocommit=True) as conn:
                while not self._stop.is_set():
                    self._outbox_wake.wait(self.cfg.poll_s)
                    self._outbox_wake.clear()
                    while not self._stop.is_set() and deliver_one(
                        conn, channels, f"{self.cfg.worker}/{name}", self.cfg.retry, self._inflight
                    ):
                        pass
        finally:
            channels.close()


def run_forever(cfg: RelayConfig) -> None:
    """Run a worker until interrupted (Ctrl-C or SIGTERM), then stop its loops cleanly."""
    worker = RelayWorker(cfg)
    # The listener and delivery threads mostly wait; a shorter GIL switch interval lets them run
    # soon after a notification while evaluators are busy in Python (default 5 ms per switch).
    sys.setswitchinterval(0.0005)
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop_soon())
    worker.start()
    log.info("relay worker %s running", cfg.worker)
    try:
        worker.wait()
    finally:
        worker.stop()
