"""Batch order for an ingest worker with several writer connections (`PULSEWIRE_INGEST_WRITERS`).

Batches are numbered as the network thread closes them. Writers work on different batches at once,
but two steps of each batch go in number order, so that more connections change nothing a single
one would store:

- the **claim** (`ingest_log` keys and quarantine rows, the inserts two batches may share after a
  redelivery): batch n claims after batch n-1 has claimed. A later batch that shares a key then
  waits in PostgreSQL for the earlier one's commit, never the other way round;
- the **tail and commit** (seq streams, devices, evaluation queue, then COMMIT): batch n after
  batch n-1 has committed. Stream high-water marks so advance in message order and no spurious
  seq gap is recorded; acks are sent in the order the messages came.

The COPY of readings and events, most of PostgreSQL's work, runs in parallel between the two.

A batch that fails after its claim (connection lost, a refused row) rolls back and claims again;
every later batch that has claimed meanwhile is told to roll back and start over (`Restart`), since
its claims may hold keys the failed batch must take first. One writer (`BatchOrder(1)`) never waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_WAIT_S = 0.1  # how often a waiting writer looks at `abandoned`


class Restart(Exception):
    """An earlier batch failed after this one claimed: roll back and write this batch again."""


class Abandoned(Exception):
    """The worker is stopping: leave the batch unacked (the broker redelivers it)."""


class BatchOrder:
    """Who may claim and who may commit next; shared by a worker's writer threads."""

    def __init__(self, writers: int, abandoned: Callable[[], bool] = lambda: False) -> None:
        self.writers = writers
        self._abandoned = abandoned
        self._cond = threading.Condition()
        self._claim_next = 0  # the batch allowed to claim
        self._commit_next = 0  # the batch allowed to run its tail and commit
        # (reset number, failed batch): a batch above one failed since it claimed starts over
        self._resets: list[tuple[int, int]] = []
        self._reset_count = 0

    def claim(self, number: int) -> int:
        """Wait for batch `number`'s turn to claim; returns the token `committing` checks."""
        with self._cond:
            self._wait(lambda: self._claim_next == number, number, None)
            return self._reset_count

    def claimed(self, number: int) -> None:
        """Batch `number` has claimed: the next one may."""
        with self._cond:
            if self._claim_next == number:
                self._claim_next = number + 1
                self._cond.notify_all()

    def committing(self, number: int, token: int) -> None:
        """Wait until every earlier batch has committed (raises `Restart` if one failed meanwhile)."""
        with self._cond:
            self._wait(lambda: self._commit_next == number, number, token)

    def committed(self, number: int, then: Callable[[], None]) -> None:
        """Batch `number` committed: run `then` (queue its acks) before the next one may commit."""
        with self._cond:
            then()
            self._commit_next = number + 1
            self._claim_next = max(self._claim_next, number + 1)
            self._cond.notify_all()

    def failed(self, number: int) -> None:
        """Batch `number` rolled back: it claims again, and every later batch that claimed restarts."""
        with self._cond:
            self._claim_next = min(self._claim_next, number)
            self._reset_count += 1
            self._resets.append((self._reset_count, number))
            del self._resets[:-64]  # a batch waits on a handful of resets at most
            self._cond.notify_all()

    def _restarts(self, number: int, token: int) -> bool:
        """Whether an earlier batch than `number` failed after the claim that returned `token`."""
        if self._reset_count - token > len(self._resets):  # older resets forgotten: assume one was
            return True
        return any(r > token and failed < number for r, failed in self._resets)

    def _wait(self, ready: Callable[[], bool], number: int, token: int | None) -> None:
        while True:
            if token is not None and self._reset_count > token and self._restarts(number, token):
                raise Restart
            if ready():
                return
            if self._abandoned():
                raise Abandoned
            self._cond.wait(_WAIT_S)


class Turn:
    """One batch's place in a `BatchOrder`, handed to `BatchWriter.write`."""

    def __init__(self, order: BatchOrder, number: int) -> None:
        self.order = order
        self.number = number
        self._token = 0

    @classmethod
    def alone(cls) -> Turn:
        """The turn of a writer that has no other: it never waits."""
        return cls(BatchOrder(1), 0)

    def claim(self) -> None:
        self._token = self.order.claim(self.number)

    def claimed(self) -> None:
        self.order.claimed(self.number)

    def committing(self) -> None:
        self.order.committing(self.number, self._token)

    def committed(self, then: Callable[[], None]) -> None:
        self.order.committed(self.number, then)

    def failed(self) -> None:
        self.order.failed(self.number)
