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

import json
from collections.abc import Mapping
from dataclasses import dataclass

from nudgel.dsl import ast
from nudgel.dsl.ast import FIELD_TYPES
from nudgel.dsl.checker import CheckedRules, CheckResult, check_sources, fields_read
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
    "rules_and_now",
    "store_version",
]

WORKSPACE_FIELDS = "<workspace fields>"


def declared_fields(files: Mapping[str, str]) -> dict[str, str]:
    """The fields ``files`` declare, name -> type name (first declaration wins)."""
    declared: dict[str, str] = {}
    for path in sorted(files):
        parsed = parse(files[path], path)
        if parsed.file is not None:
            for decl in parsed.file.declarations:
                if isinstance(decl, ast.FieldDecl):
                    declared.setdefault(decl.name, decl.type_name)
    return declared


def compile_for_workspace(
    files: Mapping[str, str],
    definitions: Mapping[str, ast.Type],
    *,
    new_fields: bool = False,
) -> CheckResult:
    """Check ``files`` with the workspace's field definitions declared.

    A field the files declare that the workspace lacks is an error (E270),
    unless ``new_fields``: a deploy creates it (the rule files are the
    workspace's schema). A declaration whose type differs from the
    workspace's is always an error (E271)."""
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
            if defined is None and new_fields:
                continue
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

    @classmethod
    def build(cls, version: int, files: Mapping[str, str], rules: CheckedRules) -> DeployedRules:
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


# (workspace, version, field definitions) -> compiled rules. Compiling is
# milliseconds to a second; every mutation needs the program.
_compiled: dict[tuple[int, int, str], DeployedRules] = {}


# One round trip for what every mutation needs: the version in force, the
# field definitions it compiles against, and the workspace's evaluation instant.
_CURRENT = """
SELECT r.version,
       (SELECT coalesce(json_agg(json_build_array(f.name, f.type) ORDER BY f.name), '[]')::text
          FROM field_definitions f WHERE f.workspace_id = w.id),
       coalesce(w.test_clock, now())
  FROM workspaces w
  LEFT JOIN LATERAL (SELECT version FROM rule_sets
                      WHERE workspace_id = w.id ORDER BY version DESC LIMIT 1) r ON true
 WHERE w.id = %s
"""


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
    version, signature, now = row
    micros = to_micros(now)
    if version is None:
        return None, micros
    key = (workspace_id, int(version), signature)
    deployed = _compiled.get(key)
    if deployed is None:
        cur = await conn.execute(
            "SELECT files FROM rule_sets WHERE workspace_id = %s AND version = %s",
            (workspace_id, version),
        )
        files_row = await cur.fetchone()
        assert files_row is not None
        definitions = {name: FIELD_TYPES[type_name] for name, type_name in json.loads(signature)}
        result = compile_for_workspace(files_row[0], definitions)
        if result.rules is None:
            # Deleting a field the rules read is refused (409), so this is a bug.
            raise RuntimeError(
                f"deployed rules v{version} of workspace {workspace_id} no longer compile"
            )
        deployed = DeployedRules.build(int(version), files_row[0], result.rules)
        if len(_compiled) > 256:
            _compiled.clear()
        _compiled[key] = deployed
    return deployed, micros


async def current_rules(conn: AsyncConnection, workspace_id: int) -> DeployedRules | None:
    """The rules in force for the workspace, or None when none are deployed."""
    deployed, _ = await rules_and_now(conn, workspace_id)
    return deployed


async def store_version(conn: AsyncConnection, workspace_id: int, files: Mapping[str, str]) -> int:
    """Record ``files`` as the workspace's next version (in the caller's transaction)."""
    # Serialise deploys of one workspace: the version numbers stay dense.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('nudgel.rules'), %s::int)", (workspace_id,)
    )
    cur = await conn.execute(
        "INSERT INTO rule_sets (workspace_id, version, files)"
        " SELECT %s, coalesce(max(version), 0) + 1, %s FROM rule_sets WHERE workspace_id = %s"
        " RETURNING version",
        (workspace_id, Jsonb(dict(files)), workspace_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


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
