"""How a handler changes data: one transaction per request, idempotency included.

A write handler takes :data:`PostWriter` (POST: honours ``Idempotency-Key``)
or :data:`Writer` (PATCH, DELETE) and does all its work in one transaction::

    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay                      # stored response of a retry
        result = await some_capability(tx, ...)   # queries on tx.conn, scoped by tx.workspace_id
        return await tx.respond(201, model)       # stores the response for replays

``tx`` is a :class:`RequestTransaction`: the capabilities' own
:class:`~nudgel.api.transaction.Transaction` plus the stored response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from nudgel.api.http import idempotency
from nudgel.api.http.auth import Auth, tenant_connection
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection
from pydantic import BaseModel

__all__ = [
    "IdempotencyKeyHeader",
    "PostWriter",
    "RequestTransaction",
    "WriteContext",
    "Writer",
    "replayable",
]


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
class RequestTransaction(Transaction):
    """A request's transaction: a replayed response, or the one it stores."""

    replay: JSONResponse | None = None
    # The record behind ``replay``: for a handler that withheld members from it.
    stored: idempotency.StoredResponse | None = None
    _key: str | None = None
    _responded: bool = field(default=False, repr=False)

    async def respond(
        self, status: int, body: BaseModel, *, withhold: Collection[str] = ()
    ) -> JSONResponse:
        """The response, stored for replays when the request has an Idempotency-Key.

        ``withhold``: top-level members (secrets) the stored copy leaves out; the
        handler puts them back on replay (``tx.stored.to_response({...})``).
        """
        await self.reevaluate()
        content = body.model_dump(mode="json")
        if self._key is not None:
            kept = {name: value for name, value in content.items() if name not in withhold}
            await idempotency.complete(self.conn, self.workspace_id, self._key, status, kept)
        self._responded = True
        return JSONResponse(content, status_code=status)


@dataclass(frozen=True)
class WriteContext:
    request: Request
    conn: AsyncConnection
    workspace_id: int
    idempotency_key: str | None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[RequestTransaction]:
        async with self.conn.transaction():
            tx = RequestTransaction(self.conn, self.workspace_id, _key=self.idempotency_key)
            if self.idempotency_key is not None:
                stored = await idempotency.claim(
                    self.conn,
                    self.workspace_id,
                    self.idempotency_key,
                    await idempotency.fingerprint(self.request),
                )
                if stored is not None:
                    tx.stored = stored
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
    conn: Annotated[AsyncConnection, Depends(tenant_connection)],
    idempotency_key: IdempotencyKeyHeader = None,
) -> WriteContext:
    return WriteContext(request, conn, auth.workspace_id, idempotency_key)


async def _writer(
    request: Request,
    auth: Auth,
    conn: Annotated[AsyncConnection, Depends(tenant_connection)],
) -> WriteContext:
    return WriteContext(request, conn, auth.workspace_id, None)


PostWriter = Annotated[WriteContext, Depends(_post_writer)]
Writer = Annotated[WriteContext, Depends(_writer)]
