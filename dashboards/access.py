"""Access audit hooks of the dashboard: who is acting in this request, and one call to record it.

`bind(request, principal, credential)` runs once per request, in the dependency that authenticates
it (API or page); it remembers the actor (user, org, role, credential, client address, route) for
the rest of the request in a context variable. The data layer then records without being handed
the request: `visible_device` and `list_devices` record the read of a device and its owner,
`queries.audit` every act that is audited, the exports and downloads their own entry. A request
records each object once, in its own transaction (`pulsewire.audit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from fastapi import Request

from dashboards.types import AConn, Principal
from pulsewire import audit

_current: ContextVar[_Bound | None] = ContextVar("pulsewire_access_actor", default=None)
_TOKEN_USES = audit.TokenUses()


@dataclass
class _Bound:
    actor: audit.Actor
    route: str
    read_only: bool  # a GET or HEAD: its transaction writes nothing but audit entries
    recorded: set[tuple[str, str, str | None]] = field(default_factory=set)


def client_address(request: Request) -> str | None:
    """The address the request came from (the proxy's, behind one)."""
    return request.client.host if request.client else None


def actor_of(request: Request, principal: Principal, credential: str) -> audit.Actor:
    """The audit actor of an authenticated request."""
    return audit.Actor(
        user_id=principal.user_id,
        label=principal.display_name,
        org_id=principal.org_id,
        role=principal.role,
        credential=credential,
        client_addr=client_address(request),
    )


async def bind(conn: AConn, request: Request, principal: Principal, *, token: str | None = None) -> None:
    """Remember who acts in this request; record a token's use (at most once a minute per token)."""
    credential = audit.token_credential(token) if token is not None else "session"
    actor = actor_of(request, principal, credential)
    route = f"{request.method} {getattr(request.scope.get('route'), 'path', request.url.path)}"
    _current.set(_Bound(actor, route, read_only=request.method in ("GET", "HEAD")))
    if token is not None and _TOKEN_USES.due(credential):
        await audit.record(conn, actor, audit.Entry(audit.TOKEN_USE, "token", credential))


async def record(
    conn: AConn,
    action: str,
    object_type: str,
    object_id: str | None = None,
    *,
    owner_ids: tuple[int, ...] = (),
    detail: Mapping[str, object] | None = None,
) -> None:
    """Record `action` on an object for the request's actor; once per object and request.

    Outside a bound request (a script calling the queries directly) there is no actor: nothing to record.
    """
    bound = _current.get()
    if bound is None or (action, object_type, object_id) in bound.recorded:
        return
    bound.recorded.add((action, object_type, object_id))
    entry = audit.Entry(action, object_type, object_id, owner_ids, {"route": bound.route, **(detail or {})})
    await audit.record(conn, bound.actor, entry)


def read_of_rows(source: str, object_type: str, object_id: str) -> tuple[str, dict[str, object]]:
    """A CTE recording the read of the rows of the CTE `source` (see `audit.insert_for_rows`), for
    the query that reads them: `("", {})` when there is nothing to record (no actor, or recorded
    already in this request)."""
    bound = _current.get()
    key = (audit.READ, object_type, object_id)
    if bound is None or key in bound.recorded:
        return "", {}
    bound.recorded.add(key)
    entry = audit.Entry(*key, detail={"route": bound.route})
    return audit.insert_for_rows(source, bound.actor, entry, lazy_commit=bound.read_only)


def sign_in(request: Request, principal: Principal | None, email: str) -> tuple[audit.Actor, audit.Entry]:
    """The actor and entry of a password sign-in, accepted (`principal`) or refused (None)."""
    if principal is None:
        label, address = email.strip().lower()[:320], client_address(request)
        actor = audit.Actor(user_id=None, label=label, credential="password", client_addr=address)
        return actor, audit.Entry(audit.LOGIN_FAILED, "user", None)
    actor = actor_of(request, principal, "password")
    return actor, audit.Entry(
        audit.LOGIN, "user", str(principal.user_id), (principal.owner_id,) if principal.owner_id else ()
    )
