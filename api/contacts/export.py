"""Contacts out: ``GET /v1/contacts/export`` and ``nudgel export``, as CSV or JSON lines.

CSV has the columns the import reads (``nudgel.api.jobs.imports``): the
attributes (``email``, ``phone``, ``whatsapp_id``, ``external_id``, ``name``,
``tags`` and ``push_tokens``, several values separated by ``;``) and
``fields.NAME`` for each field the workspace defines, written as the import
reads them (numbers as decimal text, bools ``true``/``false``, json fields as
JSON text). Importing the file into a workspace with the same field
definitions gives the same profiles. JSON lines has one contact per line,
as ``GET /v1/contacts`` shows it (with ids, subscriptions and times).

Every contact is exported (``where=`` keeps those the condition holds for),
in id order. Memory stays flat whatever the count: the contacts are read
through a server-side cursor, :data:`batch size <Settings.export_batch_size>`
at a time, and each batch is written out before the next is fetched, in one
REPEATABLE READ, READ ONLY transaction, so the file is one consistent
snapshot and the where= condition is evaluated once. A client that stops
reading for longer than the idle-in-transaction timeout loses the export.

CSV injection (OWASP): a text cell a spreadsheet would run as a formula
(starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, after
any leading quotes) is written with a leading ``'``. Plain numbers are left
alone (``-12.5``, and E.164 phones such as ``+254712345678``): a spreadsheet
reads them as numbers, never as formulas, and they round-trip as they are.
:func:`restored` is the inverse, for an importer that wants the values back.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from nudgel.api.contacts.fields import field_types
from nudgel.api.contacts.query import ContactFilter, contact_filter
from nudgel.api.contacts.views import contact_views
from nudgel.api.jobs.imports import ATTRIBUTES, LIST_SEPARATOR
from nudgel.api.rules.store import current_rules
from nudgel.dsl.ast import Type
from psycopg import AsyncConnection

__all__ = ["FORMATS", "Export", "ExportFormat", "neutralised", "open_export", "restored"]

ExportFormat = Literal["csv", "jsonl"]
FORMATS: dict[str, str] = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


def neutralised(cell: str) -> str:
    """``cell`` as a spreadsheet may safely open it: a leading ``'`` when it would
    start a formula; quotes already leading such a cell get one more, so
    :func:`restored` can always tell them apart."""
    if cell.lstrip("'").startswith(_FORMULA_START) and not _NUMBER.match(cell):
        return "'" + cell
    return cell


def restored(cell: str) -> str:
    """The value :func:`neutralised` was given for ``cell``."""
    if (
        cell.startswith("'")
        and cell.lstrip("'").startswith(_FORMULA_START)
        and not _NUMBER.match(cell[1:])
    ):
        return cell[1:]
    return cell


@dataclass(frozen=True)
class Export:
    """An export ready to stream: its media type, a file name, and the bytes."""

    media_type: str
    filename: str
    chunks: AsyncIterator[bytes]


async def open_export(
    conn: AsyncConnection,
    workspace_id: int,
    where: str | None,
    format_: ExportFormat,
    batch_size: int,
) -> Export:
    """The export of the workspace's contacts ``where`` holds for (422 when it does
    not check: raised here, before anything is sent). Nothing is read until
    ``chunks`` is iterated; ``conn`` must stay open until it is exhausted or
    closed."""
    deployed = await current_rules(conn, workspace_id) if where is not None else None
    filters = await contact_filter(conn, workspace_id, where, None, deployed)
    types = await field_types(conn, workspace_id)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Export(
        FORMATS[format_],
        f"contacts-{stamp}.{format_}",
        _chunks(conn, workspace_id, filters, types, format_, batch_size),
    )


async def _chunks(
    conn: AsyncConnection,
    workspace_id: int,
    filters: ContactFilter,
    types: dict[str, Type],
    format_: ExportFormat,
    batch_size: int,
) -> AsyncIterator[bytes]:
    fields = sorted(types)
    if format_ == "csv":
        yield _csv_text([[*ATTRIBUTES, *(f"fields.{name}" for name in fields)]])
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        async with conn.cursor(name="nudgel_export") as cursor:
            await cursor.execute(
                "SELECT c.pk FROM contacts c WHERE c.workspace_id = %(list_ws)s"
                f"{filters.sql} ORDER BY c.id",
                {**filters.params, "list_ws": workspace_id},
            )
            while rows := await cursor.fetchmany(batch_size):
                pks = [int(row[0]) for row in rows]
                if format_ == "csv":
                    yield _csv_text(await _csv_rows(conn, workspace_id, pks, fields, types))
                else:
                    views = await contact_views(conn, workspace_id, pks)
                    yield "".join(view.model_dump_json() + "\n" for view in views).encode()


def _csv_text(rows: Sequence[Sequence[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


# What each column of the import is, over contacts c; in the import's order
# (a column the import gains and the export lacks fails here, at start-up).
_ATTRIBUTE_SQL = {
    "email": "c.email",
    "phone": "c.phone",
    "whatsapp_id": "c.whatsapp_id",
    "external_id": "c.external_id",
    "name": "c.name",
    "tags": "(SELECT string_agg(t.tag, %(separator)s ORDER BY t.tag) FROM contact_tags t"
    " WHERE t.contact_pk = c.pk)",
    "push_tokens": "(SELECT string_agg(p.token, %(separator)s ORDER BY p.n)"
    " FROM jsonb_array_elements_text(c.push_tokens) WITH ORDINALITY p(token, n))",
}
_COLUMNS_SQL = ", ".join(_ATTRIBUTE_SQL[name] for name in ATTRIBUTES)


async def _csv_rows(
    conn: AsyncConnection,
    workspace_id: int,
    pks: list[int],
    fields: list[str],
    types: dict[str, Type],
) -> list[list[str]]:
    # Each field as the import reads it: ->> gives JSON's text of numbers and
    # bools and the text itself; a json field keeps its JSON (-> as text).
    params: dict[str, object] = {"separator": LIST_SEPARATOR, "ws": workspace_id, "pks": pks}
    values = ""
    for i, name in enumerate(fields):
        params[f"field_{i}"] = name
        if types[name] is Type.JSON:
            values += f", (c.fields -> %(field_{i})s)::text"
        else:
            values += f", c.fields ->> %(field_{i})s"
    cur = await conn.execute(
        f"SELECT {_COLUMNS_SQL}{values} FROM contacts c"
        " WHERE c.workspace_id = %(ws)s AND c.pk = ANY(%(pks)s) ORDER BY c.id",
        params,
    )
    return [
        [neutralised(value) if value is not None else "" for value in row]
        for row in await cur.fetchall()
    ]
