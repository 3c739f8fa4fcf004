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

from nudgel.api.rules.store import DeployedRules, rules_and_now
from nudgel.api.webhooks import outbox
from nudgel.dsl.ast import Type
from nudgel.runtime.contact import Contact, DataError, Event, field_value
from nudgel.runtime.dependencies import DependencySet, NodeKey
from nudgel.runtime.program import EPOCH, to_micros
from nudgel.runtime.result import canonical_decimal
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus

__all__ = [
    "Change",
    "Outcome",
    "StateWriter",
    "evaluation_now",
    "forget",
    "load_contact",
    "reevaluate",
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
         WHERE e.contact_pk = c.pk AND (%(all_events)s OR e.name = ANY(%(names)s))),
       ARRAY(SELECT m.segment FROM segment_members m WHERE m.contact_pk = c.pk),
       (SELECT coalesce(json_agg(json_build_array(s.score, s.value::text)), '[]')::text
          FROM contact_scores s WHERE s.contact_pk = c.pk)
  FROM contacts c
 WHERE c.pk = %(pk)s AND c.workspace_id = %(ws)s
"""


@dataclass
class StoredState:
    """What is stored for a contact: its memberships and score values."""

    segments: set[str]
    scores: dict[str, Decimal]


async def load_contact(
    conn: AsyncConnection, workspace_id: int, pk: int, deployed: DeployedRules
) -> tuple[Contact, StoredState] | None:
    """The contact as the rules read it, with the events they read, and its
    stored results (one query); None if gone.

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
    subscriptions_text, events_text, members, scores_text = row[10:14]
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
    stored = StoredState(
        set(members), {name: Decimal(value) for name, value in json.loads(scores_text)}
    )
    return contact, stored


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
    if deployed is None or now is None:
        deployed, now = await rules_and_now(conn, workspace_id)
        if deployed is None:
            return None
    loaded = await load_contact(conn, workspace_id, pk, deployed)
    if loaded is None:
        return None
    contact, stored = loaded
    nodes = [node for node in deployed.rules.order if change.touches(deployed.dependencies[node])]
    program = deployed.program
    segments = {
        name: program.segment(name)(contact, now) for kind, name in nodes if kind == "segment"
    }
    scores = {name: program.score(name)(contact, now) for kind, name in nodes if kind == "score"}
    stage_touched = ("lifecycle", "") in nodes
    stage = program.stage(contact, now) if stage_touched else None
    next_at = deployed.plan.next_change(contact, now) if deployed.plan.time_dependent else None
    writer = StateWriter(conn, workspace_id, now)
    writer.members |= {(pk, name) for name in stored.segments}
    writer.scores |= {(pk, name): value for name, value in stored.scores.items()}
    outcome = writer.contact(
        pk,
        contact.id,
        change.reason,
        segments=segments,
        scores=scores,
        stage=(contact.stage, stage) if stage_touched else None,
        next_at=next_at,
        silent=frozenset(silent),
    )
    await writer.flush()
    return outcome


# Large batches (a backfill's) go in with COPY, small ones with one INSERT.
_COPY_FROM = 200
_MEMBERS, _MEMBER_COLUMNS = "segment_members", "workspace_id, segment, contact_pk, since"
_HISTORY = "rule_history"
_HISTORY_COLUMNS = "workspace_id, contact_pk, kind, name, old_value, new_value, at, reason"


