"""The connection pool, and how handlers get a connection from it.

One psycopg ``AsyncConnectionPool`` per app, opened in the lifespan. Its
connections are in autocommit mode: a handler that writes opens an explicit
``async with conn.transaction()`` (see ``nudgel.api.transaction``), so what is
atomic is visible in the code, and a read is a single statement without a
transaction left open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from nudgel.api.settings import Settings
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["connection", "make_pool", "pool_of"]


def _session_options(statement_ms: int, idle_ms: int) -> str:
    """Server limits of every connection of a pool: no statement runs, and no
    transaction idles, past its bound (0: none)."""
    return f"-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={idle_ms}"


def make_pool(url: str, settings: Settings, *, for_jobs: bool = False) -> AsyncConnectionPool:
    """A pool, not yet open (``await pool.open(wait=True)``). The API's has the
    request limits (``statement_timeout_ms``); one ``for_jobs`` (backfills,
    imports, verify: statements over a whole workspace) has the jobs' own
    (``job_statement_timeout_ms``) and its own connections, so bulk work never
    queues API requests behind it."""
    if for_jobs:
        options = _session_options(
            settings.job_statement_timeout_ms, settings.job_idle_in_transaction_timeout_ms
        )
        size = (1, settings.job_pool_max_size)
    else:
        options = _session_options(
            settings.statement_timeout_ms, settings.idle_in_transaction_timeout_ms
        )
        size = (settings.pool_min_size, settings.pool_max_size)
    return AsyncConnectionPool(
        url,
        min_size=size[0],
        max_size=size[1],
        timeout=settings.pool_timeout,
        kwargs={"autocommit": True, "options": options},
        open=False,
        name="nudgel-jobs" if for_jobs else "nudgel",
    )


def pool_of(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


async def connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """FastAPI dependency: a pooled connection for the duration of the request."""
    async with pool_of(request).connection() as conn:
        yield conn
