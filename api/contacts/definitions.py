"""A workspace's definitions of one kind, kept by name: field definitions, tags.

Each kind is a table keyed by (``workspace_id``, ``name``). Creating one
that exists is a 409, reading an unknown one a 404; a creation writes the
``KIND.created`` outbox event in the caller's transaction. Lists are
keyset-paginated on the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from nudgel.api.db.rows import fetch_all, fetch_one
from nudgel.api.problems import ProblemError
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection, sql
from pydantic import BaseModel

__all__ = ["Definitions"]

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Definitions(Generic[Model]):
    # Lower case: events are `KIND.created`, problems name a `Kind 'NAME'`.
    kind: str
    table: str
    # The API's view of one, built from `columns` (each one of its fields).
    model: type[Model]
    columns: tuple[str, ...]

    def _query(self, template: str, **parts: sql.Composable) -> sql.Composed:
        return sql.SQL(template).format(
            table=sql.Identifier(self.table),
            columns=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            **parts,
        )

    def not_found(self, name: str) -> ProblemError:
        return ProblemError.not_found(f"{self.kind.capitalize()} {name!r}")

    async def create(self, tx: Transaction, body: BaseModel) -> Model:
        """Insert a row of ``body``'s fields (409 if the name is taken); ``KIND.created``."""
        values = body.model_dump()
        query = self._query(
            "INSERT INTO {table} (workspace_id, {given}) VALUES (%s, {placeholders})"
            " ON CONFLICT DO NOTHING RETURNING {columns}",
            given=sql.SQL(", ").join(map(sql.Identifier, values)),
            placeholders=sql.SQL(", ").join(sql.Placeholder() * len(values)),
        )
        created = await fetch_one(tx.conn, self.model, query, (tx.workspace_id, *values.values()))
        if created is None:
            raise ProblemError.conflict(
                f"{self.kind.capitalize()} {values['name']!r} exists already."
            )
        await tx.emit(f"{self.kind}.created", created.model_dump(mode="json"))
        return created

    async def page(
        self, conn: AsyncConnection, workspace_id: int, starting_after: str | None, limit: int
    ) -> list[Model]:
        """Up to ``limit`` named after ``starting_after``, in name order."""
        query = self._query(
            "SELECT {columns} FROM {table} WHERE workspace_id = %s"
            " AND (%s::text IS NULL OR name > %s) ORDER BY name LIMIT %s"
        )
        return await fetch_all(
            conn, self.model, query, (workspace_id, starting_after, starting_after, limit)
        )

    async def get(
        self, conn: AsyncConnection, workspace_id: int, name: str, *, for_update: bool = False
    ) -> Model:
        """The one named ``name`` (404 if none), locked when ``for_update``."""
        query = self._query(
            "SELECT {columns} FROM {table} WHERE workspace_id = %s AND name = %s{lock}",
            lock=sql.SQL(" FOR UPDATE" if for_update else ""),
        )
        found = await fetch_one(conn, self.model, query, (workspace_id, name))
        if found is None:
            raise self.not_found(name)
        return found
