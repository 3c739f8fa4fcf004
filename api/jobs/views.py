"""A job as ``GET /v1/jobs/{id}`` shows it: progress, outcome, and whether
(and until when) a process holds it."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["job_view"]


async def job_view(conn: AsyncConnection, workspace_id: int, job_id: str) -> dict[str, Any] | None:
    """The job's fields (None when the workspace has no such job)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT id, kind, status, total, done, result, error, created_at, started_at,"
        " finished_at, attempts, heartbeat_at,"
        " CASE WHEN status IN ('queued', 'running') THEN lease_expires_at END"
        " AS lease_expires_at"
        " FROM jobs WHERE workspace_id = %s AND id = %s",
        (workspace_id, job_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    finished = row["status"] == "succeeded"
    row["progress"] = 1.0 if finished else (row["done"] / row["total"] if row["total"] else 0.0)
    return dict(row)
