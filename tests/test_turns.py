"""The evaluator threads of one worker share one question to the database per notification."""

from __future__ import annotations

import threading
import time

from relay.turns import Turns


def _run(turns: Turns, ask: list[list[str]], threads: int, seconds: float) -> tuple[list[str], int, int]:
    """Evaluator threads that take devices until stopped; returns what they took, asks and overlaps."""
    taken: list[str] = []
    asks = 0
    holding: set[str] = set()
    overlaps = 0
    lock = threading.Lock()

    def answer() -> list[str]:
        nonlocal asks
        with lock:
            asks += 1
            return ask.pop(0) if ask else []

    def loop() -> None:
        nonlocal overlaps
        while (device := turns.take(answer, poll_s=10.0)) is not None or not stop.is_set():
            if device is None:
                continue
            with lock:
                overlaps += device in holding
                holding.add(device)
                taken.append(device)
            time.sleep(0.02)  # evaluating
            with lock:
                holding.discard(device)
            turns.done(device)

    stop = threading.Event()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    turns.close()
    for w in workers:
        w.join(5)
    assert not any(w.is_alive() for w in workers), "close() must wake every thread"
    return taken, asks, overlaps


def test_one_notification_costs_one_question_however_many_threads() -> None:
    turns = Turns()
    assert turns.take(list, poll_s=0) is None  # the start-up round: count only the notifications
    answers = [["d1"], ["d2"], ["d3"]]
    threads = []
    for _ in range(3):
        threads.append(threading.Timer(0.1 + 0.1 * len(threads), turns.signal))
    for t in threads:
        t.start()
    taken, asks, overlaps = _run(turns, answers, threads=4, seconds=0.6)
    assert taken == ["d1", "d2", "d3"]
    assert asks == 3, f"{asks} questions for 3 notifications"
    assert overlaps == 0


def test_a_round_of_several_devices_is_shared_and_no_device_goes_to_two_threads() -> None:
    turns = Turns()
    answers = [["a", "b", "c", "d"], ["a", "e"]]  # the second answer repeats "a", maybe still held
    taken, asks, overlaps = _run(turns, answers, threads=2, seconds=0.3)
    assert sorted(taken[:4]) == ["a", "b", "c", "d"]
    assert overlaps == 0
    assert asks <= 3


def test_without_notifications_the_threads_still_ask_after_the_poll_period() -> None:
    turns = Turns()
    assert turns.take(list, poll_s=0) is None  # the start-up round
    asked = threading.Event()

    def answer() -> list[str]:
        asked.set()
        return []

    worker = threading.Thread(target=lambda: turns.take(answer, poll_s=0.05))
    worker.start()
    assert asked.wait(2), "a lost notification must not leave queued work behind"
    worker.join(2)
    turns.close()
    assert turns.take(answer, poll_s=10.0) is None
