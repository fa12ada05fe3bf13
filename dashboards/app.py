"""The FastAPI application: `create_app(settings)`; its lifespan opens the pools and the command service."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import cast

import psycopg
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from psycopg_pool import AsyncConnectionPool

from dashboards.auth import SessionConfig
from dashboards.commands import CommandService
from dashboards.errors import ERROR_RESPONSES, install_handlers
from dashboards.guards import ConcurrencyCap, LoginGuard
from dashboards.security_headers import SecurityHeaders
from dashboards.types import AConn
from pulsewire import db
from pulsewire.errors import DatabaseError
from pulsewire.settings import Settings
from relay.sse import AlertHub

log = logging.getLogger("pulsewire.dashboards")


def create_app(settings: Settings, *, command_timeout_s: float = 120.0) -> FastAPI:
    """The dashboard app; nothing connects until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.require_database_url()
        if not settings.session_secret:
            app.state.session_config = SessionConfig.create(
                _shared_session_secret(url), settings.cookies_secure()
            )
        # A runaway query is cancelled instead of holding a pooled connection and a core.
        timeout_ms = settings.api_statement_timeout_ms
        pool = db.async_pool(url, min_size=2, max_size=10, name="dashboards", statement_timeout_ms=timeout_ms)
        sync_pool = db.pool(
            url, min_size=1, max_size=4, name="dashboards-sync", statement_timeout_ms=timeout_ms
        )
        await pool.open(wait=False)
        sync_pool.open(wait=False)
        app.state.pool, app.state.sync_pool = pool, sync_pool
        commands = CommandService(
            settings, cast("AsyncConnectionPool[AConn]", pool), timeout_s=command_timeout_s
        )
        app.state.commands = commands
        hub = AlertHub(
            url,
            streams_max=settings.sse_streams_max,
            streams_per_user_max=settings.sse_streams_per_user_max,
        )
        app.state.alert_hub = hub
        try:
            async with commands.running(), hub.running():
                yield
        finally:
            await pool.close()
            sync_pool.close()

    app = FastAPI(
        title="Pulsewire",
        version="1.0.0",
        lifespan=lifespan,
        description="Telemetry and alerts of connected devices, scoped to the caller's org and role.",
    )
    app.state.settings = settings
    app.state.login_guard = LoginGuard(settings)
    app.state.readings_cap = ConcurrencyCap(settings.readings_queries_per_user_max)
    app.state.session_config = SessionConfig.create(settings.session_secret, settings.cookies_secure())
    install_handlers(app)
    _install_metrics(app)
    app.add_middleware(SecurityHeaders)
    _include_routers(app)
    _install_web(app)
    return app


def _shared_session_secret(url: str) -> str | None:
    """The session-signing secret every dashboard process of this database shares, made once.

    Without it each process would sign with its own random key, and a session started on one
    instance behind a load balancer would be refused by the next.
    """
    try:
        with db.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO pulsewire_meta (key, value) VALUES ('session_secret', %s)"
                " ON CONFLICT DO NOTHING",
                (secrets.token_urlsafe(32),),
            )
            row = conn.execute("SELECT value FROM pulsewire_meta WHERE key = 'session_secret'").fetchone()
    except (DatabaseError, psycopg.Error) as exc:
        log.warning("sessions signed with a key of this process only (database unavailable: %s)", exc)
        return None
    return str(row["value"]) if row else None


def _install_web(app: FastAPI) -> None:
    # The web pages (login, fleet, device, inbox) are built on the same queries and auth.
    from dashboards import web

    web.install(app)


def _include_routers(app: FastAPI) -> None:
    from dashboards.api import account, admin, alerts, commands, contact, devices, relay_admin, system

    app.include_router(system.router)
    for module in (account, devices, commands, contact, alerts, relay_admin, admin):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    from dashboards.api import audit, export, pki, quarantine

    for extra in (quarantine, export, audit, pki):
        app.include_router(extra.router, responses=ERROR_RESPONSES)


def _install_metrics(app: FastAPI) -> None:
    # One registry per app, so several apps (tests) in one process do not collide.
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    requests = Counter(
        "pulsewire_http_requests_total",
        "HTTP requests served",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "pulsewire_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_label(request)
            requests.labels(request.method, route, str(status)).inc()
            latency.labels(request.method, route).observe(time.perf_counter() - started)


def _route_label(request: Request) -> str:
    # The route template, not the raw path, so ids do not explode the label set.
    return str(getattr(request.scope.get("route"), "path", "unmatched"))
