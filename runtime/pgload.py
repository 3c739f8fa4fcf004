"""Bulk-load normalised contacts into the storage schema with COPY.

Values are stored in the canonical forms the compiled SQL reads: custom
fields as JSON with exact numbers (a Decimal never passes through a float),
dates ``YYYY-MM-DD``, timestamps RFC 3339 in UTC; attributes in their columns,
the prior lifecycle stage in ``contacts.stage``. A missing ``created_at`` or
``updated_at`` is stored as NULL (migration 0002), so it stays missing
instead of becoming the load time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from nudgel.compiler.sql import json_text
from nudgel.dsl.ast import Type
from nudgel.dsl.timeparse import format_date, format_timestamp
from nudgel.runtime.contact import Contact

__all__ = ["load_contacts_into", "stored_field"]

_CONTACT_COLUMNS = (
    "workspace_id, id, email, phone, whatsapp_id, name, fields, stage, created_at, updated_at"
)


def load_contacts_into(
    conn: psycopg.Connection,
    contacts: Sequence[Contact],
    *,
    workspace: str,
    field_types: Mapping[str, Type],
) -> int:
    """Create workspace ``workspace`` holding ``contacts``; return its id.

    ``field_types`` are the declared field types (dates and timestamps are
    both integers once normalised, so the type says how to store them). Runs
    in one transaction (a savepoint when the connection is already in one).
    """
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO workspaces (name) VALUES (%s) RETURNING id", (workspace,)
        ).fetchone()
        assert row is not None
        workspace_id: int = row[0]
        with conn.cursor() as cursor:
            with cursor.copy(f"COPY contacts ({_CONTACT_COLUMNS}) FROM STDIN") as copy:
                for contact in contacts:
                    copy.write_row(_contact_row(workspace_id, contact, field_types))
            cursor.execute("SELECT id, pk FROM contacts WHERE workspace_id = %s", (workspace_id,))
            pks: dict[str, int] = dict(cursor.fetchall())
            with cursor.copy("COPY contact_tags (contact_pk, tag) FROM STDIN") as copy:
                for contact in contacts:
                    for tag in sorted(contact.tags):
                        copy.write_row((pks[contact.id], tag))
            with cursor.copy("COPY subscriptions (contact_pk, list, status) FROM STDIN") as copy:
                for contact in contacts:
                    for name, status in sorted(contact.subscriptions.items()):
                        copy.write_row((pks[contact.id], name, status))
            with cursor.copy("COPY events (contact_pk, name, at, props) FROM STDIN") as copy:
                for contact in contacts:
                    for row in _event_rows(pks[contact.id], contact):
                        copy.write_row(row)
    return workspace_id


def _contact_row(
    workspace_id: int, contact: Contact, field_types: Mapping[str, Type]
) -> tuple[Any, ...]:
    fields = {
        name: stored_field(value, field_types[name])
        for name, value in contact.fields.items()
        if value is not None and name in field_types
    }
    return (
        workspace_id,
        contact.id,
        contact.email,
        contact.phone,
        contact.whatsapp_id,
        contact.name,
        json_text(fields),
        contact.stage,
        _timestamp(contact.created_at),
        _timestamp(contact.updated_at),
    )


def _event_rows(contact_pk: int, contact: Contact) -> Iterator[tuple[Any, ...]]:
    for event in contact.events:
        yield (contact_pk, event.name, format_timestamp(event.at), json_text(event.props))


def _timestamp(micros: int | None) -> str | None:
    return None if micros is None else format_timestamp(micros)


def stored_field(value: Any, field_type: Type) -> Any:
    """A normalised field value as the JSON value stored in ``contacts.fields``."""
    if field_type is Type.DATE:
        return format_date(value)
    if field_type is Type.TIMESTAMP:
        return format_timestamp(value)
    return value
