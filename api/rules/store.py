"""A workspace's deployed rules: compiled against its field definitions
(``nudgel.api.rules.compiling``), stored as numbered versions, loaded (and
compiled once per process, off the event loop) for evaluation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from nudgel.api.rules.compiling import (
    compile_for_workspace,
    compile_rules,
    declared_fields,
    definitions_of,
)
from nudgel.compiler.sql import CompiledQuery, SqlCompiler
from nudgel.dsl import ast
from nudgel.dsl.ast import FIELD_TYPES
from nudgel.dsl.checker import CheckedRules, fields_read
from nudgel.dsl.parser import KEYWORDS, parse
from nudgel.runtime.dependencies import DependencySet, NodeKey
from nudgel.runtime.next_change import TimePlan, time_plan
from nudgel.runtime.program import Program, to_micros
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

__all__ = [
    "PULLED_FIELDS",
    "DeployedRules",
    "compile_for_workspace",
    "current_rules",
    "definitions_of",
    "field_signature",
    "field_types",
    "pull_files",
    "remember",
    "rules_and_now",
    "store_version",
]


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
    def build(
        cls,
        version: int,
        files: Mapping[str, str],
        rules: CheckedRules,
        bytecode: bytes | None = None,
    ) -> DeployedRules:
        """Compile the program and time plan: CPU-bound (a second for thousands
        of segments), so callers on the event loop run it in a worker thread,
        with the program's ``bytecode`` compiled elsewhere when it is large
        (``compiling.compile_rules``: Python's ``compile`` holds the GIL)."""
        program = Program.compile(rules, bytecode)
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

    def remember_queries(self, max_columns: int, queries: tuple[CompiledQuery, ...]) -> None:
        """The backfill's queries, compiled elsewhere (``nudgel.api.rules.compiling``)."""
        self._queries[(max_columns, True)] = queries

    def known_queries(self, max_columns: int) -> tuple[CompiledQuery, ...] | None:
        """The backfill's queries if already compiled."""
        return self._queries.get((max_columns, True))

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


def remember(workspace_id: int, rule_set_id: int, signature: str, deployed: DeployedRules) -> None:
    """What a deploy compiled, for the mutations (and its backfill) that follow."""
    _remember((workspace_id, rule_set_id, signature), deployed)


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
        compiled = await compile_rules(files_row[0], signature)
        if compiled.rules is None:
            # Deleting a field the rules read is refused (409), so this is a bug.
            raise RuntimeError(
                f"deployed rules v{version} of workspace {workspace_id} no longer compile"
            )
        deployed = await asyncio.to_thread(
            DeployedRules.build, int(version), files_row[0], compiled.rules, compiled.bytecode
        )
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


PULLED_FIELDS = "workspace_fields.rules"


async def pull_files(conn: AsyncConnection, workspace_id: int) -> dict[str, str]:
    """The workspace's rules as files to keep in a repository: the deployed files,
    and ``workspace_fields.rules`` declaring the workspace's fields they read
    without declaring (so ``rulec check`` sees the names and types a deploy
    will), with the other fields listed in comments."""
    definitions = await field_types(conn, workspace_id)
    deployed = await current_rules(conn, workspace_id)
    files = dict(deployed.files) if deployed is not None else {}
    parsed = [p.file for path in sorted(files) if (p := parse(files[path], path)).file is not None]
    declared = declared_fields(files)
    read = fields_read(parsed)
    lines = [
        "# The workspace's custom fields the rules read without declaring them,",
        "# as `nudgel rules pull` wrote them; a deploy checks the same names and types.",
    ]
    lines += [
        f"field {name}: {type_.value}"
        for name, type_ in sorted(definitions.items())
        if name in read and name not in declared and name not in KEYWORDS
    ]
    others = [
        f"# field {name}: {type_.value}"
        for name, type_ in sorted(definitions.items())
        if name not in read and name not in declared and name not in KEYWORDS
    ]
    if others:
        lines += ["", "# Also defined in the workspace, not read by these rules:", *others]
    files[PULLED_FIELDS] = "\n".join(lines) + "\n"
    return files


async def field_types(conn: AsyncConnection, workspace_id: int) -> dict[str, ast.Type]:
    """The workspace's field definitions: name -> type."""
    cur = await conn.execute(
        "SELECT name, type FROM field_definitions WHERE workspace_id = %s ORDER BY name",
        (workspace_id,),
    )
    return {name: FIELD_TYPES[type_name] for name, type_name in await cur.fetchall()}
