"""Forgetting what is only kept for a while: idempotency records past their retention.

Each ``Idempotency-Key`` leaves a row in ``idempotency_keys`` with the response
it replays (``nudgel.api.http.idempotency``). They are needed for
``idempotency_retention_hours``; :func:`housekeeping_loop`, part of the
background work (``nudgel serve`` with ``run_worker``, and ``nudgel worker``),
deletes older ones every ``idempotency_purge_interval`` seconds.

The purge deletes ``idempotency_purge_batch`` rows per statement, each its own
short transaction, oldest first (the ``created_at`` index): a backlog of
millions never becomes one long transaction holding locks and back vacuum.
``SKIP LOCKED`` keeps two purging instances off each other's rows, and off a
row a request is replaying right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nudgel.api.settings import Settings
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["housekeeping_loop", "purge_idempotency_keys"]

log = logging.getLogger(__name__)

_PURGE_BATCH = """
DELETE FROM idempotency_keys k
USING (
    SELECT workspace_id, key FROM idempotency_keys
    WHERE created_at < now() - make_interval(hours => %(hours)s)
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) expired
WHERE k.workspace_id = expired.workspace_id AND k.key = expired.key
"""


async def purge_idempotency_keys(
    conn: AsyncConnection, settings: Settings, stop: asyncio.Event | None = None
) -> int:
    """Delete every idempotency record older than the retention, in batches (until
    ``stop`` is set); returns how many. ``conn`` in autocommit: each batch commits
    on its own."""
    total = 0
    while stop is None or not stop.is_set():
        cur = await conn.execute(
            _PURGE_BATCH,
            {
                "hours": settings.idempotency_retention_hours,
                "limit": settings.idempotency_purge_batch,
            },
        )
        total += cur.rowcount
        if cur.rowcount < settings.idempotency_purge_batch:
            break
    return total


async def housekeeping_loop(
    pool: AsyncConnectionPool, settings: Settings, stop: asyncio.Event | None = None
) -> None:
    """Purge every ``idempotency_purge_interval`` seconds (the first at once) until
    ``stop`` is set. Errors are logged and the loop goes on."""
    stop = stop if stop is not None else asyncio.Event()
    while not stop.is_set():
        try:
            async with pool.connection() as conn:
                purged = await purge_idempotency_keys(conn, settings, stop)
            if purged:
                log.info("purged %d expired idempotency records", purged)
        except Exception:
            log.exception("housekeeping round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.idempotency_purge_interval)
