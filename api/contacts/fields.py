"""Custom field values of an upsert, checked against the workspace's definitions.

Values are validated and normalised by the rules runtime's own loader
(``runtime.contact.load_contact``) and stored in the canonical JSON form
``runtime.pgload.stored_field`` writes, so compiled rules read exactly what
the in-memory backend would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.compiler.sql import json_text
from nudgel.dsl.ast import FIELD_TYPES, Type
from nudgel.runtime.contact import DataError, load_contact
from nudgel.runtime.pgload import stored_field
from psycopg import AsyncConnection

__all__ = ["field_types", "stored_fields_json"]


async def field_types(conn: AsyncConnection, workspace_id: int) -> dict[str, Type]:
    cur = await conn.execute(
        "SELECT name, type FROM field_definitions WHERE workspace_id = %s ORDER BY name",
        (workspace_id,),
    )
    return {name: FIELD_TYPES[type_name] for name, type_name in await cur.fetchall()}


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
    for name in values:
        if name not in types:
            raise _invalid(
                name,
                f"Field {name!r} is not defined in this workspace; create it with POST /v1/fields.",
                "unknown_field",
                within,
            )
    try:
        loaded = load_contact({"id": "request", "fields": dict(values)}, types, frozenset())
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
