"""``/v1/rules``: deploy the workspace's segments, scores and lifecycle.

``PUT`` compiles the files against the workspace's field definitions. With
errors: 422 carrying the diagnostics (as ``rulec check --format json``) and
nothing changes; the same for more segments and scores than
``rules_max_nodes``. Otherwise the files become the next version and a
backfill job evaluates every contact (``GET /v1/jobs/{id}``); from then on
every mutation re-evaluates what it touches. Deploying the files in force
again changes nothing (same version, no job), unless ``"backfill": "force"``
runs their backfill again. ``GET`` says how the last deploy went.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Request
from nudgel.api.http.auth import Auth
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, job_host_of, resource_router
from nudgel.api.http.writes import Writer
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.deploy import (
    DeployStatus,
    deploy,
    deploy_status,
    rules_in_force,
    start_backfill,
)
from nudgel.api.rules.store import DeployedRules
from nudgel.dsl.render import render_json
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

router, OPENAPI_TAG = resource_router(
    "/rules",
    "Rules",
    "The workspace's segments, scores and lifecycle, in the rules language.",
)

RulePath = Annotated[
    str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]+\.rules$", min_length=7, max_length=200)
]

EXAMPLE = 'segment hot_leads "Hot leads" {\n  count(event "purchase" within 30d) >= 2\n}\n'


class RulesDeploy(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"files": {"marketing.rules": EXAMPLE}}]}
    )

    files: dict[RulePath, Annotated[str, StringConstraints(max_length=1_000_000)]] = Field(
        description="Rule files by path (`*.rules`); together they are one rule set.",
        min_length=1,
        max_length=200,
    )
    backfill: Literal["auto", "force"] = Field(
        default="auto",
        description="`auto`: evaluate every contact when the files changed. `force`: also when"
        " they did not (a backfill that failed or was cut short leaves contacts with their"
        " earlier results; this runs it again for the version in force).",
    )


class JobRef(BaseModel):
    object: Literal["job"] = "job"
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    error: str | None = Field(default=None, description="Why it failed.")


class RuleSet(BaseModel):
    object: Literal["rule_set"] = "rule_set"
    version: int = Field(description="Numbered from 1, one per deploy that changed the files.")
    files: dict[str, str]
    created_at: datetime
    segments: list[str]
    scores: list[str]
    stages: list[str]
    job: JobRef | None = Field(
        default=None,
        description="PUT: the backfill this deploy started (none if unchanged and not forced)."
        " GET: the version's latest backfill.",
    )
    status: Literal["backfilling", "complete", "failed"] = Field(
        description="How the deploy of this version went: its backfill is running, is done, or"
        " failed. The rules are in force in every case; after a failure, contacts the backfill"
        " did not reach keep their earlier results until they change (re-run it with"
        ' `"backfill": "force"`, or deploy the files of `last_good_version`).'
    )
    last_good_version: int | None = Field(
        description="The newest version whose backfill completed (this one when `complete`)."
    )
    warnings: list[dict[str, Any]] = Field(
        default_factory=list, description="Warnings, as `rulec check --format json` gives them."
    )


def _rule_set(
    deployed: DeployedRules,
    state: DeployStatus,
    job: JobRef | None,
    warnings: list[dict[str, Any]] | None = None,
) -> RuleSet:
    return RuleSet(
        version=state.version,
        files=state.files,
        created_at=state.created_at,
        segments=list(deployed.rules.segments),
        scores=list(deployed.rules.scores),
        stages=list(deployed.rules.stage_names),
        job=job,
        status=state.status,  # type: ignore[arg-type]
        last_good_version=state.last_good_version,
        warnings=warnings or [],
    )


def _job_of(state: DeployStatus) -> JobRef | None:
    if state.job_id is None or state.job_status is None:
        return None
    return JobRef(id=state.job_id, status=state.job_status, error=state.job_error)  # type: ignore[arg-type]


@router.put(
    "",
    response_model=RuleSet,
    summary="Deploy rules",
    description=(
        "Compiles the files against the workspace's fields. 422 with `diagnostics` when they"
        " have errors, and 422 when they have more segments and scores than the workspace may"
        " (setting `rules_max_nodes`): nothing changes. Otherwise the new version is in force"
        " at once and a backfill job evaluates every contact (new segments fill silently; a"
        " changed segment fires `segment.entered`/`segment.exited` for the contacts it moves)."
        ' Unchanged files change nothing unless `"backfill": "force"`.'
    ),
    responses=problem_responses(409, 422),
)
async def deploy_rules(body: RulesDeploy, writer: Writer, request: Request) -> RuleSet:
    host = job_host_of(request)
    async with writer.transaction() as tx:
        deployment = await deploy(
            tx.conn,
            tx.workspace_id,
            body.files,
            host.settings,
            force_backfill=body.backfill == "force",
        )
        document = json.loads(render_json(list(deployment.diagnostics)))["diagnostics"]
        if deployment.version is None or deployment.deployed is None:
            first = next(d for d in document if d["severity"] == "error")
            raise ProblemError(
                422,
                "Invalid rules",
                f"{first['file']}:{first['line']}:{first['column']}: {first['message']}",
                type_=problem_type("invalid-rules"),
                diagnostics=document,
            )
        state = await deploy_status(tx.conn, tx.workspace_id)
        assert state is not None
    if deployment.job_id is not None:
        start_backfill(host, writer.workspace_id, deployment)
    job = JobRef(id=deployment.job_id, status="queued") if deployment.job_id else None
    return _rule_set(deployment.deployed, state, job, document)


@router.get(
    "",
    response_model=RuleSet,
    summary="The rules in force",
    description="With how their deploy went: its backfill's job and status, and the last"
    " version whose backfill completed.",
    responses=problem_responses(404),
)
async def get_rules(auth: Auth, conn: Conn) -> RuleSet:
    found = await rules_in_force(conn, auth.workspace_id)
    if found is None:
        raise ProblemError.not_found("Rules (none deployed yet)")
    deployed, state = found
    return _rule_set(deployed, state, _job_of(state))
