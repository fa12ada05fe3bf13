"""One error body for every 4xx/5xx: `{"error": {"code", "message", "details"}}`.

Routes and queries raise `ApiError` (an HTTPException with a machine-readable code);
validation errors, our own `PulsewireError`s and real bugs are mapped here, in one place.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import DataError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulsewire.errors import BrokerError, ConfigError, DatabaseError, PulsewireError, StackError

log = logging.getLogger("pulsewire.dashboards")

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid_input",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    """What went wrong, for people (`message`) and programs (`code`, `details`)."""

    code: str
    message: str
    details: list[dict[str, Any]] | dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(HTTPException):
    """An error the API returns on purpose, with a machine-readable code."""

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


def not_found(what: str) -> ApiError:
    """404: the object does not exist, or belongs to another tenant (never say which)."""
    return ApiError(404, f"{what} not found")


def forbidden(message: str) -> ApiError:
    """403: the caller may see the object but not do this to it."""
    return ApiError(403, message)


def invalid(message: str, *, code: str = "invalid_input", details: Any = None) -> ApiError:
    """422: the request is well-formed but its values make no sense."""
    return ApiError(422, message, code=code, details=details)


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


# What a client is told when a dependency fails. The exception's own text stays in the log: a
# driver's message names hosts, ports, users and file paths.
DATABASE_UNAVAILABLE = "database unavailable"
BROKER_UNAVAILABLE = "broker unavailable"
_UNAVAILABLE: tuple[tuple[type[Exception], str], ...] = (
    (DatabaseError, DATABASE_UNAVAILABLE),
    (psycopg.OperationalError, DATABASE_UNAVAILABLE),
    (psycopg.InterfaceError, DATABASE_UNAVAILABLE),
    (psycopg_pool.PoolTimeout, DATABASE_UNAVAILABLE),
    (BrokerError, BROKER_UNAVAILABLE),
    (StackError, BROKER_UNAVAILABLE),
    (ConfigError, "service misconfigured"),
)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    message = next(m for kind, m in _UNAVAILABLE if isinstance(exc, kind))
    log.warning("%s on %s %s: %s", message, request.method, request.url.path, exc)
    return error_response(503, "unavailable", message)


async def _pulsewire_error(request: Request, exc: Exception) -> JSONResponse:
    if any(isinstance(exc, kind) for kind, _ in _UNAVAILABLE):
        return await _unavailable(request, exc)
    return error_response(422, "invalid_input", str(exc))


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # PostgreSQL refused a value (out-of-range time, NUL byte in text): the input's fault.
    return error_response(422, "invalid_input", f"invalid value: {str(exc).splitlines()[0]}")


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    # A real bug: log it with its traceback; the client learns nothing internal.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_handlers(app: FastAPI) -> None:
    """Route every error through the one body shape."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Also under FastAPI's subclass, so the web pages can wrap it (HTML for browsers, JSON for /api).
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PulsewireError, _pulsewire_error)
    for kind in (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout):
        app.add_exception_handler(kind, _unavailable)
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
