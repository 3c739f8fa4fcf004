"""Backfill: evaluate a newly deployed rule set for every contact of the
workspace with the SQL backend, as a job with progress.

One connection holds a REPEATABLE READ snapshot and walks the workspace's
contacts in pk order, a batch at a time (at most ``backfill_batch_size``
contacts, and fewer when the rule set is wide: :data:`BATCH_VALUES`). Each
batch is evaluated by the rule set's queries (``DeployedRules.queries``: as
many as it takes for each to compute at most ``backfill_max_columns``
values per contact, so a rule set of any size stays within PostgreSQL's
column limit), all over the same snapshot, their rows joined by contact.
Other connections write the batches, each its own transaction, two at a
time (one computes in Python while the other waits on the database). Per
batch, results are compared with what is stored and only differences are
written, with their history; outbox events are written for segments,
scores and the stage that existed in the previous version (a changed rule
fires enter/exit for the contacts it moves), not for new ones (the first
fill of a new segment is silent). The next time-driven evaluation of each
contact is computed in SQL too (``nudgel.runtime.next_change``'s offsets and
instants). The Python work on a batch yields to the event loop every
:data:`YIELD_VALUES` values, so a wide batch never holds up requests.

A mutation that commits while the backfill runs is evaluated in memory with
the new rules; a batch written after it may be older than that evaluation.
The batch writer therefore re-evaluates in memory, with everything, the
contacts evaluated since shortly before the snapshot (``evaluated_at``)
instead of writing the snapshot's row. (``nudgel rules verify`` reports any
drift that remains.)

Crashes. Each batch's transaction checks the job's lease and that its
version is still the newest (a newer deploy's backfill supersedes it: the
job fails, saying so), and adds its counts to the job. Once every batch up
to a contact has committed, the job records that contact's pk
(``params.after_pk``) with the progress: a backfill resumed after a crash
(``nudgel.api.jobs.resume``) starts after it, with a new snapshot. That is
correct: the contacts before it were written with these rules, and every
change since was evaluated with them in real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from decimal import Decimal
from functools import partial
from typing import Any

from nudgel.api.jobs.runner import JobHost, Lease, LeaseLost, run_job, start_job
from nudgel.api.rules import realtime
from nudgel.api.rules.compiling import sql_in_process
from nudgel.api.rules.store import DeployedRules, current_rules
from nudgel.compiler.sql import CompiledQuery
from nudgel.runtime.dependencies import NodeKey
from nudgel.runtime.program import to_micros
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

__all__ = ["BATCH_VALUES", "Superseded", "run_backfill", "start_backfill"]

log = logging.getLogger(__name__)

WRITERS = 2
# A batch holds at most this many values (contacts x segments and scores):
# 5,000 segments make batches of 200 contacts.
BATCH_VALUES = 1_000_000
# Python work on a batch (decoding rows, comparing results) gives the event
# loop a turn after this many values.
YIELD_VALUES = 20_000
COUNTS = ("entered", "exited", "scores_changed", "stages_changed")


class Superseded(RuntimeError):
    """A newer version was deployed: its own backfill evaluates every contact."""


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


def start_backfill(host: JobHost, job_id: str) -> None:
    """Run the backfill job in the background (after the deploy committed)."""
    start_job(host, run_backfill(host, job_id), name=f"backfill {job_id}")


async def run_backfill(host: JobHost, job_id: str) -> None:
    """Run the job to its end (or to where another process takes it over),
    recording success or failure on it."""
    lease = Lease(job_id, host.settings.job_lease_seconds)
    await run_job(host.pool, lease, partial(_backfill, host, lease))


# One contact of a batch: its pk, its id, and each node's value.
_Row = tuple[int, str, dict[tuple[str, str], Any]]


async def _backfill(
    host: JobHost, lease: Lease, workspace_id: int, params: dict[str, Any]
) -> dict[str, Any]:
    pool, settings = host.pool, host.settings
    async with pool.connection() as conn:
        deployed = await current_rules(conn, workspace_id)
    version = params.get("version")
    if deployed is None:
        raise Superseded("the workspace has no rules any more")
    if version is not None and deployed.version != version:
        raise Superseded(
            f"version {version} was superseded by version {deployed.version},"
            " whose own backfill evaluates every contact"
        )
    silent = frozenset((str(kind), str(name)) for kind, name in params.get("silent", []))
    after_pk = int(params.get("after_pk", 0))
    queries = deployed.known_queries(settings.backfill_max_columns)
    if queries is None:  # a resumed job in another process, another setting
        queries = await sql_in_process(
            deployed.rules, deployed.files, settings.backfill_max_columns
        )
        deployed.remember_queries(settings.backfill_max_columns, queries)
    width = sum(len(q.columns) for q in queries)
    batch_size = max(1, min(settings.backfill_batch_size, BATCH_VALUES // width))
    progress = _Progress(lease, after_pk)
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
            "SELECT count(*) FROM contacts WHERE workspace_id = %s AND pk > %s",
            (workspace_id, after_pk),
        )
        remaining_row = await cur.fetchone()
        assert remaining_row is not None
        async with pool.connection() as conn:
            await progress.start(conn, int(remaining_row[0]))
        async with reader.cursor(name=f"backfill_{lease.job_id}") as contacts:
            await contacts.execute(
                "SELECT pk FROM contacts WHERE workspace_id = %s AND pk > %s ORDER BY pk",
                (workspace_id, after_pk),
            )
            slots = asyncio.Semaphore(WRITERS)
            pending: set[asyncio.Task[None]] = set()

            async def write(index: int, rows: list[_Row]) -> None:
                try:
                    async with pool.connection() as conn:
                        await _write_batch(
                            conn, workspace_id, deployed, lease, rows, now, silent, snapshot_margin
                        )
                        await progress.finished(conn, index, len(rows), rows[-1][0])
                finally:
                    slots.release()

            try:
                index = 0
                while batch := await contacts.fetchmany(batch_size):
                    pks = [int(r[0]) for r in batch]
                    rows = await _evaluate(reader, queries, workspace_id, now, pks)
                    await slots.acquire()
                    for task in [t for t in pending if t.done()]:
                        pending.discard(task)
                        task.result()  # a failed batch fails the job now
                    pending.add(asyncio.create_task(write(index, rows)))
                    index += 1
                await asyncio.gather(*pending)
            finally:
                for task in pending:
                    task.cancel()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT done, result FROM jobs WHERE id = %s", (lease.job_id,))
        final = await cur.fetchone()
    assert final is not None
    return {"contacts": int(final[0]), **{name: int(final[1].get(name, 0)) for name in COUNTS}}


class _Progress:
    """Batches commit in any order; the job records the pk up to which every
    batch has (where a resumed backfill starts) and how many contacts that is."""

    def __init__(self, lease: Lease, after_pk: int) -> None:
        self.lease = lease
        self.after_pk = after_pk
        self.next_index = 0
        self.finished_batches: dict[int, tuple[int, int]] = {}
        self.lock = asyncio.Lock()

    async def start(self, conn: AsyncConnection, remaining: int) -> None:
        cur = await conn.execute(
            "UPDATE jobs SET total = done + %s, result = coalesce(result, %s)"
            " WHERE id = %s AND lease_owner = %s RETURNING done",
            (remaining, Jsonb(dict.fromkeys(COUNTS, 0)), self.lease.job_id, self.lease.owner),
        )
        if await cur.fetchone() is None:
            raise LeaseLost(f"job {self.lease.job_id} is no longer held by this process")

    async def finished(
        self, conn: AsyncConnection, index: int, contacts: int, last_pk: int
    ) -> None:
        async with self.lock:
            self.finished_batches[index] = (contacts, last_pk)
            done, after_pk = 0, None
            while self.next_index in self.finished_batches:
                count, after_pk = self.finished_batches.pop(self.next_index)
                done += count
                self.next_index += 1
            if after_pk is not None:
                await conn.execute(
                    "UPDATE jobs SET done = done + %s, params = params || %s"
                    " WHERE id = %s AND lease_owner = %s",
                    (done, Jsonb({"after_pk": after_pk}), self.lease.job_id, self.lease.owner),
                )


async def _evaluate(
    reader: AsyncConnection,
    queries: Sequence[CompiledQuery],
    workspace_id: int,
    now: int,
    pks: list[int],
) -> list[_Row]:
    """Every query over the batch's contacts, in the reader's snapshot, joined by contact."""
    rows: dict[int, _Row] = {}
    for query in queries:
        cur = await reader.execute(
            query.sql, query.bind(now=now, workspace_id=workspace_id, contact_pks=pks)
        )
        columns = query.columns[2:]  # after pk and id
        slice_rows = max(1, YIELD_VALUES // len(query.columns))
        # Rows are decoded as they are fetched: a slice at a time, with the
        # event loop's turn in between.
        while fetched := await cur.fetchmany(slice_rows):
            for row in fetched:
                pk = int(row[0])
                found = rows.get(pk)
                if found is None:
                    found = rows[pk] = (pk, str(row[1]), {})
                found[2].update(zip(columns, row[2:], strict=True))
            await asyncio.sleep(0)
    return [rows[pk] for pk in pks if pk in rows]


async def _write_batch(
    conn: AsyncConnection,
    workspace_id: int,
    deployed: DeployedRules,
    lease: Lease,
    rows: Sequence[_Row],
    now: int,
    silent: frozenset[NodeKey],
    snapshot_margin: Any,
) -> None:
    pks = [row[0] for row in rows]
    next_at: dict[int, Any] = {}
    counts = dict.fromkeys(COUNTS, 0)
    async with conn.transaction():
        # The same lock a mutation takes on its contact: a batch and a
        # mutation of one contact run one after the other.
        cur = await conn.execute(
            "SELECT pk, stage, evaluated_at > %s FROM contacts WHERE pk = ANY(%s)"
            " ORDER BY pk FOR UPDATE",
            (snapshot_margin, pks),
        )
        locked = await cur.fetchall()
        # After the locks: a deploy that commits from now on waits for no
        # batch of ours, and its backfill's batches come after this one.
        cur = await conn.execute(
            "SELECT max(version) FROM rule_sets WHERE workspace_id = %s", (workspace_id,)
        )
        newest = await cur.fetchone()
        if newest is not None and newest[0] != deployed.version:
            raise Superseded(
                f"version {deployed.version} was superseded by version {newest[0]},"
                " whose own backfill evaluates every contact"
            )
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
        segment_names = [name for kind, name in deployed.rules.order if kind == "segment"]
        score_names = [name for kind, name in deployed.rules.order if kind == "score"]
        writer = realtime.StateWriter(conn, workspace_id, now)
        await writer.load([pk for pk in pks if pk not in moved], segment_names, score_names)
        reason = f"rules.deployed v{deployed.version}"
        work = 0
        for pk, contact_id, values in rows:
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
            for (kind, name), value in values.items():
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
                contact_id,
                reason,
                segments=segments,
                scores=scores,
                stage=stage,
                next_at=micros,
                silent=silent,
            )
            _count(counts, outcome)
            work += len(values)
            if work >= YIELD_VALUES:
                work = 0
                await asyncio.sleep(0)
        await writer.flush()
        # Fenced: only the lease holder's batch commits.
        await lease.commit(conn, counts=counts)


def _count(counts: dict[str, int], outcome: realtime.Outcome) -> None:
    counts["entered"] += len(outcome.entered)
    counts["exited"] += len(outcome.exited)
    counts["scores_changed"] += len(outcome.scores)
    counts["stages_changed"] += outcome.stage is not None
