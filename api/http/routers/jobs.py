"""``/v1/jobs``: long-running work (rule backfills) and its progress."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from nudgel.api.http.auth import Auth
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.problems import ProblemError
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

router, OPENAPI_TAG = resource_router(
    "/jobs", "Jobs", "Long-running work, such as evaluating new rules for every contact."
)


class Job(BaseModel):
    object: Literal["job"] = "job"
    id: str
    kind: str = Field(
        description="`backfill`: a deployed rule set evaluated for every contact;"
        " `import`: a CSV import (`/v1/imports`)."
    )
    status: Literal["queued", "running", "succeeded", "failed"]
    total: int = Field(description="How many items the job has to process (0 until known).")
    done: int = Field(description="How many it has processed.")
    progress: float = Field(description="done / total, from 0 to 1.")
    result: dict[str, Any] | None = Field(description="Counts, once succeeded.")
    error: str | None = Field(description="Why it failed.")
    created_at: datetime
    finished_at: datetime | None


@router.get("/{job_id}", response_model=Job, summary="Get a job", responses=problem_responses(404))
async def get_job(
    job_id: Annotated[str, Path(description="The job's id (`job_...`).")], auth: Auth, conn: Conn
) -> Job:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT id, kind, status, total, done, result, error, created_at, finished_at"
        " FROM jobs WHERE workspace_id = %s AND id = %s",
        (auth.workspace_id, job_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise ProblemError.not_found(f"Job {job_id!r}")
    finished = row["status"] == "succeeded"
    progress = 1.0 if finished else (row["done"] / row["total"] if row["total"] else 0.0)
    return Job(**row, progress=progress)
