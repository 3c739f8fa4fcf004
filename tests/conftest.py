"""Shared PostgreSQL fixtures.

- ``database_url`` (session): URL of a throwaway, empty database
  ``nudgel_test_<hex>``, dropped at the end. It lives on the server named by
  ``$DATABASE_URL`` when set, else on the embedded server with its data in
  ``.nudgel-data/test-pg`` (git-ignored; kept between runs so only the first
  run pays for ``initdb``).
- ``migrated_url`` (session): the same database with the migrations applied
  to its ``public`` schema.
- ``pg_conn`` (per test): a connection to the migrated database, autocommit
  off; everything the test did is rolled back.

Tests that must build schemas themselves should use their own schema in
``database_url`` (see ``tests/test_migrations.py``), not the shared ``public``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from nudgel.api.db.embedded import ensure_embedded_postgres
from nudgel.api.keys.store import IssuedKey
from nudgel.schema.migrate import apply_migrations
from psycopg import sql
from psycopg.conninfo import make_conninfo
from workspaces import drop_workspace, new_key

# The API tests send far more requests per key than a client would: the rate
# limit and the per-workspace connection share are tested on their own
# (tests/test_trust.py), with their own settings. Subprocesses inherit these.
os.environ.setdefault("NUDGEL_RATE_LIMIT_PER_SECOND", "1000000")
os.environ.setdefault("NUDGEL_RATE_LIMIT_BURST", "1000000")
os.environ.setdefault("NUDGEL_WORKSPACE_MAX_CONNECTIONS", "1000")
os.environ.setdefault("NUDGEL_WORKSPACE_MAX_SCANS", "1000")

# Hypothesis profiles: `ci` (default) keeps the whole suite within minutes on two
# cores; `HYPOTHESIS_PROFILE=long` runs thousands of examples per property.
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_PG_DATA = REPO_ROOT / ".nudgel-data" / "test-pg"


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` (URL or key=value conninfo)."""
    if "://" not in url:
        return make_conninfo(url, dbname=dbname)
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    server_url = os.environ.get("DATABASE_URL") or ensure_embedded_postgres(TEST_PG_DATA)
    name = f"nudgel_test_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        # FORCE: a test that leaked a connection must not make the drop fail.
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def migrated_url(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
    return database_url


@pytest.fixture
def pg_conn(migrated_url: str) -> Iterator[psycopg.Connection]:
    # Not `with psycopg.connect(...)`: leaving that block COMMITs.
    conn = psycopg.connect(migrated_url)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


# A new workspace per test (a module may define its own `key`, e.g. with
# fields), and a second one for the isolation tests.
@pytest.fixture
def key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


@pytest.fixture
def other_key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)
