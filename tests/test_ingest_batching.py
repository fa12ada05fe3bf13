"""Group commit: a message that arrives while the writer commits waits for that commit, not a timer.

Its own module: an ingest worker of another share group would store the same messages on its own
schedule and hide the one measured here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from ingest.validate import Validated
from ingest.writer import BatchOutcome
from pulsewire.settings import Settings
from tests.fix_db import World
from tests.ingest_support import Publisher, running_ingest, telemetry, wait_for

Conn = psycopg.Connection[dict[str, Any]]
SLOW_COMMIT_S = 0.8
FLUSH_S = 4.0  # a batch's timer while the writer is busy: far longer than the slow commit


def _stored(conn: Conn, device_id: str, seq: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM ingest_log WHERE device_id = %s AND seq = %s", (device_id, seq)
    ).fetchone()
    return row is not None


@pytest.mark.parametrize("writers", [1, 2])
def test_a_message_that_arrives_during_a_commit_goes_with_the_next_one(
    world: World, settings: Settings, conn: Conn, writers: int
) -> None:
    """With one writer, the message goes when the commit ends; with two, the idle one takes it at
    once and commits it right after the slow one (batches commit in order)."""
    world.add_device(f"veh-batching-{writers}", "vehicle")
    device = f"veh-batching-{writers}"
    flush_ms = int(FLUSH_S * 1000)
    with running_ingest(settings, "batching", flush_interval_ms=flush_ms, ingest_writers=writers) as service:
        calls: list[float] = []
        for writer in service._writers:

            def slow_first(
                items: Sequence[Validated], payloads: Sequence[bytes] | None = None, *,
                _write: Any = writer.write, **order: Any,
            ) -> BatchOutcome:  # fmt: skip
                calls.append(time.monotonic())
                if len(calls) == 1:
                    time.sleep(SLOW_COMMIT_S)  # a writer is busy with the first batch meanwhile
                return _write(items, payloads, **order)  # type: ignore[no-any-return]

            writer.write = slow_first  # type: ignore[method-assign]
        with Publisher(settings.mqtt()) as pub:
            pub.publish_all([telemetry(device, 0, [("rpm", 800.0)])])
            wait_for(lambda: calls, 5, "the first batch in the writer")
            pub.publish_all([telemetry(device, 1, [("rpm", 810.0)])])
            sent = time.monotonic()
            wait_for(lambda: _stored(conn, device, 1), FLUSH_S + 5, "the second message")
            waited = time.monotonic() - sent
    assert _stored(conn, device, 0)
    # It went when the slow commit ended (at most SLOW_COMMIT_S after it was sent), not when its
    # batch's timer ran out (FLUSH_S).
    assert waited < SLOW_COMMIT_S + 1.5 < FLUSH_S, f"{waited:.2f} s"
