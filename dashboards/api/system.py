"""Health, readiness and Prometheus metrics (outside /api/v1, no auth)."""

from __future__ import annotations

import logging

import psycopg
import psycopg_pool
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from dashboards.commands import CommandService
from dashboards.errors import BROKER_UNAVAILABLE, DATABASE_UNAVAILABLE, ErrorBody, error_response

log = logging.getLogger("pulsewire.dashboards")
router = APIRouter(tags=["system"])
_CHECK_TIMEOUT_S = 2.0


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> Health | Response:
    """The database answers and the broker is connected; a 503 names each one that is not."""
    failed = [
        message
        for ok, message in (
            (await _database_ready(request), DATABASE_UNAVAILABLE),
            (await _broker_ready(request), BROKER_UNAVAILABLE),
        )
        if not ok
    ]
    if failed:
        return error_response(503, "unavailable", ", ".join(failed), details={"failed": failed})
    return Health(status="ready")


async def _database_ready(request: Request) -> bool:
    pool: psycopg_pool.AsyncConnectionPool = request.app.state.pool
    try:
        async with pool.connection(timeout=_CHECK_TIMEOUT_S) as conn:
            await conn.execute("SELECT 1")
    except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
        log.warning("readyz: database unavailable: %s", exc)  # the text names hosts: log only
        return False
    return True


async def _broker_ready(request: Request) -> bool:
    commands: CommandService = request.app.state.commands
    return await commands.broker_ready(_CHECK_TIMEOUT_S)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: request counts and latency."""
    body = generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
