"""An ingest worker: consumer → bounded queue → writer thread (validate, batch, commit, ack).

paho's network thread only puts raw messages on a bounded queue; when the queue is full it blocks,
paho stops reading the socket and the broker holds the rest (backpressure, not memory growth). One
writer thread drains the queue into batches (`batch_max_rows` rows or `flush_interval_ms`), validates
them, commits each in one transaction and only then acks its messages: a crash loses nothing, and a
redelivery is deduplicated by `ingest_log`. While PostgreSQL is away the same batch is retried with
capped backoff. Threads, not asyncio: the work is CPU-bound under the GIL and paho's own thread is
the fastest MQTT receiver we have.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ingest._consumer import SHARE_GROUP, Consumer, Received, shared_topics
from ingest.metrics import IngestMetrics
from ingest.validate import Quarantined, Telemetry, Validated, validate
from ingest.writer import BatchOutcome, BatchWriter
from pulsewire.errors import DatabaseError
from pulsewire.settings import Settings
from schemas.payloads import QuarantineReason

log = logging.getLogger(__name__)

Raw = Received  # topic, payload, mid, qos, connection
REGISTRY_RELOAD_S = 2.0  # a device added a moment ago is accepted after at most this long
MAINTENANCE_EVERY_S = 3600.0
MAINTENANCE_RETRY_S = 60.0
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0
_POLL_S = 0.2


@dataclass
class _Batch:
    raws: list[Raw]
    items: list[Validated]
    rows: int = 0


class IngestService:
    """One ingest worker; `start()`, then `stop()` flushes, commits, acks and disconnects."""

    def __init__(self, settings: Settings, *, client_id: str, share_group: str = SHARE_GROUP) -> None:
        self.settings = settings
        self.client_id = client_id
        self.metrics = IngestMetrics()
        self._queue: queue.Queue[Raw] = queue.Queue(maxsize=settings.queue_max_messages)
        self.metrics.watch_queue(self._queue.qsize)
        self._intake_closed = threading.Event()
        self._abandon = threading.Event()
        self._writer = BatchWriter(settings.require_database_url())
        self._consumer = Consumer(settings.mqtt(), client_id, self._enqueue, shared_topics(share_group))
        self._thread = threading.Thread(
            target=self._write_loop, name=f"ingest-writer-{client_id}", daemon=True
        )
        self._kinds: dict[str, str] = {}
        self._kinds_at = -REGISTRY_RELOAD_S
        self._next_maintenance = 0.0
        self.totals = BatchOutcome()

    def start(self) -> None:
        """Start the writer thread and connect to the broker."""
        self._thread.start()
        self._consumer.start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the shared subscriptions are in place within `timeout_s`."""
        return self._consumer.subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop intake, commit and ack what is queued, then disconnect.

        A batch still failing after `timeout_s` is abandoned unacked: the broker redelivers it.
        """
        self._intake_closed.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(RETRY_MAX_S + 1)
        self._consumer.stop()
        self._writer.close()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs."""
        return self._thread.is_alive()

    def _enqueue(self, raw: Raw) -> None:
        # Runs in paho's thread. Blocking here is the backpressure; once intake is closed the
        # message is left unacked, so the broker keeps it for this session's next connection.
        while not self._intake_closed.is_set():
            try:
                self._queue.put(raw, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _write_loop(self) -> None:
        while True:
            self._maybe_maintain()
            batch = self._collect()
            if batch.raws:
                self._commit(batch)
            elif self._intake_closed.is_set() and self._queue.empty():
                return

    def _collect(self) -> _Batch:
        batch = _Batch([], [])
        try:
            first = self._queue.get(timeout=_POLL_S)
        except queue.Empty:
            return batch
        self._add(batch, first)
        deadline = time.monotonic() + self.settings.flush_interval_ms / 1000
        get_nowait = self._queue.get_nowait
        while batch.rows < self.settings.batch_max_rows:
            try:
                raw = get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    raw = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            self._add(batch, raw)
        return batch

    def _add(self, batch: _Batch, raw: Raw) -> None:
        item = self._validate(raw)
        batch.raws.append(raw)
        batch.items.append(item)
        batch.rows += len(item.readings) if isinstance(item, Telemetry) else 1

    def _validate(self, raw: Raw) -> Validated:
        return validate(raw[0], raw[1], self._kinds, now=datetime.now(UTC),
                        max_future_skew_s=self.settings.max_future_skew_s)  # fmt: skip

    def _commit(self, batch: _Batch) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                self._recheck_unregistered(batch)
                started = time.perf_counter()
                outcome = self._writer.write(batch.items)
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                break
            except DatabaseError as exc:
                self.metrics.db_retries.inc()
                log.warning("batch of %d message(s) not stored, retrying in %.1fs: %s",
                            len(batch.raws), delay, exc)  # fmt: skip
                if self._abandon.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX_S)
        ack = self._consumer.ack
        for _topic, _payload, mid, qos, connection in batch.raws:
            ack(mid, qos, connection)
        self._count(batch, outcome)

    def _recheck_unregistered(self, batch: _Batch) -> None:
        """Reload the registry when a batch names unknown devices, then validate those again."""
        unknown = [
            i for i, item in enumerate(batch.items)
            if isinstance(item, Quarantined) and item.reason is QuarantineReason.UNREGISTERED_DEVICE
        ]  # fmt: skip
        if not unknown:
            return
        # The device may have been added after our last look: look again, but not more often than
        # every REGISTRY_RELOAD_S (the broker only admits registered devices, so this is rare).
        pause = self._kinds_at + REGISTRY_RELOAD_S - time.monotonic()
        if pause > 0 and self._abandon.wait(pause):
            return
        self._kinds = self._writer.load_kinds()
        self._kinds_at = time.monotonic()
        for i in unknown:
            batch.items[i] = self._validate(batch.raws[i])

    def _count(self, batch: _Batch, outcome: BatchOutcome) -> None:
        m = self.metrics
        kinds = Counter(raw[0].rsplit("/", 1)[-1] for raw in batch.raws)
        for kind, n in kinds.items():
            m.messages.labels(kind if kind in ("telemetry", "event", "status") else "other").inc(n)
        m.readings.inc(outcome.readings)
        m.events.inc(outcome.events)
        m.duplicates.inc(outcome.duplicates)
        m.gaps.inc(outcome.gaps)
        for reason, n in outcome.quarantined.items():
            m.quarantined.labels(reason).inc(n)
        m.batch_messages.observe(len(batch.raws))
        self.totals.add(outcome)

    def _maybe_maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        try:
            self._writer.maintain_storage(self.settings.retention_days)
            self._next_maintenance = now + MAINTENANCE_EVERY_S
        except DatabaseError as exc:
            log.warning("storage maintenance failed, retrying in %.0fs: %s", MAINTENANCE_RETRY_S, exc)
            self._next_maintenance = now + MAINTENANCE_RETRY_S


_slot_locks: list[IO[bytes]] = []  # held for the life of the process


def default_client_id(state_dir: Path) -> str:
    """`pulsewire-ingest-<host>-<slot>`: stable across restarts, unique among this host's workers.

    A stable id resumes the broker session, so messages queued while the worker was down reach it.
    The slot is the first free lock file under the state dir; the lock lives as long as the process.
    """
    host = socket.gethostname().split(".")[0] or "host"
    try:
        folder = state_dir / "ingest-slots"
        folder.mkdir(parents=True, exist_ok=True)
        for slot in range(256):
            handle = (folder / f"{slot}.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _slot_locks.append(handle)
            return f"pulsewire-ingest-{host}-{slot}"
    except OSError as exc:
        log.warning("no writable state dir for a stable client id (%s); using the pid", exc)
    return f"pulsewire-ingest-{host}-p{os.getpid()}"
