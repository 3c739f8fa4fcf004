"""Deploying a rule set, its status, and checking the stored state against it.

:func:`deploy` checks the files against the workspace's field definitions
and compiles the backfill's SQL in another process (seconds of CPU for
thousands of segments: ``nudgel.api.rules.compiling``): with errors, too
many segments and scores
(``rules_max_nodes``) or a node too wide for one query, nothing changes and
the reason comes back. Otherwise the files become the next version, what the
previous version had and this one drops is removed, and a backfill job is
created (the caller starts it once the transaction has committed:
:func:`start_backfill`). Deploying the files in force again changes nothing,
unless the backfill is forced: it then runs again for the same version.

:func:`deploy_status` says how the last deploy went: its backfill's job and
status, and the last version whose backfill succeeded.

:func:`verify` recomputes every membership, score and stage with the SQL
backend at the workspace's evaluation instant and lists every difference
from the stored real-time state.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nudgel.api.jobs.runner import JobHost, create_job
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules import realtime
from nudgel.api.rules.backfill import start_backfill as _start_backfill
from nudgel.api.rules.compiling import (
    Checked,
    check_for_deploy,
    declared_fields,
    definitions_of,
)
from nudgel.api.rules.store import (
    DeployedRules,
    current_rules,
    field_signature,
    remember,
    store_version,
)
from nudgel.api.settings import Settings
from nudgel.api.webhooks import outbox
from nudgel.dsl.diagnostics import Diagnostic
from nudgel.runtime.dependencies import NodeKey
from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = [
    "DeployStatus",
    "Deployment",
    "Drift",
    "deploy",
    "deploy_status",
    "rules_in_force",
    "start_backfill",
    "verify",
]


@dataclass
class Deployment:
    diagnostics: tuple[Diagnostic, ...]
    version: int | None = None
    job_id: str | None = None
    unchanged: bool = False
    deployed: DeployedRules | None = None
    # Nodes new in this version: their first fill fires no events.
    silent: list[NodeKey] = field(default_factory=list)


def _build(checked: Checked, files: Mapping[str, str], max_columns: int) -> DeployedRules:
    """The program and time plan of checked rules (version 0 until stored),
    with the backfill's queries compiled with them."""
    assert checked.rules is not None
    deployed = DeployedRules.build(0, files, checked.rules, checked.bytecode)
    deployed.remember_queries(max_columns, checked.queries)
    return deployed


async def deploy(
    conn: AsyncConnection,
    workspace_id: int,
    files: Mapping[str, str],
    settings: Settings,
    *,
    force_backfill: bool = False,
) -> Deployment:
    """In the caller's transaction. ``version`` is None when there are errors;
    a rule set too large to store or backfill is a :class:`ProblemError`
    (422), before anything changes.

    The files' field declarations are the workspace's schema: a declared field
    the workspace lacks is created (``field.created``); one declared with
    another type than the workspace's refuses the deploy (E271) before
    anything changes."""
    signature = await field_signature(conn, workspace_id)
    checked = await check_for_deploy(
        files, signature, settings.rules_max_nodes, settings.backfill_max_columns
    )
    diagnostics = checked.diagnostics
    if checked.refusal is not None:
        kind, title, detail = checked.refusal
        raise ProblemError(422, title, detail, type_=problem_type(kind))
    if checked.rules is None:
        return Deployment(diagnostics)
    # Assembling the program is CPU too: not on the event loop.
    prepared = await asyncio.to_thread(_build, checked, files, settings.backfill_max_columns)
    previous = await current_rules(conn, workspace_id)
    if previous is not None and dict(previous.files) == dict(files):
        if not force_backfill:
            return Deployment(diagnostics, previous.version, unchanged=True, deployed=previous)
        job_id = await _backfill_again(conn, workspace_id, previous, settings)
        return Deployment(diagnostics, previous.version, job_id, unchanged=True, deployed=previous)
    # The files are the workspace's schema: what they declare and it lacks.
    await _create_declared_fields(conn, workspace_id, files, definitions_of(signature))
    version, rule_set_id = await store_version(conn, workspace_id, files)
    deployed = dataclasses.replace(prepared, version=version)
    remember(workspace_id, rule_set_id, signature, deployed)
    before = set(previous.rules.order) if previous is not None else set()
    silent = [node for node in deployed.rules.order if node not in before]
    await _drop_removed(conn, workspace_id, deployed)
    job_id = await _create_backfill(conn, workspace_id, version, silent, settings)
    return Deployment(diagnostics, version, job_id, deployed=deployed, silent=silent)


