"""Backfill: evaluate a newly deployed rule set for every contact of the
workspace with the SQL backend, as a job with progress.

One read of the compiled ``everything`` query streams (server-side cursor, in
a REPEATABLE READ snapshot) while a second connection writes the results in
batches, each batch its own transaction, updating the job's progress. Per
batch, results are compared with what is stored and only differences are
written, with their history; outbox events are written for segments, scores
and the stage that existed in the previous version (a changed rule fires
enter/exit for the contacts it moves), not for new ones (the first fill of a
new segment is silent). The next time-driven evaluation of each contact is
computed in SQL too (``nudgel.runtime.next_change``'s offsets and instants).

A mutation that commits while the backfill runs is evaluated in memory with
the new rules; a batch written after it may be older than that evaluation.
The batch writer therefore re-evaluates in memory, with everything, the
contacts evaluated since shortly before the snapshot (``evaluated_at``)
instead of writing the snapshot's row. (``nudgel rules verify`` reports any
drift that remains.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from nudgel.api.jobs.runner import run_job
from nudgel.api.rules import realtime
from nudgel.api.rules.store import DeployedRules
from nudgel.compiler.sql import SqlCompiler
from nudgel.runtime.dependencies import NodeKey
from nudgel.runtime.program import to_micros
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["BATCH_SIZE", "run_backfill"]

log = logging.getLogger(__name__)

BATCH_SIZE = 2000
WRITERS = 2


def _next_change_sql(deployed: DeployedRules) -> str:
    """Per contact of a batch: the first instant after now at which one of
    ``T + offset`` (T the contact's instants) may flip a result."""
    time_fields = sorted(deployed.plan.time_fields)
    field_values = "".join(f", ({_field_instant(deployed, name)})" for name in time_fields)
    return f"""
WITH batch AS (SELECT unnest(%(pks)s::bigint[]) AS pk),
offsets AS (SELECT unnest(%(offsets)s::bigint[]) * interval '1 microsecond' AS off),
starts AS (
    SELECT b.pk, o.off,
           (SELECT min(e.at) FROM events e
             WHERE e.contact_pk = b.pk AND e.at >= %(now)s::timestamptz - o.off) AS t
      FROM batch b CROSS JOIN offsets o
    UNION ALL
    SELECT c.pk, o.off, min(x.t)
      FROM contacts c JOIN batch b ON b.pk = c.pk CROSS JOIN offsets o
      CROSS JOIN LATERAL (VALUES (c.created_at), (c.updated_at){field_values}) x(t)
     WHERE x.t >= %(now)s::timestamptz - o.off
     GROUP BY c.pk, o.off
)
SELECT pk, min(CASE WHEN t + off > %(now)s::timestamptz THEN t + off
                    ELSE t + off + interval '1 microsecond' END)
  FROM starts WHERE t IS NOT NULL GROUP BY pk
"""


def _field_instant(deployed: DeployedRules, name: str) -> str:
    # The field name is a rules-language NAME ([a-z_][a-z0-9_]*), checked by
    # the parser; it is still passed as a literal through quote_literal-safe
    # text: names cannot contain quotes.
    assert name.replace("_", "a").isalnum() and name.isascii()
    if deployed.rules.field_type(name).value == "date":
        return f"nudgel_try_date(c.fields->>'{name}')::timestamp AT TIME ZONE 'UTC'"
    return f"nudgel_try_timestamptz(c.fields->>'{name}')"


async def run_backfill(
    pool: AsyncConnectionPool,
    workspace_id: int,
    job_id: str,
    deployed: DeployedRules,
    silent: Sequence[NodeKey],
) -> None:
    """Run the job to its end, recording success or failure on it."""
    await run_job(
        pool, job_id, "backfill", _backfill(pool, workspace_id, job_id, deployed, frozenset(silent))
    )


async def _backfill(
    pool: AsyncConnectionPool,
    workspace_id: int,
    job_id: str,
    deployed: DeployedRules,
    silent: frozenset[NodeKey],
) -> dict[str, Any]:
    query = SqlCompiler(deployed.rules).everything()
    counts = {"contacts": 0, "entered": 0, "exited": 0, "scores_changed": 0, "stages_changed": 0}
    # Every connection stays in the pool's autocommit mode (a connection handed
    # back in another mode would turn later statements into one open
    # transaction); the reader's snapshot is an explicit transaction.
    async with pool.connection() as reader, reader.transaction():
        await reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        now = await realtime.evaluation_now(reader, workspace_id)
        cur = await reader.execute("SELECT now() - interval '1 second'")
        started_row = await cur.fetchone()
        assert started_row is not None
        snapshot_margin = started_row[0]
        cur = await reader.execute(
            "SELECT count(*) FROM contacts WHERE workspace_id = %s", (workspace_id,)
        )
        total_row = await cur.fetchone()
        assert total_row is not None
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET status = 'running', total = %s WHERE id = %s",
                (total_row[0], job_id),
            )
        sql = (
            f"SELECT c.pk, q.* FROM ({query.sql}) q"
            " JOIN contacts c ON c.workspace_id = %(workspace_id)s AND c.id = q.id"
        )
        params = query.bind(now=now, workspace_id=workspace_id)
        async with reader.cursor(name=f"backfill_{job_id}") as stream:
            await stream.execute(sql, params)
            # Two batches are written at once on their own connections (their
            # contacts are disjoint): one computes in Python while the other
            # waits on the database.
            slots = asyncio.Semaphore(WRITERS)
            pending: set[asyncio.Task[None]] = set()

            async def write(rows: list[Any]) -> None:
                try:
                    async with pool.connection() as conn:
                        await _write_batch(
                            conn,
                            workspace_id,
                            deployed,
                            query.columns,
                            rows,
                            now,
                            silent,
                            counts,
                            snapshot_margin,
                        )
                        counts["contacts"] += len(rows)
                        await conn.execute(
                            # Batches finish in any order: done only grows.
                            "UPDATE jobs SET done = greatest(done, %s) WHERE id = %s",
                            (counts["contacts"], job_id),
                        )
                finally:
                    slots.release()

            try:
                while rows := await stream.fetchmany(BATCH_SIZE):
                    await slots.acquire()
                    for task in [t for t in pending if t.done()]:
                        pending.discard(task)
                        task.result()  # a failed batch fails the job now
                    pending.add(asyncio.create_task(write(list(rows))))
                await asyncio.gather(*pending)
            finally:
                for task in pending:
                    task.cancel()
    return counts


