"""The caller: `/me` and their own API tokens."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, status

from dashboards import accounts
from dashboards.api import API_PREFIX
from dashboards.api.common import page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging
from dashboards.models import MePublic, Page, TokenCreate, TokenCreated, TokenPublic
from pulsewire.errors import NotFound

router = APIRouter(prefix=API_PREFIX, tags=["account"])


@router.get("/me")
async def me(principal: CurrentPrincipal) -> MePublic:
    """Who the token or session belongs to."""
    return MePublic(**dataclasses.asdict(principal))


@router.get("/tokens")
async def list_tokens(principal: CurrentPrincipal, conn: Conn, page: Paging) -> Page[TokenPublic]:
    """The caller's own API tokens (never the secrets)."""
    rows = await accounts.list_tokens(conn, principal, page)
    return page_of(rows, page, TokenPublic.model_validate)


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(principal: CurrentPrincipal, conn: Conn, body: TokenCreate) -> TokenCreated:
    """A new API token for the caller, optionally expiring; the token is shown in this response only."""
    row = await accounts.create_token(conn, principal, body.name, body.expires_at)
    return TokenCreated.model_validate(row)


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(principal: CurrentPrincipal, conn: Conn, token_id: int) -> None:
    """Revoke one of the caller's tokens; it stops working at once."""
    if not await accounts.revoke_token(conn, principal, token_id):
        raise NotFound(f"token {token_id} not found")
