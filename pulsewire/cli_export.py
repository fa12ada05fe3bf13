"""`pulsewire export fhir|vss`: one device's records in a time window, as FHIR R4 or COVESA VSS JSON.

An operator's command: it reads the database directly, for any device, and records each export in
the access audit as `cli:<login name>`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pulsewire import audit
from pulsewire.interop import records
from pulsewire.interop.records import Audience, Window
from pulsewire.settings import Settings

# Turns the loaded records into the export's text (inside the export's transaction).
Build = Callable[[records.AConn, records.DeviceRecords], Awaitable[str]]


def add_commands(sub: Any) -> None:
    """Register `export fhir` and `export vss` on the top-level subparsers."""
    group = sub.add_parser("export", help="one device's records as FHIR R4 or COVESA VSS JSON")
    formats = group.add_subparsers(title="formats", metavar="FORMAT")
    fhir = formats.add_parser("fhir", help="a FHIR R4 Bundle: Device, Patient, Observations, DetectedIssues")
    fhir.add_argument("--bundle", choices=["collection", "transaction"], default="collection")
    fhir.set_defaults(handler=_fhir)
    vss = formats.add_parser("vss", help="a vehicle's trouble codes, lamp and latest signals in VSS terms")
    vss.set_defaults(handler=_vss)
    for parser in (fhir, vss):
        parser.add_argument("--device", required=True, help="device id")
        parser.add_argument("--start", type=_time, help="ISO 8601; default: 24 h before --end")
        parser.add_argument("--end", type=_time, help="ISO 8601; default: now")
        parser.add_argument("--audience", choices=[a.value for a in Audience], default="provider")
        parser.add_argument("--output", "-o", help="write to this file instead of stdout")


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _window(args: argparse.Namespace) -> Window:
    end = args.end or datetime.now(UTC)
    return Window(args.start or end - timedelta(hours=24), end)


def _fhir(settings: Settings, args: argparse.Namespace) -> int:
    async def build(conn: records.AConn, loaded: records.DeviceRecords) -> str:
        from pulsewire.interop.fhir import export_bundle

        bundle = export_bundle(loaded, transaction=args.bundle == "transaction")
        return bundle.model_dump_json(exclude_none=True, indent=2)

    return _export(settings, args, "fhir", build)


def _vss(settings: Settings, args: argparse.Namespace) -> int:
    async def build(conn: records.AConn, loaded: records.DeviceRecords) -> str:
        from pulsewire.interop.vss import export_vss

        return json.dumps(await export_vss(conn, loaded), indent=2)

    return _export(settings, args, "vss", build)


def _export(settings: Settings, args: argparse.Namespace, kind: str, build: Build) -> int:
    async def run() -> str:
        conn = await records.connect(settings.require_database_url())
        async with conn, conn.transaction():
            loaded = await records.load(conn, args.device, _window(args), Audience(args.audience))
            text: str = await build(conn, loaded)
            owner = loaded.device["owner_id"]
            await audit.record(
                conn,
                audit.Actor(
                    user_id=None, label=f"cli:{getpass.getuser()}", role="operator", credential="cli"
                ),
                audit.Entry(
                    audit.EXPORT,
                    kind,
                    args.device,
                    owner_ids=(int(owner),) if owner is not None else (),
                    detail={
                        "audience": args.audience,
                        "start": str(loaded.window.start),
                        "end": str(loaded.window.end),
                    },
                ),
            )
            return text

    text = asyncio.run(run())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0
