"""A job's progress bar on the terminal, for the CLI commands that run one."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
from psycopg_pool import AsyncConnectionPool

__all__ = ["follow_job"]


async def follow_job(
    pool: AsyncConnectionPool, job_id: str, task: asyncio.Task[None], label: str
) -> tuple[str, dict[str, Any] | None, str | None]:
    """Show the job's progress (on standard error) until ``task`` has ended
    and the job with it; the job's final status, result and error."""
    shown = 0
    with click.progressbar(length=1, label=label, show_pos=True, file=sys.stderr) as bar:
        while True:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT status, total, done, result, error FROM jobs WHERE id = %s", (job_id,)
                )
                row = await cur.fetchone()
            assert row is not None
            status, total, done, result, error = row
            if total and bar.length != total:
                bar.length = total
            if done > shown:
                bar.update(done - shown)
                shown = done
            if task.done() and status in ("succeeded", "failed"):
                return status, result, error
            await asyncio.sleep(0.2)
