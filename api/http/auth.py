"""``Authorization: Bearer sk_...`` on every ``/v1`` route.

:func:`authenticate` is the dependency; it yields the :class:`Principal`
(workspace and key mode) that every query of the request is scoped by.
Failures are 401 problems with ``WWW-Authenticate: Bearer`` (RFC 6750), and do
not say whether a key exists or was revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nudgel.api.db.pool import connection
from nudgel.api.keys.store import KeyMode, hash_key
from nudgel.api.problems import ProblemError, problem_type
from psycopg import AsyncConnection

__all__ = ["Auth", "Principal", "authenticate"]

_bearer = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="sk_live_... / sk_test_...",
    description="A secret API key from `nudgel keys create`.",
    # We answer with our own problem (and the right challenge) instead.
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class Principal:
    workspace_id: int
    mode: KeyMode
    key_id: int


def _unauthorized(detail: str, *, invalid: bool) -> ProblemError:
    challenge = 'Bearer realm="nudgel"'
    if invalid:
        challenge += ', error="invalid_token"'
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        type_=problem_type("unauthorized"),
        headers={"WWW-Authenticate": challenge},
    )


async def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    conn: Annotated[AsyncConnection, Depends(connection)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("Send your API key as `Authorization: Bearer sk_...`.", invalid=False)
    key = credentials.credentials
    if not key.startswith(("sk_live_", "sk_test_")):
        raise _unauthorized("The API key is malformed.", invalid=True)
    cur = await conn.execute(
        "SELECT id, workspace_id, mode FROM api_keys WHERE hash = %s AND revoked_at IS NULL",
        (hash_key(key),),
    )
    row = await cur.fetchone()
    if row is None:
        raise _unauthorized("The API key is unknown or revoked.", invalid=True)
    key_id, workspace_id, mode = row
    return Principal(workspace_id=workspace_id, mode=mode, key_id=key_id)


Auth = Annotated[Principal, Depends(authenticate)]
