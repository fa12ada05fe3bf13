"""`pulsewire broker config`, device certificates (`devices cert`, `devices revoke-cert`) and org
subscriber logins (`orgs mqtt-login`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pulsewire import devicecerts
from pulsewire.brokerconf import BrokerFiles, BrokerLayout, render_config
from pulsewire.settings import Settings

__all__ = ["add_commands", "add_device_actions", "add_org_actions", "write_device_certificate"]


def add_commands(sub: Any) -> None:
    """Register `pulsewire broker ...`."""
    broker = sub.add_parser("broker", help="the Mosquitto configuration for production")
    actions = broker.add_subparsers(title="actions", metavar="ACTION")
    config = actions.add_parser("config", help="print (or write with --out) a production mosquitto.conf")
    config.add_argument("--out", type=Path, help="write mosquitto.conf into this directory")
    config.add_argument(
        "--etc",
        type=Path,
        default=Path("/etc/mosquitto/pulsewire"),
        help="where the broker will find its files (certificates, CRL, passwords, ACLs)",
    )
    config.add_argument("--ca-file", type=Path, help="the CA that signs device certificates")
    config.add_argument("--cert-file", type=Path, help="the broker's server certificate")
    config.add_argument("--key-file", type=Path, help="the broker's server key")
    config.add_argument("--crl-file", type=Path, help="the CRL of device certificates")
    config.add_argument("--mtls-port", type=int, default=8883)
    config.add_argument("--password-port", type=int, default=8884)
    config.add_argument("--service-port", type=int, default=1883, help="on 127.0.0.1")
    config.add_argument("--service-socket", type=Path, help="a unix socket instead of --service-port")
    config.set_defaults(handler=_broker_config)  # fmt: skip


def add_device_actions(actions: Any, action: Any) -> None:
    """Add `devices cert` and `devices revoke-cert` to the `devices` group (`action` makes one)."""
    cert = action(actions, "cert", _devices_cert, "sign a device's CSR (its key stays on the device)")
    cert.add_argument("device_id")
    cert.add_argument("--csr", type=Path, required=True, help="the PEM certificate signing request")
    cert.add_argument("--out", type=Path, required=True, help="write ID.crt and ca.crt here")
    revoke = action(actions, "revoke-cert", _devices_revoke, "revoke a device's certificates at once")
    revoke.add_argument("device_id")


def add_org_actions(actions: Any, action: Any) -> None:
    """Add `orgs mqtt-login` to the `orgs` group."""
    login = action(
        actions, "mqtt-login", _orgs_mqtt_login, "issue an MQTT login that reads only the org's alerts"
    )
    login.add_argument("org_id", type=int)


def write_device_certificate(settings: Settings, device_id: str, out_dir: Path) -> list[Path]:
    """Issue a key and certificate for `device_id` and write ID.crt, ID.key and ca.crt to `out_dir`."""
    ca = devicecerts.certificate_authority(settings)
    cert_pem, key_pem = ca.issue_device_certificate(device_id)
    return devicecerts.write_bundle(ca, device_id, out_dir, cert_pem, key_pem)


def _broker_config(settings: Settings, args: argparse.Namespace) -> int:
    etc: Path = args.etc
    files = BrokerFiles(
        ca_file=args.ca_file or etc / "ca.crt", cert_file=args.cert_file or etc / "server.crt",
        key_file=args.key_file or etc / "server.key", crl_file=args.crl_file or etc / "crl.pem",
        device_passwords=etc / "devices.passwd", device_acl=etc / "devices.acl",
        service_passwords=etc / "service.passwd", service_acl=etc / "service.acl",
    )  # fmt: skip
    layout = BrokerLayout(
        files=files, mtls_port=args.mtls_port, password_port=args.password_port,
        service_port=args.service_port, service_socket=args.service_socket,
    )  # fmt: skip
    text = render_config(layout)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mosquitto.conf").write_text(text)
    print(f"wrote {args.out / 'mosquitto.conf'}")
    return 0


def _devices_cert(settings: Settings, args: argparse.Namespace) -> int:
    ca = devicecerts.certificate_authority(settings)
    try:
        cert_pem = ca.sign_csr(args.device_id, args.csr.read_bytes())
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    paths = devicecerts.write_bundle(ca, args.device_id, args.out, cert_pem)
    return _emit(args, {"files": [str(p) for p in paths]}, "wrote " + ", ".join(map(str, paths)))


def _devices_revoke(settings: Settings, args: argparse.Namespace) -> int:
    done = devicecerts.revoke(settings, args.device_id)
    data = {"device_id": done.device_id, "revoked": done.serials, "broker_reloaded": done.broker_reloaded}
    text = f"revoked {len(done.serials)} certificate(s) of {done.device_id}"
    if not done.broker_reloaded:
        text += " (no local broker running: reload yours so it re-reads the CRL)"
    return _emit(args, data, text)


def _orgs_mqtt_login(settings: Settings, args: argparse.Namespace) -> int:
    from pulsewire.stack import Stack

    username, password = Stack(settings.state_dir).set_org_login(args.org_id)
    data = {"org_id": args.org_id, "mqtt_username": username, "mqtt_password": password}
    text = f"MQTT login for org {args.org_id} (shown once):\n  username: {username}\n  password: {password}"
    return _emit(args, data, text)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(json.dumps(data) if args.json else text)
    return 0
