"""Cursor lists, Stripe-style.

A list endpoint takes :data:`PageParams` (``limit`` 1..100, default 10, and
``starting_after``, the id of the last object the client has) and answers a
subclass of :class:`ListResponse`::

    {"object": "list", "data": [...], "has_more": true, "next_cursor": "id"}

Lists are keyset-paginated on the object id (``WHERE id > starting_after
ORDER BY id LIMIT limit + 1``): pages stay stable while objects are added or
removed, the cursor of a deleted object still works, and every page is one
index range scan. The extra row tells whether there is more. A contact list
in another order (``sort=``) pages on (its key, the id) with an opaque
cursor (``nudgel.api.contacts.sorting``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, Literal, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field

__all__ = ["ListResponse", "Page", "PageParams", "page_of"]

T = TypeVar("T")

MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    starting_after: str | None

    @property
    def fetch(self) -> int:
        """How many rows to ask for: one more than the page, to learn ``has_more``."""
        return self.limit + 1


def _page(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="How many objects to return (1 to 100).")
    ] = 10,
    starting_after: Annotated[
        str | None,
        Query(
            min_length=1,
            description="The `next_cursor` of the previous page: return the objects after it"
            " (an object id; an opaque `cur_...` cursor for a sorted contact list).",
        ),
    ] = None,
) -> Page:
    return Page(limit, starting_after)


PageParams = Annotated[Page, Depends(_page)]


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = Field(description="Whether more objects follow this page.")
    next_cursor: str | None = Field(
        default=None,
        description="Pass as `starting_after` to get the next page; set when has_more.",
    )


def page_of(
    rows: Sequence[T], page: Page, id_of: Callable[[T], str]
) -> tuple[list[T], bool, str | None]:
    """``rows`` (up to ``page.fetch``, in id order) as (data, has_more, next_cursor)."""
    data = list(rows[: page.limit])
    has_more = len(rows) > page.limit
    return data, has_more, (id_of(data[-1]) if has_more and data else None)
