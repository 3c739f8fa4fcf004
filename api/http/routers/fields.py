"""``/v1/fields``: the custom fields a workspace's contacts may carry.

A field is declared once with a type; rules read it as ``fields.NAME`` and
contact upserts validate values against it. Definitions are
``nudgel.api.contacts.field_definitions``; this module is the HTTP surface.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, status
from nudgel.api.contacts import field_definitions
from nudgel.api.contacts.field_definitions import (
    FIELDS,
    DeletedField,
    FieldCreate,
    FieldDefinition,
)
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, Writer, replayable

router, OPENAPI_TAG = resource_router(
    "/fields", "Fields", "Custom contact fields: declared once per workspace, with a type."
)


class FieldList(ListResponse[FieldDefinition]):
    pass


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FieldDefinition,
    summary="Create a field",
    description='Declares a custom field with its type; contacts\' `fields.NAME` values are validated against it and rules read it as `fields.NAME`. Writes also create fields on first use (type inferred), unless the workspace is strict. Fires `field.created`. Example: `{"name": "ltv", "type": "number"}`.',
    response_description="Created.",
    responses={**replayable(201), **problem_responses(409, 422)},
)
async def create_field(body: FieldCreate, writer: PostWriter) -> object:
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        field = await FIELDS.create(tx, body)
        return await tx.respond(201, field)


@router.get(
    "",
    response_model=FieldList,
    summary="List fields",
    description='The workspace\'s custom fields in name order, e.g. `{"object": "list", "data": [{"object": "field", "name": "ltv", "type": "number", ...}], "has_more": false}`.',
    responses=problem_responses(422),
)
async def list_fields(auth: Auth, conn: Conn, page: PageParams) -> FieldList:
    rows = await FIELDS.page(conn, auth.workspace_id, page.starting_after, page.fetch)
    data, has_more, cursor = page_of(rows, page, lambda f: f.name)
    return FieldList(data=data, has_more=has_more, next_cursor=cursor)


NameParam = Annotated[str, Path(description="The field's name.")]


@router.get(
    "/{name}",
    response_model=FieldDefinition,
    summary="Get a field",
    description="One custom field by name, e.g. `GET /v1/fields/ltv`. 404 when the workspace has none of that name.",
    responses=problem_responses(404),
)
async def get_field(name: NameParam, auth: Auth, conn: Conn) -> FieldDefinition:
    return await FIELDS.get(conn, auth.workspace_id, name)


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
        deleted = await field_definitions.delete_field(tx, name)
        return await tx.respond(200, deleted)
