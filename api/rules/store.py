"""A workspace's deployed rules: compiled against its field definitions,
stored as numbered versions, loaded (and compiled once per process) for
evaluation.

Rule files may declare fields (``field plan: text``) or leave them out: the
workspace's definitions (``/v1/fields``) are declared for them in a virtual
file. A declaration must agree with the definition (E271) and name a defined
field (E270): the service only stores values of defined fields, so a rule
about any other could never hold.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from nudgel.compiler.sql import CompiledQuery, SqlCompiler
from nudgel.dsl import ast
from nudgel.dsl.ast import FIELD_TYPES
from nudgel.dsl.checker import CheckedRules, CheckResult, check_sources
from nudgel.dsl.diagnostics import FIELD_NOT_DEFINED, FIELD_TYPE_DIFFERS, Diagnostic, InternalError
from nudgel.dsl.parser import KEYWORDS, parse
from nudgel.runtime.dependencies import DependencySet, NodeKey
from nudgel.runtime.next_change import TimePlan, time_plan
from nudgel.runtime.program import Program, to_micros
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

__all__ = [
    "DeployedRules",
    "compile_for_workspace",
    "current_rules",
    "definitions_of",
    "field_signature",
    "remember",
    "rules_and_now",
    "store_version",
]

WORKSPACE_FIELDS = "<workspace fields>"


def compile_for_workspace(
    files: Mapping[str, str], definitions: Mapping[str, ast.Type]
) -> CheckResult:
    """Check ``files`` with the workspace's field definitions declared."""
    declared: dict[str, ast.FieldDecl] = {}
    extra: list[Diagnostic] = []
    for path in sorted(files):
        parsed = parse(files[path], path)
        if parsed.file is None:
            continue
        for decl in parsed.file.declarations:
            if not isinstance(decl, ast.FieldDecl):
                continue
            declared.setdefault(decl.name, decl)
            defined = definitions.get(decl.name)
            if defined is None:
                extra.append(
                    FIELD_NOT_DEFINED(
                        decl.name_span,
                        help=f'define it first: POST /v1/fields {{"name": "{decl.name}", ...}}',
                        name=decl.name,
                    )
                )
            elif decl.type_name != defined.value:
                extra.append(
                    FIELD_TYPE_DIFFERS(
                        decl.type_span,
                        help=f"declare it `{defined.value}`, or leave the declaration out",
                        name=decl.name,
                        declared=decl.type_name,
                        defined=defined.value,
                    )
                )
    implicit = "".join(
        f"field {name}: {type_.value}\n"
        for name, type_ in sorted(definitions.items())
        # A keyword is no field name in the rules language (the API refuses
        # them; older definitions may still be there): rules cannot name it.
        if name not in declared and name not in KEYWORDS
    )
    sources = dict(files)
    if implicit:
        sources[WORKSPACE_FIELDS] = implicit
    result = check_sources(sources)
    # The implicit declarations are not the user's: no "declared but never
    # used". An error there would be ours, never silently dropped.
    if any(d.is_error for d in result.diagnostics if d.span.file == WORKSPACE_FIELDS):
        raise InternalError(f"the workspace's field declarations do not check: {implicit!r}")
    diagnostics = [d for d in result.diagnostics if d.span.file != WORKSPACE_FIELDS]
    diagnostics.extend(extra)
    diagnostics.sort(key=Diagnostic.sort_key)
    rules = result.rules if not extra else None
    return CheckResult(rules, tuple(diagnostics))


