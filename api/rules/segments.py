"""The deployed rules' segments: their sizes and their members, as the
real-time evaluation keeps them (``segment_members``).

Segments are named by the deployed rules; one no longer deployed is unknown
(404) whatever rows are left of it. Both lists are keyset-paginated: segments
on the name, members on the contact id.

One segment (:func:`segment_detail`) also shows its declaration as deployed
(the source text) and how many entered and left it over the last 24 hours
and 7 days, counted from ``rule_history`` at the workspace's instant (its
test clock, else now): changes, not people (one who came and went twice
counts twice), so entered minus exited is how the size moved. A deleted
contact's history goes with it, and a new segment's first fill is not a
change (it records no history).
"""

from __future__ import annotations

from typing import Literal

from nudgel.api.contacts.models import ContactOut
from nudgel.api.contacts.views import contact_views
from nudgel.api.problems import ProblemError
from nudgel.api.rules.store import current_rules
from nudgel.dsl.span import Span
from psycopg import AsyncConnection
from pydantic import BaseModel, Field

__all__ = ["Segment", "SegmentDetail", "list_segments", "segment_contacts", "segment_detail"]


class Segment(BaseModel):
    object: Literal["segment"] = "segment"
    name: str
    title: str | None = Field(description="The title given in the rules, if any.")
    size: int = Field(description="How many contacts are in it now.")


class SegmentDefinition(BaseModel):
    source: str = Field(description="The segment's declaration, as written in the deployed rules.")
    file: str = Field(description="The rule file that declares it.")
    line: int = Field(description="The line of the file its declaration starts on.")
    version: int = Field(description="The version of the deployed rules (`GET /v1/rules`).")


class SegmentFlow(BaseModel):
    last_24h: int
    last_7d: int


class SegmentDetail(Segment):
    definition: SegmentDefinition
    entered: SegmentFlow = Field(
        description="Entries into the segment over the last 24 hours and 7 days (each"
        " `segment.entered`; one contact can enter more than once)."
    )
    exited: SegmentFlow = Field(
        description="Exits over the same windows (each `segment.exited` of a contact that"
        " is still there: a deleted contact's history goes with it)."
    )


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


def _source_of(text: str, span: Span) -> str:
    """The text ``span`` covers (lines and columns 1-based, the end exclusive)."""
    lines = text.split("\n")[span.line - 1 : span.end_line]
    if not lines:
        return ""
    if len(lines) == 1:
        return lines[0][span.column - 1 : span.end_column - 1]
    return "\n".join([lines[0][span.column - 1 :], *lines[1:-1], lines[-1][: span.end_column - 1]])


_FLOW = """
SELECT count(*) FILTER (WHERE h.new_value = 'true' AND h.at > w.now - interval '24 hours'),
       count(*) FILTER (WHERE h.new_value = 'true'),
       count(*) FILTER (WHERE h.new_value = 'false' AND h.at > w.now - interval '24 hours'),
       count(*) FILTER (WHERE h.new_value = 'false')
  FROM (SELECT coalesce(test_clock, now()) AS now FROM workspaces WHERE id = %(ws)s) w
  JOIN rule_history h ON h.workspace_id = %(ws)s AND h.kind = 'segment' AND h.name = %(name)s
   AND h.at > w.now - interval '7 days' AND h.at <= w.now
"""


async def segment_detail(conn: AsyncConnection, workspace_id: int, name: str) -> SegmentDetail:
    """Segment ``name`` of the deployed rules (404 if none): its declaration, size,
    and entries and exits over the last 24 hours and 7 days."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None or name not in deployed.rules.segments:
        raise ProblemError.not_found(f"Segment {name!r}")
    declaration = deployed.rules.segments[name]
    span = declaration.span
    cur = await conn.execute(
        "SELECT count(*) FROM segment_members WHERE workspace_id = %s AND segment = %s",
        (workspace_id, name),
    )
    size_row = await cur.fetchone()
    cur = await conn.execute(_FLOW, {"ws": workspace_id, "name": name})
    flow = await cur.fetchone()
    assert size_row is not None and flow is not None
    entered_24h, entered_7d, exited_24h, exited_7d = (int(n) for n in flow)
    return SegmentDetail(
        name=name,
        title=declaration.title,
        size=int(size_row[0]),
        definition=SegmentDefinition(
            source=_source_of(deployed.files.get(span.file, ""), span),
            file=span.file,
            line=span.line,
            version=deployed.version,
        ),
        entered=SegmentFlow(last_24h=entered_24h, last_7d=entered_7d),
        exited=SegmentFlow(last_24h=exited_24h, last_7d=exited_7d),
    )
