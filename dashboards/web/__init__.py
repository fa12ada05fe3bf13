"""The web dashboard: server-rendered pages (Jinja2) on top of the same scoped queries as the API.

`install(app)` mounts the pages, the static files and the HTML error pages. The modules:

    render        the Jinja2 environment, filters, the layout's context and the error pages
    session       the page's user (session cookie), CSRF checks, post/redirect/get
    login         sign in and out, and where `/` leads
    views         what pages show of the user, a device, an alert, an appointment
    page_queries  read queries only the pages need (summaries, charts, alert rows)
    staff         fleet, alert inbox, rules, device page
    trail         the access audit page
    owner         the owner's page
    contact       the message and appointment forms of both sides

Submodules import each other, never this package's own names. Charts and the live alert inbox call
the REST API from the browser with the session cookie (`dashboards/static/*.js`).
"""

from __future__ import annotations

from typing import cast

from fastapi import FastAPI, HTTPException
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboards.web import contact, login, owner, staff, trail
from dashboards.web.render import STATIC_DIR, Handler, html_for_pages
from dashboards.web.session import LoginRequired, login_redirect
from pulsewire.errors import PulsewireError


def install(app: FastAPI) -> None:
    """Add the pages, /static and HTML error pages (JSON stays the answer under /api)."""
    for module in (login, staff, owner, contact, trail):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(LoginRequired, login_redirect)
    # Wrap the error handlers the API installed: pages get HTML, /api keeps its JSON.
    for key in (StarletteHTTPException, HTTPException, PulsewireError):
        if key in app.exception_handlers:
            app.add_exception_handler(key, html_for_pages(cast(Handler, app.exception_handlers[key])))
