"""``/v1/contacts``: upsert (with identity merge), read, query, delete, tag.

The identity rules live in ``nudgel.api.contacts.store`` (matching, merge,
locks) and ``nudgel.api.contacts.identity`` (normalisation, blocked values); this
module is the HTTP surface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from nudgel.api.contacts import edits, query
from nudgel.api.contacts import export as exporting
from nudgel.api.contacts import upsert as upserting
from nudgel.api.contacts.export import FORMATS, ExportFormat
from nudgel.api.contacts.identity import IdentifierError, identifier_problem
from nudgel.api.contacts.models import (
    ContactDetail,
    ContactOut,
    ContactUpsert,
    DeletedContact,
    TagsAdd,
    UpsertedContact,
)
from nudgel.api.contacts.search import Q_PATTERN
from nudgel.api.contacts.sorting import SORT_PATTERN
from nudgel.api.contacts.views import (
    detail_view,
    find_pk,
)
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router, settings_of
from nudgel.api.http.writes import PostWriter, Writer, replayable
from nudgel.api.lists import subscriptions as subscribing
from nudgel.api.problems import ProblemError
from pydantic import Field


class ContactList(ListResponse[ContactOut]):
    total_count: int | None = Field(
        default=None,
        description="With `include=total_count`: how many contacts match, counted up to"
        " `NUDGEL_TOTAL_COUNT_MAX` (default 100,000); `null` otherwise.",
    )
    total_count_exact: bool | None = Field(
        default=None,
        description="With `include=total_count`: false when counting stopped at the maximum"
        " (there are more than `total_count`).",
    )


router, OPENAPI_TAG = resource_router(
    "/contacts",
    "Contacts",
    "Unified contact profiles: upserted by any identifier, merged when identifiers meet.",
)

IdParam = Annotated[str, Path(description="The contact's id (`con_...`).")]


@router.post(
    "",
    response_model=UpsertedContact,
    summary="Create or update a contact",
    description=(
        "Finds the contact by any of its identifiers (email, phone, whatsapp_id, external_id)."
        " None: creates it (201). One: updates it (200; the request's non-empty values win)."
        " Several: merges them into the oldest (200; `contact.merged`). Contacts with different"
        " external ids never merge (409). Blocked identifiers are stored but never matched."
        " Each value the request changes records `source` (default `api`) and the time as its"
        " origin (`origins` on the contact's detail). `subscriptions` sets the contact's"
        " status on lists, as `POST /v1/contacts/{id}/subscriptions` does. A custom field the"
        " workspace has not defined is created with the type of its value (string: text,"
        " number, boolean: bool, object or array: json) and listed in `created_fields`, unless"
        " the workspace refuses unknown fields (`fields_strict`). Typed fields are validated:"
        " email, url (http/https), date and timestamp (RFC 3339)."
    ),
    responses={
        **replayable(200),
        201: {"description": "Created.", "model": UpsertedContact},
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


QParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        pattern=Q_PATTERN,
        description="Search: the contacts whose name, email or phone contains this text"
        " (a prefix or any part), case-insensitively; e.g. `ada`, `@example.com`, `+254 712`.",
    ),
]
SortParam = Annotated[
    str | None,
    Query(
        max_length=110,
        pattern=SORT_PATTERN,
        description="Order by `created_at`, `updated_at`, `name`, `email` or `score.NAME` (a"
        " deployed score), `-` first for descending, e.g. `-score.engagement`; ties by contact"
        " id. Contacts without the value come last. Default: by id (creation order).",
    ),
]
IncludeParam = Annotated[
    list[Literal["total_count"]] | None,
    Query(
        description="`total_count`: also count the contacts that match (bounded: see"
        " `total_count`)."
    ),
]


@router.get(
    "",
    response_model=ContactList,
    summary="List contacts",
    description="In id (creation) order, or by `sort`; `where` keeps the contacts the condition"
    " holds for, `q` those whose name, email or phone contains the text; both combine. Pages"
    " by keyset: pass `next_cursor` as `starting_after` with the same `sort`, `where` and `q`.",
    responses=problem_responses(422),
)
async def list_contacts(
    request: Request,
    auth: Auth,
    conn: Conn,
    page: PageParams,
    where: WhereParam = None,
    q: QParam = None,
    sort: SortParam = None,
    include: IncludeParam = None,
) -> ContactList:
    settings = settings_of(request)
    scans = query.ScanLimit(settings.workspace_max_scans, settings.pool_timeout)
    listed = await query.list_contacts(
        conn,
        auth.workspace_id,
        where,
        page.starting_after,
        page.fetch,
        scans,
        q=q,
        sort=sort,
        count_up_to=settings.total_count_max if include else None,
    )
    rows = list(zip(listed.contacts, listed.cursors, strict=True))
    data, has_more, cursor = page_of(rows, page, lambda row: row[1])
    return ContactList(
        data=[contact for contact, _ in data],
        has_more=has_more,
        next_cursor=cursor,
        total_count=listed.total,
        total_count_exact=listed.total_exact,
    )


FormatParam = Annotated[
    ExportFormat,
    Query(
        description="`csv`: the columns the import reads (`POST /v1/imports` takes the file"
        " back); `jsonl`: one contact per line, as `GET /v1/contacts` shows it."
    ),
]


async def _export_turn(request: Request, auth: Auth) -> AsyncIterator[None]:
    """An export is a scan of the workspace: it holds one of its scan turns until
    the last byte is sent (FastAPI ends this dependency after the response)."""
    settings = settings_of(request)
    scans = query.ScanLimit(settings.workspace_max_scans, settings.pool_timeout)
    async with query.scan_turn(auth.workspace_id, scans):
        yield


@router.get(
    "/export",
    summary="Export contacts",
    description="Every contact of the workspace (those `where` holds for), in id order, as"
    " CSV or JSON lines, streamed as it is read: one consistent snapshot, in constant memory"
    " whatever the count. CSV cells that a spreadsheet would run as a formula (`=`, `+`, `-`,"
    " `@`, tab, carriage return) start with a `'`; plain numbers and E.164 phones are left"
    " as they are.",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The contacts (`Content-Disposition: attachment`).",
            "content": {
                FORMATS["csv"]: {"schema": {"type": "string"}},
                FORMATS["jsonl"]: {"schema": {"type": "string"}},
            },
        },
        **problem_responses(422),
    },
    dependencies=[Depends(_export_turn)],
)
async def export_contacts(
    request: Request, auth: Auth, conn: Conn, where: WhereParam = None, format: FormatParam = "csv"
) -> StreamingResponse:
    settings = settings_of(request)
    export = await exporting.open_export(
        conn, auth.workspace_id, where, format, settings.export_batch_size
    )
    return StreamingResponse(
        export.chunks,
        media_type=export.media_type,
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )


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
        deleted = await edits.delete_contact(tx, contact_id)
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
        contact = await edits.tag_contact(tx, contact_id, body.tags)
        return await tx.respond(200, contact)


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
        contact = await edits.untag_contact(tx, contact_id, tag)
        return await tx.respond(200, contact)
