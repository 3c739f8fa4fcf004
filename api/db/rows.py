"""Rows as models: a query's rows built as a pydantic model (psycopg's ``class_row``).

Every column the query returns must be a field of the model; the values are
validated as the model's constructor validates them.
"""

from __future__ import annotations

from typing import TypeVar

from psycopg import AsyncConnection
from psycopg.abc import Params, QueryNoTemplate
from psycopg.rows import class_row
from pydantic import BaseModel

__all__ = ["fetch_all", "fetch_one"]

Model = TypeVar("Model", bound=BaseModel)


async def fetch_one(
    conn: AsyncConnection, model: type[Model], query: QueryNoTemplate, params: Params
) -> Model | None:
    """The query's first row as a ``model``; None when it returns no row."""
    cur = conn.cursor(row_factory=class_row(model))
    await cur.execute(query, params)
    return await cur.fetchone()


async def fetch_all(
    conn: AsyncConnection, model: type[Model], query: QueryNoTemplate, params: Params
) -> list[Model]:
    """The query's rows, each as a ``model``."""
    cur = conn.cursor(row_factory=class_row(model))
    await cur.execute(query, params)
    return await cur.fetchall()
