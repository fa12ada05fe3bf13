"""The batch order of a worker's writer connections (ingest/order.py), thread by thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from ingest.order import Abandoned, BatchOrder, Restart, Turn

SETTLE_S = 0.2  # long enough for a thread that could go on to have done so


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `work` in a thread; the list gets its result or the exception it raised."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # the test looks at it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _claimed(order: BatchOrder, batches: int) -> list[Turn]:
    """The first `batches` turns of `order`, each having claimed, in order."""
    turns = [Turn(order, number) for number in range(batches)]
    for turn in turns:
        turn.claim()
        turn.claimed()
    return turns


def test_a_batch_claims_only_after_the_one_before() -> None:
    order = BatchOrder(2)
    second = Turn(order, 1)
    thread, out = _in_thread(second.claim)
    time.sleep(SETTLE_S)
    assert thread.is_alive() and not out  # batch 0 has not claimed yet
    first = Turn(order, 0)
    first.claim()
    first.claimed()
    thread.join(2)
    assert out == [None]


def test_a_batch_commits_only_after_the_one_before_and_runs_its_hook_in_order() -> None:
    order = BatchOrder(2)
    first, second = _claimed(order, 2)
    log: list[int] = []

    def commit_second() -> None:
        second.committing()
        second.committed(lambda: log.append(1))

    thread, out = _in_thread(commit_second)
    time.sleep(SETTLE_S)
    assert thread.is_alive() and log == []  # the later batch waits for the earlier one's commit
    first.committing()
    first.committed(lambda: log.append(0))
    thread.join(2)
    assert out == [None]
    assert log == [0, 1]  # acks are queued in batch order


def test_an_earlier_batch_that_fails_sends_later_claimed_ones_back_to_their_claim() -> None:
    order = BatchOrder(3)
    first, second = _claimed(order, 2)
    thread, out = _in_thread(second.committing)
    time.sleep(SETTLE_S)
    first.failed()  # e.g. the connection was lost before its commit
    thread.join(2)
    assert len(out) == 1 and isinstance(out[0], Restart)
    # The failed batch claims again first; the restarted one waits for that, then goes on.
    thread, out = _in_thread(second.claim)
    time.sleep(SETTLE_S)
    assert thread.is_alive()
    first.claim()
    first.claimed()
    thread.join(2)
    assert out == [None]
    first.committing()
    first.committed(lambda: None)
    second.claimed()
    second.committing()  # no restart now: nothing earlier failed since its new claim


def test_a_later_batch_that_fails_leaves_earlier_ones_alone() -> None:
    order = BatchOrder(2)
    first, second = _claimed(order, 2)
    second.failed()
    first.committing()  # not restarted
    first.committed(lambda: None)
    second.claim()
    second.claimed()
    second.committing()
    second.committed(lambda: None)


def test_waiting_writers_give_up_when_the_worker_stops() -> None:
    stopping = threading.Event()
    order = BatchOrder(2, abandoned=stopping.is_set)
    thread, out = _in_thread(Turn(order, 5).claim)
    stopping.set()
    thread.join(2)
    assert len(out) == 1 and isinstance(out[0], Abandoned)


def test_one_writer_never_waits() -> None:
    order = BatchOrder(1)
    for number in range(3):
        turn = Turn(order, number)
        turn.claim()
        turn.claimed()
        turn.committing()
        turn.committed(lambda: None)
    alone = Turn.alone()
    alone.claim()
    alone.failed()  # a retry of the same batch claims again at once
    alone.claim()
    alone.claimed()
    alone.committing()


@pytest.mark.parametrize("failing", [0, 1])
def test_writers_in_threads_commit_every_batch_once_in_order(failing: int) -> None:
    """Three writers, twelve batches, one batch failing once after its claim: all commit, in order."""
    order = BatchOrder(3)
    committed: list[int] = []
    failed_once: set[int] = set()
    lock = threading.Lock()
    todo = list(range(12))

    def writer() -> None:
        while True:
            with lock:
                if not todo:
                    return
                number = todo.pop(0)
            turn = Turn(order, number)
            while True:
                try:
                    turn.claim()
                    turn.claimed()
                    time.sleep(0.005 * ((number * 7) % 3))  # the COPY, of uneven length
                    if number % 4 == failing and number not in failed_once:
                        failed_once.add(number)
                        turn.failed()
                        continue
                    turn.committing()
                    turn.committed(lambda n=number: committed.append(n))  # type: ignore[misc]
                    break
                except Restart:
                    continue

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert committed == list(range(12))
