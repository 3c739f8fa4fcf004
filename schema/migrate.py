"""Apply the numbered SQL migrations shipped in ``nudgel.schema.migrations``.

Migrations are ``NNNN_name.sql`` files applied in version order, each in its own
transaction together with its row in ``schema_migrations``, so a failure leaves
the database at the last good version. Each transaction first takes a
transaction-scoped advisory lock and then re-reads what is applied: concurrent
runners (several app processes starting at once) queue up, and whichever comes
second finds the work done. The lock is released by COMMIT/ROLLBACK, so a runner
that dies mid-way can never leave it held.

Migration files must not contain transaction control (BEGIN/COMMIT) or
statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY), and
must not qualify object names with a schema: with ``schema=`` everything runs
with ``search_path`` set to that schema only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

__all__ = ["Migration", "apply_migrations", "available_migrations"]

MIGRATIONS_PACKAGE = "nudgel.schema.migrations"

# An arbitrary constant naming "nudgel schema migrations" among advisory locks.
# One lock per database (not per schema): migrations take milliseconds, and a
# single key means no two runners ever race on CREATE SCHEMA either.
_LOCK_KEY = 0x6E75_6467_656C_0001  # "nudgel" + 1

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # file name without ".sql", e.g. "0001_storage"
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue  # __init__.py, __pycache__, editor droppings
        version = int(match["version"])
        if version in found:
            raise RuntimeError(
                f"two migrations with version {version:04d}: "
                f"{found[version].name}.sql and {entry.name}"
            )
        name = entry.name.removesuffix(".sql")
        found[version] = Migration(version, name, entry.read_text("utf-8"))
    return [found[v] for v in sorted(found)]


def apply_migrations(
    conn: psycopg.Connection, schema: str | None = None, *, up_to: int | None = None
) -> list[str]:
    """Apply the pending migrations (those numbered at most ``up_to``, when given);
    return the names applied (empty when up to date).

    ``conn`` must be idle (no open transaction): each migration gets its own.
    Its autocommit setting is left as it was. With ``schema``, the schema is
    created if needed, and migrations and ``schema_migrations`` live there; the
    connection's own ``search_path`` is not changed (``SET LOCAL`` only).
    Without it, they go to the connection's current schema.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError(
            "apply_migrations needs an idle connection: commit or roll back first, "
            "since every migration runs in its own transaction"
        )
    applied: list[str] = []
    with conn.transaction():
        _enter(conn, schema, create_schema=True)
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    int PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
    for migration in available_migrations():
        if up_to is not None and migration.version > up_to:
            break
        with conn.transaction():
            _enter(conn, schema)
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
            ).fetchone()
            if done is not None:
                continue
            # No parameters: psycopg sends the file as one simple-protocol
            # query, so it may hold many statements.
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        applied.append(migration.name)
    return applied


def _enter(conn: psycopg.Connection, schema: str | None, *, create_schema: bool = False) -> None:
    """Start a migration transaction: take the lock, then point search_path at ``schema``."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    if schema is None:
        return
    if create_schema:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    # Only the target schema (pg_catalog is always searched first), so an
    # unqualified name can never resolve to, or be created in, another schema.
    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
