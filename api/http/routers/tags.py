"""``/v1/tags``: tag definitions (their colours); deleting one untags every contact.

Contacts carry tags as free text (``contact_tags``); a definition here gives a
tag its colour and a creation time. Rules read tags as ``tag "NAME"``.
Definitions are ``nudgel.api.contacts.tags``; this module is the HTTP surface.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, status
from nudgel.api.contacts import tags
from nudgel.api.contacts.tags import TAGS, DeletedTag, Tag, TagCreate, TagUpdate
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, Writer, replayable

router, OPENAPI_TAG = resource_router(
    "/tags", "Tags", "Tag definitions: the colour a tag is shown with."
)


class TagList(ListResponse[Tag]):
    pass


NameParam = Annotated[str, Path(description="The tag's name (percent-encoded).")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Tag,
    summary="Create a tag",
    description='Defines a tag and its colour (contacts may carry tags that have no definition). Fires `tag.created`. Example: `{"name": "premium", "color": "#ff8800"}`.',
    response_description="Created.",
    responses={**replayable(201), **problem_responses(409, 422)},
)
async def create_tag(body: TagCreate, writer: PostWriter) -> object:
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        tag = await TAGS.create(tx, body)
        return await tx.respond(201, tag)


@router.get(
    "",
    response_model=TagList,
    summary="List tags",
    description="The workspace's tag definitions in name order, with their colours.",
    responses=problem_responses(422),
)
async def list_tags(auth: Auth, conn: Conn, page: PageParams) -> TagList:
    rows = await TAGS.page(conn, auth.workspace_id, page.starting_after, page.fetch)
    data, has_more, cursor = page_of(rows, page, lambda t: t.name)
    return TagList(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{name:path}",
    response_model=Tag,
    summary="Get a tag",
    description="One tag definition by name (percent-encoded), e.g. `GET /v1/tags/premium`. 404 when it is not defined.",
    responses=problem_responses(404),
)
async def get_tag(name: NameParam, auth: Auth, conn: Conn) -> Tag:
    return await TAGS.get(conn, auth.workspace_id, name)


@router.patch(
    "/{name:path}",
    response_model=Tag,
    summary="Update a tag",
    description="Changes the colour. Fires `tag.updated` with `previous_attributes` when it changed.",
    responses=problem_responses(404, 422),
)
async def update_tag(name: NameParam, body: TagUpdate, writer: Writer) -> object:
    async with writer.transaction() as tx:
        tag = await tags.update_tag(tx, name, body)
        return await tx.respond(200, tag)


@router.delete(
    "/{name:path}",
    response_model=DeletedTag,
    summary="Delete a tag",
    description="Removes the definition and the tag from every contact of the workspace: each"
    " such contact gets `contact.untagged` and is re-evaluated (segments that read the tag let"
    " it go, with `segment.exited`), then `tag.deleted`. Deployed rules may still read"
    ' `tag "NAME"`: a tag nobody carries is legal, so they do not block the deletion. 404 when'
    " neither a definition nor a contact has the tag.",
    responses=problem_responses(404),
)
async def delete_tag(name: NameParam, writer: Writer) -> object:
    async with writer.transaction() as tx:
        deleted = await tags.delete_tag(tx, name)
        return await tx.respond(200, deleted)
