"""One error body for every 4xx/5xx: `{"error": {"code", "message", "details"}}`.

Data and domain code raises `pulsewire.errors`; `STATUS` below is the one table from error class
to status, code and (for errors whose text may name hosts) the message a client gets. A class
without a row of its own takes its nearest ancestor's. Route modules may raise `ApiError` for what
only HTTP knows (credentials, CSRF); validation errors and real bugs are answered here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulsewire.errors import (
    BrokerError,
    ConfigError,
    Conflict,
    DatabaseError,
    Forbidden,
    InvalidInput,
    NotFound,
    PulsewireError,
    QueryTimeout,
    RateLimited,
    RegistryError,
    StackError,
    Unavailable,
)

log = logging.getLogger("pulsewire.dashboards")

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
}
# What a client is told when a dependency fails. The exception's own text stays in the log: a
# driver's message names hosts, ports, users and file paths.
DATABASE_UNAVAILABLE = "database unavailable"
BROKER_UNAVAILABLE = "broker unavailable"


@dataclass(frozen=True)
class Status:
    """How the API answers one kind of error."""

    status: int
    code: str
    message: str | None = None  # said instead of the error's own text, which may name hosts


STATUS: dict[type[PulsewireError], Status] = {
    NotFound: Status(404, "not_found"),
    Conflict: Status(409, "conflict"),
    InvalidInput: Status(422, "invalid_input"),
    Forbidden: Status(403, "forbidden"),
    RateLimited: Status(429, "rate_limited"),
    Unavailable: Status(503, "unavailable"),
    DatabaseError: Status(503, "unavailable", DATABASE_UNAVAILABLE),
    QueryTimeout: Status(503, "query_timeout"),  # its text says what to do, and names nothing
    BrokerError: Status(503, "unavailable", BROKER_UNAVAILABLE),
    StackError: Status(503, "unavailable", BROKER_UNAVAILABLE),
    ConfigError: Status(503, "unavailable", "service misconfigured"),
    RegistryError: Status(422, "invalid_input"),  # its subclasses say more: not found, duplicate
    # The documented default: an error raised on purpose but of no kind above is our bug.
    PulsewireError: Status(500, "internal_error", "internal server error"),
}


@dataclass(frozen=True)
class Answer:
    """The response an error gets: status, body fields and headers."""

    status: int
    code: str
    message: str
    details: Any
    headers: dict[str, str] | None


def status_of(kind: type[PulsewireError]) -> Status:
    """The row of `STATUS` for an error class: its own, or its nearest ancestor's."""
    return next(STATUS[k] for k in kind.__mro__ if k in STATUS)


def answer_for(exc: PulsewireError) -> Answer:
    """How the API (and the web pages) answer this error."""
    row = status_of(type(exc))
    retry = getattr(exc, "retry_after_s", None)
    return Answer(
        status=row.status,
        code=exc.code or row.code,
        message=row.message or str(exc),
        details=exc.details,
        headers={"Retry-After": str(retry)} if retry is not None else None,
    )


class ErrorDetail(BaseModel):
    """What went wrong, for people (`message`) and programs (`code`, `details`)."""

    code: str
    message: str
    details: list[dict[str, Any]] | dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(HTTPException):
    """An error only the HTTP layer knows (credentials, CSRF, caps), with a machine-readable code."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code or _DEFAULT_CODES.get(status_code, "error")
        self.details = details


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON response in the one error shape."""
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = getattr(exc, "code", None) or _DEFAULT_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(
        exc.status_code,
        code,
        message,
        getattr(exc, "details", None),
        dict(exc.headers) if exc.headers else None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"])
    return error_response(422, "invalid_input", f"{where}: {message}" if where else message, details)


async def _pulsewire_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PulsewireError)
    answer = answer_for(exc)
    if answer.status >= 500:
        log.warning("%s on %s %s: %r", answer.message, request.method, request.url.path, exc)
    return error_response(answer.status, answer.code, answer.message, answer.details, answer.headers)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    # A real bug: log it with its traceback; the client learns nothing internal.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_handlers(app: FastAPI) -> None:
    """Route every error through the one body shape."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Also under FastAPI's subclass, so the web pages can wrap it (HTML for browsers, JSON for /api).
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PulsewireError, _pulsewire_error)
    app.add_exception_handler(Exception, _bug)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "missing or invalid credentials"),
        (403, "not allowed for this role"),
        (404, "not found (or another tenant's)"),
        (422, "invalid input"),
    )
}
