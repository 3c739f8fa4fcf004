"""``/v1/segments``: the deployed segments, their sizes and their members,
as the real-time evaluation keeps them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from nudgel.api.contacts.models import ContactOut
from nudgel.api.contacts.views import contact_views
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.problems import ProblemError
from nudgel.api.rules.store import current_rules
from pydantic import BaseModel, Field

router, OPENAPI_TAG = resource_router(
    "/segments",
    "Segments",
    "The segments of the deployed rules: who is in each, kept current as data and time change.",
)


class Segment(BaseModel):
    object: Literal["segment"] = "segment"
    name: str
    title: str | None = Field(description="The title given in the rules, if any.")
    size: int = Field(description="How many contacts are in it now.")


class SegmentList(ListResponse[Segment]):
    pass


class SegmentMembers(ListResponse[ContactOut]):
    pass


@router.get("", response_model=SegmentList, summary="List segments")
async def list_segments(auth: Auth, conn: Conn, page: PageParams) -> SegmentList:
    deployed = await current_rules(conn, auth.workspace_id)
    if deployed is None:
        return SegmentList(data=[], has_more=False)
    names = sorted(
        name
        for name in deployed.rules.segments
        if page.starting_after is None or name > page.starting_after
    )[: page.fetch]
    cur = await conn.execute(
        "SELECT segment, count(*) FROM segment_members"
        " WHERE workspace_id = %s AND segment = ANY(%s) GROUP BY segment",
        (auth.workspace_id, names),
    )
    sizes: dict[str, int] = {r[0]: int(r[1]) for r in await cur.fetchall()}
    rows = [
        Segment(name=name, title=deployed.rules.segments[name].title, size=sizes.get(name, 0))
        for name in names
    ]
    data, has_more, cursor = page_of(rows, page, lambda s: s.name)
    return SegmentList(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{name}/contacts",
    response_model=SegmentMembers,
    summary="A segment's contacts",
    description="The contacts in the segment now, by contact id.",
    responses=problem_responses(404),
)
async def segment_contacts(
    name: Annotated[str, Path(description="The segment's name.")],
    auth: Auth,
    conn: Conn,
    page: PageParams,
) -> SegmentMembers:
    deployed = await current_rules(conn, auth.workspace_id)
    if deployed is None or name not in deployed.rules.segments:
        raise ProblemError.not_found(f"Segment {name!r}")
    cur = await conn.execute(
        "SELECT c.pk FROM segment_members m JOIN contacts c ON c.pk = m.contact_pk"
        " WHERE m.workspace_id = %s AND m.segment = %s"
        " AND (%s::text IS NULL OR c.id > %s) ORDER BY c.id LIMIT %s",
        (auth.workspace_id, name, page.starting_after, page.starting_after, page.fetch),
    )
    pks = [int(r[0]) for r in await cur.fetchall()]
    views = await contact_views(conn, auth.workspace_id, pks)
    data, has_more, cursor = page_of(views, page, lambda c: c.id)
    return SegmentMembers(data=data, has_more=has_more, next_cursor=cursor)
