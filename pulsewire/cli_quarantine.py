"""`pulsewire quarantine list|replay`: what ingest set aside, and handing it back once the cause is gone."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pulsewire.db import connect
from pulsewire.quarantine import list_quarantine, replay_quarantine
from pulsewire.settings import Settings


def add_commands(sub: Any) -> None:
    """Register `quarantine list` and `quarantine replay` on the top-level subparsers."""
    group = sub.add_parser("quarantine", help="messages ingest set aside: list, replay")
    actions = group.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help="quarantined messages, newest first")
    listing.set_defaults(handler=_list)
    listing.add_argument("--pending", action="store_true", help="only rows not replayed yet")
    listing.add_argument("--limit", type=int, default=50)
    replay = actions.add_parser(
        "replay",
        help="hand rows not replayed yet back to ingest, validated again like live messages "
        "(rows that kept only a payload prefix cannot be replayed)",
    )
    replay.set_defaults(handler=_replay)
    for parser in (listing, replay):
        parser.add_argument("--reason", help="only this reason, e.g. unregistered_device")
        parser.add_argument("--device", help="only this device id")
        parser.add_argument("--json", action="store_true", help="print JSON")


def _list(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        rows = list_quarantine(
            conn, reason=args.reason, device_id=args.device, pending_only=args.pending, limit=args.limit
        )
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for r in rows:
        state = "replayed" if r["replayed_at"] else ("prefix only" if r["truncated"] else "pending")
        print(f"{r['quarantine_id']:>8} {r['received_at']:%Y-%m-%d %H:%M:%S} {r['reason']:<20} "
              f"{r['device_id'] or '-':<20} {r['payload_size']:>8} B  {state:<11} {r['detail']}")  # fmt: skip
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url()) as conn:
        report = replay_quarantine(conn, settings.mqtt(), reason=args.reason, device_id=args.device)
    data = report.to_json()
    if args.json:
        print(json.dumps(data))
    else:
        print(", ".join(f"{name.replace('_', ' ')}: {entry['count']}" for name, entry in data.items()))
    return 1 if report.no_subscriber else 0
