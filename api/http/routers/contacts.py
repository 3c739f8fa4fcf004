"""``/v1/contacts``: upsert (with identity merge), read, query, delete, tag.

The identity rules live in ``nudgel.api.contacts.store`` (matching, merge,
locks) and ``nudgel.api.contacts.identity`` (normalisation, blocked values); this
module is the HTTP surface.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Path, Query, Request
from nudgel.api.contacts import upsert as upserting
from nudgel.api.contacts.fields import field_types
from nudgel.api.contacts.identity import IdentifierError, identifier_problem
from nudgel.api.contacts.models import (
    ContactDetail,
    ContactOut,
    ContactUpsert,
    DeletedContact,
    TagsAdd,
)
from nudgel.api.contacts.query import compile_where
from nudgel.api.contacts.store import add_tags
from nudgel.api.contacts.views import (
    contact_views,
    detail_view,
    find_pk,
    lock_contact,
)
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router, settings_of
from nudgel.api.http.writes import PostWriter, RequestTransaction, Writer, replayable
from nudgel.api.lists import subscriptions as subscribing
from nudgel.api.problems import ProblemError
from nudgel.api.rules.realtime import Change


class ContactList(ListResponse[ContactOut]):
    pass


router, OPENAPI_TAG = resource_router(
    "/contacts",
    "Contacts",
    "Unified contact profiles: upserted by any identifier, merged when identifiers meet.",
)

IdParam = Annotated[str, Path(description="The contact's id (`con_...`).")]


async def _view(tx: RequestTransaction, pk: int) -> ContactOut:
    views = await contact_views(tx.conn, tx.workspace_id, [pk])
    return views[0]


@router.post(
    "",
    response_model=ContactOut,
    summary="Create or update a contact",
    description=(
        "Finds the contact by any of its identifiers (email, phone, whatsapp_id, external_id)."
        " None: creates it (201). One: updates it (200; the request's non-empty values win)."
        " Several: merges them into the oldest (200; `contact.merged`). Contacts with different"
        " external ids never merge (409). Blocked identifiers are stored but never matched."
        " Each value the request changes records `source` (default `api`) and the time as its"
        " origin (`origins` on the contact's detail). `subscriptions` sets the contact's"
        " status on lists, as `POST /v1/contacts/{id}/subscriptions` does."
    ),
    responses={
        **replayable(200),
        201: {"description": "Created.", "model": ContactOut},
        **problem_responses(409, 422),
    },
)
async def upsert_contact(body: ContactUpsert, writer: PostWriter, request: Request) -> object:
    settings = settings_of(request)
    try:
        identifiers = upserting.identifiers_of(body, settings)
    except IdentifierError as error:
        raise identifier_problem(error) from None
    # Outside the transaction: a signing key generated now is stored whatever happens.
    confirming = await subscribing.confirming_of(request.app, writer.conn)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        saved = await upserting.upsert_contact(tx, confirming, body, identifiers)
        response = await tx.respond(saved.status, saved.contact)
    await subscribing.send_all(request.app, saved.outgoing)
    return response


WhereParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=10_000,
        description='A rules-language condition, e.g. `tag "premium" and fields.plan = "pro"`.'
        " 422 with the diagnostics when it does not check.",
    ),
]


@router.get(
    "",
    response_model=ContactList,
    summary="List contacts",
    description="In id (creation) order; `where` keeps the contacts the condition holds for.",
    responses=problem_responses(422),
)
async def list_contacts(
    auth: Auth, conn: Conn, page: PageParams, where: WhereParam = None
) -> ContactList:
    params: dict[str, Any] = {
        "list_ws": auth.workspace_id,
        "list_after": page.starting_after,
        "list_limit": page.fetch,
    }
    condition = ""
    if where is not None:
        query = compile_where(where, await field_types(conn, auth.workspace_id))
        # The compiled query's own placeholders (p1.., now, workspace_id) do
        # not clash with the list_* names.
        params.update(query.bind(now=time.time_ns() // 1000, workspace_id=auth.workspace_id))
        condition = f" AND c.id IN ({query.sql})"
    cur = await conn.execute(
        "SELECT c.pk FROM contacts c WHERE c.workspace_id = %(list_ws)s"
        " AND (%(list_after)s::text IS NULL OR c.id > %(list_after)s)"
        f"{condition} ORDER BY c.id LIMIT %(list_limit)s",
        params,
    )
    pks = [int(r[0]) for r in await cur.fetchall()]
    rows = await contact_views(conn, auth.workspace_id, pks)
    data, has_more, cursor = page_of(rows, page, lambda c: c.id)
    return ContactList(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{contact_id}",
    response_model=ContactDetail,
    summary="Get a contact",
    description="Profile, fields, tags with colours, subscriptions and the latest events;"
    " what the timeline adds up to (first and last seen, event counts by name, sources) and"
    " where each value came from (`origins`).",
    responses=problem_responses(404),
)
async def get_contact(contact_id: IdParam, auth: Auth, conn: Conn) -> ContactDetail:
    pk = await find_pk(conn, auth.workspace_id, contact_id)
    view = None if pk is None else await detail_view(conn, auth.workspace_id, pk)
    if view is None:
        raise ProblemError.not_found(f"Contact {contact_id!r}")
    return view


@router.delete(
    "/{contact_id}",
    response_model=DeletedContact,
    summary="Delete a contact",
    description="Erases the contact with its events, tags and subscriptions.",
    responses=problem_responses(404),
)
async def delete_contact(contact_id: IdParam, writer: Writer) -> object:
    async with writer.transaction() as tx:
        pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
        # It leaves its segments (segment.exited) before it goes.
        await tx.forget([pk], "contact.deleted")
        await tx.conn.execute("DELETE FROM contacts WHERE pk = %s", (pk,))
        deleted = DeletedContact(id=contact_id)
        await tx.emit("contact.deleted", deleted.model_dump(mode="json"), pk)
        return await tx.respond(200, deleted)


@router.post(
    "/{contact_id}/tags",
    response_model=ContactOut,
    summary="Tag a contact",
    description="Adds the tags (unknown ones are created without a colour); `contact.tagged`.",
    responses={**replayable(200), **problem_responses(404, 409, 422)},
)
async def tag_contact(contact_id: IdParam, body: TagsAdd, writer: PostWriter) -> object:
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
        added = await add_tags(tx, pk, body.tags)
        if added:
            await tx.conn.execute("UPDATE contacts SET updated_at = now() WHERE pk = %s", (pk,))
            tx.touch(pk, Change("contact.tagged", attributes={"updated_at"}))
            await tx.emit("contact.tagged", {"id": contact_id, "tags": added}, pk)
        return await tx.respond(200, await _view(tx, pk))


@router.delete(
    "/{contact_id}/tags/{tag:path}",
    response_model=ContactOut,
    summary="Untag a contact",
    description="Removes the tag from the contact; `contact.untagged`. 404 if it does not carry it.",
    responses=problem_responses(404),
)
async def untag_contact(
    contact_id: IdParam,
    tag: Annotated[str, Path(description="The tag (percent-encoded).")],
    writer: Writer,
) -> object:
    async with writer.transaction() as tx:
        pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
        cur = await tx.conn.execute(
            "DELETE FROM contact_tags WHERE contact_pk = %s AND tag = %s", (pk, tag)
        )
        if cur.rowcount == 0:
            raise ProblemError.not_found(f"Tag {tag!r} on contact {contact_id!r}")
        await tx.conn.execute("UPDATE contacts SET updated_at = now() WHERE pk = %s", (pk,))
        tx.touch(pk, Change("contact.untagged", tags={tag}, attributes={"updated_at"}))
        await tx.emit("contact.untagged", {"id": contact_id, "tags": [tag]}, pk)
        return await tx.respond(200, await _view(tx, pk))
