"""A worker's evaluator threads: one question to the database per notification, one thread per
device, and a thread always free for devices with events."""

from __future__ import annotations

import threading
import time

from relay.engine import Due
from relay.turns import Turns


class _Evaluators:
    """Evaluator threads taking devices from `turns`, each evaluation taking `seconds[device]`."""

    def __init__(
        self,
        turns: Turns,
        answers: list[list[Due]],
        threads: int,
        seconds: dict[str, float],
        ask_s: float = 0.0,
    ) -> None:
        self.turns, self.answers, self.seconds, self.ask_s = turns, answers, seconds, ask_s
        self.asks = 0
        self.started: dict[str, float] = {}
        self.runs: list[str] = []
        self.holding: set[str] = set()
        self.overlaps = 0
        self.most_readings = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def _answer(self) -> list[Due]:
        time.sleep(self.ask_s)
        with self._lock:
            self.asks += 1
            return self.answers.pop(0) if self.answers else []

    def _loop(self) -> None:
        while not self._stop.is_set():
            device = self.turns.take(self._answer, poll_s=10.0)
            if device is None:
                continue
            with self._lock:
                self.overlaps += device in self.holding
                self.holding.add(device)
                self.runs.append(device)
                self.started.setdefault(device, time.monotonic() - self.t0)
                self.most_readings = max(self.most_readings, sum(d.startswith("r") for d in self.holding))
            time.sleep(self.seconds.get(device, 0.02))
            with self._lock:
                self.holding.discard(device)
            self.turns.done(device)

    def stop(self) -> None:
        self._stop.set()
        self.turns.close()
        for t in self._threads:
            t.join(5)
        assert not any(t.is_alive() for t in self._threads), "close() must wake every thread"


def _quiet(threads: int) -> Turns:
    turns = Turns(threads)
    assert turns.take(list, poll_s=0) is None  # the start-up round: count only what follows
    return turns


def test_one_notification_costs_one_question_however_many_threads() -> None:
    turns = _quiet(4)
    answers = [[Due("e1", True)], [Due("e2", True)], [Due("e3", True)]]
    run = _Evaluators(turns, answers, threads=4, seconds={})
    for _ in range(3):
        time.sleep(0.1)
        turns.signal()
    time.sleep(0.2)
    run.stop()
    assert list(run.started) == ["e1", "e2", "e3"]
    assert run.asks == 3, f"{run.asks} questions for 3 notifications"
    assert run.overlaps == 0


def test_no_device_goes_to_two_threads_and_a_round_is_shared() -> None:
    turns = Turns(3)
    answers = [[Due(d, True) for d in "abcd"], [Due("a", True), Due("e", True)]]
    run = _Evaluators(turns, answers, threads=3, seconds={"a": 0.3})
    time.sleep(0.05)
    turns.signal()  # asked while "a" is still being evaluated: it is not handed out again
    time.sleep(0.4)
    run.stop()
    assert sorted(run.started) == ["a", "b", "c", "d", "e"]
    assert run.overlaps == 0


def test_an_event_never_waits_for_readings_being_evaluated() -> None:
    turns = _quiet(2)
    answers = [[Due("r1", False), Due("r2", False)], [Due("r2", False), Due("e1", True)]]
    run = _Evaluators(turns, answers, threads=2, seconds={"r1": 0.5, "r2": 0.5})
    turns.signal()
    time.sleep(0.1)  # r1 is being evaluated; r2 waits: the second thread is kept for events
    turns.signal()  # e1 arrives
    time.sleep(0.2)
    started = dict(run.started)
    time.sleep(0.5)
    run.stop()
    assert "e1" in started and started["e1"] < 0.2, f"the event waited: {started}"
    assert run.most_readings == 1, "with two threads, one is kept free for events"
    assert sorted(run.started) == ["e1", "r1", "r2"]


def test_devices_a_notification_names_go_out_before_the_question_is_answered() -> None:
    turns = _quiet(3)
    run = _Evaluators(turns, [[Due("r1", False)]], threads=3, seconds={}, ask_s=0.3)
    turns.signal(["e1", "e2"])  # ingest's notification names the devices that sent events
    time.sleep(0.5)
    run.stop()
    assert run.started["e1"] < 0.1 and run.started["e2"] < 0.1, f"they waited for the question: {run.started}"
    assert run.started["r1"] >= 0.3, "the rest is found by asking"
    assert run.asks == 1 and run.overlaps == 0


def test_a_busy_device_with_new_events_goes_again_as_soon_as_it_is_done() -> None:
    turns = _quiet(2)
    run = _Evaluators(turns, [], threads=2, seconds={"e1": 0.3})
    turns.signal(["e1"])
    time.sleep(0.1)
    turns.signal(["e1"])  # new events while e1 is being evaluated: not a second thread, but again after
    time.sleep(0.6)
    run.stop()
    assert run.runs == ["e1", "e1"], run.runs
    assert run.overlaps == 0


def test_named_devices_never_keep_the_rest_from_being_asked_for() -> None:
    # Org A's devices fill every notification, faster than the one thread evaluates them; org B's
    # device, named by none (a notification holds so many), is found by asking, and the answer's
    # order (tenants taking turns) goes before everything named earlier.
    turns = _quiet(1)
    run = _Evaluators(turns, [[Due("b1", True)]], threads=1, seconds={})
    for n in range(15):
        turns.signal([f"a{n}"])
        time.sleep(0.01)
    time.sleep(0.5)
    run.stop()
    assert run.started["b1"] < 0.1, f"b1 waited behind the named devices: {run.runs}"
    assert sorted(run.runs) == sorted(["b1", *(f"a{n}" for n in range(15))]) and run.overlaps == 0


def test_a_device_waiting_for_its_readings_goes_at_once_when_named_with_events() -> None:
    turns = _quiet(2)  # one thread for readings, one kept for events
    answers = [[Due("r1", False), Due("r2", False)]]
    run = _Evaluators(turns, answers, threads=2, seconds={"r1": 0.4})
    turns.signal()
    time.sleep(0.1)  # r1 holds the readings thread; r2 waits for it
    turns.signal(["r2"])  # r2 sent an event
    time.sleep(0.1)
    started = dict(run.started)
    run.stop()
    assert "r2" in started, f"r2 waited for the readings thread: {run.runs}"


def test_under_a_backlog_the_question_waits_for_the_answer_to_be_used_up() -> None:
    # Notifications keep coming while the answer's devices are evaluated: asking at every one would
    # cost a question per evaluation just when the queue is longest.
    turns = _quiet(1)
    answers = [[Due(f"d{n}", True) for n in range(5)], [Due("later", True)]]
    run = _Evaluators(turns, answers, threads=1, seconds={f"d{n}": 0.05 for n in range(5)})
    turns.signal()
    for _ in range(8):  # all within the 250 ms the answer's five devices take
        time.sleep(0.015)
        turns.signal()
    time.sleep(0.5)
    run.stop()
    assert run.runs == [*(f"d{n}" for n in range(5)), "later"], run.runs
    assert run.asks <= 3, f"{run.asks} questions for one answer of five devices"


def test_without_notifications_the_threads_still_ask_after_the_poll_period() -> None:
    turns = _quiet(2)
    asked = threading.Event()

    def answer() -> list[Due]:
        asked.set()
        return []

    worker = threading.Thread(target=lambda: turns.take(answer, poll_s=0.05))
    worker.start()
    assert asked.wait(2), "a lost notification must not leave queued work behind"
    worker.join(2)
    turns.close()
    assert turns.take(answer, poll_s=10.0) is None
