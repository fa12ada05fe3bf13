"""Commands to devices over MQTT 5, and the listener that follows their replies.

A command is stored first (`pending`), then published on `pw/v1/dev/{id}/cmd` with the command id as
correlation data and `pw/v1/dev/{id}/cmd/reply` as response topic. Replies move it forward only:
an interim reply `{"status": "ok", "data": {"state": "acknowledged"}}` → `acknowledged`; a final
`ok` → `done`, `error` → `failed`. The sweeper marks commands without a final reply `timed_out`.
Every dashboard instance listens through one shared subscription, so each reply is handled once.

Each device takes at most `command_limit_per_device` commands in any `command_limit_window_s`
(a moving window). The count is of the device's rows in `commands`, taken under a per-device
transaction lock in the same transaction as the insert: every dashboard process shares it, it
survives restarts, and two concurrent sends cannot both take the last slot. An in-process limiter
(`limits` with memory storage) would give N processes N budgets and forget them on every deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import psycopg
import psycopg_pool
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from dashboards.queries import PageRequest
from dashboards.types import AConn, Row
from pulsewire.errors import BrokerError, Conflict, RateLimited
from pulsewire.mqtt import Backoff, ConnectOptions, aiomqtt_client
from pulsewire.settings import Settings
from schemas import topics
from schemas.payloads import CommandReply, CommandRequest

log = logging.getLogger("pulsewire.dashboards.commands")
REPLY_FILTER = topics.command_reply_filter("pulsewire-dashboards")  # each reply to one dashboard
_RECONNECT = Backoff(first_s=0.5, max_s=10.0)
OPEN_STATES = ["pending", "sent", "acknowledged"]
_COLUMNS = """command_id, device_id, name, args, status, detail, result, requested_by, created_at,
    sent_at, acked_at, finished_at"""
_LOCK_CLASS = 0x50574331  # advisory lock namespace of command admission ("PWC1"), keyed by device
_RECENT = """
SELECT count(*) AS n,
       ceil(extract(epoch FROM min(created_at) + make_interval(secs => %(window_s)s) - now()))::int
           AS retry_after_s
FROM (SELECT created_at FROM commands
      WHERE device_id = %(device_id)s AND created_at > now() - make_interval(secs => %(window_s)s)
      ORDER BY created_at DESC LIMIT %(limit)s) AS recent
"""
BROKER_UNAVAILABLE = "broker unavailable, command not sent"


class DeviceDecommissioned(Conflict):
    """The device was decommissioned: it takes no more commands."""

    code = "decommissioned"


class CommandLimitReached(RateLimited):
    """The device's command budget for the window is spent; `retry_after_s` says when one frees up."""


