"""Commands to a device (provider staff and admins): send and follow."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from dashboards import commands
from dashboards.api import API_PREFIX
from dashboards.api.common import page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging
from dashboards.errors import ErrorBody
from dashboards.models import CommandCreate, CommandPublic, Page
from dashboards.queries import audit, require_role, visible_device
from dashboards.types import AConn, Principal, Row
from pulsewire.errors import InvalidInput, NotFound
from schemas.commands import COMMANDS

router = APIRouter(prefix=API_PREFIX, tags=["commands"])
_ROLES = ("admin", "provider_staff")


async def _commandable(conn: AConn, p: Principal, device_id: str, action: str) -> Row:
    device = await visible_device(conn, p, device_id)
    require_role(p, _ROLES, action)
    return device


@router.post(
    "/devices/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        409: {"model": ErrorBody, "description": "the device is decommissioned"},
        429: {"model": ErrorBody, "description": "the device's command budget is spent (see Retry-After)"},
        503: {"model": ErrorBody, "description": "the broker is unavailable"},
    },
)
async def send_command(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, device_id: str, body: CommandCreate
) -> CommandPublic:
    """Publish a command to the device; follow its status with GET. Each device takes a few an hour."""
    device = await _commandable(conn, principal, device_id, "send commands")
    if device["kind"] not in COMMANDS[body.name].kinds:
        raise InvalidInput(
            f"{body.name} is not a command for a {device['kind']}", field="name", code="invalid_command"
        )
    service: commands.CommandService = request.app.state.commands
    # DeviceDecommissioned (409), CommandLimitReached (429 with Retry-After), BrokerError (503).
    row = await service.send(device_id, body.name, body.args.model_dump(), principal.user_id)
    await audit(
        conn,
        principal,
        "command.send",
        "device",
        device_id,
        details={"command_id": row["command_id"], "name": body.name},
    )
    return CommandPublic.model_validate(row)


@router.get("/devices/{device_id}/commands")
async def list_commands(
    *, principal: CurrentPrincipal, conn: Conn, page: Paging, device_id: str
) -> Page[CommandPublic]:
    """The device's commands, newest first."""
    await _commandable(conn, principal, device_id, "see commands")
    rows = await commands.list_commands(conn, device_id, page)
    return page_of(rows, page, CommandPublic.model_validate)


@router.get("/devices/{device_id}/commands/{command_id}")
async def get_command(
    *, principal: CurrentPrincipal, conn: Conn, device_id: str, command_id: str
) -> CommandPublic:
    """One command and its status."""
    await _commandable(conn, principal, device_id, "see commands")
    row = await commands.get_command(conn, device_id, command_id)
    if row is None:
        raise NotFound(f"command {command_id!r} not found")
    return CommandPublic.model_validate(row)
