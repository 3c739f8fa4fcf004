"""Events: what contacts did, recorded on their timelines.

An event names its contact by exactly one identifier. ``contact_id`` must
exist (404); an email, phone or external id goes through the upsert
(``nudgel.api.contacts.store.upsert``: the same normalisation, advisory locks,
blocked values and merge rules), so a value that matches nobody creates the
contact. The event row and ``event.recorded`` (and ``contact.created``)
commit in the caller's transaction.

``traits`` (the body of ``POST /v1/contacts``, the same model and checks) are
applied in that same upsert, with the event's source: their identifiers join
the identifying one (or the ``contact_id`` contact), so they can merge
contacts, into the oldest, and the event is recorded on the survivor. A trait
identifier of the identifying kind must be that same value (422): an event
cannot both find a contact by an email and change that email.

Event ids are ``ev_`` and the row's number, as the contact detail shows them.
A timeline is ordered by (``at``, id) and keyset-paginated on that pair.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from nudgel.api.contacts.fields import fields_for_write
from nudgel.api.contacts.identity import (
    KINDS,
    IdentifierError,
    Identifiers,
    Kind,
    identifier_problem,
    normalise_blocked,
)
from nudgel.api.contacts.limits import check_fields, check_props
from nudgel.api.contacts.models import DEFAULT_SOURCE, PRINTABLE_TEXT, ContactTraits, Source
from nudgel.api.contacts.store import UpsertInput, upsert, with_retries
from nudgel.api.contacts.views import emit_upsert, lock_contact
from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.api.rules.realtime import Change
from nudgel.api.settings import Settings
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection
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

__all__ = [
    "KNOWN_SOURCES",
    "EventCreate",
    "EventOut",
    "Timestamp",
    "event_identifiers",
    "insert_event",
    "record_event",
    "timeline",
]

KNOWN_SOURCES = ("form", "api", "ecommerce", "campaign", "page")
_IDENTIFYING = ("contact_id", "email", "phone", "external_id")

EventName = Annotated[str, StringConstraints(pattern=PRINTABLE_TEXT, min_length=1, max_length=200)]
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
                },
                {
                    "email": "ada@example.co.ke",
                    "name": "form.submitted",
                    "source": "form",
                    "traits": {"name": "Ada Wanjiku", "phone": "+254712345678"},
                },
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
        " or a custom name. Recorded as the origin of the values `traits` change (`api` when"
        " absent).",
    )
    traits: ContactTraits | None = Field(
        default=None,
        description="Profile attributes and custom field values the event brings, validated and"
        " applied as `POST /v1/contacts` applies its body: identifiers may match other contacts"
        " and merge them (into the oldest; the event lands on the survivor), different external"
        " ids are 409, and each value that changes records the event's `source` and the time of"
        " the write as its origin. An identifier of the identifying kind must be the same value.",
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

    @property
    def identifying(self) -> Kind | None:
        """The identifier kind naming the contact; None for ``contact_id``."""
        return next((k for k in KINDS if getattr(self, k, None) is not None), None)


class EventOut(BaseModel):
    object: Literal["event"] = "event"
    id: str = Field(description="`ev_` and the event's number.")
    contact_id: str = Field(description="The contact whose timeline carries it.")
    name: str
    at: datetime = Field(description="In UTC.")
    props: dict[str, Any]
    source: str | None


_EVENT_COLUMNS = "'ev_' || e.pk AS id, c.id AS contact_id, e.name, e.at, e.props, e.source"


async def insert_event(tx: Transaction, pk: int, body: EventCreate) -> EventOut:
    cur = tx.conn.cursor(row_factory=dict_row)
    await cur.execute(
        # With no `at`: now, or the test clock's instant in a test workspace.
        "WITH e AS (INSERT INTO events (contact_pk, name, at, props, source)"
        " VALUES (%s, %s, coalesce(%s, (SELECT coalesce(test_clock, now()) FROM workspaces"
        " WHERE id = %s)), %s, %s) RETURNING *)"
        f" SELECT {_EVENT_COLUMNS} FROM e JOIN contacts c ON c.pk = e.contact_pk",
        (pk, body.name, body.at, tx.workspace_id, Jsonb(body.props), body.source),
    )
    row = await cur.fetchone()
    assert row is not None
    event = EventOut.model_validate({**row, "at": row["at"].astimezone(UTC)})
    await tx.emit("event.recorded", event.model_dump(mode="json"), pk)
    tx.touch(pk, Change(f"event.recorded {body.name}", events={body.name}))
    return event


def _identifier_problem(error: IdentifierError, within: str) -> ProblemError:
    problem = identifier_problem(error)
    if within and problem.errors:
        # The same problem, pointing into the traits object.
        problem.errors = [
            e.model_copy(update={"pointer": within + e.pointer}) for e in problem.errors
        ]
    return problem


def _parse(raw: dict[Kind, str | None], settings: Settings, within: str) -> Identifiers:
    region = settings.default_phone_region
    try:
        return Identifiers.parse(
            raw, region, normalise_blocked(settings.blocked_identifiers, region)
        )
    except IdentifierError as error:
        raise _identifier_problem(error, within) from None


def event_identifiers(body: EventCreate, settings: Settings) -> Identifiers:
    """The identifying value and the traits' identifiers, normalised, as one request's
    (and the sizes of its props and traits checked)."""
    check_props(body.props, settings)
    if body.traits is not None:
        check_fields(body.traits.fields, settings, "/traits")
    kind = body.identifying
    ids = (
        _parse({kind: getattr(body, kind)}, settings, "") if kind else Identifiers({}, frozenset())
    )
    if body.traits is None:
        return ids
    traits = _parse({k: getattr(body.traits, k) for k in KINDS}, settings, "/traits")
    if kind is not None and kind in traits.values and traits.values[kind] != ids.values[kind]:
        detail = (
            f"traits.{kind} {traits.values[kind]!r} is not the identifying {kind}"
            f" {ids.values[kind]!r}: an event finds its contact by one value and cannot change"
            " it; upsert the contact to change it."
        )
        raise ProblemError(
            422,
            "Conflicting identifier",
            detail,
            type_=problem_type("validation"),
            errors=[
                FieldError(
                    location="body", pointer=f"/traits/{kind}", detail=detail, code="conflict"
                )
            ],
        )
    return Identifiers({**traits.values, **ids.values}, ids.blocked | traits.blocked)


async def record_event(tx: Transaction, body: EventCreate, identifiers: Identifiers) -> EventOut:
    """Record ``body`` on its contact (``identifiers`` from :func:`event_identifiers`),
    applying its traits as an upsert first."""
    traits = body.traits
    if body.contact_id is not None and traits is None:
        pk = await lock_contact(tx.conn, tx.workspace_id, body.contact_id)
        return await insert_event(tx, pk, body)
    fields_json = "{}"
    if traits is not None and traits.fields:
        fields_json = (await fields_for_write(tx, traits.fields, "/traits")).fields_json
    req = UpsertInput(
        identifiers=identifiers,
        name=traits.name if traits is not None else None,
        push_tokens=traits.push_tokens if traits is not None else [],
        tags=traits.tags if traits is not None else [],
        fields_json=fields_json,
        source=body.source or DEFAULT_SOURCE,
        # With contact_id, the upsert locks the contact itself, after the
        # identifier locks (the order every upsert takes them in).
        anchor_id=body.contact_id,
    )

    async def attempt() -> EventOut:
        result = await upsert(tx, req)
        await emit_upsert(tx, result)
        return await insert_event(tx, result.pk, body)

    return await with_retries(tx.conn, attempt)


_EVENT_ID = re.compile(r"^ev_([1-9][0-9]{0,17})$")


def _invalid_cursor(cursor: str) -> ProblemError:
    detail = f"starting_after {cursor!r} is not an event of this timeline."
    return ProblemError(
        422,
        "Invalid cursor",
        detail,
        type_=problem_type("validation"),
        errors=[
            FieldError(location="query", pointer="/starting_after", detail=detail, code="invalid")
        ],
    )


async def timeline(
    conn: AsyncConnection, workspace_id: int, pk: int, starting_after: str | None, limit: int
) -> list[EventOut]:
    """Up to ``limit`` events of contact ``pk`` after the event ``starting_after``
    (an event id of this timeline; 422 otherwise), in (``at``, id) order."""
    cur = conn.cursor(row_factory=dict_row)
    after: tuple[datetime, int] | None = None
    if starting_after is not None:
        match = _EVENT_ID.match(starting_after)
        row = None
        if match is not None:
            await cur.execute(
                "SELECT at, pk FROM events WHERE pk = %s AND contact_pk = %s",
                (int(match.group(1)), pk),
            )
            row = await cur.fetchone()
        if row is None:
            raise _invalid_cursor(starting_after)
        after = (row["at"], int(row["pk"]))
    await cur.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events e JOIN contacts c ON c.pk = e.contact_pk"
        " WHERE e.contact_pk = %(pk)s AND c.workspace_id = %(ws)s"
        " AND (%(after_at)s::timestamptz IS NULL OR (e.at, e.pk) > (%(after_at)s, %(after_pk)s))"
        " ORDER BY e.at, e.pk LIMIT %(limit)s",
        {
            "pk": pk,
            "ws": workspace_id,
            "after_at": None if after is None else after[0],
            "after_pk": None if after is None else after[1],
            "limit": limit,
        },
    )
    return [
        EventOut.model_validate({**r, "at": r["at"].astimezone(UTC)}) for r in await cur.fetchall()
    ]
