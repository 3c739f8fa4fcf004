"""Long-running work as jobs (rule backfills, imports): a ``jobs`` row with
progress that ``GET /v1/jobs/{id}`` shows, run by an asyncio task of the
process holding its lease, its outcome recorded on the row whatever happens.

Leases. A queued or running job belongs to one process (``lease_owner``,
:data:`OWNER`) until ``lease_expires_at``. While the work runs, a heartbeat
extends the lease every third of its length, and every batch the work
commits re-checks it in the batch's own transaction (:meth:`Lease.commit`):
a process that lost its lease (stalled past it while another took the job
over) commits nothing more, and stops. A process that dies stops its
heartbeats; once the lease has lapsed, ``nudgel.api.jobs.resume`` (in
``nudgel serve`` and ``nudgel worker``) claims the job and runs it on from
the progress its batches committed. A process that stops cleanly releases
its leases at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from nudgel.api.lists.rendering import TemplateRenderer
from nudgel.api.settings import Settings
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

__all__ = [
    "OWNER",
    "JobHost",
    "Lease",
    "LeaseLost",
    "create_job",
    "run_job",
    "start_job",
]

log = logging.getLogger(__name__)

# This process, as the owner of the leases it takes.
OWNER = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class JobHost:
    """What runs jobs in a process: its pool and settings, and the app whose
    state holds the mailer and the link signing key (an import subscribing
    contacts to a list sends confirmation emails)."""

    pool: AsyncConnectionPool
    settings: Settings
    app: FastAPI = field(default_factory=FastAPI)
    # Jobs running here; held so they are not garbage-collected mid-run.
    tasks: set[asyncio.Task[None]] = field(default_factory=set, compare=False)

    def __post_init__(self) -> None:
        if not hasattr(self.app.state, "settings"):
            self.app.state.settings = self.settings
        if not hasattr(self.app.state, "pool"):
            self.app.state.pool = self.pool  # the dev inbox keeps mail with it

    async def renderer(self) -> TemplateRenderer:
        """The app's template renderer; a host with none (the CLI's, a worker's)
        starts its own the first time a job needs one, and closes it on stop."""
        renderer: TemplateRenderer | None = getattr(self.app.state, "renderer", None)
        if renderer is None:
            renderer = TemplateRenderer(self.settings)
            await renderer.start()
            self.app.state.renderer = renderer
            self.app.state.renderer_owned_by_jobs = True
        return renderer

    async def stop(self) -> None:
        """Cancel the jobs running here (their leases are released, so another
        process resumes them at once) and wait for them."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if getattr(self.app.state, "renderer_owned_by_jobs", False):
            await self.app.state.renderer.close()
            self.app.state.renderer = None
            self.app.state.renderer_owned_by_jobs = False


class LeaseLost(RuntimeError):
    """Another process holds the job now (this one stalled past its lease)."""