class CommandService:
    """Publishes commands and keeps their status current from the devices' replies."""

    def __init__(
        self, settings: Settings, pool: psycopg_pool.AsyncConnectionPool[AConn], *, timeout_s: float = 120.0
    ) -> None:
        self._settings = settings
        self._pool = pool
        self.timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CommandService]:
        """Run the reply listener and the timeout sweeper for the duration of the block."""
        tasks = [
            asyncio.create_task(self._listen(), name="command-replies"),
            asyncio.create_task(self._sweep(), name="command-sweeper"),
        ]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def broker_ready(self, timeout_s: float) -> bool:
        """Whether the reply listener is connected to the broker (waiting up to `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def send(self, device_id: str, name: str, args: dict[str, Any], user_id: int) -> Row:
        """Store and publish a command.

        DeviceDecommissioned or CommandLimitReached before anything is stored; BrokerError (after
        marking the command failed) when the broker is away.
        """
        command_id = uuid.uuid4().hex
        async with self._pool.connection() as conn, conn.transaction():
            await self._admit(conn, device_id)
            await conn.execute(
                """INSERT INTO commands (command_id, device_id, name, args, requested_by)
                   VALUES (%s, %s, %s, %s, %s)""",
                (command_id, device_id, name, Jsonb(args), user_id),
            )
        request = CommandRequest(
            command_id=command_id,
            name=name,
            args=args,
            sent_at=datetime.now(UTC),
        )
        try:
            await self._publish(device_id, command_id, request.model_dump_json(by_alias=True))
        except BrokerError:
            await self._finish(command_id, "failed", BROKER_UNAVAILABLE)
            raise
        async with self._pool.connection() as conn:
            # A fast device may have replied already: only a pending command becomes `sent`.
            await conn.execute(
                """UPDATE commands SET sent_at = now(),
                       status = CASE WHEN status = 'pending' THEN 'sent' ELSE status END
                   WHERE command_id = %s""",
                (command_id,),
            )
            return await _get(conn, command_id)

    async def _admit(self, conn: AConn, device_id: str) -> None:
        # Serialise admissions per device across processes until this transaction ends.
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, device_id))
        cur = await conn.execute("SELECT decommissioned_at FROM devices WHERE device_id = %s", (device_id,))
        device = await cur.fetchone()
        if device is None or device["decommissioned_at"] is not None:
            raise DeviceDecommissioned(f"device {device_id!r} is decommissioned and takes no commands")
        limit, window_s = self._settings.command_limit_per_device, self._settings.command_limit_window_s
        cur = await conn.execute(_RECENT, {"device_id": device_id, "window_s": window_s, "limit": limit})
        recent = await cur.fetchone()
        if recent is not None and recent["n"] >= limit:
            raise CommandLimitReached(
                f"device {device_id!r} has had {limit} commands in the last {window_s} s; try again later",
                retry_after_s=max(1, int(recent["retry_after_s"] or 1)),
            )

    async def _publish(self, device_id: str, command_id: str, payload: str) -> None:
        try:
            async with asyncio.timeout(3):
                await self._connected.wait()
                client = self._client
                if client is None:
                    raise BrokerError("not connected")
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.CorrelationData = command_id.encode()
                props.ResponseTopic = topics.command_reply(device_id)
                await client.publish(topics.command(device_id), payload, qos=1, properties=props)
        except (TimeoutError, aiomqtt.MqttError, BrokerError) as exc:
            # The library's text may name the broker's host and port: the log gets it, callers don't.
            log.warning("command %s to %s not sent: %s", command_id, device_id, exc or "timeout")
            raise BrokerError(BROKER_UNAVAILABLE) from exc

    async def _listen(self) -> None:
        target = self._settings.mqtt()
        delays = _RECONNECT.delays()
        while True:
            options = ConnectOptions.from_target(target, f"pw-dash-{uuid.uuid4().hex[:12]}")
            try:
                async with aiomqtt_client(options) as client:
                    await client.subscribe(REPLY_FILTER, qos=1)
                    self._client, delays = client, _RECONNECT.delays()
                    self._connected.set()
                    async for message in client.messages:
                        await self._on_reply(str(message.topic), message.payload, message.properties)
            except aiomqtt.MqttError as exc:
                delay = next(delays)
                log.warning("command listener lost the broker (%s); retrying in %.1fs", exc, delay)
            else:
                delay = next(delays)
            finally:
                self._client = None
                self._connected.clear()
            await asyncio.sleep(delay)

    async def _on_reply(self, topic: str, payload: Any, properties: Properties | None) -> None:
        device_id = topics.parse_command_reply(topic) or ""
        try:
            reply = CommandReply.model_validate_json(payload if isinstance(payload, bytes | str) else b"")
        except ValidationError as exc:
            log.warning("bad command reply on %s: %s", topic, exc.errors()[:1])
            return
        correlation = getattr(properties, "CorrelationData", None)
        if correlation is not None and correlation != reply.command_id.encode():
            log.warning("command reply on %s: correlation data does not match %s", topic, reply.command_id)
            return
        try:
            await self._apply_reply(device_id, reply)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            log.warning("cannot record command reply %s: %s", reply.command_id, exc)

    async def _apply_reply(self, device_id: str, reply: CommandReply) -> None:
        async with self._pool.connection() as conn:
            if reply.status == "ok" and reply.data.get("state") == "acknowledged":
                await conn.execute(
                    """UPDATE commands SET status = 'acknowledged', acked_at = now()
                       WHERE command_id = %s AND device_id = %s AND status IN ('pending', 'sent')""",
                    (reply.command_id, device_id),
                )
                return
            await conn.execute(
                """UPDATE commands SET status = %s, detail = %s, result = %s, finished_at = now(),
                       acked_at = coalesce(acked_at, now())
                   WHERE command_id = %s AND device_id = %s AND status = ANY(%s)""",
                (
                    "done" if reply.status == "ok" else "failed",
                    reply.detail,
                    Jsonb(reply.data),
                    reply.command_id,
                    device_id,
                    OPEN_STATES,
                ),
            )

    async def _finish(self, command_id: str, status: str, detail: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE commands SET status = %s, detail = %s, finished_at = now() WHERE command_id = %s",
                (status, detail, command_id),
            )

    async def _sweep(self) -> None:
        interval = max(0.2, min(5.0, self.timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._pool.connection() as conn:
                    await conn.execute(
                        """UPDATE commands SET status = 'timed_out', finished_at = now(),
                               detail = 'no reply within ' || %s || ' s'
                           WHERE status = ANY(%s) AND created_at < now() - make_interval(secs => %s)""",
                        (str(int(self.timeout_s)), OPEN_STATES, self.timeout_s),
                    )
            except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
                log.warning("command sweeper: database unavailable (%s)", exc)


async def list_commands(conn: AConn, device_id: str, page: PageRequest) -> list[Row]:
    """A device's commands, newest first (the caller has checked the device is visible)."""
    cur = await conn.execute(
        f"""SELECT {_COLUMNS} FROM commands WHERE device_id = %s
            ORDER BY created_at DESC LIMIT %s OFFSET %s""",
        (device_id, page.limit, page.offset),
    )
    return await cur.fetchall()


async def get_command(conn: AConn, device_id: str, command_id: str) -> Row | None:
    """One command of a device, or None."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE command_id = %s AND device_id = %s", (command_id, device_id)
    )
    return await cur.fetchone()


async def _get(conn: AConn, command_id: str) -> Row:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM commands WHERE command_id = %s", (command_id,))
    row = await cur.fetchone()
    assert row is not None, "a command we just stored is gone"
    return row
