"""`pulsewire up`: the whole system on the local stack, as child processes; Ctrl-C stops them all.

Each service runs as its own `pulsewire <service>` process, exactly as it would when scaled out,
so the demo exercises the same code paths as production.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pulsewire import demo
from pulsewire.db import connect
from pulsewire.errors import ConfigError
from pulsewire.migrate import migrate
from pulsewire.settings import Settings
from pulsewire.stack import Stack, StackInfo, ensure_packages
from pulsewire.storage import maintain

STOP_GRACE_S = 10.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="also run N simulated devices of both kinds"
    )
    parser.add_argument("--port", type=int, help="dashboard port (default: PULSEWIRE_API_PORT or 8080)")
    parser.add_argument(
        "--time-scale", type=float, default=60.0, help="simulated seconds per wall second for the demo fleet"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"seed the demo orgs and one login per role (password {demo.DEMO_PASSWORD!r}); "
        "only into the local stack's own database",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    ensure_packages()
    stack = Stack(settings.state_dir)
    before = stack.status()
    if args.demo:  # before anything starts or is written
        demo.require_private_database(settings.database_url, before.database_url if before else None)
    started_stack = before is None or not before.running
    info = stack.up()
    database_url = settings.database_url or info.database_url
    migrate(database_url, settings.storage)
    with connect(database_url, autocommit=True) as conn:
        maintain(conn, retention_days=settings.retention_days)
        logins = demo.seed(conn) if args.demo else ()
    port = args.port or settings.api_port
    tls = _dashboard_certificate(settings, stack)
    env = _child_env(settings, info, database_url, port)
    env.update(PULSEWIRE_API_CERT_FILE=str(tls[0].resolve()), PULSEWIRE_API_KEY_FILE=str(tls[1].resolve()))
    children = _start_children(env, args, _component_logins(settings, info))
    _print_banner(settings, info, port, logins, children)
    status = _supervise(children)
    if started_stack:
        stack.down()
        print("Pulsewire stopped, and the local stack with it.")
    else:
        print("Pulsewire stopped; the local stack was already running and keeps running.")
    return status


def _dashboard_certificate(settings: Settings, stack: Stack) -> tuple[Path, Path]:
    """The dashboard's certificate and key: the settings' own, or one the local stack's CA signs."""
    configured = settings.api_tls()
    if configured:
        return configured
    names = ["localhost", "127.0.0.1", "::1"]
    if settings.api_host not in (*names, "0.0.0.0", "::"):
        names.append(settings.api_host)
    try:
        ca = stack.certificate_authority()
    except ConfigError as exc:
        raise ConfigError(f"the dashboard's certificate: {exc}") from exc
    return ca.issue_server_certificate(names, stack.state_dir / "dashboard-tls", stem="dashboard")


def _child_env(settings: Settings, info: StackInfo, database_url: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PULSEWIRE_DATABASE_URL": database_url,
            "PULSEWIRE_MQTT_URL": settings.mqtt_url or info.mqtt_url,
            "PULSEWIRE_STATE_DIR": str(settings.state_dir.resolve()),
            "PULSEWIRE_API_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The local stack is for development: webhooks to http and loopback receivers are allowed.
    env.setdefault("PULSEWIRE_WEBHOOK_ALLOW_PRIVATE", "1")
    return env


def _component_logins(settings: Settings, info: StackInfo) -> dict[str, str]:
    """`{child: PULSEWIRE_MQTT_URL}`: each component's least-privilege login on the service listener.

    Only on the local stack; a broker the settings name keeps the one URL they give.
    """
    if settings.mqtt_url:
        return {}
    return dict(info.service_urls or {})


def _start_children(env: dict[str, str], args: argparse.Namespace, logins: dict[str, str]) -> list[Child]:
    exe = [sys.executable, "-m", "pulsewire"]
    # One ingest worker on the local Mosquitto: a plain subscription, which Mosquitto 2.0 restores
    # after a broker restart (it does not restore shared ones). Scale-out workers use the shared group.
    commands = {"ingest": ["ingest", "--share-group", ""], "relay": ["relay"], "dashboard": ["dashboard"]}
    if args.simulate:
        commands["simulate"] = [
            "simulate",
            "--live",
            "--kind",
            "mixed",
            "--devices",
            str(args.simulate),
            "--duration",
            "0",
            "--time-scale",
            str(args.time_scale),
            # An hour behind: a day of history at once, caught up within a minute, then incidents
            # that page as current alerts a few minutes in.
            "--lag",
            "3600",
            "--quiet",
        ]
    children = []
    for name, command in commands.items():
        own = {"PULSEWIRE_MQTT_URL": logins[name]} if name in logins else {}
        process = subprocess.Popen(exe + command, env={**env, **own}, start_new_session=True)
        children.append(Child(name, process))
    return children


def _print_banner(
    settings: Settings, info: StackInfo, port: int, logins: tuple[demo.DemoLogin, ...], children: list[Child]
) -> None:
    if logins:
        accounts = [
            f"  demo logins (password: {demo.DEMO_PASSWORD})",
            *[f"    {login.email:<28} {login.sees}" for login in logins],
        ]
    else:
        accounts = ["  logins      none seeded: `pulsewire users add ...`, or `pulsewire up --demo`"]
    lines = [
        "",
        "Pulsewire is up.",
        f"  dashboard   https://{settings.api_host}:{port}/",
        f"  API         https://{settings.api_host}:{port}/api/v1  (OpenAPI at /openapi.json)",
        f"  CA          {Stack(settings.state_dir).pki_dir / 'ca.crt'}  (trust it, or curl --cacert it)",
        f"  MQTT        devices over TLS: {info.mqtt_host}:{info.mqtts_port} (certificate), "
        f"{info.mqtt_host}:{info.mqtt_port} (password); services: {info.mqtt_url.split('@')[-1]}",
        f"  PostgreSQL  {info.database_url.split('@')[-1]}",
        "  services    " + ", ".join(f"{c.name} (pid {c.process.pid})" for c in children),
        *accounts,
        "Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _supervise(children: list[Child]) -> int:
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    status = 0
    while not stopping:
        for child in children:
            code = child.process.poll()
            if code is not None and not (child.name == "simulate" and code == 0):
                print(f"pulsewire up: {child.name} exited with {code}; stopping everything", file=sys.stderr)
                stopping, status = True, 1
        time.sleep(0.2)
    _stop_children(children)
    return status


def _stop_children(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
