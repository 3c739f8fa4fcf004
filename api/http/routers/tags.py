"""``/v1/tags``: tag definitions (their colours).

Contacts carry tags as free text (``contact_tags``); a definition here gives a
tag its colour and a creation time. Rules read tags as ``tag "NAME"``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, status
from nudgel.api.contacts.models import TagName
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, Writer, replayable
from nudgel.api.problems import ProblemError
from psycopg.rows import dict_row
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

router, OPENAPI_TAG = resource_router(
    "/tags", "Tags", "Tag definitions: the colour a tag is shown with."
)

Color = Annotated[
    str,
    StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$"),
    # Stored lower-case so equal colours compare equal.
    AfterValidator(str.lower),
]
_COLOR_DESCRIPTION = "`#rrggbb`, stored in lower case; null for none."


class TagCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "premium", "color": "#ff8800"}]}
    )

    name: TagName = Field(description="The tag as contacts carry it.")
    color: Color | None = Field(default=None, description=_COLOR_DESCRIPTION)


class TagUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"color": "#00aa55"}]}
    )

    color: Color | None = Field(default=None, description=_COLOR_DESCRIPTION + " Omit to keep.")


class Tag(BaseModel):
    object: Literal["tag"] = "tag"
    name: str
    color: str | None
    created_at: datetime
    updated_at: datetime


class TagList(ListResponse[Tag]):
    pass


_COLUMNS = "name, color, created_at, updated_at"
NameParam = Annotated[str, Path(description="The tag's name (percent-encoded).")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Tag,
    summary="Create a tag",
    response_description="Created.",
    responses={**replayable(201), **problem_responses(409, 422)},
)
async def create_tag(body: TagCreate, writer: PostWriter) -> object:
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        cur = tx.conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO tags (workspace_id, name, color) VALUES (%s, %s, %s)"
            f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
            (tx.workspace_id, body.name, body.color),
        )
        row = await cur.fetchone()
        if row is None:
            raise ProblemError.conflict(f"Tag {body.name!r} exists already.")
        tag = Tag.model_validate(row)
        await tx.emit("tag.created", tag.model_dump(mode="json"))
        return await tx.respond(201, tag)


@router.get("", response_model=TagList, summary="List tags", responses=problem_responses(422))
async def list_tags(auth: Auth, conn: Conn, page: PageParams) -> TagList:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM tags"
        " WHERE workspace_id = %s AND (%s::text IS NULL OR name > %s) ORDER BY name LIMIT %s",
        (auth.workspace_id, page.starting_after, page.starting_after, page.fetch),
    )
    rows = [Tag.model_validate(r) for r in await cur.fetchall()]
    data, has_more, cursor = page_of(rows, page, lambda t: t.name)
    return TagList(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{name:path}", response_model=Tag, summary="Get a tag", responses=problem_responses(404)
)
async def get_tag(name: NameParam, auth: Auth, conn: Conn) -> Tag:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM tags WHERE workspace_id = %s AND name = %s",
        (auth.workspace_id, name),
    )
    row = await cur.fetchone()
    if row is None:
        raise ProblemError.not_found(f"Tag {name!r}")
    return Tag.model_validate(row)


@router.patch(
    "/{name:path}",
    response_model=Tag,
    summary="Update a tag",
    description="Changes the colour. Fires `tag.updated` with `previous_attributes` when it changed.",
    responses=problem_responses(404, 422),
)
async def update_tag(name: NameParam, body: TagUpdate, writer: Writer) -> object:
    async with writer.transaction() as tx:
        cur = tx.conn.cursor(row_factory=dict_row)
        # FOR UPDATE: the previous colour in the event is the one this update replaced.
        await cur.execute(
            f"SELECT {_COLUMNS} FROM tags WHERE workspace_id = %s AND name = %s FOR UPDATE",
            (tx.workspace_id, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise ProblemError.not_found(f"Tag {name!r}")
        before = Tag.model_validate(row)
        if "color" not in body.model_fields_set or body.color == before.color:
            return await tx.respond(200, before)
        await cur.execute(
            f"UPDATE tags SET color = %s, updated_at = now() WHERE workspace_id = %s AND name = %s"
            f" RETURNING {_COLUMNS}",
            (body.color, tx.workspace_id, name),
        )
        after = Tag.model_validate(await cur.fetchone())
        await tx.emit(
            "tag.updated",
            {**after.model_dump(mode="json"), "previous_attributes": {"color": before.color}},
        )
        return await tx.respond(200, after)
