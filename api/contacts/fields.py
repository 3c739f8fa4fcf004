"""Custom field values of a write, checked against the workspace's definitions.

Fields just work: a field a write names that the workspace has not defined is
created on first write (:func:`fields_for_write`), with its type inferred from
the value (a JSON string is ``text``, a number ``number``, a boolean ``bool``,
an object or array ``json``), announced by ``field.created``; a workspace with
``fields_strict`` refuses them instead, naming every one at once.

Declared types are enforced with real validators before storing: ``email``
with email-validator (normalised), ``url`` http(s) only, ``date`` and
``timestamp`` RFC 3339. Values are then normalised by the rules runtime's own
loader (``runtime.contact.load_contact``) and stored in the canonical JSON form
``runtime.pgload.stored_field`` writes, so compiled rules read exactly what
the in-memory backend would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.api.rules.store import field_types
from nudgel.api.transaction import Transaction
from nudgel.compiler.sql import json_text
from nudgel.dsl.ast import Type
from nudgel.dsl.parser import KEYWORDS
from nudgel.runtime.contact import DataError, load_contact
from nudgel.runtime.pgload import stored_field
from psycopg.rows import dict_row

__all__ = ["FieldWrite", "field_types", "fields_for_write", "stored_fields_json"]

# A field name is an identifier of the rules language, so `fields.NAME` can name it.
FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


def _invalid(name: str, detail: str, code: str, within: str) -> ProblemError:
    return ProblemError(
        422,
        "Invalid field value",
        detail,
        type_=problem_type("validation"),
        errors=[
            FieldError(location="body", pointer=f"{within}/fields/{name}", detail=detail, code=code)
        ],
    )


def stored_fields_json(
    values: Mapping[str, Any], types: Mapping[str, Type], within: str = ""
) -> str:
    """The non-empty values as JSON text in stored form; a 422 problem for the first bad one.

    ``null`` and ``""`` mean "not given" (an upsert never clears a value).
    ``within`` is the JSON pointer of the object holding ``fields`` in the
    request body (``/traits`` for an event's traits), for the problem's pointer.
    """
    unknown = [name for name in values if name not in types]
    if unknown:
        raise _bad_names(
            unknown,
            within,
            "not defined in this workspace; create them with POST /v1/fields.",
            "unknown_field",
        )
    checked = {name: _checked(name, value, types[name], within) for name, value in values.items()}
    try:
        loaded = load_contact({"id": "request", "fields": checked}, types, frozenset())
    except DataError as error:
        raise _invalid(
            error.field,
            f"Field {error.field!r} has type {types[error.field].value}:"
            f" the value must be {error.expected}.",
            "field_type",
            within,
        ) from None
    stored = {
        name: stored_field(value, types[name])
        for name, value in loaded.fields.items()
        if value is not None
    }
    return json_text(stored)


def _checked(name: str, value: Any, type_: Type, within: str) -> Any:
    """``value`` as the declared type's validator accepts and normalises it."""
    if value is None or value == "" or not isinstance(value, str):
        return value  # non-strings: the runtime's loader says what it expects
    if type_ is Type.EMAIL:
        try:
            return validate_email(value, check_deliverability=False).normalized.lower()
        except EmailNotValidError as error:
            raise _invalid(
                name, f"fields.{name} is an email field: {error}", "field_type", within
            ) from None
    if type_ is Type.URL:
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise _invalid(
                name,
                f"fields.{name} is a url field: give an http:// or https:// address with a host.",
                "field_type",
                within,
            )
        return parts.geturl()
    if type_ is Type.DATE and not _parses(_DATE, value, date.fromisoformat):
        raise _invalid(
            name, f"fields.{name} is a date field: write it as 2026-01-31.", "field_type", within
        )
    if type_ is Type.TIMESTAMP and not _parses(
        _TIMESTAMP, value, lambda text: datetime.fromisoformat(text.upper().replace(" ", "T"))
    ):
        raise _invalid(
            name,
            f"fields.{name} is a timestamp field: write an RFC 3339 date-time with an offset,"
            " such as 2026-01-31T09:30:00Z.",
            "field_type",
            within,
        )
    return value


def _parses(pattern: re.Pattern[str], text: str, parse: Any) -> bool:
    if not pattern.match(text):
        return False
    try:
        parse(text)
    except (ValueError, OverflowError):
        return False
    return True


def inferred_type(value: Any) -> Type | None:
    """The type of a new field, from its first value (None: no value to tell by)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return Type.BOOL
    if isinstance(value, int | float):
        return Type.NUMBER
    if isinstance(value, dict | list):
        return Type.JSON
    return Type.TEXT


@dataclass(frozen=True, slots=True)
class FieldWrite:
    fields_json: str  # the values in stored form, for the contact store
    created: list[dict[str, Any]]  # the fields this write created, as field.created shows them


def _bad_names(names: list[str], within: str, detail: str, code: str) -> ProblemError:
    errors = [
        FieldError(location="body", pointer=f"{within}/fields/{name}", detail=detail, code=code)
        for name in names
    ]
    return ProblemError(
        422,
        "Invalid field value",
        f"{', '.join(repr(n) for n in names)}: {detail}",
        type_=problem_type("validation"),
        errors=errors,
    )


async def fields_for_write(
    tx: Transaction, values: Mapping[str, Any], within: str = ""
) -> FieldWrite:
    """``values`` checked and in stored form, creating the fields the workspace lacks
    (or, in a ``fields_strict`` workspace, refusing them all in one 422)."""
    cur = await tx.conn.execute(
        "SELECT fields_strict FROM workspaces WHERE id = %s", (tx.workspace_id,)
    )
    row = await cur.fetchone()
    strict = bool(row and row[0])
    types = await field_types(tx.conn, tx.workspace_id)
    unknown = sorted(n for n in values if n not in types and inferred_type(values[n]) is not None)
    created: list[dict[str, Any]] = []
    if unknown:
        if strict:
            raise _bad_names(
                unknown,
                within,
                "not defined in this workspace, which refuses unknown fields (fields_strict);"
                " create them with POST /v1/fields or declare them in the rules.",
                "unknown_field",
            )
        malformed = [n for n in unknown if not FIELD_NAME.match(n) or n in KEYWORDS]
        if malformed:
            raise _bad_names(
                malformed,
                within,
                "a new field's name must be a lower-case identifier ([a-z_][a-z0-9_]*, at most"
                " 63 characters) and not a keyword of the rules language, so that rules can"
                " read it as fields.NAME.",
                "invalid_field_name",
            )
        created = await _create(tx, {n: inferred_type(values[n]) for n in unknown}, types)
    known = {n: v for n, v in values.items() if n in types}
    return FieldWrite(stored_fields_json(known, types, within), created)


async def _create(
    tx: Transaction, new: Mapping[str, Type | None], types: dict[str, Type]
) -> list[dict[str, Any]]:
    """Define the new fields (a concurrent write may define one first: its type
    wins, and the value is checked against it). Fills ``types`` in place."""
    created = []
    cur = tx.conn.cursor(row_factory=dict_row)
    for name, type_ in sorted(new.items()):
        assert type_ is not None
        await cur.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING name, type, created_at",
            (tx.workspace_id, name, type_.value),
        )
        row = await cur.fetchone()
        if row is None:
            types.update(await field_types(tx.conn, tx.workspace_id))
            continue
        types[name] = type_
        event = {"object": "field", **row, "created_at": row["created_at"].isoformat()}
        await tx.emit("field.created", event)
        created.append(event)
    return created