async def _create_declared_fields(
    conn: AsyncConnection,
    workspace_id: int,
    files: Mapping[str, str],
    definitions: Mapping[str, Any],
) -> None:
    for name, type_name in sorted(declared_fields(files).items()):
        if name in definitions:
            continue
        cur = await conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING created_at",
            (workspace_id, name, type_name),
        )
        row = await cur.fetchone()
        if row is not None:
            data = {"object": "field", "name": name, "type": type_name}
            await outbox.record(
                conn, workspace_id, "field.created", {**data, "created_at": row[0].isoformat()}
            )


async def _create_backfill(
    conn: AsyncConnection,
    workspace_id: int,
    version: int,
    silent: list[NodeKey],
    settings: Settings,
) -> str:
    params = {"version": version, "silent": [list(node) for node in silent]}
    job_id = await create_job(conn, workspace_id, "backfill", settings.job_lease_seconds, params)
    await conn.execute(
        "UPDATE rule_sets SET job_id = %s WHERE workspace_id = %s AND version = %s",
        (job_id, workspace_id, version),
    )
    return job_id


async def _backfill_again(
    conn: AsyncConnection, workspace_id: int, deployed: DeployedRules, settings: Settings
) -> str:
    """A new backfill of the version in force (``"backfill": "force"``): its
    first fill stays silent for the nodes that were new in it. 409 while
    one is running."""
    cur = await conn.execute(
        "SELECT j.id, j.status, j.params FROM rule_sets r JOIN jobs j ON j.id = r.job_id"
        " WHERE r.workspace_id = %s AND r.version = %s FOR UPDATE OF r",
        (workspace_id, deployed.version),
    )
    row = await cur.fetchone()
    silent: list[NodeKey] = []
    if row is not None:
        job_id, status, params = row
        if status in ("queued", "running"):
            raise ProblemError.conflict(
                f"The backfill of version {deployed.version} is running (job {job_id});"
                " wait for it to end (GET /v1/jobs/{id}) before forcing another."
            )
        silent = [(str(kind), str(name)) for kind, name in params.get("silent", [])]
    return await _create_backfill(conn, workspace_id, deployed.version, silent, settings)


async def _drop_removed(conn: AsyncConnection, workspace_id: int, deployed: DeployedRules) -> None:
    segments = [name for kind, name in deployed.rules.order if kind == "segment"]
    scores = [name for kind, name in deployed.rules.order if kind == "score"]
    await conn.execute(
        "DELETE FROM segment_members WHERE workspace_id = %s AND NOT (segment = ANY(%s))",
        (workspace_id, segments),
    )
    await conn.execute(
        "DELETE FROM contact_scores WHERE workspace_id = %s AND NOT (score = ANY(%s))",
        (workspace_id, scores),
    )


def start_backfill(host: JobHost, workspace_id: int, deployment: Deployment) -> None:
    """Start the deployment's backfill (after its transaction committed)."""
    assert deployment.job_id is not None
    _start_backfill(host, deployment.job_id)


@dataclass(frozen=True)
class DeployStatus:
    """The version in force and how its deploy went."""

    version: int
    files: dict[str, str]
    created_at: Any
    # backfilling (its job is queued or running), complete, or failed.
    status: str
    job_id: str | None
    job_status: str | None
    job_error: str | None
    # The newest version whose backfill succeeded (or that has none on record).
    last_good_version: int | None


