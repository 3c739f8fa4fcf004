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
    rules: CheckedRules, contacts: Sequence[Contact], now: int, database_url: str
) -> EvalResult:
    """Every segment, score and stage of ``contacts`` at ``now`` (microseconds)."""
    with psycopg.connect(database_url, autocommit=True) as conn, throwaway_schema(conn):
        field_types = {name: rules.field_type(name) for name in rules.fields}
        workspace_id = load_contacts_into(conn, contacts, workspace="eval", field_types=field_types)
        # Fresh statistics: without them the planner guesses sizes and can
        # pick plans that are badly wrong on large inputs.
        conn.execute("ANALYZE contacts, contact_tags, subscriptions, events")
        return run_everything(conn, rules, workspace_id, now)


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
    conn: psycopg.Connection, rules: CheckedRules, workspace_id: int, now: int
) -> EvalResult:
    """Run the compiled ``everything`` query for a loaded workspace."""
    query = SqlCompiler(rules).everything()
    rows = conn.execute(query.sql, query.bind(now=now, workspace_id=workspace_id)).fetchall()
    result = EvalResult(
        segments={name: [] for kind, name in query.columns if kind == "segment"},
        scores={name: {} for kind, name in query.columns if kind == "score"},
    )
    has_stage = ("stage", "") in query.columns
    for row in rows:
        contact_id: str = row[0]
        for (kind, name), value in zip(query.columns, row, strict=True):
            if kind == "segment":
                if value:
                    result.segments[name].append(contact_id)
            elif kind == "score":
                result.scores[name][contact_id] = Decimal(value)
        result.stages[contact_id] = row[-1] if has_stage else None
    for members in result.segments.values():
        members.sort()
    return result
