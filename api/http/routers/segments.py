"""``/v1/segments``: the deployed segments, their sizes and their members,
as the real-time evaluation keeps them (``nudgel.api.rules.segments``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from nudgel.api.contacts.models import ContactOut
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.rules import segments
from nudgel.api.rules.segments import Segment, SegmentDetail

router, OPENAPI_TAG = resource_router(
    "/segments",
    "Segments",
    "The segments of the deployed rules: who is in each, kept current as data and time change.",
)


class SegmentList(ListResponse[Segment]):
    pass


class SegmentMembers(ListResponse[ContactOut]):
    pass


@router.get(
    "",
    response_model=SegmentList,
    summary="List segments",
    description="Every deployed segment with its title and current size (the stored, real-time membership). Empty when no rules are deployed.",
)
async def list_segments(auth: Auth, conn: Conn, page: PageParams) -> SegmentList:
    rows = await segments.list_segments(conn, auth.workspace_id, page.starting_after, page.fetch)
    data, has_more, cursor = page_of(rows, page, lambda s: s.name)
    return SegmentList(data=data, has_more=has_more, next_cursor=cursor)


NameParam = Annotated[str, Path(description="The segment's name.")]


@router.get(
    "/{name}",
    response_model=SegmentDetail,
    summary="Get a segment",
    description="The segment's declaration as deployed (source text, file, line), its title"
    " and size, and how many contacts entered and exited it over the last 24 hours and 7"
    " days (from the rule history, at the workspace's test clock when it has one).",
    responses=problem_responses(404),
)
async def get_segment(name: NameParam, auth: Auth, conn: Conn) -> SegmentDetail:
    return await segments.segment_detail(conn, auth.workspace_id, name)


@router.get(
    "/{name}/contacts",
    response_model=SegmentMembers,
    summary="A segment's contacts",
    description="The contacts in the segment now, by contact id.",
    responses=problem_responses(404),
)
async def segment_contacts(
    name: NameParam,
    auth: Auth,
    conn: Conn,
    page: PageParams,
) -> SegmentMembers:
    views = await segments.segment_contacts(
        conn, auth.workspace_id, name, page.starting_after, page.fetch
    )
    data, has_more, cursor = page_of(views, page, lambda c: c.id)
    return SegmentMembers(data=data, has_more=has_more, next_cursor=cursor)