_STATUS = """
SELECT r.version, r.files, r.created_at, j.id AS job_id, j.status AS job_status,
       j.error AS job_error,
       (SELECT max(g.version) FROM rule_sets g LEFT JOIN jobs gj ON gj.id = g.job_id
         WHERE g.workspace_id = r.workspace_id
           AND (g.job_id IS NULL OR gj.status = 'succeeded')) AS last_good_version
  FROM rule_sets r LEFT JOIN jobs j ON j.id = r.job_id
 WHERE r.workspace_id = %s
 ORDER BY r.version DESC LIMIT 1
"""


async def deploy_status(conn: AsyncConnection, workspace_id: int) -> DeployStatus | None:
    """The newest version and its backfill's state; None before the first deploy."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_STATUS, (workspace_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    job_status = row["job_status"]
    if job_status in ("queued", "running"):
        status = "backfilling"
    elif job_status == "failed":
        status = "failed"
    else:
        status = "complete"
    return DeployStatus(status=status, **row)


async def rules_in_force(
    conn: AsyncConnection, workspace_id: int
) -> tuple[DeployedRules, DeployStatus] | None:
    """The rules in force and how their deploy went; None before the first deploy."""
    deployed = await current_rules(conn, workspace_id)
    state = await deploy_status(conn, workspace_id)
    if deployed is None or state is None:
        return None
    return deployed, state


@dataclass(frozen=True)
class Drift:
    contact_id: str
    kind: str  # segment, score, stage
    name: str
    stored: Any
    expected: Any

    def __str__(self) -> str:
        what = self.kind if self.kind == "stage" else f"{self.kind} {self.name}"
        return f"{self.contact_id}: {what}: stored {self.stored!r}, expected {self.expected!r}"


async def verify(
    conn: AsyncConnection, workspace_id: int, max_columns: int | None = None
) -> list[Drift]:
    """Every difference between the stored state and a fresh SQL evaluation
    (in queries of at most ``max_columns`` values, default the setting's)."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None:
        return []
    if max_columns is None:
        max_columns = Settings.model_fields["backfill_max_columns"].default
    now = await realtime.evaluation_now(conn, workspace_id)
    queries = await asyncio.to_thread(deployed.queries, max_columns, batch=False)
    expected: dict[str, dict[tuple[str, str], Any]] = {}
    for query in queries:
        cur = await conn.execute(query.sql, query.bind(now=now, workspace_id=workspace_id))
        for row in await cur.fetchall():
            expected.setdefault(row[0], {}).update(zip(query.columns[1:], row[1:], strict=True))
    cur = await conn.execute(
        "SELECT c.id, m.segment FROM segment_members m JOIN contacts c ON c.pk = m.contact_pk"
        " WHERE m.workspace_id = %s",
        (workspace_id,),
    )
    members = {(r[0], r[1]) for r in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT c.id, s.score, s.value FROM contact_scores s JOIN contacts c ON c.pk = s.contact_pk"
        " WHERE s.workspace_id = %s",
        (workspace_id,),
    )
    scores = {(r[0], r[1]): r[2] for r in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT id, stage FROM contacts WHERE workspace_id = %s", (workspace_id,)
    )
    stages: dict[str, str | None] = {r[0]: r[1] for r in await cur.fetchall()}
    drifts: list[Drift] = []
    for contact_id, values in expected.items():
        for (kind, name), value in values.items():
            if kind == "segment":
                stored_member = (contact_id, name) in members
                if bool(value) != stored_member:
                    drifts.append(Drift(contact_id, kind, name, stored_member, bool(value)))
            elif kind == "score":
                stored_value = scores.get((contact_id, name), Decimal(0))
                if stored_value != value:
                    drifts.append(Drift(contact_id, kind, name, stored_value, value))
            elif kind == "stage" and stages.get(contact_id) != value:
                drifts.append(Drift(contact_id, kind, "", stages.get(contact_id), value))
    # Memberships of contacts that no longer exist (rows with no contact).
    cur = await conn.execute(
        "SELECT m.segment, m.contact_pk FROM segment_members m"
        " WHERE m.workspace_id = %s AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.pk = m.contact_pk)",
        (workspace_id,),
    )
    for segment, pk in await cur.fetchall():
        drifts.append(Drift(f"(deleted pk {pk})", "segment", segment, True, False))
    return drifts
