"""The `pulsewire` command line.

Admin and stack commands live here; each service (ingest, relay, dashboard, simulate) brings its
own `cli` module with `add_arguments(parser)` and `run(settings, args) -> int`, imported only when
that command runs so `pulsewire stack up` never pays for the dashboard's imports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pulsewire.errors import PulsewireError
from pulsewire.settings import Settings

SERVICES: dict[str, tuple[str, str]] = {
    "ingest": ("ingest.cli", "run an ingest worker (any number may run at once)"),
    "relay": ("relay.cli", "run a relay worker: rules, alerts, deliveries (any number may run)"),
    "dashboard": ("dashboards.cli", "serve the REST API and web dashboard"),
    "simulate": ("devices.simulator.cli", "drive a simulated fleet against the broker"),
    "up": ("pulsewire.up", "stack + migrate + every service (+ simulated devices); Ctrl-C stops all"),
}
Handler = Callable[[Settings, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pulsewire` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = Settings()
        return int(args.handler(settings, args))
    except PulsewireError as exc:
        print(f"pulsewire: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulsewire", description="Telemetry relay for devices customers own."
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_stack(sub)
    _add_simple(sub, "migrate", "apply the SQL migrations (idempotent)", _cmd_migrate)
    _add_simple(sub, "maintain", "create time partitions ahead and apply retention", _cmd_maintain)
    _add_registry(sub)
    _add_quarantine(sub)
    _add_broker(sub)
    _add_export(sub)
    schemas = sub.add_parser("schemas", help="export the payloads' JSON Schema")
    schemas.set_defaults(handler=_cmd_schemas)
    chosen = argv[0] if argv else None
    for name, (module, help_text) in SERVICES.items():
        service = sub.add_parser(name, help=help_text)
        if name == chosen:
            loaded = importlib.import_module(module)
            loaded.add_arguments(service)
            service.set_defaults(handler=loaded.run)
    return parser


def _add_simple(sub: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.set_defaults(handler=handler)
    return parser


def _add_stack(sub: Any) -> None:
    stack = sub.add_parser("stack", help="private Mosquitto and PostgreSQL under the state dir")
    actions = stack.add_subparsers(title="actions", metavar="ACTION")
    for action, help_text in (
        ("up", "start (idempotent)"),
        ("down", "stop what up started"),
        ("status", "show URLs and what runs"),
    ):
        parser = _add_simple(actions, action, help_text, _cmd_stack)
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.set_defaults(action=action)
        if action == "up":
            parser.add_argument(
                "--ha", action="store_true", help="PostgreSQL as a pg_auto_failover monitor, primary, standby"
            )


def _add_registry(sub: Any) -> None:
    from pulsewire import cli_registry

    cli_registry.add_commands(sub)


def _add_broker(sub: Any) -> None:
    from pulsewire import cli_broker

    cli_broker.add_commands(sub)


def _add_quarantine(sub: Any) -> None:
    from pulsewire import cli_quarantine

    cli_quarantine.add_commands(sub)


def _add_export(sub: Any) -> None:
    from pulsewire import cli_export

    cli_export.add_commands(sub)


def _cmd_stack(settings: Settings, args: argparse.Namespace) -> int:
    from pulsewire.stack import Stack, StackInfo, ensure_packages

    stack = Stack(settings.state_dir)
    info: StackInfo | None
    if args.action == "up":
        ensure_packages()
        info = stack.up(ha=args.ha)
    elif args.action == "down":
        stack.down()
        info = stack.status()
    else:
        info = stack.status()
    data = info.to_json() if info else {"state_dir": str(settings.state_dir), "running": False}
    if args.json:
        print(json.dumps(data, default=str))
    else:
        for key, value in data.items():
            print(f"{key:>14}: {value}")
    return 0


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from pulsewire.db import connect
    from pulsewire.migrate import migrate
    from pulsewire.storage import maintain

    url = settings.require_database_url()
    applied = migrate(url, settings.storage)
    with connect(url, autocommit=True) as conn:
        maintain(conn, retention_days=settings.retention_days)
        from relay.rules import seed_defaults

        seed_defaults(conn)  # the default alert rules, from schemas/rules/defaults.yaml (idempotent)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "up to date")
    return 0


def _cmd_maintain(settings: Settings, args: argparse.Namespace) -> int:
    from pulsewire.db import connect
    from pulsewire.storage import maintain

    with connect(settings.require_database_url(), autocommit=True) as conn:
        report = maintain(
            conn,
            retention_days=settings.retention_days,
            quarantine_retention_days=settings.quarantine_retention_days,
        )
    print(
        f"created {len(report.created)} partition(s), dropped {len(report.dropped)}, "
        f"expired {report.expired_default_rows} old row(s) and {report.expired_quarantine_rows} quarantined"
    )
    return 0


def _cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.payloads import json_schemas

    print(json.dumps(json_schemas(), indent=2))
    return 0
