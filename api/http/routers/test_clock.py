"""``/v1/test_clock``: a test-mode workspace's own clock.

Rules evaluate at the workspace's instant. For a workspace with a test key
(``sk_test_...``) the instant can be frozen at any time (``PUT``: every
contact's time-dependent results are then re-evaluated there) and moved
forward (``advance``): contacts whose results fall due until then are
re-evaluated before the call returns, so windowed segments and scores change
as they would have as days passed. Live keys get 403. The clock is
``nudgel.api.rules.clock``; this module is the HTTP surface.
"""

from __future__ import annotations

from nudgel.api.http.auth import Auth
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, replayable
from nudgel.api.rules import clock
from nudgel.api.rules.clock import Advance, FreezeClock, TestClock, require_test_mode

router, OPENAPI_TAG = resource_router(
    "/test_clock",
    "Test clock",
    "Move a test-mode workspace's time forward to see windows close without waiting.",
)


@router.get(
    "",
    response_model=TestClock,
    summary="The test clock",
    description="The instant rules evaluate at in this test-mode workspace: frozen (`frozen_time`) or the wall clock. 403 with a live key.",
    responses=problem_responses(403),
)
async def get_test_clock(auth: Auth, conn: Conn) -> TestClock:
    require_test_mode(auth.mode)
    return await clock.read(conn, auth.workspace_id)


@router.put(
    "",
    response_model=TestClock,
    summary="Set the test clock",
    description="Freezes the workspace's time at `frozen_time` (earlier or later), or returns it"
    " to the wall clock (null), and re-evaluates every contact's time-dependent results there.",
    responses=problem_responses(403),
)
async def set_test_clock(body: FreezeClock, auth: Auth, conn: Conn) -> TestClock:
    require_test_mode(auth.mode)
    return await clock.freeze(conn, auth.workspace_id, body.frozen_time)


@router.post(
    "/advance",
    response_model=TestClock,
    summary="Advance the test clock",
    description='Moves the frozen clock forward to `to` and re-evaluates every contact whose windows closed on the way (segments exited, scores fell), as time passing would. Example: `{"to": "2026-07-01T00:00:00Z"}`. 403 with a live key.',
    responses={**replayable(200), **problem_responses(403, 422)},
)
async def advance_test_clock(body: Advance, auth: Auth, writer: PostWriter) -> object:
    # Before the transaction: a live key never claims an Idempotency-Key here.
    require_test_mode(auth.mode)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        advanced = await clock.advance(tx, body.to)
        return await tx.respond(200, advanced)
