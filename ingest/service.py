"""An ingest worker: a network thread (MQTT + validation) and a writer thread (commit), batches between.

The network thread drives paho itself (`Consumer.pump`), validates each message as it arrives and
builds batches; it hands whole batches to the writer thread over a bounded queue (`HANDOFF_BATCHES`).
A batch goes when it is full (`batch_max_rows`), 2 ms after its first message when the writer is
idle, or `flush_interval_ms` after it while the writer is busy; and a writer that finishes a commit
with nothing queued takes the batch being built at once. So a message waits at most for the commit
in progress (group commit: batches grow with the writer's commit time), never for a timer while the
writer is idle. The exception is a throttled device's messages (below): no alert can come of them,
so a batch of nothing else waits for `flush_interval_ms`. A flood is then committed a few times a
second, instead of keeping the writer busy (and other devices' messages waiting) commit after
commit. When the queue is full the network thread stops reading the socket and the broker
holds the rest (backpressure, not memory growth). The writer thread commits each batch in one
transaction and only then passes its acks back; the network thread sends them, a batch at a time.
A crash loses nothing, and a redelivery is deduplicated by `ingest_log`.
Before a batch is written, each device is charged for its messages (`ingest.budget`); what exceeds
its budget is quarantined as `rate_limited`. Copies the broker sends again (MQTT's DUP flag, after a
reconnect of ours or a restart of its own) are not charged: the device sent them once, and a broker
restart would otherwise spend a device's budget on thousands of redeliveries. A device found over
budget is throttled for `THROTTLE_HOLD_S`: meanwhile the network thread quarantines its messages on
sight, without validating them, so a flood costs little more than reading it. Of a device's excess,
quarantine keeps `quarantine_rate_limited_kept_per_min` payloads a minute and counts the rest.
Quarantined messages replayed by `pulsewire quarantine replay` arrive on `pw/v1/replay/...` (only
the service login may publish there), are validated like any other and are not charged again.
While PostgreSQL is away the same batch is retried with capped backoff. The writer spends most of
its time in PostgreSQL with the GIL released, so validation and commit overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, TypeGuard

from ingest._consumer import SHARE_GROUP, Ack, Consumer, Received, shared_topics
from ingest.budget import DeviceBudget
from ingest.metrics import IngestMetrics
from ingest.order import Abandoned, BatchOrder, Restart, Turn
from ingest.validate import Quarantined, Telemetry, Validated, Window, validate_in
from ingest.writer import BatchOutcome, BatchWriter
from pulsewire import rollups
from pulsewire.errors import DatabaseError
from pulsewire.settings import Settings
from schemas.payloads import QuarantineReason
from schemas.topics import REPLAY_PREFIX, UPLINK_KINDS, parse_uplink, unreplayed

log = logging.getLogger(__name__)

Raw = Received  # topic, payload, mid, qos, connection, redelivered by the broker
HANDOFF_BATCHES = 2  # validated batches waiting for the writer (the memory bound, with the two in hand)
REGISTRY_RELOAD_S = 2.0  # a device added a moment ago is accepted after at most this long
MAINTENANCE_EVERY_S = 3600.0
MAINTENANCE_RETRY_S = 60.0
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0
_POLL_S = 0.2
_BUSY_POLL_S = 0.005  # past the flush deadline, waiting for the writer to take the next batch
# With the writer idle, a batch goes after this long: a lone alert-worthy message is not held for
# `flush_interval_ms`, and under load the writer is busy, so batches still grow (group commit).
_IDLE_FLUSH_S = 0.002
# Validation's clock: readings are judged against a "now" at most this old (against a skew allowance
# of minutes and a retention of days).
WINDOW_RENEW_S = 0.005
THROTTLE_HOLD_S = 0.25  # a device found over budget: its messages are quarantined unread this long


@dataclass
class _Batch:
    raws: list[Raw] = field(default_factory=list)
    items: list[Validated] = field(default_factory=list)
    rows: int = 0
    # indices of messages not charged to their device: replayed from quarantine, or sent again by the
    # broker (after a reconnect of ours or a restart of its own: the device sent them once)
    uncharged: set[int] = field(default_factory=set)
    urgent: bool = False  # holds a message other than a throttled device's: it goes without waiting
    number: int = -1  # its place in the batch order, given when it is closed


class IngestService:
    """One ingest worker; `start()`, then `stop()` flushes, commits, acks and disconnects."""

    def __init__(self, settings: Settings, *, client_id: str, share_group: str = SHARE_GROUP) -> None:
        self.settings = settings
        self.client_id = client_id
        self.metrics = IngestMetrics()
        self._handoff: queue.Queue[_Batch | None] = queue.Queue(maxsize=HANDOFF_BATCHES)
        writers = settings.ingest_writers
        # which writer threads are committing a batch (read by the network thread)
        self._writing = [False] * writers
        self.metrics.watch_queue(self._handoff.qsize)
        self._acks: deque[list[Ack]] = deque()  # committed batches' acks, writer → network thread
        self._intake_closed = threading.Event()
        self._abandon = threading.Event()
        self._order = BatchOrder(writers, abandoned=self._abandon.is_set)
        url = settings.require_database_url()
        refresher = rollups.Refresher(url)
        keep = settings.quarantine_payload_max_bytes
        self._writers = [
            BatchWriter(url, quarantine_payload_max_bytes=keep, refresher=refresher) for _ in range(writers)
        ]
        self._charge_lock = threading.Lock()  # the budget and throttle maps: one writer at a time
        self._budget = DeviceBudget(settings.device_rate_msgs_per_s, settings.device_burst_msgs)
        # device -> monotonic time until which it is throttled (written by the writer thread, read
        # by the network thread); device -> (minute, excess payloads kept in it) (writer thread)
        self._throttled: dict[str, float] = {}
        self._kept_excess: dict[str, tuple[int, int]] = {}
        self._consumer = Consumer(settings.mqtt(), client_id, self._receive, shared_topics(share_group))
        self._batch = _Batch()
        # Guards `_batch` (built by the network thread, taken by a writer that finished a commit)
        # and `_handing` (a batch taken for the queue but not in it yet: the writer waits for it, so
        # batches are committed in the order they were built).
        self._batch_lock = threading.Lock()
        self._handing = False
        self._numbered = 0  # batches closed so far: the next one's number (under `_batch_lock`)
        self._net = threading.Thread(target=self._net_loop, name=f"ingest-net-{client_id}", daemon=True)
        names = [f"ingest-writer-{client_id}"] + [f"ingest-writer-{client_id}-{i}" for i in range(1, writers)]
        self._threads = [
            threading.Thread(target=self._write_loop, args=(i,), name=name, daemon=True)
            for i, name in enumerate(names)
        ]
        self._kinds: dict[str, str] = {}
        self._window_now, self._window_until = Window(datetime.min, datetime.min), 0.0
        self._kinds_at = -REGISTRY_RELOAD_S
        self._next_maintenance = 0.0
        self.totals = BatchOutcome()

    def start(self) -> None:
        """Start the writer threads and the network thread (which connects to the broker)."""
        for thread in self._threads:
            thread.start()
        self._net.start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the shared subscriptions are in place within `timeout_s`."""
        return self._consumer.subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop intake, commit and ack what is in hand, then disconnect.

        A batch still failing after `timeout_s` is abandoned unacked: the broker redelivers it.
        """
        self._intake_closed.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # The writers are done, or abandon their batches now: nothing more is handed to them either way.
        self._abandon.set()
        for thread in self._threads:
            thread.join(RETRY_MAX_S + 1)
        self._net.join(timeout_s)
        for writer in self._writers:
            writer.close()

    @property
    def alive(self) -> bool:
        """Whether the network and writer threads run."""
        return self._net.is_alive() and all(t.is_alive() for t in self._threads)

    # -- network thread -------------------------------------------------------------------------

    def _net_loop(self) -> None:
        try:
            while not self._intake_closed.is_set():
                self._send_acks()
                batch = self._collect()
                if batch.raws:
                    self._hand_off(batch)
            self._hand_off(None)
            while any(t.is_alive() for t in self._threads):  # let the writers finish; send acks as they come
                self._send_acks()
                self._consumer.pump(0.02)
            self._send_acks()
        finally:
            self._consumer.disconnect()

    def _collect(self) -> _Batch:
        """Pump the network until a batch is full, or `flush_interval_ms` after its first message
        once the writer has nothing else waiting (so batches grow, and commits get fewer, under load);
        when the writer is idle, 2 ms after its first message. A batch of throttled devices' messages
        only goes `flush_interval_ms` after its first, or 2 ms after another device's message joins it.
        """
        max_rows, flush_s = self.settings.batch_max_rows, self.settings.flush_interval_ms / 1000
        deadline, building, urgent = 0.0, self._batch, False
        while self._batch.rows < max_rows and not self._intake_closed.is_set():
            if building is not self._batch:  # the writer took the batch: a new one begins
                deadline, building, urgent = 0.0, self._batch, False
            if not building.raws:
                timeout = _POLL_S
            else:
                now = time.monotonic()
                if building.urgent and not urgent:  # its first message that may matter
                    urgent = True
                    due = now + (flush_s if self._writer_busy() else _IDLE_FLUSH_S)
                    deadline = min(deadline, due) if deadline else due
                elif not deadline:
                    deadline = now + flush_s
                timeout = deadline - now
                if timeout <= 0:
                    if self._handoff.empty():
                        break
                    timeout = _BUSY_POLL_S
            self._consumer.pump(timeout, lambda: self._batch.rows >= max_rows)
            self._send_acks()
        with self._batch_lock:
            batch, self._batch = self._batch, _Batch()
            self._handing = bool(batch.raws)
            if batch.raws:
                batch.number, self._numbered = self._numbered, self._numbered + 1
        return batch

    def _receive(self, raw: Raw) -> None:
        # Runs in the network thread, inside pump(). Once intake is closed a message is left
        # unacked, so the broker resends it on this session's next connection.
        if self._intake_closed.is_set():
            return
        replayed = raw[0].startswith(REPLAY_PREFIX)
        if replayed:
            raw = (unreplayed(raw[0]), *raw[1:])
        throttled = not replayed and self._throttled and self._throttle(raw)
        item = throttled or self._validate(raw)
        with self._batch_lock:
            batch = self._batch
            batch.urgent = batch.urgent or not throttled
            if replayed or raw[5]:  # raw[5]: the broker sends this message again
                batch.uncharged.add(len(batch.raws))
            batch.raws.append(raw)
            batch.items.append(item)
            batch.rows += len(item.readings) if isinstance(item, Telemetry) else 1

    def _throttle(self, raw: Raw) -> Quarantined | None:
        """The message as `rate_limited` when its device is throttled, unread; else None."""
        uplink = parse_uplink(raw[0])
        if uplink is None:
            return None
        until = self._throttled.get(uplink.device_id)
        if until is None:
            return None
        if time.monotonic() >= until:
            self._throttled.pop(uplink.device_id, None)
            return None
        reason = QuarantineReason.RATE_LIMITED
        return Quarantined(raw[0], uplink.device_id, reason, self._budget.description, raw[1])

    def _hand_off(self, batch: _Batch | None) -> None:
        # Blocking here is the backpressure: the socket is not read meanwhile.
        try:
            while not self._abandon.is_set():
                try:
                    self._handoff.put(batch, timeout=_POLL_S)
                    return
                except queue.Full:
                    self._send_acks()
        finally:
            self._handing = False

    def _send_acks(self) -> None:
        acks = self._acks
        while acks:
            self._consumer.ack(acks.popleft())

    def _validate(self, raw: Raw) -> Validated:
        return validate_in(raw[0], raw[1], self._kinds, self._window())

    def _window(self) -> Window:
        """The accepted time window, renewed every WINDOW_RENEW_S rather than per message."""
        now = time.monotonic()
        if now >= self._window_until:
            self._window_until = now + WINDOW_RENEW_S
            settings = self.settings
            self._window_now = Window.around(datetime.now(UTC), max_future_skew_s=settings.max_future_skew_s,
                                             retention_days=settings.retention_days)  # fmt: skip
        return self._window_now

    # -- writer thread --------------------------------------------------------------------------

    def _write_loop(self, index: int) -> None:
        writer = self._writers[index]
        committed = False  # the last turn committed a batch: the writer looks for the next itself
        while not self._abandon.is_set():  # set by stop() once the writer has had its time
            if index == 0:
                self._maybe_maintain(writer)
            batch = self._take_building() if committed else None
            if batch is None:
                try:
                    batch = self._handoff.get(timeout=_POLL_S)
                except queue.Empty:
                    committed = False
                    continue
            if batch is None:  # intake closed: the other writers are told too
                with contextlib.suppress(queue.Full):
                    self._handoff.put_nowait(None)
                return
            committed = True
            self._writing[index] = True
            try:
                with self._charge_lock:
                    self._charge(batch)
                if not self._commit(batch, writer):
                    return
            finally:
                self._writing[index] = False

    def _take_building(self) -> _Batch | None:
        """The batch the network thread is building, when nothing is queued or on its way to the
        queue: a writer that just finished a commit takes it at once instead of idling until the
        network thread's next deadline."""
        if self._intake_closed.is_set():
            return None
        with self._batch_lock:
            if self._handing or not self._handoff.empty() or not self._batch.urgent:
                return None  # nothing to take, or a throttled flood only: that waits for its deadline
            batch, self._batch = self._batch, _Batch()
            batch.number, self._numbered = self._numbered, self._numbered + 1
        return batch

    def _writer_busy(self) -> bool:
        """Whether no writer would take a batch now (each is committing, or one waits in the queue)."""
        return all(self._writing) or not self._handoff.empty()

    def _commit(self, batch: _Batch, writer: BatchWriter) -> bool:
        """Commit `batch` (retrying while PostgreSQL is away) and queue its acks; False if abandoned.

        The acks are queued in batch order (`ingest.order`), which is the order the messages came.
        """
        delay = RETRY_MIN_S
        turn = Turn(self._order, batch.number)
        payloads = [raw[1] for raw in batch.raws]
        while True:
            try:
                self._recheck_unregistered(batch, writer)
                started = time.perf_counter()
                writer.write(batch.items, payloads, turn=turn, on_commit=partial(self._committed, batch))
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                return True
            except Restart:  # an earlier batch failed after this one claimed: write it again
                continue
            except Abandoned:
                return False
            except DatabaseError as exc:
                self.metrics.db_retries.inc()
                log.warning("batch of %d message(s) not stored, retrying in %.1fs: %s",
                            len(batch.raws), delay, exc)  # fmt: skip
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, RETRY_MAX_S)

    def _committed(self, batch: _Batch, outcome: BatchOutcome) -> None:
        """In batch order: queue the batch's acks for the network thread and count what it stored."""
        self._acks.append([(mid, qos, conn) for _t, _p, mid, qos, conn, _dup in batch.raws])
        self._count(batch, outcome)

    def _charge(self, batch: _Batch) -> None:
        """Charge each device for its messages; quarantine what exceeds its budget (`rate_limited`)."""
        items, uncharged = batch.items, batch.uncharged
        # Quarantined unread by the network thread (a throttled device): excess already, not charged.
        early = {i: item for i, item in enumerate(items) if _rate_limited(item)}
        over = self._budget.over_budget(
            None if i in uncharged or i in early else item.device_id for i, item in enumerate(items)
        )
        if not over and not early:
            return
        detail = self._budget.description
        hold = time.monotonic() + THROTTLE_HOLD_S
        for device in over:
            self._throttled[device] = hold
        for i, item in enumerate(items):
            device_id = item.device_id
            if device_id is None:
                continue
            excess = early.get(i)
            if device_id in over and excess is None and i not in uncharged:
                if over[device_id]:  # the device's first messages are admitted
                    over[device_id] -= 1
                    continue
                topic, payload = batch.raws[i][0], batch.raws[i][1]
                excess = Quarantined(topic, device_id, QuarantineReason.RATE_LIMITED, detail, payload)
            if excess is not None:
                items[i] = self._bounded(device_id, excess)

    def _bounded(self, device_id: str, item: Quarantined) -> Quarantined:
        """A `rate_limited` message with its payload while the device's minute has room, else counted only."""
        minute = int(time.time() // 60)
        at, kept = self._kept_excess.get(device_id, (minute, 0))
        if at != minute:
            kept = 0
            if len(self._kept_excess) > 10_000:  # devices that stopped flooding long ago
                self._kept_excess.clear()
        if kept < self.settings.quarantine_rate_limited_kept_per_min:
            self._kept_excess[device_id] = (minute, kept + 1)
            return item
        detail = f"{item.detail}; payload not kept (over {kept} a minute)"
        return replace(item, detail=detail, payload_kept=False)

    def _recheck_unregistered(self, batch: _Batch, writer: BatchWriter) -> None:
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
        self._kinds = writer.load_kinds()
        self._kinds_at = time.monotonic()
        for i in unknown:
            batch.items[i] = self._validate(batch.raws[i])

    def _count(self, batch: _Batch, outcome: BatchOutcome) -> None:
        m = self.metrics
        kinds = Counter(raw[0].rsplit("/", 1)[-1] for raw in batch.raws)
        for kind, n in kinds.items():
            m.messages.labels(kind if kind in UPLINK_KINDS else "other").inc(n)
        m.readings.inc(outcome.readings)
        m.events.inc(outcome.events)
        m.duplicates.inc(outcome.duplicates)
        m.gaps.inc(outcome.gaps)
        for reason, n in outcome.quarantined.items():
            m.quarantined.labels(reason).inc(n)
        m.batch_messages.observe(len(batch.raws))
        self.totals.add(outcome)

    def _maybe_maintain(self, writer: BatchWriter) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        try:
            writer.maintain_storage(self.settings.retention_days, self.settings.quarantine_retention_days)
            self._next_maintenance = now + MAINTENANCE_EVERY_S
        except DatabaseError as exc:
            log.warning("storage maintenance failed, retrying in %.0fs: %s", MAINTENANCE_RETRY_S, exc)
            self._next_maintenance = now + MAINTENANCE_RETRY_S


def _rate_limited(item: Validated) -> TypeGuard[Quarantined]:
    """Whether `item` is a `rate_limited` quarantine (only the network thread's throttle makes one early)."""
    return isinstance(item, Quarantined) and item.reason is QuarantineReason.RATE_LIMITED


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