class StateWriter:
    """Compares new results with the stored ones for a set of contacts and
    writes only the differences, their history and their outbox events, in
    a few statements for the whole set (a backfill batch or one contact).

    ``silent`` nodes (the first fill of a new segment, score or lifecycle)
    record their state, not a change: no outbox event and no history entry
    (a membership's ``since`` says when; a score's first value is the
    ``old_value`` of its first change).

    ``load`` the stored state of the contacts first, call ``contact`` for
    each, then ``flush``.
    """

    def __init__(self, conn: AsyncConnection, workspace_id: int, now: int) -> None:
        self.conn, self.workspace_id, self.now = conn, workspace_id, now
        self.at = micros_to_datetime(now)
        self.members: set[tuple[int, str]] = set()
        self.scores: dict[tuple[int, str], Decimal] = {}
        self.joins: list[tuple[Any, ...]] = []
        self.leaves: list[tuple[Any, ...]] = []
        self.score_rows: list[tuple[Any, ...]] = []
        self.history: list[tuple[Any, ...]] = []
        self.events: list[tuple[str, dict[str, Any], int | None]] = []
        self.next_rows: list[tuple[Any, ...]] = []

    async def load(
        self, pks: Sequence[int], segments: Sequence[str], scores: Sequence[str]
    ) -> None:
        if segments:
            # By contact only, so the plan is always the contact_pk index.
            cur = await self.conn.execute(
                "SELECT contact_pk, segment FROM segment_members WHERE contact_pk = ANY(%s)",
                (list(pks),),
            )
            wanted = set(segments)
            self.members |= {(int(pk), name) for pk, name in await cur.fetchall() if name in wanted}
        if scores:
            cur = await self.conn.execute(
                "SELECT contact_pk, score, value FROM contact_scores WHERE contact_pk = ANY(%s)",
                (list(pks),),
            )
            wanted = set(scores)
            self.scores |= {
                (int(pk), name): value for pk, name, value in await cur.fetchall() if name in wanted
            }

    def contact(
        self,
        pk: int,
        contact_id: str,
        reason: str,
        *,
        segments: dict[str, bool],
        scores: dict[str, Decimal],
        stage: tuple[str | None, str | None] | None,
        next_at: int | None,
        silent: frozenset[NodeKey] = frozenset(),
    ) -> Outcome:
        outcome = Outcome()
        base = {"contact_id": contact_id, "at": iso(self.now), "reason": reason}
        ws, at = self.workspace_id, self.at
        for name, member in segments.items():
            if member == ((pk, name) in self.members):
                continue
            if member:
                self.joins.append((ws, name, pk, at))
                outcome.entered.append(name)
            else:
                self.leaves.append((ws, name, pk))
                outcome.exited.append(name)
            if ("segment", name) not in silent:
                self.history.append(
                    (
                        ws,
                        pk,
                        "segment",
                        name,
                        str(not member).lower(),
                        str(member).lower(),
                        at,
                        reason,
                    )
                )
                event_type = "segment.entered" if member else "segment.exited"
                self.events.append((event_type, {"segment": name, **base}, pk))
        for name, value in scores.items():
            old = self.scores.get((pk, name))
            if old is not None and old == value:
                continue
            self.score_rows.append((ws, pk, name, value, at))
            previous = old if old is not None else Decimal(0)
            if previous == value:
                continue  # the first stored value, equal to the implicit 0
            outcome.scores[name] = (previous, value)
            old_text, new_text = canonical_decimal(previous), canonical_decimal(value)
            if ("score", name) not in silent:
                self.history.append((ws, pk, "score", name, old_text, new_text, at, reason))
                data = {"score": name, "old": old_text, "new": new_text, **base}
                self.events.append(("score.changed", data, pk))
        stage_changed = stage is not None and stage[0] != stage[1]
        if stage is not None and stage_changed:
            outcome.stage = stage
            if ("lifecycle", "") not in silent:
                self.history.append((ws, pk, "stage", "", stage[0], stage[1], at, reason))
                change: dict[str, Any] = {"old": stage[0], "new": stage[1], **base}
                self.events.append(("stage.changed", change, pk))
        # One update of the contact row for its stage and its next evaluation.
        self.next_rows.append(
            (
                micros_to_datetime(next_at) if next_at is not None else None,
                stage_changed,
                stage[1] if stage is not None else None,
                pk,
            )
        )
        return outcome

    async def flush(self) -> None:
        """Write everything collected: one set-based statement per table (rows
        passed as arrays and unnested, so a batch of thousands is one round trip
        each)."""
        statements: list[tuple[str, list[tuple[Any, ...]]]] = [
            (
                "INSERT INTO segment_members (workspace_id, segment, contact_pk, since)"
                " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])",
                self.joins,
            ),
            (
                "DELETE FROM segment_members m USING unnest(%s::bigint[], %s::text[], %s::bigint[])"
                " AS v(ws, segment, pk)"
                " WHERE m.workspace_id = v.ws AND m.segment = v.segment AND m.contact_pk = v.pk",
                self.leaves,
            ),
            (
                "INSERT INTO contact_scores (workspace_id, contact_pk, score, value, updated_at)"
                " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::numeric[],"
                " %s::timestamptz[]) ON CONFLICT (contact_pk, score)"
                " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                self.score_rows,
            ),
            (
                "INSERT INTO rule_history"
                " (workspace_id, contact_pk, kind, name, old_value, new_value, at, reason)"
                " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::timestamptz[], %s::text[])",
                self.history,
            ),
            (
                "UPDATE contacts c SET next_evaluation_at = v.next, evaluated_at = clock_timestamp(),"
                " stage = CASE WHEN v.set_stage THEN v.stage ELSE c.stage END"
                " FROM unnest(%s::timestamptz[], %s::bool[], %s::text[], %s::bigint[])"
                " AS v(next, set_stage, stage, pk) WHERE c.pk = v.pk",
                self.next_rows,
            ),
        ]
        async with self.conn.cursor() as cur:
            for table, names, rows in (
                (_MEMBERS, _MEMBER_COLUMNS, self.joins),
                (_HISTORY, _HISTORY_COLUMNS, self.history),
            ):
                if len(rows) >= _COPY_FROM:
                    async with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                        for row in rows:
                            await copy.write_row(row)
                    rows.clear()
        if self.conn.info.transaction_status != TransactionStatus.INTRANS:
            raise RuntimeError("rule results must be written inside the mutation's transaction")
        # Pipelined: the statements go out together, one wait for them all.
        async with self.conn.pipeline():
            for statement, rows in statements:
                if rows:
                    columns = [list(column) for column in zip(*rows, strict=True)]
                    await self.conn.execute(statement, columns)
                    rows.clear()
            await outbox.record_many(self.conn, self.workspace_id, self.events, in_pipeline=True)
        self.events.clear()


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
            data = {"segment": segment, "contact_id": contact_id, "at": iso(now), "reason": reason}
            await outbox.record(conn, workspace_id, "segment.exited", data, pk)
    await conn.execute("DELETE FROM contact_scores WHERE contact_pk = ANY(%s)", (list(pks),))
    await conn.execute("DELETE FROM rule_history WHERE contact_pk = ANY(%s)", (list(pks),))


def utc_now_micros() -> int:
    return to_micros(datetime.now(UTC))
