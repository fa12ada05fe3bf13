"""Helpers shared by the routers: pages and row → model conversion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Path

from dashboards.models import DevicePublic, DeviceVendorPublic, DeviceView, OwnerPublic, Page
from dashboards.queries import PageRequest, sees_owner_data
from dashboards.types import Principal, Row

T = TypeVar("T")
# A path id that fits PostgreSQL's bigint: anything else is a 422, not a database error.
BigId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def page_of(rows: list[Row], page: PageRequest, convert: Callable[[Row], T]) -> Page[T]:
    """A page of converted rows; a full page means there may be more."""
    return Page[T](
        items=[convert(r) for r in rows],
        limit=page.limit,
        offset=page.offset,
        next_offset=page.offset + page.limit if len(rows) == page.limit else None,
    )


def device_view(p: Principal, row: Row) -> DeviceView:
    """The caller's view of a device: a vendor's has no owner field at all."""
    if not sees_owner_data(p):
        return DeviceVendorPublic.model_validate(row)
    owner = None
    if row["owner_id"] is not None:
        owner = OwnerPublic(
            owner_id=row["owner_id"],
            full_name=row["owner_full_name"],
            email=row["owner_email"],
            phone=row["owner_phone"],
            birth_date=row["owner_birth_date"],
            address=row["owner_address"],
        )
    return DevicePublic.model_validate(row | {"owner": owner})
