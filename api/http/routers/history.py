"""``/v1/contacts/{id}/rule_history``: the contact's side of its timeline
that the rules write: every segment entered or left, every score change,
every stage reached, with when (the evaluation instant) and why (the
mutation, ``time``, or a deploy)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, Query
from nudgel.api.contacts.views import find_pk
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.problems import ProblemError
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

router, OPENAPI_TAG = resource_router(
    "/contacts",
    "Rule history",
    "What the rules said about a contact over time: segments, scores and stage.",
)

_ID = re.compile(r"^rh_([1-9][0-9]{0,17})$")


class RuleChange(BaseModel):
    object: Literal["rule_change"] = "rule_change"
    id: str = Field(description="`rh_` and the change's number (increasing).")
    kind: Literal["segment", "score", "stage"]
    name: str = Field(description="The segment or score; empty for the stage.")
    old_value: str | None = Field(
        description="`true`/`false` for a segment, the decimal for a score, the stage name."
    )
    new_value: str | None
    at: datetime = Field(description="The evaluation instant (the test clock's, in test mode).")
    reason: str = Field(
        description="What caused it: the mutation (`contact.updated`, `event.recorded NAME`"
        " ...), `time` (a window closed), or `rules.deployed vN`."
    )


class RuleHistory(ListResponse[RuleChange]):
    pass


@router.get(
    "/{contact_id}/rule_history",
    response_model=RuleHistory,
    summary="A contact's rule history",
    description="Segment memberships, score changes and stages, oldest first.",
    responses=problem_responses(404),
)
async def rule_history(
    contact_id: Annotated[str, Path(description="The contact's id (`con_...`).")],
    auth: Auth,
    conn: Conn,
    page: PageParams,
    kind: Annotated[
        Literal["segment", "score", "stage"] | None, Query(description="Only this kind.")
    ] = None,
) -> RuleHistory:
    pk = await find_pk(conn, auth.workspace_id, contact_id)
    if pk is None:
        raise ProblemError.not_found(f"Contact {contact_id!r}")
    after = 0
    if page.starting_after is not None:
        match = _ID.match(page.starting_after)
        if match is None:
            raise ProblemError(
                422, "Invalid cursor", f"starting_after {page.starting_after!r} is not an rh_ id."
            )
        after = int(match.group(1))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        # h.id, not id: in ORDER BY a bare `id` is the output column, the
        # text 'rh_...' (which sorts rh_10 before rh_9).
        "SELECT 'rh_' || h.id AS id, h.kind, h.name, h.old_value, h.new_value, h.at, h.reason"
        " FROM rule_history h WHERE h.contact_pk = %s AND h.workspace_id = %s AND h.id > %s"
        " AND (%s::text IS NULL OR h.kind = %s) ORDER BY h.id LIMIT %s",
        (pk, auth.workspace_id, after, kind, kind, page.fetch),
    )
    rows = [RuleChange.model_validate(r) for r in await cur.fetchall()]
    data, has_more, cursor = page_of(rows, page, lambda r: r.id)
    return RuleHistory(data=data, has_more=has_more, next_cursor=cursor)
