"""`pulsewire dashboard`: serve the REST API and web pages with uvicorn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pulsewire.settings import Settings, is_loopback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `pulsewire dashboard`."""
    parser.add_argument("--host", default=None, help="address to listen on (default: settings.api_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: PULSEWIRE_API_PORT, 8080)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until interrupted: HTTPS when the settings name a certificate and key."""
    import uvicorn

    from dashboards.app import create_app

    settings.require_database_url()  # fail here with a clear message, not inside the lifespan
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    # Cookies are judged by the address actually bound, which --host may change.
    settings = settings.model_copy(update={"api_host": host})
    tls = settings.api_tls()
    scheme = "https" if tls else "http"
    _warn_if_plain_http_exposed(settings, tls)
    print(f"dashboard on {scheme}://{host}:{port}/  (API at /api/v1, OpenAPI at /openapi.json)", flush=True)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=args.log_level,
        proxy_headers=True,
        access_log=False,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    return 0


def _warn_if_plain_http_exposed(settings: Settings, tls: tuple[Path, Path] | None) -> None:
    # Plain HTTP beyond loopback sends passwords and session cookies in clear, unless a proxy in
    # front terminates TLS; say so loudly, since nothing here can tell which it is.
    if tls or is_loopback(settings.api_host):
        return
    secure = "Secure (sent over HTTPS only)" if settings.cookies_secure() else "NOT Secure"
    print(
        f"WARNING: the dashboard serves plain HTTP on {settings.api_host}, beyond loopback. Put a proxy "
        "that terminates TLS in front of it, or set PULSEWIRE_API_CERT_FILE and PULSEWIRE_API_KEY_FILE. "
        f"Cookies are {secure}.",
        file=sys.stderr,
        flush=True,
    )
