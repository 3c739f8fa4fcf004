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
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from nudgel.api.contacts.fields import field_types
from nudgel.api.contacts.models import ContactOut
from nudgel.api.contacts.views import contact_views
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.compiling import compile_for_workspace
from nudgel.api.rules.store import current_rules
from nudgel.compiler.sql import CompiledQuery, SqlCompiler, integral_score
from nudgel.dsl.ast import Type
from nudgel.dsl.checker import CheckedRules
from nudgel.dsl.diagnostics import SYNTAX, Diagnostic, InternalError
from nudgel.dsl.render import render_json
from nudgel.dsl.span import Span
from psycopg import AsyncConnection, errors

__all__ = ["SEGMENT", "Deployed", "ScanLimit", "compile_where", "list_contacts"]

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


def _too_slow(where: str) -> ProblemError:
    detail = (
        "where= ran longer than the service allows for one query (NUDGEL_STATEMENT_TIMEOUT_MS):"
        " make the condition more selective (a tag, a field, a shorter window), or deploy it"
        " as a segment and list its members."
    )
    return ProblemError.invalid(
        "Query too slow",
        detail,
        location="query",
        pointer="/where",
        code="timeout",
        kind="query-timeout",
    )


# where= scans running per workspace in this process (see ``ScanLimit``).
_scans: dict[int, asyncio.Semaphore] = {}


@dataclass(frozen=True, slots=True)
class ScanLimit:
    """How many ``where=`` scans one workspace may run at once (per process), and
    how long one waits for its turn: a scan can take a CPU core of the
    database, so one tenant's filters queue behind each other rather than
    take every core from the others."""

    at_once: int
    wait_seconds: float


async def list_contacts(
    conn: AsyncConnection,
    workspace_id: int,
    where: str | None,
    starting_after: str | None,
    limit: int,
    scans: ScanLimit | None = None,
) -> list[ContactOut]:
    """Up to ``limit`` contacts after id ``starting_after``, in id order, for which
    ``where`` (a rules-language condition; 422 when it does not check) holds."""
    if where is None or scans is None:
        return await _list_contacts(conn, workspace_id, where, starting_after, limit)
    turn = _scans.get(workspace_id)
    if turn is None:
        turn = _scans[workspace_id] = asyncio.Semaphore(scans.at_once)
    try:
        await asyncio.wait_for(turn.acquire(), scans.wait_seconds)
    except TimeoutError:
        raise ProblemError(
            503,
            "Service Unavailable",
            f"This workspace has {scans.at_once} where= filter(s) running"
            " (NUDGEL_WORKSPACE_MAX_SCANS); retry shortly.",
            type_=problem_type("busy"),
            headers={"Retry-After": "1"},
        ) from None
    try:
        return await _list_contacts(conn, workspace_id, where, starting_after, limit)
    finally:
        turn.release()


async def _list_contacts(
    conn: AsyncConnection,
    workspace_id: int,
    where: str | None,
    starting_after: str | None,
    limit: int,
) -> list[ContactOut]:
    params: dict[str, Any] = {
        "list_ws": workspace_id,
        "list_after": starting_after,
        "list_limit": limit,
    }
    condition = ""
    if where is not None:
        types = await field_types(conn, workspace_id)
        deployed = await current_rules(conn, workspace_id)
        names = Deployed.of(deployed.rules if deployed is not None else None)
        # Parsing, checking and compiling are CPU work: off the event loop.
        query = await asyncio.to_thread(compile_where, where, types, names)
        # The compiled query's own placeholders (p1.., now, workspace_id) do
        # not clash with the list_* names.
        params.update(query.bind(now=time.time_ns() // 1000, workspace_id=workspace_id))
        condition = f" AND c.id IN ({query.sql})"
    try:
        cur = await conn.execute(
            "SELECT c.pk FROM contacts c WHERE c.workspace_id = %(list_ws)s"
            " AND (%(list_after)s::text IS NULL OR c.id > %(list_after)s)"
            f"{condition} ORDER BY c.id LIMIT %(list_limit)s",
            params,
        )
    except errors.QueryCanceled:
        if where is None:
            raise
        raise _too_slow(where) from None
    pks = [int(r[0]) for r in await cur.fetchall()]
    return await contact_views(conn, workspace_id, pks)
