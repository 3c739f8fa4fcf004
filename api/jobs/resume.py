"""Jobs that outlive their process: resuming those whose lease lapsed, and
re-running failed ones on request.

:func:`resume_loop` runs in ``nudgel serve`` (with ``run_worker``) and in
``nudgel worker``: at start-up and every ``job_resume_interval`` seconds it
starts every queued or running job whose lease has lapsed (its process died
or stopped). Starting is claiming (``Lease.claim``, one UPDATE): of several
processes that see the same job, one runs it. A backfill resumes after the
last contact its committed batches reached, an import with the rows still
staged.

:func:`queue_retry` (``POST /v1/jobs/{id}/retry``) queues a failed job
again, for this process to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nudgel.api.jobs.imports import start_import
from nudgel.api.jobs.runner import OWNER, JobHost
from nudgel.api.problems import ProblemError
from nudgel.api.rules.backfill import start_backfill
from psycopg import AsyncConnection

__all__ = ["queue_retry", "resume_lapsed", "resume_loop", "start"]

log = logging.getLogger(__name__)

_STARTERS: dict[str, Callable[[JobHost, str], None]] = {
    "backfill": start_backfill,
    "import": start_import,
}

# Jobs claimed per look; the rest wait for the next one.
_RESUME_LIMIT = 20


def start(host: JobHost, kind: str, job_id: str) -> None:
    """Run the job here, in the background, if its lease lets this process take it."""
    _STARTERS[kind](host, job_id)


async def resume_lapsed(host: JobHost) -> list[str]:
    """Start the jobs whose lease has lapsed; their ids."""
    async with host.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, kind FROM jobs WHERE status IN ('queued', 'running')"
            " AND (lease_expires_at IS NULL OR lease_expires_at < now())"
            " AND kind = ANY(%s) ORDER BY created_at LIMIT %s",
            (list(_STARTERS), _RESUME_LIMIT),
        )
        lapsed = await cur.fetchall()
    running = {task.get_name() for task in host.tasks}
    started: list[str] = []
    for job_id, kind in lapsed:
        if f"{kind} {job_id}" in running:
            continue  # ours, its heartbeat late: it claims nothing twice anyway
        log.info("resuming %s %s (its lease lapsed)", kind, job_id)
        start(host, kind, job_id)
        started.append(job_id)
    return started


async def resume_loop(host: JobHost, interval: float, stop: asyncio.Event) -> None:
    """Resume lapsed jobs now and every ``interval`` seconds until ``stop`` is set.
    Errors are logged and the loop goes on (a database restart must not stop it)."""
    while not stop.is_set():
        try:
            await resume_lapsed(host)
        except Exception:
            log.exception("looking for jobs to resume failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def queue_retry(
    conn: AsyncConnection, workspace_id: int, job_id: str, lease_seconds: float
) -> str:
    """In the caller's transaction: a failed job of the workspace queued again,
    leased to this process, which starts it (:func:`start`) once committed;
    its kind. 404 for no such job, 409 unless it failed (or when a newer rule
    set superseded a backfill's version)."""
    cur = await conn.execute(
        "SELECT kind, status, params FROM jobs WHERE workspace_id = %s AND id = %s FOR UPDATE",
        (workspace_id, job_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise ProblemError.not_found(f"Job {job_id!r}")
    kind, status, params = row
    if status != "failed":
        raise ProblemError.conflict(f"Job {job_id!r} is {status}: only a failed job is retried.")
    if kind not in _STARTERS:
        raise ProblemError.conflict(f"Job {job_id!r} is a {kind} job, which cannot be retried.")
    if kind == "backfill":
        await _check_backfill_retry(conn, workspace_id, job_id, params)
    await conn.execute(
        "UPDATE jobs SET status = 'queued', error = NULL, finished_at = NULL,"
        " lease_owner = %s, lease_expires_at = now() + %s * interval '1 second'"
        " WHERE id = %s",
        (OWNER, lease_seconds, job_id),
    )
    return str(kind)


async def _check_backfill_retry(
    conn: AsyncConnection, workspace_id: int, job_id: str, params: dict[str, Any]
) -> None:
    cur = await conn.execute(
        "SELECT r.version, j.id, j.status FROM rule_sets r LEFT JOIN jobs j ON j.id = r.job_id"
        " WHERE r.workspace_id = %s ORDER BY r.version DESC LIMIT 1 FOR UPDATE OF r",
        (workspace_id,),
    )
    current = await cur.fetchone()
    version = params.get("version")
    if current is None or (version is not None and current[0] != version):
        raise ProblemError.conflict(
            f"Job {job_id!r} backfilled version {version}, which a newer deploy superseded:"
            " its own backfill evaluates every contact (PUT /v1/rules with"
            ' "backfill": "force" runs it again).'
        )
    if current[1] not in (None, job_id) and current[2] in ("queued", "running"):
        raise ProblemError.conflict(
            f"Another backfill of version {current[0]} is running (job {current[1]})."
        )
    # This run is now the version's backfill: its status is the deploy's.
    await conn.execute(
        "UPDATE rule_sets SET job_id = %s WHERE workspace_id = %s AND version = %s",
        (job_id, workspace_id, current[0]),
    )
