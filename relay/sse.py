"""Live alert views for the dashboards' SSE streams: one LISTEN per process, fanned out in memory.

Alert writes notify `pulsewire_alerts` inside their transaction (delivered at commit) with the
alert id, its orgs and class. An `AlertHub` holds the process's one listening connection (and one
to read with), keeps the notifications some subscriber may see (`relay.visibility`), reads the
alert once and hands each subscriber its own view of it, so nothing a viewer may not see ever
leaves the database for it. However many streams are open, the hub holds two connections.

Each subscriber has a bounded queue: one too slow to keep up is ended (its client reconnects)
instead of growing memory. When the connection is lost every subscriber is ended too, since
notifications sent meanwhile are gone; the hub reconnects by itself with capped backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pulsewire.errors import RateLimited
from pulsewire.wire import ALERTS_CHANNEL
from relay.views import ALERT_SELECT, view_as
from relay.visibility import Viewer, may_see

log = logging.getLogger("pulsewire.relay.sse")

Item = dict[str, Any]
READY: Item = {"event": "ready", "alert": None}
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 10.0
_RETRY_AFTER_S = 30  # what a refused stream is told: long enough for a closed tab's stream to end


class StreamLimitReached(RateLimited):
    """A new stream would exceed the per-user or the overall cap."""

    code = "too_many_streams"


class Subscription:
    """One stream's feed: `await get()` gives `READY`, then `{"event", "alert"}` items; None at the end."""

    def __init__(self, hub: AlertHub, user_id: int, viewer: Viewer, queue_max: int) -> None:
        self.user_id, self.viewer = user_id, viewer
        self._hub = hub
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=queue_max)
        self.ended = False

    async def get(self) -> Item | None:
        """The next item, or None once the subscription has ended."""
        return await self._queue.get()

    def close(self) -> None:
        """Leave the hub (idempotent): the stream is over."""
        self._hub._remove(self)

    def _offer(self, item: Item) -> None:
        if self.ended:
            return
        if self._queue.full():  # too slow: end it rather than buffer without bound
            self._end()
            self.close()
            return
        self._queue.put_nowait(item)

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        while not self._queue.empty():  # the end marker must fit; what it replaces is moot now
            self._queue.get_nowait()
        self._queue.put_nowait(None)


async def _connect(database_url: str) -> psycopg.AsyncConnection[Item]:
    # A listener on a silently dead network would wait forever: TCP keepalives notice instead.
    return await psycopg.AsyncConnection.connect(
        database_url,
        autocommit=True,
        row_factory=dict_row,
        connect_timeout=10,
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
    )


class AlertHub:
    """The process's alert feed: one LISTEN connection shared by every subscriber, with caps."""

    def __init__(
        self,
        database_url: str,
        *,
        streams_max: int = 500,
        streams_per_user_max: int = 5,
        queue_max: int = 100,
    ) -> None:
        self._url = database_url
        self._streams_max = streams_max
        self._per_user_max = streams_per_user_max
        self._queue_max = queue_max
        self._subs: set[Subscription] = set()
        self._per_user: dict[int, int] = {}
        self.listening = False

    def subscribe(self, user_id: int, viewer: Viewer) -> Subscription:
        """A new feed of the alerts `viewer` sees; StreamLimitReached beyond either cap."""
        if len(self._subs) >= self._streams_max:
            raise StreamLimitReached(
                f"this server has its maximum of {self._streams_max} live streams open",
                retry_after_s=_RETRY_AFTER_S,
            )
        if self._per_user.get(user_id, 0) >= self._per_user_max:
            raise StreamLimitReached(
                f"at most {self._per_user_max} live streams per user: close another tab or stream first",
                retry_after_s=_RETRY_AFTER_S,
            )
        sub = Subscription(self, user_id, viewer, self._queue_max)
        self._subs.add(sub)
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        if self.listening:
            sub._offer(READY)
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        left = self._per_user[sub.user_id] - 1
        if left:
            self._per_user[sub.user_id] = left
        else:
            del self._per_user[sub.user_id]

    @property
    def open_streams(self) -> int:
        """How many subscriptions are open."""
        return len(self._subs)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AlertHub]:
        """Listen in a background task while the block runs; every subscriber ends with it."""
        task = asyncio.create_task(self._run(), name="alert-hub")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._end_all()

    async def _run(self) -> None:
        delay = _BACKOFF_MIN_S
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                log.warning("alert feed lost (%s): reconnecting", type(exc).__name__)
            except Exception:
                # A bug must not end live alerts for the whole process: log it, start over.
                log.exception("alert feed failed: reconnecting")
            # A feed that was up starts again quickly; one that cannot connect backs off.
            delay = _BACKOFF_MIN_S if self.listening else min(delay * 2, _BACKOFF_MAX_S)
            self._end_all()
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        # Two connections: the notifies generator holds its connection while it runs.
        listener = await _connect(self._url)
        async with listener, await _connect(self._url) as reader:
            await listener.execute(f"LISTEN {ALERTS_CHANNEL}")
            self.listening = True
            for sub in list(self._subs):
                sub._offer(READY)
            async for note in listener.notifies():
                await self._dispatch(reader, note.payload)

    async def _dispatch(self, reader: psycopg.AsyncConnection[Item], payload: str) -> None:
        try:
            note = json.loads(payload)
            alert_id = int(note["alert_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed alert notification")
            return
        targets = [s for s in self._subs if may_see(s.viewer, note)]
        if not targets:
            return
        cur = await reader.execute(ALERT_SELECT + " WHERE a.alert_id = %s", (alert_id,))
        row = await cur.fetchone()
        if row is None:
            return
        views = {viewer: view_as(viewer, row) for viewer in {s.viewer for s in targets}}
        for sub in targets:
            view = views[sub.viewer]
            if view is not None:
                sub._offer({"event": note.get("event"), "alert": view})

    def _end_all(self) -> None:
        self.listening = False
        for sub in list(self._subs):
            sub._end()
            sub.close()


async def subscribe(database_url: str, viewer: Viewer) -> AsyncIterator[Item]:
    """One feed with a hub of its own (tools, tests); the dashboard shares one `AlertHub` instead.

    The first item is `{"event": "ready", "alert": None}`, once LISTEN is in place: every alert that
    commits after it is delivered, so a client can tell "connected" from "listening".
    """
    async with AlertHub(database_url).running() as hub:
        sub = hub.subscribe(0, viewer)
        try:
            while (item := await sub.get()) is not None:
                yield item
        finally:
            sub.close()
