"""The command catalogue: each command a device answers, its arguments and the kinds it is for.

One list, read by the API (which refuses anything else with a 422 naming the field) and by the
simulated devices (which answer the same way a real one would), so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

CommandName = Literal["request_transmission", "clear_dtc", "ping"]
# An OBD-II trouble code: system letter, then four hex digits (P0442).
DtcCode = Annotated[str, StringConstraints(pattern=r"^[PCBU][0-9A-F]{4}$")]


class CommandArgs(BaseModel):
    """Base of every command's arguments: unknown fields are refused, values are bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PingArgs(CommandArgs):
    """`ping`: no arguments; the device answers with its boot id, sequence and firmware."""


class RequestTransmissionArgs(CommandArgs):
    """`request_transmission`: upload what the implant has stored over the last hours."""

    lookback_h: int = Field(default=24, ge=1, le=168, description="hours of stored data to upload")


class ClearDtcArgs(CommandArgs):
    """`clear_dtc`: clear the named trouble codes, or all of them when none is named."""

    codes: list[DtcCode] = Field(default_factory=list, max_length=32)


@dataclass(frozen=True)
class CommandSpec:
    """What a command takes and which kinds of device answer it."""

    args: type[CommandArgs]
    kinds: frozenset[str]


COMMANDS: dict[str, CommandSpec] = {
    "ping": CommandSpec(PingArgs, frozenset({"implant", "vehicle"})),
    "request_transmission": CommandSpec(RequestTransmissionArgs, frozenset({"implant"})),
    "clear_dtc": CommandSpec(ClearDtcArgs, frozenset({"vehicle"})),
}


def parse_args(name: str, args: dict[str, Any]) -> CommandArgs:
    """The command's arguments, validated; pydantic's ValidationError names the bad field."""
    return COMMANDS[name].args.model_validate(args)
