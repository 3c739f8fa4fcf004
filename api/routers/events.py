"""``/v1/events`` and ``/v1/contacts/{id}/timeline``: what contacts did, in order.

An event names its contact by exactly one identifier. ``contact_id`` must
exist (404); an email, phone or external id goes through the upsert
(``nudgel.api.contacts_store.upsert``: the same normalisation, advisory locks,
blocked values and merge rules), so a value that matches nobody creates the
contact. The event row, ``event.recorded`` (and ``contact.created``) and the
idempotency record commit together.

Event ids are ``ev_`` and the row's number, as the contact detail shows them.
A timeline is ordered by (``at``, id) and keyset-paginated on that pair: the
cursor is the id of the last event the client has.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Request
from nudgel.api.auth import Auth
from nudgel.api.contact_views import contact_views, find_pk, lock_contact
from nudgel.api.contacts_store import UpsertInput, UpsertResult, upsert, with_retries
from nudgel.api.identity import IdentifierError, Identifiers, Kind, normalise_blocked
from nudgel.api.mutation import PostWriter, Transaction, replayable
from nudgel.api.pagination import ListResponse, PageParams, page_of
from nudgel.api.problems import FieldError, ProblemError, problem_responses, problem_type
from nudgel.api.routers.common import Conn, identifier_problem, resource_router, settings_of
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

router, OPENAPI_TAG = resource_router(
    "",
    "Events",
    "What contacts did: events recorded against a contact, and its timeline.",
)

KNOWN_SOURCES = ("form", "api", "ecommerce", "campaign", "page")
_IDENTIFYING = ("contact_id", "email", "phone", "external_id")

# Printable text without surrounding white space (as tag names).
_TEXT = r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$"
EventName = Annotated[str, StringConstraints(pattern=_TEXT, min_length=1, max_length=200)]
Source = Annotated[str, StringConstraints(pattern=_TEXT, min_length=1, max_length=100)]
Identifier = Annotated[str, StringConstraints(max_length=320)]

# RFC 3339 date-time: the offset (Z or +hh:mm) is required.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339(text: Any) -> datetime:
    if not isinstance(text, str) or not _RFC3339.match(text):
        raise ValueError(
            "must be an RFC 3339 date-time with an offset, e.g. 2026-01-02T15:04:05+03:00"
        )
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError) as error:
        # OverflowError: in UTC the instant falls outside years 1 to 9999.
        raise ValueError(f"is not a valid date-time: {error}") from None


def _storable(value: Any, path: str = "") -> Any:
    """Reject what PostgreSQL's jsonb cannot hold: NUL characters, non-finite numbers."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"props{path} must not contain NUL characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"props{path} must be a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError(f"the keys of props{path} must not contain NUL characters")
            _storable(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable(item, f"{path}/{index}")
    return value


# A string only (no unix numbers, no naive times), stored and shown in UTC.
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
Props = Annotated[dict[str, Any], AfterValidator(_storable)]


class EventCreate(BaseModel):
    """Record an event on the contact named by exactly one identifier."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.co.ke",
                    "name": "order.placed",
                    "at": "2026-01-02T15:04:05+03:00",
                    "props": {"total": 1250, "currency": "KES"},
                    "source": "ecommerce",
                }
            ]
        },
    )

    contact_id: Identifier | None = Field(
        default=None, description="An existing contact (`con_...`); 404 if there is none."
    )
    email: Identifier | None = Field(
        default=None, description="Normalised as on upsert; creates the contact when new."
    )
    phone: Identifier | None = Field(
        default=None, description="Normalised to E.164 as on upsert; creates the contact when new."
    )
    external_id: Identifier | None = Field(
        default=None, description="Your id for the person; creates the contact when new."
    )
    name: EventName = Field(description="What happened, e.g. `order.placed`.")
    at: Timestamp | None = Field(
        default=None,
        description="When it happened: RFC 3339 with an offset. Default: the server's now.",
    )
    props: Props = Field(default_factory=dict, description="Any JSON object.")
    source: Source | None = Field(
        default=None,
        description="Where it came from: `form`, `api`, `ecommerce`, `campaign`, `page`,"
        " or a custom name.",
    )

    @field_validator(*_IDENTIFYING, mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _one_identifier(self) -> EventCreate:
        given = [k for k in _IDENTIFYING if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of contact_id, email, phone, external_id"
                f" (got {', '.join(given) if given else 'none'})"
            )
        return self


class EventOut(BaseModel):
    object: Literal["event"] = "event"
    id: str = Field(description="`ev_` and the event's number.")
    contact_id: str = Field(description="The contact whose timeline carries it.")
    name: str
    at: datetime = Field(description="In UTC.")
    props: dict[str, Any]
    source: str | None


class Timeline(ListResponse[EventOut]):
    pass


_EVENT_COLUMNS = "'ev_' || e.pk AS id, c.id AS contact_id, e.name, e.at, e.props, e.source"


async def _insert(tx: Transaction, pk: int, body: EventCreate) -> EventOut:
    cur = tx.conn.cursor(row_factory=dict_row)
    await cur.execute(
        "WITH e AS (INSERT INTO events (contact_pk, name, at, props, source)"
        " VALUES (%s, %s, coalesce(%s, now()), %s, %s) RETURNING *)"
        f" SELECT {_EVENT_COLUMNS} FROM e JOIN contacts c ON c.pk = e.contact_pk",
        (pk, body.name, body.at, Jsonb(body.props), body.source),
    )
    row = await cur.fetchone()
    assert row is not None
    event = EventOut.model_validate({**row, "at": row["at"].astimezone(UTC)})
    await tx.emit("event.recorded", event.model_dump(mode="json"), pk)
    return event


@router.post(
    "/events",
    response_model=EventOut,
    status_code=201,
    summary="Record an event",
    description=(
        "Records an event on the contact named by exactly one of `contact_id`, `email`,"
        " `phone` or `external_id`. An email, phone or external id that matches nobody creates"
        " the contact (`contact.created`); an unknown `contact_id` is 404. Fires"
        " `event.recorded`."
    ),
    responses={**replayable(201), **problem_responses(404, 409, 422)},
)
async def record_event(body: EventCreate, writer: PostWriter, request: Request) -> object:
    identifiers: Identifiers | None = None
    if body.contact_id is None:
        settings = settings_of(request)
        region = settings.default_phone_region
        kinds: tuple[Kind, ...] = ("email", "phone", "external_id")
        try:
            identifiers = Identifiers.parse(
                {kind: getattr(body, kind) for kind in kinds},
                region,
                normalise_blocked(settings.blocked_identifiers, region),
            )
        except IdentifierError as error:
            raise identifier_problem(error) from None
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        if identifiers is None:
            assert body.contact_id is not None
            pk = await lock_contact(tx.conn, tx.workspace_id, body.contact_id)
            event = await _insert(tx, pk, body)
        else:
            req = UpsertInput(
                identifiers=identifiers, name=None, push_tokens=[], tags=[], fields_json="{}"
            )

            async def attempt() -> EventOut:
                result: UpsertResult = await upsert(tx, req)
                if result.status == 201:
                    views = await contact_views(tx.conn, tx.workspace_id, [result.pk])
                    await tx.emit("contact.created", views[0].model_dump(mode="json"), result.pk)
                return await _insert(tx, result.pk, body)

            event = await with_retries(tx.conn, attempt)
        return await tx.respond(201, event)


_EVENT_ID = re.compile(r"^ev_([1-9][0-9]{0,17})$")


@router.get(
    "/contacts/{contact_id}/timeline",
    response_model=Timeline,
    summary="A contact's timeline",
    description=(
        "The contact's events in chronological order (`at`, then id), including those a merge"
        " brought over and the merge itself. `starting_after` is an event id of this timeline."
    ),
    responses=problem_responses(404),
)
async def contact_timeline(
    contact_id: Annotated[str, Path(description="The contact's id (`con_...`).")],
    auth: Auth,
    conn: Conn,
    page: PageParams,
) -> Timeline:
    pk = await find_pk(conn, auth.workspace_id, contact_id)
    if pk is None:
        raise ProblemError.not_found(f"Contact {contact_id!r}")
    cur = conn.cursor(row_factory=dict_row)
    after: tuple[datetime, int] | None = None
    if page.starting_after is not None:
        match = _EVENT_ID.match(page.starting_after)
        row = None
        if match is not None:
            await cur.execute(
                "SELECT at, pk FROM events WHERE pk = %s AND contact_pk = %s",
                (int(match.group(1)), pk),
            )
            row = await cur.fetchone()
        if row is None:
            detail = f"starting_after {page.starting_after!r} is not an event of this timeline."
            raise ProblemError(
                422,
                "Invalid cursor",
                detail,
                type_=problem_type("validation"),
                errors=[
                    FieldError(
                        location="query", pointer="/starting_after", detail=detail, code="invalid"
                    )
                ],
            )
        after = (row["at"], int(row["pk"]))
    await cur.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events e JOIN contacts c ON c.pk = e.contact_pk"
        " WHERE e.contact_pk = %(pk)s AND c.workspace_id = %(ws)s"
        " AND (%(after_at)s::timestamptz IS NULL OR (e.at, e.pk) > (%(after_at)s, %(after_pk)s))"
        " ORDER BY e.at, e.pk LIMIT %(limit)s",
        {
            "pk": pk,
            "ws": auth.workspace_id,
            "after_at": None if after is None else after[0],
            "after_pk": None if after is None else after[1],
            "limit": page.fetch,
        },
    )
    rows = [
        EventOut.model_validate({**r, "at": r["at"].astimezone(UTC)}) for r in await cur.fetchall()
    ]
    data, has_more, cursor = page_of(rows, page, lambda e: e.id)
    return Timeline(data=data, has_more=has_more, next_cursor=cursor)
