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


def _session_options(settings: Settings) -> str:
    """Server limits of every API connection: no statement runs, and no
    transaction idles, past its bound (jobs raise them per transaction)."""
    return (
        f"-c statement_timeout={settings.statement_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}"
    )


def make_pool(url: str, settings: Settings) -> AsyncConnectionPool:
    """A pool, not yet open (``await pool.open(wait=True)``)."""
    return AsyncConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout,
        kwargs={"autocommit": True, "options": _session_options(settings)},
        open=False,
        name="nudgel",
    )


def pool_of(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


async def connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """FastAPI dependency: a pooled connection for the duration of the request."""
    async with pool_of(request).connection() as conn:
        yield conn
