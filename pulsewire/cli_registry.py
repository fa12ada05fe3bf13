"""Admin commands: `pulsewire orgs|owners|devices|users add|list`, `users disable|enable|token`,
`devices decommission`; certificates (`devices add --cert`, `devices cert|revoke-cert`) and org MQTT
logins (`orgs mqtt-login`) are in `pulsewire.cli_broker`."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pulsewire import cli_broker, registry
from pulsewire.db import connect
from pulsewire.settings import Settings


def add_commands(sub: Any) -> None:
    """Register the registry commands on the top-level subparsers."""
    orgs = _group(sub, "orgs", "organisations: providers (clinic, garage) and vendors")
    add = _action(orgs, "add", _orgs_add, "create an org")
    add.add_argument("name")
    add.add_argument("--kind", required=True, choices=registry.ORG_KINDS)
    cli_broker.add_org_actions(orgs, _action)

    owners = _group(sub, "owners", "device owners (patients, car owners)")
    add = _action(owners, "add", _owners_add, "register an owner in a provider's care")
    add.add_argument("full_name")
    add.add_argument("--provider", type=int, required=True, help="provider org id")
    add.add_argument("--email")

    devices = _group(sub, "devices", "devices and their MQTT credentials")
    add = _action(devices, "add", _devices_add, "register a device; prints its MQTT credentials once")
    add.add_argument("device_id")
    add.add_argument("--kind", required=True, choices=registry.DEVICE_KINDS)
    add.add_argument("--model", required=True)
    add.add_argument("--provider", type=int, required=True, help="provider org id")
    add.add_argument("--vendor", type=int, required=True, help="vendor org id")
    add.add_argument("--owner", type=int, help="owner id")
    add.add_argument("--serial")
    add.add_argument("--firmware", default="")
    add.add_argument("--cert", type=Path, metavar="DIR", help="also write ID.crt, ID.key and ca.crt into DIR")
    cli_broker.add_device_actions(devices, _action)
    retire = _action(
        devices, "decommission", _devices_decommission, "retire a device: no broker login, data kept"
    )
    retire.add_argument("device_id")

    users = _group(sub, "users", "people and their API tokens")
    add = _action(users, "add", _users_add, "create a user; prints an API token once")
    add.add_argument("email")
    add.add_argument("--role", required=True, choices=registry.ROLES)
    add.add_argument("--org", type=int, help="org id (provider or vendor staff)")
    add.add_argument("--owner", type=int, help="owner id (role owner)")
    add.add_argument("--name", help="display name")
    add.add_argument("--password", help="enables web login")
    add.add_argument("--expires-in", type=duration, help="the token expires after this: 90d, 12h, 30m")
    token = _action(users, "token", _users_token, "issue another API token for a user; printed once")
    token.add_argument("email")
    token.add_argument("--name", default="cli", help="what the token is for")
    token.add_argument("--expires-in", type=duration, help="the token expires after this: 90d, 12h, 30m")
    for name, help_text in (
        ("disable", "disable a user: their sessions end and their tokens are refused at once"),
        ("enable", "enable a disabled user again (their tokens work again; they sign in anew)"),
    ):
        switch = _action(users, name, _users_switch, help_text)
        switch.add_argument("email")
        switch.set_defaults(disable=name == "disable")


_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_MAX_EXPIRY = timedelta(days=3_660)


def duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `600s` as a timedelta (1 minute to 10 years), for argparse."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90d, 12h or 30m, got {text!r}")
    value = timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    if not timedelta(minutes=1) <= value <= _MAX_EXPIRY:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1 minute to 10 years")
    return value


def _group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text)
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help=f"list {name}")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_lister(name))
    return actions


def _action(actions: Any, name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handler)
    return parser


def _lister(table: str) -> Any:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        with connect(settings.require_database_url(), autocommit=True) as conn:
            rows = registry.list_rows(conn, table)
        if args.json:
            print(json.dumps(rows, default=str))
        else:
            for row in rows:
                print("  ".join(f"{k}={v}" for k, v in row.items()))
        return 0

    return run


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(json.dumps(data) if args.json else text)
    return 0


def _orgs_add(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        org_id = registry.add_org(conn, args.name, args.kind)
    return _emit(args, {"org_id": org_id}, f"created {args.kind} org {args.name!r} with id {org_id}")


def _owners_add(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        owner_id = registry.add_owner(conn, args.provider, args.full_name, email=args.email)
    return _emit(args, {"owner_id": owner_id}, f"created owner {args.full_name!r} with id {owner_id}")


def _devices_add(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        creds = registry.add_device(
            conn,
            args.device_id,
            kind=args.kind,
            model=args.model,
            provider_org_id=args.provider,
            vendor_org_id=args.vendor,
            owner_id=args.owner,
            serial=args.serial,
            firmware=args.firmware,
        )
        synced = registry.sync_broker_auth(conn, settings.state_dir)
    data = {
        "device_id": creds.device_id,
        "mqtt_username": creds.mqtt_username,
        "mqtt_password": creds.mqtt_password,
        "broker_updated": synced,
    }
    text = (
        f"device {creds.device_id} registered; MQTT credentials (shown once):\n"
        f"  username: {creds.mqtt_username}\n  password: {creds.mqtt_password}"
    )
    if not synced:
        text += "\n  (no local stack running: provision these on your broker)"
    if args.cert is not None:
        paths = cli_broker.write_device_certificate(settings, creds.device_id, args.cert)
        data["cert_files"] = [str(path) for path in paths]
        text += "\n  certificate: " + ", ".join(map(str, paths))
    return _emit(args, data, text)


def _users_add(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        user_id = registry.add_user(
            conn,
            args.email,
            role=args.role,
            display_name=args.name,
            org_id=args.org,
            owner_id=args.owner,
            password=args.password,
        )
        expires_at = _expiry(args.expires_in)
        token = registry.issue_token(conn, user_id, "cli", expires_at=expires_at)
    return _emit(
        args,
        {"user_id": user_id, "token": token, "expires_at": _iso(expires_at)},
        f"user {args.email} created with id {user_id}; "
        f"API token (shown once{_until(expires_at)}):\n  {token}",
    )


def _users_token(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        user_id = registry.user_id_by_email(conn, args.email)
        expires_at = _expiry(args.expires_in)
        token = registry.issue_token(conn, user_id, args.name, expires_at=expires_at)
    return _emit(
        args,
        {"user_id": user_id, "token": token, "expires_at": _iso(expires_at)},
        f"API token for {args.email} (shown once{_until(expires_at)}):\n  {token}",
    )


def _users_switch(settings: Settings, args: argparse.Namespace) -> int:
    disabled = bool(args.disable)
    with connect(settings.require_database_url(), autocommit=True) as conn:
        user = registry.set_user_disabled(conn, registry.user_id_by_email(conn, args.email), disabled)
    data = {"user_id": user["user_id"], "email": user["email"], "disabled_at": _iso(user["disabled_at"])}
    return _emit(args, data, f"user {user['email']} {'disabled' if disabled else 'enabled'}")


def _devices_decommission(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings.require_database_url(), autocommit=True) as conn:
        when = registry.decommission_device(conn, args.device_id)
        synced = registry.sync_broker_auth(conn, settings.state_dir)
    text = f"device {args.device_id} decommissioned at {when.isoformat()}; its data stays until retention"
    if not synced:
        text += "\n  (no local stack running: remove its login from your broker)"
    return _emit(
        args, {"device_id": args.device_id, "decommissioned_at": _iso(when), "broker_updated": synced}, text
    )


def _expiry(expires_in: timedelta | None) -> datetime | None:
    return datetime.now(UTC) + expires_in if expires_in is not None else None


def _until(expires_at: datetime | None) -> str:
    return f", valid until {expires_at.isoformat(timespec='seconds')}" if expires_at else ""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
