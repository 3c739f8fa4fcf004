"""``/v1/fields``: the custom fields a workspace's contacts may carry.

A field is declared once with a type; rules read it as ``fields.NAME`` and
contact upserts validate values against it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, status
from nudgel.api.contacts.fields import field_types
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, Writer, replayable
from nudgel.api.problems import ProblemError
from nudgel.api.rules.compiling import compile_for_workspace
from nudgel.api.rules.store import current_rules
from nudgel.dsl.parser import KEYWORDS
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

router, OPENAPI_TAG = resource_router(
    "/fields", "Fields", "Custom contact fields: declared once per workspace, with a type."
)

FieldType = Literal["text", "number", "bool", "date", "timestamp", "email", "url", "json"]
# An identifier of the rules language, so `fields.NAME` can name it.
FieldName = Annotated[
    str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$", min_length=1, max_length=63)
]


class FieldCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "ltv", "type": "number"}]}
    )

    name: FieldName = Field(
        description="Lower-case identifier, `[a-z_][a-z0-9_]*`, not a keyword of the rules"
        " language (`segment`, `count`, `tag` ...), so rules can name it `fields.NAME`."
    )

    @field_validator("name")
    @classmethod
    def _not_a_keyword(cls, name: str) -> str:
        if name in KEYWORDS:
            raise ValueError(f"`{name}` is a keyword of the rules language: choose another name")
        return name

    type: FieldType = Field(description="The type values must have.")


class FieldDefinition(BaseModel):
    object: Literal["field"] = "field"
    name: str
    type: FieldType
    created_at: datetime


class FieldList(ListResponse[FieldDefinition]):
    pass


class DeletedField(BaseModel):
    object: Literal["field"] = "field"
    name: str
    deleted: Literal[True] = True


async def _refuse_if_rules_read(conn: AsyncConnection, workspace_id: int, name: str) -> None:
    """409 when the deployed rules would no longer compile without the field."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None:
        return
    definitions = await field_types(conn, workspace_id)
    definitions.pop(name, None)
    # CPU-bound (seconds for thousands of segments): not on the event loop.
    result = await asyncio.to_thread(compile_for_workspace, deployed.files, definitions)
    if result.rules is None:
        first = next(d for d in result.diagnostics if d.is_error)
        raise ProblemError.conflict(
            f"Field {name!r} is used by the deployed rules (v{deployed.version}):"
            f" {first.span.file}:{first.span.line}:{first.span.column}: {first.message}."
            " Deploy rules that do not use it first."
        )


def _not_found(name: str) -> ProblemError:
    return ProblemError.not_found(f"Field {name!r}")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FieldDefinition,
    summary="Create a field",
    response_description="Created.",
    responses={**replayable(201), **problem_responses(409, 422)},
)
async def create_field(body: FieldCreate, writer: PostWriter) -> object:
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        cur = tx.conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING name, type, created_at",
            (tx.workspace_id, body.name, body.type),
        )
        row = await cur.fetchone()
        if row is None:
            raise ProblemError.conflict(f"Field {body.name!r} exists already.")
        field = FieldDefinition.model_validate(row)
        await tx.emit("field.created", field.model_dump(mode="json"))
        return await tx.respond(201, field)


@router.get("", response_model=FieldList, summary="List fields", responses=problem_responses(422))
async def list_fields(auth: Auth, conn: Conn, page: PageParams) -> FieldList:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT name, type, created_at FROM field_definitions"
        " WHERE workspace_id = %s AND (%s::text IS NULL OR name > %s) ORDER BY name LIMIT %s",
        (auth.workspace_id, page.starting_after, page.starting_after, page.fetch),
    )
    rows = [FieldDefinition.model_validate(r) for r in await cur.fetchall()]
    data, has_more, cursor = page_of(rows, page, lambda f: f.name)
    return FieldList(data=data, has_more=has_more, next_cursor=cursor)


NameParam = Annotated[str, Path(description="The field's name.")]


@router.get(
    "/{name}",
    response_model=FieldDefinition,
    summary="Get a field",
    responses=problem_responses(404),
)
async def get_field(name: NameParam, auth: Auth, conn: Conn) -> FieldDefinition:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT name, type, created_at FROM field_definitions WHERE workspace_id = %s AND name = %s",
        (auth.workspace_id, name),
    )
    row = await cur.fetchone()
    if row is None:
        raise _not_found(name)
    return FieldDefinition.model_validate(row)


@router.delete(
    "/{name}",
    response_model=DeletedField,
    summary="Delete a field",
    description="Contacts keep their values; rules can no longer read them as a typed field."
    " 409 while the deployed rules use the field (deploy rules without it first).",
    responses=problem_responses(404, 409),
)
async def delete_field(name: NameParam, writer: Writer) -> object:
    async with writer.transaction() as tx:
        await _refuse_if_rules_read(tx.conn, tx.workspace_id, name)
        cur = tx.conn.cursor(row_factory=dict_row)
        await cur.execute(
            "DELETE FROM field_definitions WHERE workspace_id = %s AND name = %s"
            " RETURNING name, type, created_at",
            (tx.workspace_id, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise _not_found(name)
        await tx.emit("field.deleted", FieldDefinition.model_validate(row).model_dump(mode="json"))
        return await tx.respond(200, DeletedField(name=name))
