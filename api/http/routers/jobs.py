"""``/v1/jobs``: long-running work (rule backfills, imports), its progress, and
re-running a failed job."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Request
from nudgel.api.http.auth import Auth
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, job_host_of, resource_router
from nudgel.api.http.writes import PostWriter, replayable
from nudgel.api.jobs.resume import queue_retry, start
from nudgel.api.jobs.views import job_view
from nudgel.api.problems import ProblemError
from pydantic import BaseModel, Field

router, OPENAPI_TAG = resource_router(
    "/jobs", "Jobs", "Long-running work, such as evaluating new rules for every contact."
)

JobId = Annotated[str, Path(description="The job's id (`job_...`).", max_length=100)]


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
    result: dict[str, Any] | None = Field(
        description="Counts: so far while running, final once succeeded."
    )
    error: str | None = Field(description="Why it failed.")
    attempts: int = Field(
        description="How many times a process started it: more than 1 when it was resumed"
        " after its process stopped (from its committed progress) or retried."
    )
    heartbeat_at: datetime | None = Field(
        description="When the process running it last said it is alive."
    )
    lease_expires_at: datetime | None = Field(
        description="While queued or running: if the process running it has not renewed its"
        " hold by then (it crashed), another process resumes the job."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.get(
    "/{job_id}",
    response_model=Job,
    summary="Get a job",
    description="A backfill or import job: its status (`queued`, `running`, `succeeded`, `failed`), progress (`done` of `total`), result or error, and lease (`attempts`, `heartbeat_at`). Poll it until it ends, e.g. `GET /v1/jobs/job_...`.",
    responses=problem_responses(404),
)
async def get_job(job_id: JobId, auth: Auth, conn: Conn) -> Job:
    row = await job_view(conn, auth.workspace_id, job_id)
    if row is None:
        raise ProblemError.not_found(f"Job {job_id!r}")
    return Job(**row)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=Job,
    summary="Re-run a failed job",
    description=(
        "Queues a failed job again and runs it from its committed progress: an import goes on"
        " with the rows it had not applied (none is applied twice), a backfill evaluates the"
        " contacts again (a backfill of a version that a newer deploy superseded is a 409)."
        " 409 when the job is queued, running or succeeded."
    ),
    responses={**replayable(202), **problem_responses(404, 409)},
)
async def retry_job(job_id: JobId, writer: PostWriter, request: Request) -> object:
    host = job_host_of(request)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        kind = await queue_retry(tx.conn, tx.workspace_id, job_id, host.settings.job_lease_seconds)
        row = await job_view(tx.conn, tx.workspace_id, job_id)
        assert row is not None
        response = await tx.respond(202, Job(**row))
    start(host, kind, job_id)
    return response
