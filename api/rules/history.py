"""A contact's rule history: every segment entered or left, every score
change, every stage reached, as the evaluations wrote them (``rule_history``).

Each change is ``rh_`` and its row number, with when (the evaluation instant)
and why (the mutation, ``time``, or a deploy); the history is keyset-paginated
on that number, oldest first.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from nudgel.api.contacts.views import find_pk
from nudgel.api.db.rows import fetch_all
from nudgel.api.problems import ProblemError
from psycopg import AsyncConnection
from pydantic import BaseModel, Field

__all__ = ["RuleChange", "RuleKind", "rule_history"]

RuleKind = Literal["segment", "score", "stage"]
_ID = re.compile(r"^rh_([1-9][0-9]{0,17})$")


class RuleChange(BaseModel):
    object: Literal["rule_change"] = "rule_change"
    id: str = Field(description="`rh_` and the change's number (increasing).")
    kind: RuleKind
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


def _after(starting_after: str | None) -> int:
    """The change number a cursor names (0: from the start); 422 if it is not an rh_ id."""
    if starting_after is None:
        return 0
    match = _ID.match(starting_after)
    if match is None:
        raise ProblemError(
            422, "Invalid cursor", f"starting_after {starting_after!r} is not an rh_ id."
        )
    return int(match.group(1))


async def rule_history(
    conn: AsyncConnection,
    workspace_id: int,
    contact_id: str,
    kind: RuleKind | None,
    starting_after: str | None,
    limit: int,
) -> list[RuleChange]:
    """Up to ``limit`` changes of contact ``contact_id`` (404 if unknown), of
    ``kind`` if given, after the change ``starting_after``, oldest first."""
    pk = await find_pk(conn, workspace_id, contact_id)
    if pk is None:
        raise ProblemError.not_found(f"Contact {contact_id!r}")
    return await fetch_all(
        conn,
        RuleChange,
        # h.id, not id: in ORDER BY a bare `id` is the output column, the
        # text 'rh_...' (which sorts rh_10 before rh_9).
        "SELECT 'rh_' || h.id AS id, h.kind, h.name, h.old_value, h.new_value, h.at, h.reason"
        " FROM rule_history h WHERE h.contact_pk = %s AND h.workspace_id = %s AND h.id > %s"
        " AND (%s::text IS NULL OR h.kind = %s) ORDER BY h.id LIMIT %s",
        (pk, workspace_id, _after(starting_after), kind, kind, limit),
    )
