"""Throwaway workspaces for the API tests: one per test, dropped after it."""

from __future__ import annotations

import secrets

import psycopg
from nudgel.api.keys.store import IssuedKey, create_key


def new_key(url: str) -> IssuedKey:
    """A test-mode key of a new workspace."""
    with psycopg.connect(url, autocommit=True) as conn:
        return create_key(conn, f"ws_{secrets.token_hex(6)}", "test")


def drop_workspace(url: str, workspace_id: int) -> None:
    # The database is shared by the session: tests that count rows of the
    # storage tables (test_migrations) must not see these contacts.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM workspaces WHERE id = %s", (workspace_id,))
