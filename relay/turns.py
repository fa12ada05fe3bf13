"""Which of a worker's evaluator threads evaluates which device, and when to look for more.

One thread at a time asks the database which devices have queued work (`due_devices`); the
answer is shared, and each device goes to one thread. So a notification costs one such query and
one evaluation, however many evaluator threads the worker has: before, every thread woke, asked,
and all but one read the device's data only to find its lock taken. Workers in other processes
still meet at the per-device advisory lock.

Events page, readings mostly do not: with more than one thread, one is always kept for devices
with queued events, so an event never waits for an evaluation of readings to end. The others take
either, events first.

A notification names the devices that sent events (`pulsewire.wire.event_devices`); they are handed
out at once, while another thread asks the database for the rest. Once the last answer is used up,
a signalled thread asks before it takes a named device, and the answer's order (tenants taking
turns) goes before the named devices, so a tenant whose devices fill the notifications can neither
stop the question nor get ahead of another tenant's device in the answer. Under a backlog the
question is still asked once per answer, not once per notification. A device with events that is
being evaluated when its new events are announced is handed out again as soon as it is done, not
left for the next notification or poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from relay.engine import Due


class Turns:
    """The devices due in this process, handed out one thread per device."""

    def __init__(self, threads: int) -> None:
        self._cond = threading.Condition()
        self._ready: list[Due] = []
        self._busy: dict[str, bool] = {}  # device -> it has events
        self._readings_cap = max(1, threads - 1)
        self._readings_busy = 0
        self._again: set[str] = set()  # busy devices with new events: ready again when done
        self._answered: set[str] = set()  # ready devices from the last answer
        # Set by a notification (and at start: what was queued before we listened); cleared by the
        # thread that then asks the database.
        self._signalled = True
        self._asking = False
        self._closed = False

    def signal(self, events: Iterable[str] = ()) -> None:
        """New work was committed: one waiting thread asks for it, and `events` go to others at once.

        `events` are devices the notification says sent events.
        """
        with self._cond:
            self._signalled = True
            self._cond.notify(1 + self._add([Due(device, True) for device in events]))

    def close(self) -> None:
        """Wake every thread; `take` returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, ask: Callable[[], list[Due]], poll_s: float) -> str | None:
        """A device for the calling thread to evaluate, or None (then call again).

        Waits up to `poll_s` for a signal when nothing it may take is known to be due; asks the
        database (through `ask`) when signalled or when the wait ran out, which is the safety net
        for a notification lost with a reconnect and for devices held back until their `retry_at`.
        A signalled thread asks before it takes a device a notification named once the last
        answer is used up, so named devices can never keep the rest from being asked for.
        """
        with self._cond:
            if self._closed:
                return None
            if not self._question_due():
                device = self._pick()
                if device is not None:
                    return device
                if not self._signalled:
                    self._cond.wait(poll_s)  # a signal, a device made ready, or the poll period
                    if self._closed:
                        return None
                    device = None if self._question_due() else self._pick()
                    if device is not None:
                        return device
            if self._asking:
                self._cond.wait(poll_s)  # another thread is asking: its answer wakes us
                return None
            self._asking, self._signalled = True, False
        found: list[Due] = []
        try:
            found = ask()
        finally:
            with self._cond:
                self._asking = False
                self._answer(found)
                device = None if self._closed else self._pick()
                if self._ready or self._signalled:
                    self._cond.notify()  # the next device, or what came in while we asked
        return device

    def _question_due(self) -> bool:
        """Signalled, nobody asking, and nothing left of the last answer (caller holds the lock)."""
        return self._signalled and not self._asking and not self._answered

    def done(self, device: str) -> None:
        """The calling thread has finished with `device`."""
        with self._cond:
            if not self._busy.pop(device, True):
                self._readings_busy -= 1
                if self._ready:
                    self._cond.notify()  # readings that waited for a thread
            if device in self._again:
                self._again.discard(device)
                self._cond.notify(self._add([Due(device, True)]))  # its new events

    def _add(self, named: list[Due]) -> int:
        """Make devices a notification named ready, after those already ready (one ready for its
        readings now has events); returns how many became ready (caller holds the lock). A busy
        one is remembered, to be ready again when done."""
        known = set(self._busy) | {due.device_id for due in self._ready}
        added = [due for due in named if due.device_id not in known]
        self._again |= {due.device_id for due in named if due.device_id in self._busy}
        with_events = {due.device_id for due in named if due.events}  # ready for readings, now events too
        self._ready = [
            Due(due.device_id, True) if due.device_id in with_events else due for due in self._ready
        ]
        self._ready += added
        self._ready.sort(key=lambda due: not due.events)  # stable
        return len(added)

    def _answer(self, found: list[Due]) -> None:
        """The database's answer, in its order (events first, tenants taking turns), then what was
        ready and is not in it (caller holds the lock)."""
        was = {due.device_id: due.events for due in self._ready}
        answered = [
            Due(due.device_id, due.events or was.get(due.device_id, False))  # named since: it has events
            for due in found
            if due.device_id not in self._busy
        ]
        names = {due.device_id for due in found}
        self._ready = answered + [due for due in self._ready if due.device_id not in names]
        self._answered = {due.device_id for due in answered}
        self._ready.sort(key=lambda due: not due.events)  # stable: the database's order within

    def _pick(self) -> str | None:
        """The first ready device this thread may take (caller holds the lock)."""
        for i, due in enumerate(self._ready):
            if due.events or self._readings_busy < self._readings_cap:
                del self._ready[i]
                self._answered.discard(due.device_id)
                self._busy[due.device_id] = due.events
                self._readings_busy += not due.events
                return due.device_id
        return None
