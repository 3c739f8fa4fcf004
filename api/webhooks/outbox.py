"""The transactional outbox: one row per event, written with the change itself.

Every mutation calls :func:`record` on the connection of its own transaction,
so the event commits if and only if the change does; the delivery worker
(``nudgel.api.webhooks.delivery``) reads the table, never the handlers' memory, so no
event is lost on a crash and none is sent for a change that rolled back.

The payload is the event as webhooks will carry it (Standard Webhooks shape):
``{"type": ..., "timestamp": ..., "data": {...}}``; the row's ``event_id``
(``evt_...``) becomes the ``webhook-id``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

__all__ = ["EVENT_TYPES", "record", "record_many"]

# Every event type the service emits; webhooks subscribe to these (or "*").
EVENT_TYPES = frozenset(
    {
        "contact.created",
        "contact.updated",
        "contact.merged",
        "contact.deleted",
        "contact.tagged",
        "contact.untagged",
        "event.recorded",
        "field.created",
        "field.deleted",
        "tag.created",
        "tag.updated",
        "tag.deleted",
        "segment.entered",
        "segment.exited",
        "score.changed",
        "stage.changed",
        # Lists (/v1/lists) and a contact's status on one: list.<new status>.
        "list.created",
        "list.updated",
        "list.deleted",
        "list.pending",
        "list.subscribed",
        "list.unsubscribed",
        "list.bounced",
    }
)


async def record(
    conn: AsyncConnection,
    workspace_id: int,
    event_type: str,
    data: dict[str, Any],
    contact_pk: int | None = None,
) -> str:
    """Append an event; returns its id. ``conn`` must be inside the mutation's transaction."""
    (event_id,) = await record_many(conn, workspace_id, [(event_type, data, contact_pk)])
    return event_id


async def record_many(
    conn: AsyncConnection,
    workspace_id: int,
    events: Sequence[tuple[str, dict[str, Any], int | None]],
    *,
    in_pipeline: bool = False,
) -> list[str]:
    """Append ``(type, data, contact_pk)`` events in order, in one round trip.

    ``in_pipeline``: the caller is in pipeline mode, where the transaction
    status cannot be read; it checked it before entering the pipeline.
    """
    for event_type, _, _ in events:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}: add it to EVENT_TYPES")
    if not in_pipeline and conn.info.transaction_status != TransactionStatus.INTRANS:
        # In autocommit outside a transaction the event would commit on its
        # own, whatever happens to the change: exactly what the outbox is for
        # preventing.
        raise RuntimeError("outbox.record must run inside the mutation's transaction")
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    rows = []
    ids = []
    for event_type, data, contact_pk in events:
        event_id = "evt_" + secrets.token_urlsafe(16)
        ids.append(event_id)
        payload = {"type": event_type, "timestamp": timestamp, "data": data}
        rows.append((workspace_id, event_id, event_type, contact_pk, Jsonb(payload)))
    if rows:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO outbox (workspace_id, event_id, event_type, contact_pk, payload)"
                " VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
    return ids
