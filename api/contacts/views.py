"""Reading contacts as the API shows them: profile, fields, tags with colours,
subscriptions and (for one contact) recent events, the timeline's roll-ups and
the values' origins. A few set-based queries per page, never one per contact.

The roll-ups (first/last seen, counts by name, sources) are aggregated from
the events table when read, not kept as counters: a merge moves events and a
delete cascades them, and a read-time aggregate is right after both without
any bookkeeping. One query on the (contact_pk, name, at) index, for the
detail view only, so lists stay as cheap as before."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from nudgel.api.contacts.identity import KINDS
from nudgel.api.contacts.models import ContactDetail, ContactOut, Origin, RecentEvent, ScoreView
from nudgel.api.contacts.store import UpsertResult
from nudgel.api.problems import ProblemError
from nudgel.api.transaction import Transaction
from nudgel.api.webhooks import outbox
from nudgel.runtime.result import canonical_decimal
from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["PROFILE_COLUMNS", "contact_views", "detail_view", "emit_upsert", "find_pk"]

PROFILE_COLUMNS = (
    "pk, id, email, phone, whatsapp_id, external_id, name, push_tokens, fields,"
    " created_at, updated_at"
)
_PREFIXED_COLUMNS = ", ".join(f"c.{name.strip()}" for name in PROFILE_COLUMNS.split(","))
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
    """The contacts ``pks`` (of this workspace), in the order given.

    One query: tags and subscriptions come as JSON arrays beside each row (a
    view is built for every upsert's response and outbox event).
    """
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_PREFIXED_COLUMNS},"
        " (SELECT coalesce(json_agg(json_build_object('name', ct.tag, 'color', t.color)"
        "   ORDER BY ct.tag), '[]') FROM contact_tags ct"
        "   LEFT JOIN tags t ON t.workspace_id = c.workspace_id AND t.name = ct.tag"
        "   WHERE ct.contact_pk = c.pk) AS tags,"
        " (SELECT coalesce(json_agg(json_build_object('list', s.list, 'status', s.status,"
        "   'updated_at', s.updated_at) ORDER BY s.list), '[]') FROM subscriptions s"
        "   WHERE s.contact_pk = c.pk) AS subscriptions"
        " FROM contacts c WHERE c.workspace_id = %s AND c.pk = ANY(%s)",
        (workspace_id, list(pks)),
    )
    rows = {r["pk"]: r for r in await cur.fetchall()}
    return [ContactOut.model_validate(rows[pk]) for pk in pks if pk in rows]


async def detail_view(conn: AsyncConnection, workspace_id: int, pk: int) -> ContactDetail | None:
    views = await contact_views(conn, workspace_id, [pk])
    if not views:
        return None
    view = views[0]
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT 'ev_' || pk AS id, name, at, props, source FROM events"
        " WHERE contact_pk = %s ORDER BY at DESC, pk DESC LIMIT %s",
        (pk, RECENT_EVENTS),
    )
    events = [RecentEvent.model_validate(r) for r in await cur.fetchall()]
    await cur.execute(
        "SELECT name, count(*) AS n, min(at) AS first, max(at) AS last,"
        " array_remove(array_agg(DISTINCT source), NULL) AS sources"
        " FROM events WHERE contact_pk = %s GROUP BY name ORDER BY name",
        (pk,),
    )
    groups = await cur.fetchall()
    await cur.execute("SELECT origins FROM contacts WHERE pk = %s", (pk,))
    row = await cur.fetchone()
    origins = _present_origins(view, row["origins"] if row is not None else {})
    sources = {s for g in groups for s in g["sources"]} | {o.source for o in origins.values()}
    stage, segments, scores = await _rule_state(conn, workspace_id, pk)
    return ContactDetail(
        stage=stage,
        segments=segments,
        scores=scores,
        **view.model_dump(),
        recent_events=events,
        first_seen=min((g["first"] for g in groups), default=None),
        last_seen=max((g["last"] for g in groups), default=None),
        event_counts={g["name"]: int(g["n"]) for g in groups},
        sources=sorted(sources),
        origins=origins,
    )


# The score's value at an instant: its last change until then; before its
# first change, the value it changed from (0: a contact always has a score).
_SCORES = """
SELECT s.score, s.value, d.days, coalesce(
         (SELECT h.new_value FROM rule_history h
           WHERE h.contact_pk = s.contact_pk AND h.kind = 'score' AND h.name = s.score
             AND h.at <= %(now)s - d.days * interval '1 day'
           ORDER BY h.at DESC, h.id DESC LIMIT 1),
         (SELECT h.old_value FROM rule_history h
           WHERE h.contact_pk = s.contact_pk AND h.kind = 'score' AND h.name = s.score
             AND h.at > %(now)s - d.days * interval '1 day'
           ORDER BY h.at, h.id LIMIT 1))::numeric AS then
  FROM contact_scores s CROSS JOIN (VALUES (30), (60), (90)) d(days)
 WHERE s.contact_pk = %(pk)s
 ORDER BY s.score, d.days
"""


async def _rule_state(
    conn: AsyncConnection, workspace_id: int, pk: int
) -> tuple[str | None, list[str], dict[str, ScoreView]]:
    """The contact's stage, segments and scores (with trends) as real time keeps them."""
    cur = await conn.execute(
        "SELECT c.stage, coalesce(w.test_clock, now()) FROM contacts c"
        " JOIN workspaces w ON w.id = c.workspace_id WHERE c.pk = %s",
        (pk,),
    )
    row = await cur.fetchone()
    if row is None:
        return None, [], {}
    stage, now = row
    cur = await conn.execute(
        "SELECT segment FROM segment_members WHERE contact_pk = %s AND workspace_id = %s"
        " ORDER BY segment",
        (pk, workspace_id),
    )
    segments = [r[0] for r in await cur.fetchall()]
    cur = await conn.execute(_SCORES, {"pk": pk, "now": now})
    changes: dict[str, dict[str, str]] = {}
    for name, value, days, then in await cur.fetchall():
        entry = changes.setdefault(name, {"value": canonical_decimal(value)})
        delta = value - then if then is not None else Decimal(0)
        entry[f"change_{days}d"] = canonical_decimal(delta)
    return stage, segments, {name: ScoreView(**entry) for name, entry in changes.items()}


def _present_origins(view: ContactOut, stored: dict[str, Any]) -> dict[str, Origin]:
    """The stored origins of the values the profile shows.

    A value can leave the profile without an upsert (a field definition
    dropped, say); its origin is then stale, and is not shown.
    """
    present: set[str] = {key for key in (*KINDS, "name") if getattr(view, key) is not None}
    if view.push_tokens:
        present.add("push_tokens")
    present |= {f"fields.{name}" for name in view.fields}
    return {key: Origin.model_validate(o) for key, o in sorted(stored.items()) if key in present}


async def emit_created(tx: Transaction, results: Sequence[UpsertResult]) -> None:
    """The outbox events of contacts created in bulk (``contacts_store.create_many``),
    as :func:`emit_upsert` writes them one by one, from one query for all views."""
    views = {
        v.id: v for v in await contact_views(tx.conn, tx.workspace_id, [r.pk for r in results])
    }
    events: list[tuple[str, dict[str, Any], int | None]] = []
    for result in results:
        data = views[result.contact_id].model_dump(mode="json")
        events.append(("contact.created", data, result.pk))
        if result.added_tags:
            events.append(
                ("contact.tagged", {"id": result.contact_id, "tags": result.added_tags}, result.pk)
            )
    await outbox.record_many(tx.conn, tx.workspace_id, events)


async def emit_upsert(tx: Transaction, result: UpsertResult) -> ContactOut:
    """The outbox events of an upsert (by ``POST /v1/contacts`` or an event's traits);
    returns the contact as it now is."""
    views = await contact_views(tx.conn, tx.workspace_id, [result.pk])
    contact = views[0]
    data: dict[str, Any] = contact.model_dump(mode="json")
    if result.status == 201:
        await tx.emit("contact.created", data, result.pk)
    elif result.merged_ids:
        await tx.emit(
            "contact.merged",
            {"id": contact.id, "merged_ids": result.merged_ids, "contact": data},
            result.pk,
        )
    elif result.changed:
        await tx.emit("contact.updated", data, result.pk)
    if result.added_tags:
        await tx.emit("contact.tagged", {"id": contact.id, "tags": result.added_tags}, result.pk)
    return contact