@dataclass(frozen=True)
class DeployedRules:
    """A version of a workspace's rules, compiled for evaluation."""

    version: int
    files: Mapping[str, str]
    rules: CheckedRules
    program: Program
    plan: TimePlan
    dependencies: Mapping[NodeKey, DependencySet]
    # Event names the rules read (None: every event, `event *` is used).
    event_names: frozenset[str] | None
    # (max_columns, batch) -> the backfill's queries, compiled on first use.
    _queries: dict[tuple[int, bool], tuple[CompiledQuery, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, version: int, files: Mapping[str, str], rules: CheckedRules) -> DeployedRules:
        """Compile the program and time plan: CPU-bound (a second for thousands
        of segments), so callers on the event loop run it in a worker thread."""
        program = Program.compile(rules)
        names: set[str] = set()
        any_event = False
        for deps in program.dependencies.values():
            names |= deps.events
            any_event |= deps.any_event
        return cls(
            version,
            dict(files),
            rules,
            program,
            time_plan(rules),
            program.dependencies,
            None if any_event else frozenset(names),
        )

    @property
    def nodes(self) -> int:
        """How many segments and scores (``rules_max_nodes`` bounds it)."""
        return len(self.rules.segments) + len(self.rules.scores)

    def queries(self, max_columns: int, *, batch: bool = True) -> tuple[CompiledQuery, ...]:
        """Every segment, score and the stage as SQL (``SqlCompiler.everything_chunks``),
        compiled once per version; CPU-bound, so call it in a worker thread.
        ``QueryTooWide`` when one node needs more than ``max_columns``."""
        key = (max_columns, batch)
        found = self._queries.get(key)
        if found is None:
            chunks = SqlCompiler(self.rules).everything_chunks(max_columns, batch=batch)
            found = self._queries[key] = tuple(chunks)
        return found


# (workspace, rule set id, field definitions) -> compiled rules. Compiling is
# milliseconds to seconds; every mutation needs the program. The rule set's id
# (never reused, unlike a version number whose deploy rolled back) lets a
# deploy put what it compiled here before it commits.
_compiled: dict[tuple[int, int, str], DeployedRules] = {}


# One round trip for what every mutation needs: the version in force, the
# field definitions it compiles against, and the workspace's evaluation instant.
_SIGNATURE = """
(SELECT coalesce(json_agg(json_build_array(f.name, f.type) ORDER BY f.name), '[]')::text
   FROM field_definitions f WHERE f.workspace_id = w.id)
"""
_CURRENT = f"""
SELECT r.version, r.id, {_SIGNATURE}, coalesce(w.test_clock, now())
  FROM workspaces w
  LEFT JOIN LATERAL (SELECT version, id FROM rule_sets
                      WHERE workspace_id = w.id ORDER BY version DESC LIMIT 1) r ON true
 WHERE w.id = %s
"""


def _remember(key: tuple[int, int, str], deployed: DeployedRules) -> None:
    if len(_compiled) > 256:
        _compiled.clear()
    _compiled[key] = deployed


async def field_signature(conn: AsyncConnection, workspace_id: int) -> str:
    """The workspace's field definitions as the compiled rules' cache knows them."""
    cur = await conn.execute(
        f"SELECT {_SIGNATURE} FROM workspaces w WHERE w.id = %s", (workspace_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"no workspace {workspace_id}")
    return str(row[0])


def definitions_of(signature: str) -> dict[str, ast.Type]:
    return {name: FIELD_TYPES[type_name] for name, type_name in json.loads(signature)}


def remember(workspace_id: int, rule_set_id: int, signature: str, deployed: DeployedRules) -> None:
    """What a deploy compiled, for the mutations (and its backfill) that follow."""
    _remember((workspace_id, rule_set_id, signature), deployed)


def _compile_stored(files: Mapping[str, str], signature: str, version: int) -> DeployedRules | None:
    result = compile_for_workspace(files, definitions_of(signature))
    if result.rules is None:
        return None
    return DeployedRules.build(version, files, result.rules)


async def rules_and_now(
    conn: AsyncConnection, workspace_id: int
) -> tuple[DeployedRules | None, int]:
    """The rules in force (None when none are deployed) and the instant rules
    evaluate at: the workspace's test clock, else the transaction's start (so
    an event recorded in it with no ``at`` counts)."""
    cur = await conn.execute(_CURRENT, (workspace_id,))
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"no workspace {workspace_id}")
    version, rule_set_id, signature, now = row
    micros = to_micros(now)
    if version is None:
        return None, micros
    key = (workspace_id, int(rule_set_id), signature)
    deployed = _compiled.get(key)
    if deployed is None:
        cur = await conn.execute(
            "SELECT files FROM rule_sets WHERE workspace_id = %s AND version = %s",
            (workspace_id, version),
        )
        files_row = await cur.fetchone()
        assert files_row is not None
        # CPU-bound (seconds for thousands of segments): not on the event loop.
        compiled = await asyncio.to_thread(_compile_stored, files_row[0], signature, int(version))
        if compiled is None:
            # Deleting a field the rules read is refused (409), so this is a bug.
            raise RuntimeError(
                f"deployed rules v{version} of workspace {workspace_id} no longer compile"
            )
        deployed = compiled
        _remember(key, deployed)
    return deployed, micros


async def current_rules(conn: AsyncConnection, workspace_id: int) -> DeployedRules | None:
    """The rules in force for the workspace, or None when none are deployed."""
    deployed, _ = await rules_and_now(conn, workspace_id)
    return deployed


async def store_version(
    conn: AsyncConnection, workspace_id: int, files: Mapping[str, str]
) -> tuple[int, int]:
    """Record ``files`` as the workspace's next version (in the caller's
    transaction); its version and its row's id."""
    # Serialise deploys of one workspace: the version numbers stay dense.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('nudgel.rules'), %s::int)", (workspace_id,)
    )
    cur = await conn.execute(
        "INSERT INTO rule_sets (workspace_id, version, files)"
        " SELECT %s, coalesce(max(version), 0) + 1, %s FROM rule_sets WHERE workspace_id = %s"
        " RETURNING version, id",
        (workspace_id, Jsonb(dict(files)), workspace_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
