"""Quarantine replay (admins only): hand quarantined messages back to ingest once the cause is gone.

The rows are republished through the broker as the service login (see `pulsewire.quarantine`), so
ingest validates them exactly as live messages and deduplicates them by `ingest_log`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from dashboards.api import API_PREFIX
from dashboards.deps import Conn, CurrentPrincipal
from dashboards.queries import audit, require_role
from pulsewire.quarantine import ReplayReport, replay_quarantine
from pulsewire.settings import Settings

router = APIRouter(prefix=API_PREFIX, tags=["admin"])
Text = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class QuarantineReplay(BaseModel):
    """Which rows to replay: those not replayed yet, of this reason and device (both optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: Text | None = Field(default=None, description="e.g. unregistered_device")
    device_id: Text | None = None


class ReplayCount(BaseModel):
    count: int
    ids: list[int]


class QuarantineReplayed(BaseModel):
    """What a replay did; `truncated` rows kept only a payload prefix and cannot be replayed."""

    replayed: ReplayCount
    truncated: ReplayCount
    not_device_topic: ReplayCount
    no_subscriber: ReplayCount = Field(description="no ingest worker subscribed: left pending")


@router.post("/quarantine/replay")
async def replay(
    request: Request, principal: CurrentPrincipal, conn: Conn, body: QuarantineReplay
) -> QuarantineReplayed:
    """Republish pending quarantined messages for ingest to validate again (admins only)."""
    require_role(principal, ("admin",), "replay the quarantine")
    state: Any = request.app.state
    settings: Settings = state.settings
    pool: ConnectionPool[Any] = state.sync_pool

    def run() -> ReplayReport:
        # Synchronous (psycopg + paho); a worker thread with its own pooled connection.
        with pool.connection() as sync_conn:
            return replay_quarantine(sync_conn, settings.mqtt(), reason=body.reason, device_id=body.device_id)

    report = await run_in_threadpool(run)
    details = {"reason": body.reason, "device_id": body.device_id, "replayed": len(report.replayed)}
    await audit(conn, principal, "quarantine.replay", "quarantine", body.reason or "*", details=details)
    return QuarantineReplayed.model_validate(report.to_json())
