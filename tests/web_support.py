"""Signing in to the web pages over plain HTTP (no browser), for the page tests of every module.

`client(live)` is an HTML client of a live server that does not follow redirects; `signed_in(live,
email)` the same with a live session of `email` (every web user shares `PASSWORD`); `csrf_of(html)`
the session's CSRF token in a page's forms; `add_admin(world)` an admin who can sign in;
`user_id_of(db_url, email)` a user's id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from pulsewire import registry
from pulsewire.db import connect
from tests.fix_browser import PASSWORD, LiveServer
from tests.fix_db import World

HTML = {"Accept": "text/html"}


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in `html`."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match[1]


def client(live: LiveServer) -> httpx.Client:
    """An HTML client of `live` that shows redirects instead of following them."""
    return httpx.Client(base_url=live.url, follow_redirects=False, headers=HTML, timeout=10)


@contextmanager
def signed_in(live: LiveServer, email: str) -> Iterator[httpx.Client]:
    """A client with a live session of `email`."""
    with client(live) as c:
        token = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
        assert r.status_code == 303, r.text
        yield c


def add_admin(world: World, email: str = "root@pulsewire.example") -> str:
    """An admin who signs in with `PASSWORD` (the web people have none); returns the e-mail."""
    with connect(world.db_url, autocommit=True) as c:
        registry.add_user(c, email, role="admin", display_name="Rita Root", password=PASSWORD)
    return email


def user_id_of(db_url: str, email: str) -> int:
    """The id of the user who signs in as `email`."""
    with connect(db_url, autocommit=True) as c:
        row = c.execute("SELECT user_id FROM users WHERE email = %s", (email,)).fetchone()
    assert row is not None, email
    return int(row["user_id"])
