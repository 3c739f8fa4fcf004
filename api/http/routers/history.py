"""``/v1/contacts/{id}/rule_history``: the contact's side of its timeline
that the rules write: every segment entered or left, every score change,
every stage reached, with when (the evaluation instant) and why (the
mutation, ``time``, or a deploy). The history is ``nudgel.api.rules.history``;
this module is the HTTP surface."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.rules import history
from nudgel.api.rules.history import RuleChange, RuleKind

router, OPENAPI_TAG = resource_router(
    "/contacts",
    "Rule history",
    "What the rules said about a contact over time: segments, scores and stage.",
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
    kind: Annotated[RuleKind | None, Query(description="Only this kind.")] = None,
) -> RuleHistory:
    rows = await history.rule_history(
        conn, auth.workspace_id, contact_id, kind, page.starting_after, page.fetch
    )
    data, has_more, cursor = page_of(rows, page, lambda r: r.id)
    return RuleHistory(data=data, has_more=has_more, next_cursor=cursor)
