"""Evaluate a rule set over contacts with the PostgreSQL backend.

The contacts go into a throwaway schema (the migrations applied into it),
the compiled ``everything`` query runs there, and the schema is dropped
whatever happens.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal

import psycopg
from nudgel.compiler.sql import SqlCompiler
from nudgel.dsl.checker import CheckedRules
from nudgel.runtime.contact import Contact
from nudgel.runtime.pgload import load_contacts_into
from nudgel.runtime.result import EvalResult
from nudgel.schema.migrate import apply_migrations
from psycopg import sql

__all__ = ["evaluate_postgres", "run_everything", "throwaway_schema"]

# The service keeps email, phone, WhatsApp id and external id unique within a
# workspace; evaluation input need not be (the in-memory backend accepts two
# contacts with one email), so the throwaway schema goes without these.
_IDENTITY_INDEXES = (
    "contacts_workspace_email_key",
    "contacts_workspace_phone_key",
    "contacts_workspace_whatsapp_id_key",
    "contacts_workspace_external_id_key",
)


def evaluate_postgres(
    rules: CheckedRules,
    contacts: Sequence[Contact],
    now: int,
    database_url: str,
    *,
    max_columns: int | None = None,
    batch: bool = False,
) -> EvalResult:
    """Every segment, score and stage of ``contacts`` at ``now`` (microseconds);
    ``max_columns`` and ``batch`` as for :func:`run_everything`."""
    with psycopg.connect(database_url, autocommit=True) as conn, throwaway_schema(conn):
        field_types = {name: rules.field_type(name) for name in rules.fields}
        workspace_id = load_contacts_into(conn, contacts, workspace="eval", field_types=field_types)
        # Fresh statistics: without them the planner guesses sizes and can
        # pick plans that are badly wrong on large inputs.
        conn.execute("ANALYZE contacts, contact_tags, subscriptions, events")
        return run_everything(conn, rules, workspace_id, now, max_columns=max_columns, batch=batch)


@contextmanager
def throwaway_schema(conn: psycopg.Connection) -> Iterator[str]:
    """A new schema with the migrations applied, first on the connection's
    search_path until the block ends; then dropped. ``conn`` must be in
    autocommit mode."""
    name = f"nudgel_eval_{secrets.token_hex(8)}"
    try:
        apply_migrations(conn, schema=name)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("DROP INDEX {}").format(
                sql.SQL(", ").join(map(sql.Identifier, _IDENTITY_INDEXES))
            )
        )
        yield name
    finally:
        if not conn.closed:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.execute("RESET search_path")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def run_everything(
    conn: psycopg.Connection,
    rules: CheckedRules,
    workspace_id: int,
    now: int,
    *,
    max_columns: int | None = None,
    batch: bool = False,
) -> EvalResult:
    """Run the compiled ``everything`` query for a loaded workspace; with
    ``max_columns``, its chunks (``SqlCompiler.everything_chunks``) one after
    the other, as a backfill does (``batch``: for the workspace's contacts
    named by pk), their rows joined by contact."""
    compiler = SqlCompiler(rules)
    if max_columns is None:
        queries = [compiler.everything()]
    else:
        queries = compiler.everything_chunks(max_columns, batch=batch)
    pks: list[int] | None = None
    if batch:
        cur = conn.execute("SELECT pk FROM contacts WHERE workspace_id = %s", (workspace_id,))
        pks = [int(r[0]) for r in cur.fetchall()]
    result = EvalResult(
        segments={name: [] for kind, name in rules.order if kind == "segment"},
        scores={name: {} for kind, name in rules.order if kind == "score"},
    )
    has_stage = rules.lifecycle is not None
    for query in queries:
        params = query.bind(now=now, workspace_id=workspace_id, contact_pks=pks)
        for row in conn.execute(query.sql, params).fetchall():
            values = dict(zip(query.columns, row, strict=True))
            contact_id: str = values[("id", "")]
            for (kind, name), value in values.items():
                if kind == "segment":
                    if value:
                        result.segments[name].append(contact_id)
                elif kind == "score":
                    result.scores[name][contact_id] = Decimal(value)
                elif kind == "stage":
                    result.stages[contact_id] = value
            if not has_stage:
                result.stages[contact_id] = None
    for members in result.segments.values():
        members.sort()
    return result
