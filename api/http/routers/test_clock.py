"""``/v1/test_clock``: a test-mode workspace's own clock.

Rules evaluate at the workspace's instant. For a workspace with a test key
(``sk_test_...``) the instant can be frozen at any time (``PUT``: every
contact's time-dependent results are then re-evaluated there) and moved
forward (``advance``): contacts whose results fall due until then are
re-evaluated before the call returns, so windowed segments and scores change
as they would have as days passed. Live keys get 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from nudgel.api.contacts.events import Timestamp
from nudgel.api.http.auth import Auth
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, replayable
from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.api.rules.scheduler import run_due
from pydantic import BaseModel, ConfigDict, Field

router, OPENAPI_TAG = resource_router(
    "/test_clock",
    "Test clock",
    "Move a test-mode workspace's time forward to see windows close without waiting.",
)


class TestClock(BaseModel):
    object: Literal["test_clock"] = "test_clock"
    frozen_time: datetime | None = Field(
        description="The workspace's instant; null when it follows the wall clock."
    )
    evaluated: int = Field(default=0, description="Contacts re-evaluated by this advance.")


class FreezeClock(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"frozen_time": "2026-01-01T00:00:00Z"}]}
    )

    frozen_time: Timestamp | None = Field(
        description="The workspace's instant from now on (RFC 3339); null: the wall clock again."
    )


class Advance(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"to": "2026-12-31T00:00:00Z"}]}
    )

    to: Timestamp = Field(description="The new instant: RFC 3339, not before the current one.")


def _test_mode_only(mode: str) -> None:
    if mode != "test":
        raise ProblemError(
            403,
            "Test mode only",
            "The test clock belongs to test-mode workspaces: use an sk_test_ key.",
            type_=problem_type("test-mode-only"),
        )


@router.get(
    "", response_model=TestClock, summary="The test clock", responses=problem_responses(403)
)
async def get_test_clock(auth: Auth, conn: Conn) -> TestClock:
    _test_mode_only(auth.mode)
    cur = await conn.execute(
        "SELECT test_clock FROM workspaces WHERE id = %s", (auth.workspace_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return TestClock(frozen_time=row[0])


@router.put(
    "",
    response_model=TestClock,
    summary="Set the test clock",
    description="Freezes the workspace's time at `frozen_time` (earlier or later), or returns it"
    " to the wall clock (null), and re-evaluates every contact's time-dependent results there.",
    responses=problem_responses(403),
)
async def set_test_clock(body: FreezeClock, auth: Auth, conn: Conn) -> TestClock:
    _test_mode_only(auth.mode)
    async with conn.transaction():
        await conn.execute(
            "UPDATE workspaces SET test_clock = %s WHERE id = %s",
            (body.frozen_time, auth.workspace_id),
        )
        # Results stored for another instant: every contact is due again.
        await conn.execute(
            "UPDATE contacts SET next_evaluation_at = '-infinity'"
            " WHERE workspace_id = %s AND evaluated_at IS NOT NULL",
            (auth.workspace_id,),
        )
    evaluated = await run_due(conn, auth.workspace_id)
    return TestClock(frozen_time=body.frozen_time, evaluated=evaluated)


@router.post(
    "/advance",
    response_model=TestClock,
    summary="Advance the test clock",
    responses={**replayable(200), **problem_responses(403, 422)},
)
async def advance_test_clock(body: Advance, auth: Auth, writer: PostWriter) -> object:
    _test_mode_only(auth.mode)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        cur = await tx.conn.execute(
            "SELECT coalesce(test_clock, now()) FROM workspaces WHERE id = %s FOR UPDATE",
            (tx.workspace_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        if body.to < row[0]:
            detail = f"`to` must not be before the clock's current time, {row[0].isoformat()}."
            raise ProblemError(
                422,
                "Clock cannot go back",
                detail,
                type_=problem_type("validation"),
                errors=[FieldError(location="body", pointer="/to", detail=detail, code="invalid")],
            )
        await tx.conn.execute(
            "UPDATE workspaces SET test_clock = %s WHERE id = %s", (body.to, tx.workspace_id)
        )
        # Every contact due by the new instant, before the call returns.
        evaluated = await run_due(tx.conn, tx.workspace_id)
        return await tx.respond(200, TestClock(frozen_time=body.to, evaluated=evaluated))
