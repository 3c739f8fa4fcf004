"""How a handler changes data: one transaction, idempotency and outbox included.

A write handler takes :data:`PostWriter` (POST: honours ``Idempotency-Key``)
or :data:`Writer` (PATCH, DELETE) and does all its work in one transaction::

    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay                      # stored response of a retry
        ...                                       # queries on tx.conn, scoped by tx.workspace_id
        await tx.emit("tag.created", data)        # outbox row, same transaction
        tx.touch(pk, Change("contact.tagged", tags={"vip"}))  # re-evaluate the rules
        return await tx.respond(201, model)       # stores the response for replays

Leaving the block re-evaluates the deployed rules for every touched contact
(``nudgel.api.realtime``), then commits the change, its outbox events, the
new segment, score and stage state and the stored response together; an
exception rolls all of it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from nudgel.api import idempotency, outbox, realtime
from nudgel.api.auth import Auth
from nudgel.api.db import connection
from nudgel.api.rules_store import rules_and_now
from psycopg import AsyncConnection
from pydantic import BaseModel

__all__ = ["PostWriter", "Transaction", "WriteContext", "Writer", "replayable"]


def replayable(status: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry documenting ``Idempotent-Replayed`` on a POST's success."""
    return {
        status: {
            "headers": {
                idempotency.REPLAYED_HEADER: {
                    "description": "`true` when this is the stored response of an earlier"
                    " request with the same Idempotency-Key.",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
        }
    }


@dataclass
class Transaction:
    conn: AsyncConnection
    workspace_id: int
    replay: JSONResponse | None = None
    _key: str | None = None
    _responded: bool = field(default=False, repr=False)
    _touched: dict[int, realtime.Change] = field(default_factory=dict, repr=False)

    async def emit(
        self, event_type: str, data: dict[str, Any], contact_pk: int | None = None
    ) -> str:
        """Record an event in the outbox, in this transaction."""
        return await outbox.record(self.conn, self.workspace_id, event_type, data, contact_pk)

    def touch(self, pk: int, change: realtime.Change) -> None:
        """Contact ``pk`` changed: its rule results are re-evaluated before commit."""
        known = self._touched.get(pk)
        if known is None:
            self._touched[pk] = change
        else:
            known.absorb(change)

    async def forget(self, pks: list[int], reason: str) -> None:
        """Contacts about to be deleted leave their segments (call before deleting)."""
        for pk in pks:
            self._touched.pop(pk, None)
        await realtime.forget(self.conn, self.workspace_id, pks, reason)

    async def reevaluate(self) -> None:
        if not self._touched:
            return
        deployed, now = await rules_and_now(self.conn, self.workspace_id)
        if deployed is None:
            self._touched.clear()
            return
        # In pk order, as every path that locks several contacts does.
        for pk in sorted(self._touched):
            await realtime.reevaluate(
                self.conn, self.workspace_id, pk, self._touched[pk], deployed=deployed, now=now
            )
        self._touched.clear()

    async def respond(self, status: int, body: BaseModel) -> JSONResponse:
        """The response, stored for replays when the request has an Idempotency-Key."""
        await self.reevaluate()
        content = body.model_dump(mode="json")
        if self._key is not None:
            await idempotency.complete(self.conn, self.workspace_id, self._key, status, content)
        self._responded = True
        return JSONResponse(content, status_code=status)


@dataclass(frozen=True)
class WriteContext:
    request: Request
    conn: AsyncConnection
    workspace_id: int
    idempotency_key: str | None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.conn.transaction():
            tx = Transaction(self.conn, self.workspace_id, _key=self.idempotency_key)
            if self.idempotency_key is not None:
                stored = await idempotency.claim(
                    self.conn,
                    self.workspace_id,
                    self.idempotency_key,
                    await idempotency.fingerprint(self.request),
                )
                if stored is not None:
                    tx.replay = stored.to_response()
            yield tx
            await tx.reevaluate()
            if self.idempotency_key is not None and tx.replay is None and not tx._responded:
                # A handler that returns without tx.respond() would commit a
                # claim with no response: every retry would then get 409.
                raise RuntimeError("a handler with an Idempotency-Key must return tx.respond(...)")


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        min_length=1,
        max_length=255,
        description=(
            "Makes the request safe to retry: a retry with the same key and parameters"
            " replays the first response (with `Idempotent-Replayed: true`) instead of"
            " acting twice. 409 while the first is in flight; 422 if reused with other"
            " parameters. Keys are kept at least 24 hours."
        ),
    ),
]


async def _post_writer(
    request: Request,
    auth: Auth,
    conn: Annotated[AsyncConnection, Depends(connection)],
    idempotency_key: IdempotencyKeyHeader = None,
) -> WriteContext:
    return WriteContext(request, conn, auth.workspace_id, idempotency_key)


async def _writer(
    request: Request,
    auth: Auth,
    conn: Annotated[AsyncConnection, Depends(connection)],
) -> WriteContext:
    return WriteContext(request, conn, auth.workspace_id, None)


PostWriter = Annotated[WriteContext, Depends(_post_writer)]
Writer = Annotated[WriteContext, Depends(_writer)]
