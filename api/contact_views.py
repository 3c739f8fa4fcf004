"""Reading contacts as the API shows them: profile, fields, tags with colours,
subscriptions and (for one contact) recent events. A few set-based queries per
page, never one per contact."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from nudgel.api.contact_models import ContactDetail, ContactOut, RecentEvent
from nudgel.api.problems import ProblemError
from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["PROFILE_COLUMNS", "contact_views", "detail_view", "find_pk"]

PROFILE_COLUMNS = (
    "pk, id, email, phone, whatsapp_id, external_id, name, push_tokens, fields,"
    " created_at, updated_at"
)
RECENT_EVENTS = 20


async def find_pk(conn: AsyncConnection, workspace_id: int, contact_id: str) -> int | None:
    cur = await conn.execute(
        "SELECT pk FROM contacts WHERE workspace_id = %s AND id = %s", (workspace_id, contact_id)
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def lock_contact(conn: AsyncConnection, workspace_id: int, contact_id: str) -> int:
    """The pk of a contact, its row locked for the transaction (404 when unknown).

    FOR UPDATE: a concurrent merge or delete of the contact waits for the
    caller, or the caller for it (and then finds the contact gone: 404).
    """
    cur = await conn.execute(
        "SELECT pk FROM contacts WHERE workspace_id = %s AND id = %s FOR UPDATE",
        (workspace_id, contact_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise ProblemError.not_found(f"Contact {contact_id!r}")
    return int(row[0])


async def contact_views(
    conn: AsyncConnection, workspace_id: int, pks: Sequence[int]
) -> list[ContactOut]:
    """The contacts ``pks`` (of this workspace), in the order given."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {PROFILE_COLUMNS} FROM contacts WHERE workspace_id = %s AND pk = ANY(%s)",
        (workspace_id, list(pks)),
    )
    rows = {r["pk"]: r for r in await cur.fetchall()}
    tags: dict[int, list[dict[str, Any]]] = defaultdict(list)
    await cur.execute(
        "SELECT ct.contact_pk, ct.tag AS name, t.color FROM contact_tags ct"
        " LEFT JOIN tags t ON t.workspace_id = %s AND t.name = ct.tag"
        " WHERE ct.contact_pk = ANY(%s) ORDER BY ct.contact_pk, ct.tag",
        (workspace_id, list(rows)),
    )
    for r in await cur.fetchall():
        tags[r.pop("contact_pk")].append(r)
    subscriptions: dict[int, list[dict[str, Any]]] = defaultdict(list)
    await cur.execute(
        "SELECT contact_pk, list, status, updated_at FROM subscriptions"
        " WHERE contact_pk = ANY(%s) ORDER BY contact_pk, list",
        (list(rows),),
    )
    for r in await cur.fetchall():
        subscriptions[r.pop("contact_pk")].append(r)
    return [
        ContactOut.model_validate(
            {**rows[pk], "tags": tags[pk], "subscriptions": subscriptions[pk]}
        )
        for pk in pks
        if pk in rows
    ]


async def detail_view(conn: AsyncConnection, workspace_id: int, pk: int) -> ContactDetail | None:
    views = await contact_views(conn, workspace_id, [pk])
    if not views:
        return None
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT 'ev_' || pk AS id, name, at, props, source FROM events"
        " WHERE contact_pk = %s ORDER BY at DESC, pk DESC LIMIT %s",
        (pk, RECENT_EVENTS),
    )
    events = [RecentEvent.model_validate(r) for r in await cur.fetchall()]
    return ContactDetail(**views[0].model_dump(), recent_events=events)
