"""Types every layer of the dashboard shares: the connection and row aliases, and the caller.

They live here, below `auth`, `queries` and the routes, so none of those imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

AConn = psycopg.AsyncConnection[dict[str, Any]]
Row = dict[str, Any]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user with a role, maybe in an org, maybe an owner."""

    user_id: int
    role: str
    org_id: int | None
    org_kind: str | None
    owner_id: int | None
    display_name: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Principal:
        """The principal of a users row joined with its org's kind."""
        return cls(
            user_id=int(row["user_id"]),
            role=str(row["role"]),
            org_id=None if row["org_id"] is None else int(row["org_id"]),
            org_kind=None if row["org_kind"] is None else str(row["org_kind"]),
            owner_id=None if row["owner_id"] is None else int(row["owner_id"]),
            display_name=str(row["display_name"]),
        )