@dataclass(frozen=True)
class Lease:
    """This process's hold on a job."""

    job_id: str
    seconds: float
    owner: str = OWNER

    async def claim(self, conn: AsyncConnection) -> tuple[str, int, dict[str, Any]] | None:
        """Take the job to run it: its kind, workspace and params; None when it
        is finished or another process holds a lease that has not lapsed."""
        cur = await conn.execute(
            "UPDATE jobs SET status = 'running', lease_owner = %(owner)s,"
            " lease_expires_at = now() + %(seconds)s * interval '1 second',"
            " heartbeat_at = now(), attempts = attempts + 1,"
            " started_at = coalesce(started_at, now())"
            " WHERE id = %(id)s AND status IN ('queued', 'running')"
            " AND (lease_owner = %(owner)s OR lease_owner IS NULL"
            "      OR lease_expires_at IS NULL OR lease_expires_at < now())"
            " RETURNING kind, workspace_id, params",
            {"owner": self.owner, "seconds": self.seconds, "id": self.job_id},
        )
        row = await cur.fetchone()
        return None if row is None else (row[0], int(row[1]), dict(row[2]))

    async def extend(self, conn: AsyncConnection) -> None:
        """The heartbeat; :class:`LeaseLost` when the job is no longer ours."""
        cur = await conn.execute(
            "UPDATE jobs SET heartbeat_at = now(),"
            " lease_expires_at = now() + %s * interval '1 second'"
            " WHERE id = %s AND lease_owner = %s AND status = 'running'",
            (self.seconds, self.job_id, self.owner),
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"job {self.job_id} is no longer held by this process")

    async def commit(
        self,
        conn: AsyncConnection,
        *,
        done: int = 0,
        counts: Mapping[str, int] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """In a batch's transaction: add ``done`` and ``counts`` to the job's
        progress and result, merge ``params``, extend the lease. Raises
        :class:`LeaseLost` (the caller's transaction must roll back) when the
        job is no longer ours, so a batch is written by its lease holder only."""
        cur = await conn.execute(
            "UPDATE jobs SET done = done + %(done)s,"
            " result = CASE WHEN %(counts)s::jsonb = '{}' THEN result"
            "   ELSE coalesce(result, '{}') || (SELECT jsonb_object_agg(d.key,"
            "     coalesce((jobs.result->>d.key)::bigint, 0) + d.value::bigint)"
            "     FROM jsonb_each_text(%(counts)s::jsonb) d) END,"
            " params = params || %(params)s::jsonb,"
            " heartbeat_at = now(), lease_expires_at = now() + %(seconds)s * interval '1 second'"
            " WHERE id = %(id)s AND lease_owner = %(owner)s AND status = 'running'",
            {
                "done": done,
                "counts": Jsonb(dict(counts or {})),
                "params": Jsonb(dict(params or {})),
                "seconds": self.seconds,
                "id": self.job_id,
                "owner": self.owner,
            },
        )
        if cur.rowcount != 1:
            raise LeaseLost(f"job {self.job_id} is no longer held by this process")

    async def release(self, conn: AsyncConnection) -> None:
        """Give the job up unfinished (a clean stop): another process may take it now."""
        await conn.execute(
            "UPDATE jobs SET lease_expires_at = now() WHERE id = %s AND lease_owner = %s"
            " AND status IN ('queued', 'running')",
            (self.job_id, self.owner),
        )


async def create_job(
    conn: AsyncConnection,
    workspace_id: int,
    kind: str,
    lease_seconds: float,
    params: Mapping[str, Any] | None = None,
) -> str:
    """A queued job (in the caller's transaction), leased to this process,
    which starts it once the transaction has committed; its id, ``job_...``.
    If this process dies first, the lease lapses and another one runs it."""
    job_id = "job_" + secrets.token_hex(12)
    await conn.execute(
        "INSERT INTO jobs (id, workspace_id, kind, status, params, lease_owner, lease_expires_at)"
        " VALUES (%s, %s, %s, 'queued', %s, %s, now() + %s * interval '1 second')",
        (job_id, workspace_id, kind, Jsonb(dict(params or {})), OWNER, lease_seconds),
    )
    return job_id


async def run_job(
    pool: AsyncConnectionPool,
    lease: Lease,
    work: Callable[[int, dict[str, Any]], Awaitable[dict[str, Any] | None]],
) -> None:
    """Claim the job, run ``work(workspace_id, params)`` with heartbeats, and
    record its result (None: the result its batches committed), or its
    failure. Nothing is recorded when the lease is lost or the task is
    cancelled (the process is stopping: the lease is released for another)."""
    async with pool.connection() as conn:
        claimed = await lease.claim(conn)
    if claimed is None:
        log.info("job %s is finished or held by another process", lease.job_id)
        return
    kind, workspace_id, params = claimed
    task = asyncio.create_task(_awaited(work(workspace_id, params)))
    lost = asyncio.Event()
    heartbeat = asyncio.create_task(_heartbeat(pool, lease, task, lost))
    try:
        result = await task
    except LeaseLost:
        log.warning("%s %s: lease lost; the process holding it now goes on", kind, lease.job_id)
        return
    except asyncio.CancelledError:
        if lost.is_set():
            log.warning("%s %s: lease lost; the process holding it now goes on", kind, lease.job_id)
            return
        with contextlib.suppress(Exception):
            async with pool.connection() as conn:
                await lease.release(conn)
        raise
    except Exception as error:  # recorded on the job; the service goes on
        log.exception("%s %s failed", kind, lease.job_id)
        await _finish(pool, lease, "failed", None, f"{type(error).__name__}: {error}")
        return
    finally:
        heartbeat.cancel()
        if not task.done():
            task.cancel()
    await _finish(pool, lease, "succeeded", result, None)


async def _awaited(work: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    return await work


async def _heartbeat(
    pool: AsyncConnectionPool, lease: Lease, task: asyncio.Task[Any], lost: asyncio.Event
) -> None:
    while True:
        await asyncio.sleep(lease.seconds / 3)
        try:
            async with pool.connection() as conn:
                await lease.extend(conn)
        except LeaseLost:
            lost.set()
            task.cancel()  # another process runs it now; its batches stop here
            return
        except Exception:
            # The database may be back before the lease lapses.
            log.exception("heartbeat of job %s failed", lease.job_id)


async def _finish(
    pool: AsyncConnectionPool,
    lease: Lease,
    status: str,
    result: dict[str, Any] | None,
    error: str | None,
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE jobs SET status = %s, error = %s, result = coalesce(%s, result),"
            " done = CASE WHEN %s = 'succeeded' THEN greatest(done, total) ELSE done END,"
            " finished_at = now(), lease_expires_at = NULL"
            " WHERE id = %s AND lease_owner = %s",
            (
                status,
                error,
                Jsonb(result) if result is not None else None,
                status,
                lease.job_id,
                lease.owner,
            ),
        )


def start_job(host: JobHost, work: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``work`` (a ``run_job`` call) in the background, after its job committed."""
    task = asyncio.create_task(work, name=name)
    host.tasks.add(task)
    task.add_done_callback(host.tasks.discard)
