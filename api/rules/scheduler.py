"""Time passing: re-evaluate contacts whose ``next_evaluation_at`` has come.

Each contact stores the next instant at which time alone may change one of
its results (``nudgel.runtime.next_change``). :func:`run_due` claims due
contacts with ``FOR UPDATE SKIP LOCKED`` (so several schedulers, or a
scheduler and the mutations that lock contacts, never wait on each other),
re-evaluates their time-dependent segments, scores and stage in memory at
the workspace's instant (its test clock, or the wall clock), stores the
results with their outbox events and the contact's next instant, and
commits per batch. :func:`scheduler_loop` runs it every ``interval`` seconds
in the serve process (and in ``nudgel worker``): a contact leaves a
``within 30d`` segment at most about one interval after the instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nudgel.api.rules import realtime
from nudgel.api.rules.store import rules_and_now
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["run_due", "scheduler_loop"]

log = logging.getLogger(__name__)

BATCH = 200

_DUE = """
SELECT c.pk, c.workspace_id
  FROM contacts c JOIN workspaces w ON w.id = c.workspace_id
 WHERE c.next_evaluation_at <= coalesce(w.test_clock, now())
   AND (%(ws)s::bigint IS NULL OR c.workspace_id = %(ws)s)
 ORDER BY c.next_evaluation_at
 LIMIT %(limit)s
   FOR UPDATE OF c SKIP LOCKED
"""


async def run_due_batch(conn: AsyncConnection, workspace_id: int | None = None) -> int:
    """One batch, in one transaction; returns how many contacts it evaluated."""
    async with conn.transaction():
        cur = await conn.execute(_DUE, {"ws": workspace_id, "limit": BATCH})
        due = await cur.fetchall()
        for pk, ws in due:
            deployed, now = await rules_and_now(conn, ws)
            if deployed is None:
                await conn.execute(
                    "UPDATE contacts SET next_evaluation_at = NULL WHERE pk = %s", (pk,)
                )
                continue
            await realtime.reevaluate(
                conn, ws, pk, realtime.Change("time", time=True), deployed=deployed, now=now
            )
    return len(due)


async def run_due(conn: AsyncConnection, workspace_id: int | None = None) -> int:
    """Every due contact (of one workspace, or all); returns the count."""
    total = 0
    while count := await run_due_batch(conn, workspace_id):
        total += count
    return total


async def scheduler_loop(
    pool: AsyncConnectionPool, interval: float, stop: asyncio.Event | None = None
) -> None:
    """Run due evaluations every ``interval`` seconds until ``stop`` is set.

    Errors are logged and the loop goes on (a database restart must not stop
    time for good).
    """
    stop = stop if stop is not None else asyncio.Event()
    while not stop.is_set():
        try:
            async with pool.connection() as conn:
                count = await run_due(conn)
            if count:
                log.info("re-evaluated %d contacts as time passed", count)
        except Exception:
            log.exception("scheduler round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
