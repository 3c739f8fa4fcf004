"""``Idempotency-Key`` for POST requests, inside the handler's transaction.

The record of a key is written in the same transaction as the mutation it
guards, so the two commit or vanish together: a mutation that fails (a
problem, a crash, a lost connection) leaves no record, and retrying the key
simply runs the request again; one that commits always has its response
stored for replay. No sweeper is needed for requests that died half-way.

Within that transaction, :func:`claim`:

1. takes a transaction-scoped advisory lock on (workspace, key) *without
   waiting*: if another request holds it, that request is in flight, and this
   one gets 409 at once instead of queueing behind it;
2. reads the committed record, if any: same fingerprint and ``done`` ->
   replay the stored response (``Idempotent-Replayed: true``); other
   fingerprint -> 422; ``in_flight`` (only possible if some future mode
   commits a claim before finishing) -> 409;
3. otherwise inserts the record as ``in_flight``; :func:`complete` turns it
   into ``done`` with the response just before the commit.

The lock is released by COMMIT/ROLLBACK, and PostgreSQL makes a commit visible
before it releases the transaction's locks, so whoever takes the lock next
sees the record. The primary key is the backstop should two requests ever get
past the lock (a hash collision between keys only yields a spurious 409).

The fingerprint covers method, path, query and the body as canonical JSON
(key order and whitespace do not matter), not headers.

**No secrets at rest here.** A response member that is a secret (the signing
secret ``POST /v1/webhooks`` returns) is left out of the record
(``RequestTransaction.respond(..., withhold=...)``) and read again from where
it lives when the response is replayed, so whoever can read this table never
sees one.

**Retention.** Records are kept ``idempotency_retention_hours``; the
background work deletes older ones in batches (``nudgel.api.housekeeping``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from nudgel.api.problems import ProblemError, problem_type
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

__all__ = [
    "HEADER",
    "LOCK_SEED",
    "REPLAYED_HEADER",
    "StoredResponse",
    "claim",
    "complete",
    "fingerprint",
    "lock_text",
]

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

# Seed of hashtextextended(): keeps these advisory lock keys apart from other
# users of advisory locks (migrations, later per-contact locks use other seeds).
LOCK_SEED = 0x1DE4_0001


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: Any

    def to_response(self, restored: Mapping[str, Any] | None = None) -> JSONResponse:
        """The replay; ``restored``: members the first response had but the record
        left out (a secret), read again by the handler."""
        body = {**self.body, **restored} if restored else self.body
        return JSONResponse(body, status_code=self.status, headers={REPLAYED_HEADER: "true"})


def lock_text(workspace_id: int, key: str) -> str:
    """The text hashed into the advisory lock key of (workspace, key)."""
    return f"{workspace_id}:{key}"


async def fingerprint(request: Request) -> bytes:
    body = await request.body()  # cached by Starlette: FastAPI has read it already
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), request.url.query.encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(canonical)
    return digest.digest()


def _in_flight(key: str) -> ProblemError:
    return ProblemError(
        409,
        "Request in flight",
        f"A request with Idempotency-Key {key!r} is still being processed; retry later.",
        type_=problem_type("idempotency-in-flight"),
    )


async def claim(
    conn: AsyncConnection, workspace_id: int, key: str, request_fingerprint: bytes
) -> StoredResponse | None:
    """Claim ``key`` for this request; the stored response when it is a replay.

    ``conn`` must be in the mutation's transaction. Raises a 409 or 422 problem.
    """
    cur = await conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, %s))",
        (lock_text(workspace_id, key), LOCK_SEED),
    )
    locked = await cur.fetchone()
    if locked is None or not locked[0]:
        raise _in_flight(key)
    cur = await conn.execute(
        "SELECT request_fingerprint, state, response_status, response_body"
        " FROM idempotency_keys WHERE workspace_id = %s AND key = %s",
        (workspace_id, key),
    )
    row = await cur.fetchone()
    if row is None:
        await conn.execute(
            "INSERT INTO idempotency_keys (workspace_id, key, request_fingerprint, state)"
            " VALUES (%s, %s, %s, 'in_flight')",
            (workspace_id, key, request_fingerprint),
        )
        return None
    stored_fingerprint, state, status, body = row
    if bytes(stored_fingerprint) != request_fingerprint:
        raise ProblemError(
            422,
            "Idempotency-Key reused",
            f"Idempotency-Key {key!r} was used for a request with other parameters;"
            " use a new key for a new request.",
            type_=problem_type("idempotency-key-reused"),
        )
    if state != "done":
        raise _in_flight(key)
    return StoredResponse(status, body)


async def complete(
    conn: AsyncConnection, workspace_id: int, key: str, status: int, body: Any
) -> None:
    """Store the response of a claimed key; in the same transaction as :func:`claim`."""
    await conn.execute(
        "UPDATE idempotency_keys SET state = 'done', response_status = %s, response_body = %s"
        " WHERE workspace_id = %s AND key = %s",
        (status, Jsonb(body), workspace_id, key),
    )
