"""``GET /v1/contacts?where=EXPR``: a rules-language condition as SQL.

EXPR is checked as the body of a segment in a rule file that declares the
workspace's fields (``field NAME: TYPE``, from field_definitions)::

    segment request_filter {
    EXPR
    }
    field plan: text
    ...

EXPR starts on line 2, column 1, so a diagnostic inside it is moved up one
line to point into EXPR itself; one beyond it (a missing operand found at the
closing brace) is placed at the end of EXPR; the wrapper's own warnings
(unused fields) are dropped. The checked segment is compiled by the SQL
backend (``SqlCompiler.segment_members``) and run as a subquery of the list.

The list also searches (``q=``, ``nudgel.api.contacts.search``), sorts
(``sort=``, ``nudgel.api.contacts.sorting``) and counts what matches
(``include=total_count``): one ``count(*)`` over the same conditions that
stops one past ``NUDGEL_TOTAL_COUNT_MAX`` rows, so its cost is bounded by
that and by the statement timeout. The export
(``nudgel.api.contacts.export``) filters with the same conditions.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from nudgel.api.contacts.fields import field_types
from nudgel.api.contacts.models import ContactOut
from nudgel.api.contacts.search import search_condition
from nudgel.api.contacts.sorting import Sort, decode_cursor, encode_cursor, parse_sort
from nudgel.api.contacts.views import contact_views
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.compiling import compile_for_workspace
from nudgel.api.rules.store import DeployedRules, current_rules
from nudgel.compiler.sql import CompiledQuery, SqlCompiler, integral_score
from nudgel.dsl.ast import Type
from nudgel.dsl.checker import CheckedRules
from nudgel.dsl.diagnostics import SYNTAX, Diagnostic, InternalError
from nudgel.dsl.render import render_json
from nudgel.dsl.span import Span
from psycopg import AsyncConnection, errors

__all__ = [
    "SEGMENT",
    "ContactFilter",
    "ContactPage",
    "Deployed",
    "ScanLimit",
    "compile_where",
    "contact_filter",
    "list_contacts",
    "scan_turn",
]

SEGMENT = "request_filter"
FILE = "where"
STUBS = "<deployed names>"


def _source(expr: str) -> str:
    return f"segment {SEGMENT} {{\n{expr}\n}}\n"


def _into_expr(diagnostic: Diagnostic, expr: str) -> Diagnostic | None:
    """The diagnostic with its span in EXPR's coordinates; None for the wrapper's warnings."""
    lines = expr.split("\n")
    last_line, end_column = len(lines), len(lines[-1]) + 1
    span = diagnostic.span
    if span.line < 2 or span.line > last_line + 1:
        if not diagnostic.is_error:
            return None
        # Found past EXPR (at the closing brace or a declaration): the end of
        # EXPR, in its words (the brace is the wrapper's, not the user's).
        message = diagnostic.message.replace("unexpected `}`", "the condition ends too early")
        return replace(
            diagnostic,
            message=message,
            span=Span(FILE, last_line, end_column, last_line, end_column),
        )
    end_line, end_col = span.end_line - 1, span.end_column
    if end_line > last_line:
        end_line, end_col = last_line, end_column
    return replace(diagnostic, span=Span(FILE, span.line - 1, span.column, end_line, end_col))


def _invalid(diagnostics: list[Diagnostic]) -> ProblemError:
    document: dict[str, Any] = json.loads(render_json(diagnostics))
    first = next(d for d in document["diagnostics"] if d["severity"] == "error")
    return ProblemError(
        422,
        "Invalid where expression",
        f"where: {first['line']}:{first['column']}: {first['message']}",
        type_=problem_type("invalid-where"),
        diagnostics=document["diagnostics"],
    )


@dataclass(frozen=True, slots=True)
class Deployed:
    """What ``where=`` may read of the deployed rules: names, not definitions
    (their stored state is read, so their bodies never matter)."""

    segments: frozenset[str] = frozenset()
    scores: tuple[tuple[str, bool], ...] = ()  # (name, whole: integral values)
    stages: tuple[str, ...] | None = None  # None: no lifecycle deployed

    @classmethod
    def of(cls, rules: CheckedRules | None) -> Deployed:
        if rules is None:
            return cls()
        return cls(
            frozenset(rules.segments),
            tuple(sorted((n, integral_score(s)) for n, s in rules.scores.items())),
            tuple(rules.stage_names) if rules.lifecycle is not None else None,
        )


_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def _stubs(expr: str, deployed: Deployed) -> str:
    """Declarations standing in for the deployed segments, scores and stages EXPR
    names: the compiled filter reads their stored state, so any body will do,
    and only the names EXPR mentions are declared (a rule set of thousands of
    segments costs nothing here)."""
    words = set(_WORD.findall(expr))
    lines = [f"segment {name} {{ email is set }}" for name in sorted(deployed.segments & words)]
    lines += [
        f"score {name} {{ {'+1' if whole else '+0.5'} when email is set }}"
        for name, whole in deployed.scores
        if name in words
    ]
    if deployed.stages is not None and "stage" in words:
        stages = "\n".join(f"  {stage} when email is set" for stage in deployed.stages)
        lines.append(f"lifecycle {{\n{stages}\n}}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1024)
def _compile_cached(
    expr: str, types: tuple[tuple[str, Type], ...], deployed: Deployed
) -> CompiledQuery:
    stubs = _stubs(expr, deployed)
    result = compile_for_workspace({FILE: _source(expr), STUBS: stubs}, dict(types))
    mine = [d for d in result.diagnostics if d.span.file == FILE]
    mapped = [m for d in mine if (m := _into_expr(d, expr)) is not None]
    if result.rules is None or any(d.is_error for d in result.diagnostics):
        errors = [d for d in mapped if d.is_error]
        if not errors:
            raise InternalError(f"the deployed rules' names do not check with where={expr!r}")
        raise _invalid(errors)
    rules = result.rules
    # EXPR that closes the brace could declare more (segments, scores ...): it
    # must be one condition.
    expected = compile_for_workspace({STUBS: stubs}, dict(types)).rules
    assert expected is not None
    if (
        set(rules.segments) != set(expected.segments) | {SEGMENT}
        or set(rules.scores) != set(expected.scores)
        or (rules.lifecycle is None) != (expected.lifecycle is None)
        or set(rules.fields) != set(expected.fields)
    ):
        end = Span(FILE, 1, 1, 1, 2)
        raise _invalid([SYNTAX(end, message="`where` must be a single condition")])
    return SqlCompiler(rules).segment_members_over_stored_state(SEGMENT)


def compile_where(
    expr: str, types: Mapping[str, Type], deployed: Deployed | None = None
) -> CompiledQuery:
    """The query of the contacts EXPR holds for; a 422 problem carrying the
    diagnostics when it has errors. EXPR may read the ``deployed`` rules'
    segments, scores and stage: their stored, real-time state (naming one that is
    not deployed is an error naming it)."""
    return _compile_cached(expr, tuple(sorted(types.items())), deployed or Deployed())


def _too_slow(culprit: str) -> ProblemError:
    if culprit == "where":
        detail = (
            "where= ran longer than the service allows for one query"
            " (NUDGEL_STATEMENT_TIMEOUT_MS): make the condition more selective (a tag, a field,"
            " a shorter window), or deploy it as a segment and list its members."
        )
    else:
        detail = (
            f"The list with {culprit}= ran longer than the service allows for one query"
            " (NUDGEL_STATEMENT_TIMEOUT_MS): search for longer text (three characters or more),"
            " add a where= condition that keeps fewer contacts, or drop the sort."
        )
    return ProblemError.invalid(
        "Query too slow",
        detail,
        location="query",
        pointer=f"/{culprit}",
        code="timeout",
        kind="query-timeout",
    )


# Scans running per workspace in this process (see ``ScanLimit``).
_scans: dict[int, asyncio.Semaphore] = {}


@dataclass(frozen=True, slots=True)
class ScanLimit:
    """How many scans (``where=``, ``q=``, ``sort=``, totals, exports) one
    workspace may run at once (per process), and how long one waits for its
    turn: a scan can take a CPU core of the database, so one tenant's scans
    queue behind each other rather than take every core from the others."""

    at_once: int
    wait_seconds: float


@asynccontextmanager
async def scan_turn(workspace_id: int, scans: ScanLimit) -> AsyncIterator[None]:
    """Hold one of the workspace's scan turns (503 when none frees up in time)."""
    turn = _scans.get(workspace_id)
    if turn is None:
        turn = _scans[workspace_id] = asyncio.Semaphore(scans.at_once)
    try:
        await asyncio.wait_for(turn.acquire(), scans.wait_seconds)
    except TimeoutError:
        raise ProblemError(
            503,
            "Service Unavailable",
            f"This workspace has {scans.at_once} scan(s) running (where=, q=, sort=,"
            " include=total_count, exports; NUDGEL_WORKSPACE_MAX_SCANS); retry shortly.",
            type_=problem_type("busy"),
            headers={"Retry-After": "1"},
        ) from None
    try:
        yield
    finally:
        turn.release()


