"""``/v1/rules``: deploy the workspace's segments, scores and lifecycle.

``PUT`` compiles the files against the workspace's field definitions. With
errors: 422 carrying the diagnostics (as ``rulec check --format json``) and
nothing changes. Otherwise the files become the next version and a backfill
job evaluates every contact (``GET /v1/jobs/{id}``); from then on every
mutation re-evaluates what it touches. Deploying the files in force again
changes nothing (same version, no job).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Request
from nudgel.api.db.pool import pool_of
from nudgel.api.http.auth import Auth
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import Writer
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.deploy import deploy, start_backfill
from nudgel.api.rules.store import current_rules
from nudgel.dsl.render import render_json
from psycopg.rows import dict_row
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


class JobRef(BaseModel):
    object: Literal["job"] = "job"
    id: str


class RuleSet(BaseModel):
    object: Literal["rule_set"] = "rule_set"
    version: int = Field(description="Numbered from 1, one per deploy that changed the files.")
    files: dict[str, str]
    created_at: datetime
    segments: list[str]
    scores: list[str]
    stages: list[str]
    job: JobRef | None = Field(
        default=None, description="The backfill this deploy started (none if unchanged)."
    )
    warnings: list[dict[str, Any]] = Field(
        default_factory=list, description="Warnings, as `rulec check --format json` gives them."
    )


async def _rule_set(conn: Any, workspace_id: int, version: int) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT version, files, created_at FROM rule_sets WHERE workspace_id = %s AND version = %s",
        (workspace_id, version),
    )
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


@router.put(
    "",
    response_model=RuleSet,
    summary="Deploy rules",
    description=(
        "Compiles the files against the workspace's fields. 422 with `diagnostics` when they"
        " have errors (nothing changes); otherwise the new version is in force at once and a"
        " backfill job evaluates every contact (new segments fill silently; a changed segment"
        " fires `segment.entered`/`segment.exited` for the contacts it moves)."
    ),
    responses=problem_responses(422),
)
async def deploy_rules(body: RulesDeploy, writer: Writer, request: Request) -> RuleSet:
    async with writer.transaction() as tx:
        deployment = await deploy(tx.conn, tx.workspace_id, body.files)
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
        row = await _rule_set(tx.conn, tx.workspace_id, deployment.version)
    if deployment.job_id is not None:
        start_backfill(pool_of(request), writer.workspace_id, deployment)
    rules = deployment.deployed.rules
    return RuleSet(
        **row,
        segments=list(rules.segments),
        scores=list(rules.scores),
        stages=list(rules.stage_names),
        job=JobRef(id=deployment.job_id) if deployment.job_id else None,
        warnings=document,
    )


@router.get(
    "",
    response_model=RuleSet,
    summary="The rules in force",
    responses=problem_responses(404),
)
async def get_rules(auth: Auth, conn: Conn) -> RuleSet:
    deployed = await current_rules(conn, auth.workspace_id)
    if deployed is None:
        raise ProblemError.not_found("Rules (none deployed yet)")
    row = await _rule_set(conn, auth.workspace_id, deployed.version)
    return RuleSet(
        **row,
        segments=list(deployed.rules.segments),
        scores=list(deployed.rules.scores),
        stages=list(deployed.rules.stage_names),
    )
