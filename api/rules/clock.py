"""A test-mode workspace's own clock.

Rules evaluate at the workspace's instant (``workspaces.test_clock``, or the
wall clock when it is null). Freezing it anywhere makes every evaluated
contact due again; advancing it re-evaluates the contacts whose results fall
due until the new instant (``nudgel.api.rules.scheduler.run_due``), so
windowed segments and scores change as they would have as days passed. Only
test-mode workspaces have one (403 otherwise).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from nudgel.api.contacts.events import Timestamp
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.scheduler import run_due
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Advance", "FreezeClock", "TestClock", "advance", "freeze", "read", "require_test_mode"]


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


def require_test_mode(mode: str) -> None:
    """403 unless ``mode`` (the key's) is ``test``: checked before anything else."""
    if mode != "test":
        raise ProblemError(
            403,
            "Test mode only",
            "The test clock belongs to test-mode workspaces: use an sk_test_ key.",
            type_=problem_type("test-mode-only"),
        )


async def read(conn: AsyncConnection, workspace_id: int) -> TestClock:
    """The workspace's clock as it is."""
    cur = await conn.execute("SELECT test_clock FROM workspaces WHERE id = %s", (workspace_id,))
    row = await cur.fetchone()
    assert row is not None
    return TestClock(frozen_time=row[0])


async def freeze(
    conn: AsyncConnection, workspace_id: int, frozen_time: datetime | None
) -> TestClock:
    """Set the instant (earlier or later; None: the wall clock) and re-evaluate
    every contact's time-dependent results there, a batch per transaction."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE workspaces SET test_clock = %s WHERE id = %s", (frozen_time, workspace_id)
        )
        # Results stored for another instant: every contact is due again.
        await conn.execute(
            "UPDATE contacts SET next_evaluation_at = '-infinity'"
            " WHERE workspace_id = %s AND evaluated_at IS NOT NULL",
            (workspace_id,),
        )
    evaluated = await run_due(conn, workspace_id)
    return TestClock(frozen_time=frozen_time, evaluated=evaluated)


async def advance(tx: Transaction, to: datetime) -> TestClock:
    """Move the instant forward to ``to`` (422 if that is before it) and
    re-evaluate every contact due by then, in the caller's transaction."""
    cur = await tx.conn.execute(
        "SELECT coalesce(test_clock, now()) FROM workspaces WHERE id = %s FOR UPDATE",
        (tx.workspace_id,),
    )
    row = await cur.fetchone()
    assert row is not None
    if to < row[0]:
        raise ProblemError.invalid(
            "Clock cannot go back",
            f"`to` must not be before the clock's current time, {row[0].isoformat()}.",
            location="body",
            pointer="/to",
            code="invalid",
        )
    await tx.conn.execute(
        "UPDATE workspaces SET test_clock = %s WHERE id = %s", (to, tx.workspace_id)
    )
    # Every contact due by the new instant, before the call returns.
    evaluated = await run_due(tx.conn, tx.workspace_id)
    return TestClock(frozen_time=to, evaluated=evaluated)
