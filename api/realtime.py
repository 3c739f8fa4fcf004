"""Real-time evaluation: after a mutation, inside its transaction, re-evaluate
in memory what the change can affect, store the results and write
``segment.entered`` / ``segment.exited`` / ``score.changed`` /
``stage.changed`` to the outbox.

A :class:`Change` says what a mutation touched (attributes, fields, tags,
lists, event names; ``everything`` for a created or merged contact;
``time`` when only the clock moved). Only the segments, scores and stage
whose dependency sets meet the change are evaluated and compared with what
is stored. The contact is loaded in one query with the events the rules read
(all of them with ``event *``), so the next instant at which time alone can
change a result (``nudgel.runtime.next_change``) is computed from the same
data and stored for the scheduler.

Stored results are the contact's state: ``segment_members``,
``contact_scores`` (a missing row is 0: a contact always has a score) and
``contacts.stage`` (the prior stage the lifecycle reads). Every change is
also a ``rule_history`` row (old, new, when, why).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from nudgel.api import outbox
from nudgel.api.rules_store import DeployedRules, current_rules
from nudgel.dsl.ast import Type
from nudgel.runtime.contact import Contact, DataError, Event, field_value
from nudgel.runtime.dependencies import DependencySet, NodeKey
from nudgel.runtime.program import EPOCH, to_micros
from nudgel.runtime.result import canonical_decimal
from psycopg import AsyncConnection

__all__ = [
    "Change",
    "Outcome",
    "evaluation_now",
    "forget",
    "load_contact",
    "reevaluate",
    "store_results",
]


@dataclass
class Change:
    """What a mutation touched on one contact."""

    reason: str
    attributes: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    lists: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    everything: bool = False
    time: bool = False

    def absorb(self, other: Change) -> None:
        """Two mutations of one contact in one transaction: evaluate once for both."""
        if other.reason not in self.reason.split(", "):
            self.reason = f"{self.reason}, {other.reason}"
        self.attributes |= other.attributes
        self.fields |= other.fields
        self.tags |= other.tags
        self.lists |= other.lists
        self.events |= other.events
        self.everything |= other.everything
        self.time |= other.time

    def touches(self, deps: DependencySet) -> bool:
        return (
            self.everything
            or (self.time and deps.time)
            or bool(deps.attributes & self.attributes)
            or bool(deps.fields & self.fields)
            or bool(deps.tags & self.tags)
            or bool(deps.lists & self.lists)
            or any(deps.reads_event(name) for name in self.events)
        )


@dataclass
class Outcome:
    """What one re-evaluation changed (for tests, jobs and drift reports)."""

    entered: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    scores: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    stage: tuple[str | None, str | None] | None = None


def micros_to_datetime(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def iso(micros: int) -> str:
    return micros_to_datetime(micros).isoformat().replace("+00:00", "Z")


async def evaluation_now(conn: AsyncConnection, workspace_id: int) -> int:
    """The instant rules evaluate at: the workspace's test clock, else the
    transaction's start (so an event recorded in it with no ``at`` counts)."""
    cur = await conn.execute(
        "SELECT coalesce(test_clock, now()) FROM workspaces WHERE id = %s", (workspace_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return to_micros(row[0])


_LOAD = """
SELECT c.id, c.email, c.phone, c.whatsapp_id, c.name, c.fields::text, c.stage,
       c.created_at, c.updated_at,
       ARRAY(SELECT t.tag FROM contact_tags t WHERE t.contact_pk = c.pk),
       (SELECT coalesce(jsonb_object_agg(s.list, s.status), '{}')::text
          FROM subscriptions s WHERE s.contact_pk = c.pk),
       (SELECT coalesce(json_agg(json_build_array(
                 e.name, (extract(epoch FROM e.at) * 1000000)::bigint, e.props)), '[]')::text
          FROM events e
         WHERE e.contact_pk = c.pk AND (%(all_events)s OR e.name = ANY(%(names)s)))
  FROM contacts c
 WHERE c.pk = %(pk)s AND c.workspace_id = %(ws)s
"""


async def load_contact(
    conn: AsyncConnection, workspace_id: int, pk: int, deployed: DeployedRules
) -> Contact | None:
    """The contact as the rules read it, with the events they read; None if gone.

    Stored values the rules cannot read (a field whose definition changed
    type) are missing, as the SQL backend's ``nudgel_try_*`` reads them.
    """
    names = deployed.event_names
    cur = await conn.execute(
        _LOAD,
        {
            "pk": pk,
            "ws": workspace_id,
            "all_events": names is None,
            "names": sorted(names or ()),
        },
    )
    row = await cur.fetchone()
    if row is None:
        return None
    (cid, email, phone, whatsapp_id, name, fields_text, stage, created, updated, tags) = row[:10]
    subscriptions_text, events_text = row[10], row[11]
    contact = Contact(
        cid,
        email=email or None,
        phone=phone or None,
        whatsapp_id=whatsapp_id or None,
        name=name or None,
        created_at=to_micros(created) if created is not None else None,
        updated_at=to_micros(updated) if updated is not None else None,
        stage=stage,
        tags=frozenset(tags),
        subscriptions=json.loads(subscriptions_text),
    )
    stored = json.loads(fields_text or "{}", parse_float=Decimal)
    for field_name, decl in deployed.rules.fields.items():
        value = stored.get(field_name)
        if value is None:
            continue
        try:
            normalised = field_value(cid, field_name, Type(decl.type_name), value)
        except DataError:
            continue
        if normalised is not None:
            contact.fields[field_name] = normalised
    for event_name, at, props in json.loads(events_text, parse_float=Decimal):
        contact.events.append(Event(event_name, int(at), props if isinstance(props, dict) else {}))
    contact.index_events()
    return contact


async def reevaluate(
    conn: AsyncConnection,
    workspace_id: int,
    pk: int,
    change: Change,
    *,
    deployed: DeployedRules | None = None,
    now: int | None = None,
    silent: Iterable[NodeKey] = (),
) -> Outcome | None:
    """Re-evaluate what ``change`` touches for contact ``pk``; None when the
    workspace has no rules or the contact is gone. ``silent`` nodes store
    their results without outbox events (the first fill of a new segment)."""
    if deployed is None:
        deployed = await current_rules(conn, workspace_id)
        if deployed is None:
            return None
    contact = await load_contact(conn, workspace_id, pk, deployed)
    if contact is None:
        return None
    if now is None:
        now = await evaluation_now(conn, workspace_id)
    nodes = [node for node in deployed.rules.order if change.touches(deployed.dependencies[node])]
    program = deployed.program
    segments = {
        name: program.segment(name)(contact, now) for kind, name in nodes if kind == "segment"
    }
    scores = {name: program.score(name)(contact, now) for kind, name in nodes if kind == "score"}
    stage_touched = ("lifecycle", "") in nodes
    stage = program.stage(contact, now) if stage_touched else None
    next_at = deployed.plan.next_change(contact, now) if deployed.plan.time_dependent else None
    return await store_results(
        conn,
        workspace_id,
        pk,
        contact.id,
        now,
        change.reason,
        segments=segments,
        scores=scores,
        stage=(contact.stage, stage) if stage_touched else None,
        next_at=next_at,
        silent=frozenset(silent),
    )


async def store_results(
    conn: AsyncConnection,
    workspace_id: int,
    pk: int,
    contact_id: str,
    now: int,
    reason: str,
    *,
    segments: dict[str, bool],
    scores: dict[str, Decimal],
    stage: tuple[str | None, str | None] | None,
    next_at: int | None,
    silent: frozenset[NodeKey] = frozenset(),
) -> Outcome:
    """Compare new results with the stored ones; write the differences,
    their history and their outbox events."""
    outcome = Outcome()
    at = micros_to_datetime(now)
    base = {"contact_id": contact_id, "at": iso(now), "reason": reason}
    history: list[tuple[Any, ...]] = []
    if segments:
        cur = await conn.execute(
            "SELECT segment FROM segment_members WHERE contact_pk = %s AND segment = ANY(%s)"
            " AND workspace_id = %s",
            (pk, list(segments), workspace_id),
        )
        members = {r[0] for r in await cur.fetchall()}
        for name, member in segments.items():
            if member == (name in members):
                continue
            if member:
                await conn.execute(
                    "INSERT INTO segment_members (workspace_id, segment, contact_pk, since)"
                    " VALUES (%s, %s, %s, %s)",
                    (workspace_id, name, pk, at),
                )
                outcome.entered.append(name)
            else:
                await conn.execute(
                    "DELETE FROM segment_members"
                    " WHERE workspace_id = %s AND segment = %s AND contact_pk = %s",
                    (workspace_id, name, pk),
                )
                outcome.exited.append(name)
            history.append(("segment", name, str(not member).lower(), str(member).lower()))
            if ("segment", name) not in silent:
                event_type = "segment.entered" if member else "segment.exited"
                await outbox.record(conn, workspace_id, event_type, {"segment": name, **base}, pk)
    if scores:
        cur = await conn.execute(
            "SELECT score, value FROM contact_scores WHERE contact_pk = %s AND score = ANY(%s)",
            (pk, list(scores)),
        )
        stored: dict[str, Decimal] = {r[0]: r[1] for r in await cur.fetchall()}
        for name, value in scores.items():
            old = stored.get(name)
            if old is not None and old == value:
                continue
            await conn.execute(
                "INSERT INTO contact_scores (workspace_id, contact_pk, score, value, updated_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (contact_pk, score)"
                " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (workspace_id, pk, name, value, at),
            )
            previous = old if old is not None else Decimal(0)
            if previous == value:
                continue  # first stored value, equal to the implicit 0
            outcome.scores[name] = (previous, value)
            old_text, new_text = canonical_decimal(previous), canonical_decimal(value)
            history.append(("score", name, old_text, new_text))
            if ("score", name) not in silent:
                await outbox.record(
                    conn,
                    workspace_id,
                    "score.changed",
                    {"score": name, "old": old_text, "new": new_text, **base},
                    pk,
                )
    if stage is not None and stage[0] != stage[1]:
        await conn.execute("UPDATE contacts SET stage = %s WHERE pk = %s", (stage[1], pk))
        outcome.stage = stage
        history.append(("stage", "", stage[0], stage[1]))
        if ("lifecycle", "") not in silent:
            await outbox.record(
                conn,
                workspace_id,
                "stage.changed",
                {"old": stage[0], "new": stage[1], **base},
                pk,
            )
    if history:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO rule_history"
                " (workspace_id, contact_pk, kind, name, old_value, new_value, at, reason)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(workspace_id, pk, *entry, at, reason) for entry in history],
            )
    await conn.execute(
        "UPDATE contacts SET next_evaluation_at = %s, evaluated_at = clock_timestamp()"
        " WHERE pk = %s",
        (micros_to_datetime(next_at) if next_at is not None else None, pk),
    )
    return outcome


async def forget(conn: AsyncConnection, workspace_id: int, pks: Sequence[int], reason: str) -> None:
    """Contacts about to be deleted (or merged away) leave their segments:
    ``segment.exited`` for each membership; their scores and history go."""
    if not pks:
        return
    cur = await conn.execute(
        "DELETE FROM segment_members m USING contacts c"
        " WHERE m.workspace_id = %s AND m.contact_pk = ANY(%s) AND c.pk = m.contact_pk"
        " RETURNING m.segment, m.contact_pk, c.id",
        (workspace_id, list(pks)),
    )
    left = await cur.fetchall()
    if left:
        now = await evaluation_now(conn, workspace_id)
        for segment, pk, contact_id in sorted(left, key=lambda r: (r[1], r[0])):
            await outbox.record(
                conn,
                workspace_id,
                "segment.exited",
                {"segment": segment, "contact_id": contact_id, "at": iso(now), "reason": reason},
                pk,
            )
    await conn.execute("DELETE FROM contact_scores WHERE contact_pk = ANY(%s)", (list(pks),))
    await conn.execute("DELETE FROM rule_history WHERE contact_pk = ANY(%s)", (list(pks),))


def utc_now_micros() -> int:
    return to_micros(datetime.now(UTC))
