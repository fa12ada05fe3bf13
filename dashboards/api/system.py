"""Health, readiness and Prometheus metrics (outside /api/v1, no auth)."""

from __future__ import annotations

import psycopg
import psycopg_pool
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from dashboards.errors import ErrorBody, error_response

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> Health | Response:
    """The database answers."""
    pool: psycopg_pool.AsyncConnectionPool = request.app.state.pool
    try:
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
        return error_response(503, "unavailable", f"database unreachable: {exc}")
    return Health(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: request counts and latency."""
    body = generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
