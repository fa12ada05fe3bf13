"""`pulsewire dashboard`: serve the REST API and web pages with uvicorn."""

from __future__ import annotations

import argparse

from pulsewire.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `pulsewire dashboard`."""
    parser.add_argument("--host", default=None, help="address to listen on (default: settings.api_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: PULSEWIRE_API_PORT, 8080)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import uvicorn

    from dashboards.app import create_app

    settings.require_database_url()  # fail here with a clear message, not inside the lifespan
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    print(f"dashboard on http://{host}:{port}/  (API at /api/v1, OpenAPI at /openapi.json)", flush=True)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=args.log_level,
        proxy_headers=True,
        access_log=False,
    )
    return 0