@dataclass(frozen=True, slots=True)
class ContactFilter:
    """Conditions (``" AND ..."`` over contacts ``c``) and their parameters."""

    sql: str = ""
    params: dict[str, Any] = field(default_factory=dict)


async def contact_filter(
    conn: AsyncConnection,
    workspace_id: int,
    where: str | None,
    q: str | None,
    deployed: DeployedRules | None,
) -> ContactFilter:
    """The contacts ``where`` (a rules-language condition; 422 when it does not
    check) holds for and ``q`` finds (``nudgel.api.contacts.search``)."""
    sql = ""
    params: dict[str, Any] = {}
    if where is not None:
        types = await field_types(conn, workspace_id)
        names = Deployed.of(deployed.rules if deployed is not None else None)
        # Parsing, checking and compiling are CPU work: off the event loop.
        query = await asyncio.to_thread(compile_where, where, types, names)
        # The compiled query's own placeholders (p1.., now, workspace_id) do
        # not clash with the list's names (list_*, after_*, sort_*, q_*).
        params.update(query.bind(now=time.time_ns() // 1000, workspace_id=workspace_id))
        sql += f" AND c.id IN ({query.sql})"
    if q is not None:
        condition, q_params = search_condition(q)
        sql += condition
        params.update(q_params)
    return ContactFilter(sql, params)


@dataclass(frozen=True, slots=True)
class ContactPage:
    """Up to a page and one of contacts, each with the cursor of a page ending
    with it; the count of all that match when asked (``total_exact`` False: at
    least ``total``, the most the service counts)."""

    contacts: list[ContactOut]
    cursors: list[str]
    total: int | None = None
    total_exact: bool | None = None


async def list_contacts(
    conn: AsyncConnection,
    workspace_id: int,
    where: str | None,
    starting_after: str | None,
    limit: int,
    scans: ScanLimit | None = None,
    *,
    q: str | None = None,
    sort: str | None = None,
    count_up_to: int | None = None,
) -> ContactPage:
    """Up to ``limit`` contacts after ``starting_after`` for which ``where``
    holds and that ``q`` finds, in id order or by ``sort``
    (``nudgel.api.contacts.sorting``); with ``count_up_to``, how many match
    (counting stops past it). Every one of these but the plain list is a scan
    and waits for its turn (``scans``)."""
    scanning = where is not None or q is not None or sort is not None or count_up_to is not None
    if not scanning or scans is None:
        return await _list_contacts(
            conn, workspace_id, where, starting_after, limit, q, sort, count_up_to
        )
    async with scan_turn(workspace_id, scans):
        return await _list_contacts(
            conn, workspace_id, where, starting_after, limit, q, sort, count_up_to
        )


async def _list_contacts(
    conn: AsyncConnection,
    workspace_id: int,
    where: str | None,
    starting_after: str | None,
    limit: int,
    q: str | None,
    sort_text: str | None,
    count_up_to: int | None,
) -> ContactPage:
    deployed = None
    if where is not None or (sort_text or "").lstrip("-").startswith("score."):
        deployed = await current_rules(conn, workspace_id)
    filters = await contact_filter(conn, workspace_id, where, q, deployed)
    sort = None
    if sort_text is not None:
        scores = deployed.rules.scores if deployed is not None else {}
        sort = parse_sort(sort_text, scores)
    after = decode_cursor(starting_after, sort) if starting_after is not None else None
    try:
        if sort is None:
            rows = await _page_by_id(conn, workspace_id, filters, starting_after, limit)
        else:
            rows = await _page_sorted(conn, workspace_id, filters, sort, after, limit)
        counted = None
        if count_up_to is not None:
            counted = await _count(conn, workspace_id, filters, count_up_to)
    except errors.QueryCanceled:
        asked = [
            name
            for name, value in (
                ("where", where),
                ("q", q),
                ("sort", sort),
                ("include", count_up_to),
            )
            if value is not None
        ]
        if not asked:
            raise
        raise _too_slow(asked[0]) from None
    contacts = await contact_views(conn, workspace_id, [pk for pk, _, _ in rows])
    keys = {contact_id: key for _, key, contact_id in rows}
    cursors = [
        encode_cursor(sort, keys[c.id], c.id) if sort is not None else c.id for c in contacts
    ]
    if counted is None or count_up_to is None:
        return ContactPage(contacts, cursors)
    return ContactPage(contacts, cursors, min(counted, count_up_to), counted <= count_up_to)


async def _page_by_id(
    conn: AsyncConnection,
    workspace_id: int,
    filters: ContactFilter,
    starting_after: str | None,
    limit: int,
) -> list[tuple[int, Any, str]]:
    params = {
        **filters.params,
        "list_ws": workspace_id,
        "list_after": starting_after,
        "list_limit": limit,
    }
    cur = await conn.execute(
        "SELECT c.pk, NULL, c.id FROM contacts c WHERE c.workspace_id = %(list_ws)s"
        " AND (%(list_after)s::text IS NULL OR c.id > %(list_after)s)"
        f"{filters.sql} ORDER BY c.id LIMIT %(list_limit)s",
        params,
    )
    return [(int(pk), key, contact_id) for pk, key, contact_id in await cur.fetchall()]


async def _page_sorted(
    conn: AsyncConnection,
    workspace_id: int,
    filters: ContactFilter,
    sort: Sort,
    after: tuple[Any, str] | None,
    limit: int,
) -> list[tuple[int, Any, str]]:
    """Two keyset scans: the contacts with the key, by (key, id), then (once
    those run out) the contacts without it, by id; each an index range scan
    where an index has the key."""
    params: dict[str, Any] = {
        **filters.params,
        "list_ws": workspace_id,
        "list_limit": limit,
        "sort_score": sort.score,
    }
    join = (
        " LEFT JOIN contact_scores s ON s.contact_pk = c.pk AND s.score = %(sort_score)s"
        if sort.score is not None
        else ""
    )
    base = f"FROM contacts c{join} WHERE c.workspace_id = %(list_ws)s{filters.sql}"
    order = f"{sort.direction}"
    rows: list[tuple[int, Any, str]] = []
    after_key, after_id = after if after is not None else (None, None)
    if after is None or after_key is not None:
        keyset = ""
        if after is not None:
            params.update(after_key=after_key, after_id=after_id)
            keyset = (
                f" AND ({sort.key}, c.id) {sort.after}"
                f" (%(after_key)s::{sort.type}, %(after_id)s::text)"
            )
        cur = await conn.execute(
            f"SELECT c.pk, {sort.key}, c.id {base} AND {sort.key} IS NOT NULL{keyset}"
            f" ORDER BY {sort.key} {order}, c.id {order} LIMIT %(list_limit)s",
            params,
        )
        rows += [(int(pk), key, contact_id) for pk, key, contact_id in await cur.fetchall()]
    if sort.nullable and len(rows) < limit:
        keyset = ""
        if after is not None and after_key is None:
            params["after_id"] = after_id
            keyset = f" AND c.id {sort.after} %(after_id)s::text"
        params["list_limit"] = limit - len(rows)
        cur = await conn.execute(
            f"SELECT c.pk, NULL, c.id {base} AND {sort.key} IS NULL{keyset}"
            f" ORDER BY c.id {order} LIMIT %(list_limit)s",
            params,
        )
        rows += [(int(pk), key, contact_id) for pk, key, contact_id in await cur.fetchall()]
    return rows


async def _count(
    conn: AsyncConnection, workspace_id: int, filters: ContactFilter, up_to: int
) -> int:
    """How many contacts match, counting no further than one past ``up_to``."""
    cur = await conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM contacts c WHERE c.workspace_id = %(list_ws)s"
        f"{filters.sql} LIMIT %(count_limit)s) matching",
        {**filters.params, "list_ws": workspace_id, "count_limit": up_to + 1},
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])
