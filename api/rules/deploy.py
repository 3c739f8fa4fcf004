"""Deploying a rule set and checking the stored state against it.

:func:`deploy` compiles the files against the workspace's field
definitions; with errors nothing changes and the diagnostics come back.
Otherwise the files become the next version, what the previous version had
and this one drops is removed, and a backfill job is created (the caller
starts it once the transaction has committed: :func:`start_backfill`).

:func:`verify` recomputes every membership, score and stage with the SQL
backend at the workspace's evaluation instant and lists every difference
from the stored real-time state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nudgel.api.contacts.fields import field_types
from nudgel.api.jobs.runner import create_job, start_job
from nudgel.api.rules import realtime
from nudgel.api.rules.backfill import run_backfill
from nudgel.api.rules.store import (
    DeployedRules,
    compile_for_workspace,
    current_rules,
    declared_fields,
    store_version,
)
from nudgel.api.webhooks import outbox
from nudgel.compiler.sql import SqlCompiler
from nudgel.dsl.diagnostics import Diagnostic
from nudgel.runtime.dependencies import NodeKey
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["Deployment", "Drift", "deploy", "start_backfill", "verify"]


@dataclass
class Deployment:
    diagnostics: tuple[Diagnostic, ...]
    version: int | None = None
    job_id: str | None = None
    unchanged: bool = False
    deployed: DeployedRules | None = None
    # Nodes new in this version: their first fill fires no events.
    silent: list[NodeKey] = field(default_factory=list)


async def deploy(conn: AsyncConnection, workspace_id: int, files: Mapping[str, str]) -> Deployment:
    """In the caller's transaction. ``version`` is None when there are errors.

    The files' field declarations are the workspace's schema: a declared field
    the workspace lacks is created (``field.created``); one declared with
    another type than the workspace's refuses the deploy (E271) before
    anything changes."""
    definitions = await field_types(conn, workspace_id)
    result = compile_for_workspace(files, definitions, new_fields=True)
    if result.rules is None:
        return Deployment(result.diagnostics)
    await _create_declared_fields(conn, workspace_id, files, definitions)
    previous = await current_rules(conn, workspace_id)
    if previous is not None and dict(previous.files) == dict(files):
        return Deployment(result.diagnostics, previous.version, unchanged=True, deployed=previous)
    version = await store_version(conn, workspace_id, files)
    deployed = DeployedRules.build(version, files, result.rules)
    before = set(previous.rules.order) if previous is not None else set()
    silent = [node for node in deployed.rules.order if node not in before]
    await _drop_removed(conn, workspace_id, deployed)
    job_id = await create_job(conn, workspace_id, "backfill")
    return Deployment(result.diagnostics, version, job_id, deployed=deployed, silent=silent)


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


def start_backfill(pool: AsyncConnectionPool, workspace_id: int, deployment: Deployment) -> None:
    """Start the deployment's backfill (after its transaction committed)."""
    assert deployment.job_id is not None and deployment.deployed is not None
    start_job(
        run_backfill(pool, workspace_id, deployment.job_id, deployment.deployed, deployment.silent),
        name=f"backfill {deployment.job_id}",
    )


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


async def verify(conn: AsyncConnection, workspace_id: int) -> list[Drift]:
    """Every difference between the stored state and a fresh SQL evaluation."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None:
        return []
    now = await realtime.evaluation_now(conn, workspace_id)
    query = SqlCompiler(deployed.rules).everything()
    cur = await conn.execute(query.sql, query.bind(now=now, workspace_id=workspace_id))
    expected_rows = await cur.fetchall()
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
    seen: set[str] = set()
    for row in expected_rows:
        contact_id = row[0]
        seen.add(contact_id)
        for (kind, name), value in zip(query.columns[1:], row[1:], strict=True):
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