async def _write_batch(
    conn: AsyncConnection,
    workspace_id: int,
    deployed: DeployedRules,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    now: int,
    silent: frozenset[NodeKey],
    counts: dict[str, int],
    snapshot_margin: Any,
) -> None:
    pks = [int(row[0]) for row in rows]
    next_at: dict[int, Any] = {}
    async with conn.transaction():
        # The same lock a mutation takes on its contact: a batch and a
        # mutation of one contact run one after the other.
        cur = await conn.execute(
            "SELECT pk, stage, evaluated_at > %s FROM contacts WHERE pk = ANY(%s)"
            " ORDER BY pk FOR UPDATE",
            (snapshot_margin, pks),
        )
        locked = await cur.fetchall()
        prior_stages = {int(r[0]): r[1] for r in locked}
        moved = {int(r[0]) for r in locked if r[2]}
        if deployed.plan.offsets:
            cur = await conn.execute(
                _next_change_sql(deployed),
                {
                    "pks": pks,
                    "offsets": sorted(deployed.plan.offsets),
                    "now": realtime.micros_to_datetime(now),
                },
            )
            next_at = {int(pk): at for pk, at in await cur.fetchall()}
        instants = sorted(i for i in deployed.plan.instants if i > now)
        segment_names = [name for kind, name in columns if kind == "segment"]
        score_names = [name for kind, name in columns if kind == "score"]
        writer = realtime.StateWriter(conn, workspace_id, now)
        await writer.load([pk for pk in pks if pk not in moved], segment_names, score_names)
        reason = f"rules.deployed v{deployed.version}"
        for row in rows:
            pk = int(row[0])
            if pk not in prior_stages:
                continue  # deleted since the snapshot
            if pk in moved:
                # Changed since the snapshot: its row is stale; evaluate now.
                outcome = await realtime.reevaluate(
                    conn,
                    workspace_id,
                    pk,
                    realtime.Change(reason, everything=True),
                    deployed=deployed,
                    now=now,
                    silent=silent,
                )
                if outcome is not None:
                    _count(counts, outcome)
                continue
            segments: dict[str, bool] = {}
            scores: dict[str, Decimal] = {}
            stage: tuple[str | None, str | None] | None = None
            for (kind, name), value in zip(columns, row[1:], strict=True):
                if kind == "segment":
                    segments[name] = bool(value)
                elif kind == "score":
                    scores[name] = value
                elif kind == "stage":
                    stage = (prior_stages[pk], value)
            candidate = next_at.get(pk)
            micros = to_micros(candidate) if candidate is not None else None
            if instants and (micros is None or instants[0] < micros):
                micros = instants[0]
            outcome = writer.contact(
                pk,
                str(row[1]),
                reason,
                segments=segments,
                scores=scores,
                stage=stage,
                next_at=micros,
                silent=silent,
            )
            _count(counts, outcome)
        await writer.flush()


def _count(counts: dict[str, int], outcome: realtime.Outcome) -> None:
    counts["entered"] += len(outcome.entered)
    counts["exited"] += len(outcome.exited)
    counts["scores_changed"] += len(outcome.scores)
    counts["stages_changed"] += outcome.stage is not None
