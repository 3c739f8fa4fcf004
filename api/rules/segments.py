"""The deployed rules' segments: their sizes and their members, as the
real-time evaluation keeps them (``segment_members``).

Segments are named by the deployed rules; one no longer deployed is unknown
(404) whatever rows are left of it. Both lists are keyset-paginated: segments
on the name, members on the contact id.
"""

from __future__ import annotations

from typing import Literal

from nudgel.api.contacts.models import ContactOut
from nudgel.api.contacts.views import contact_views
from nudgel.api.problems import ProblemError
from nudgel.api.rules.store import current_rules
from psycopg import AsyncConnection
from pydantic import BaseModel, Field

__all__ = ["Segment", "list_segments", "segment_contacts"]


class Segment(BaseModel):
    object: Literal["segment"] = "segment"
    name: str
    title: str | None = Field(description="The title given in the rules, if any.")
    size: int = Field(description="How many contacts are in it now.")


async def list_segments(
    conn: AsyncConnection, workspace_id: int, starting_after: str | None, limit: int
) -> list[Segment]:
    """Up to ``limit`` deployed segments named after ``starting_after``, in name
    order, with their sizes; none when no rules are deployed."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None:
        return []
    names = sorted(
        name for name in deployed.rules.segments if starting_after is None or name > starting_after
    )[:limit]
    cur = await conn.execute(
        "SELECT segment, count(*) FROM segment_members"
        " WHERE workspace_id = %s AND segment = ANY(%s) GROUP BY segment",
        (workspace_id, names),
    )
    sizes: dict[str, int] = {r[0]: int(r[1]) for r in await cur.fetchall()}
    return [
        Segment(name=name, title=deployed.rules.segments[name].title, size=sizes.get(name, 0))
        for name in names
    ]


async def segment_contacts(
    conn: AsyncConnection, workspace_id: int, name: str, starting_after: str | None, limit: int
) -> list[ContactOut]:
    """Up to ``limit`` contacts in segment ``name`` now (404 if the deployed rules
    have no such segment), after contact id ``starting_after``, in id order."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None or name not in deployed.rules.segments:
        raise ProblemError.not_found(f"Segment {name!r}")
    cur = await conn.execute(
        "SELECT c.pk FROM segment_members m JOIN contacts c ON c.pk = m.contact_pk"
        " WHERE m.workspace_id = %s AND m.segment = %s"
        " AND (%s::text IS NULL OR c.id > %s) ORDER BY c.id LIMIT %s",
        (workspace_id, name, starting_after, starting_after, limit),
    )
    pks = [int(r[0]) for r in await cur.fetchall()]
    return await contact_views(conn, workspace_id, pks)
