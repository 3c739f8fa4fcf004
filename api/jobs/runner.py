"""Long-running work as jobs (rule backfills, imports): a ``jobs`` row with
progress that ``GET /v1/jobs/{id}`` shows, run by an asyncio task of this
process, its outcome recorded on the row whatever happens."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Coroutine
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

__all__ = ["create_job", "run_job", "start_job"]

log = logging.getLogger(__name__)

# Jobs running in this process; held so they are not garbage-collected mid-run.
RUNNING: set[asyncio.Task[None]] = set()


async def create_job(conn: AsyncConnection, workspace_id: int, kind: str) -> str:
    """A queued job (in the caller's transaction); its id, ``job_...``."""
    job_id = "job_" + secrets.token_hex(12)
    await conn.execute(
        "INSERT INTO jobs (id, workspace_id, kind, status) VALUES (%s, %s, %s, 'queued')",
        (job_id, workspace_id, kind),
    )
    return job_id


async def run_job(
    pool: AsyncConnectionPool, job_id: str, kind: str, work: Awaitable[dict[str, Any]]
) -> None:
    """Await ``work`` and record its result, or its failure, on the job."""
    try:
        result = await work
    except Exception as error:  # recorded on the job; the service goes on
        log.exception("%s %s failed", kind, job_id)
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET status = 'failed', error = %s, finished_at = now() WHERE id = %s",
                (f"{type(error).__name__}: {error}", job_id),
            )
        return
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE jobs SET status = 'succeeded', done = greatest(done, total), result = %s,"
            " finished_at = now() WHERE id = %s",
            (Jsonb(result), job_id),
        )


def start_job(work: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``work`` (a ``run_job`` call) in the background, after its job committed."""
    task = asyncio.create_task(work, name=name)
    RUNNING.add(task)
    task.add_done_callback(RUNNING.discard)
