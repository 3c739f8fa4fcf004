"""``Authorization: Bearer sk_...`` on every ``/v1`` route, with its limits.

:func:`authenticate` is the dependency; it yields the :class:`Principal`
(workspace, key mode and scopes) that every query of the request is scoped by.
Failures are 401 problems with ``WWW-Authenticate: Bearer`` (RFC 6750), and do
not say whether a key exists or was revoked. The same statement takes one
request from the key's rate limit (``nudgel.api.keys.admission``): over it, a
429 with ``Retry-After``; every answer carries the IETF ``RateLimit-Policy``
and ``RateLimit`` headers. A restricted key outside its scopes is a 403.

The key is looked up on a connection held only for that statement. The
request's own connection (:data:`TenantConn`) is taken after, within the
workspace's share of the pool (``workspace_max_connections``): one tenant's
slow requests queue behind each other, not in front of everyone else's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nudgel.api.db.pool import pool_of
from nudgel.api.keys.admission import RateLimit, admit
from nudgel.api.keys.store import KeyMode, Scope, hash_key
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.settings import Settings
from psycopg import AsyncConnection

__all__ = ["Auth", "Principal", "TenantConn", "authenticate", "tenant_connection"]

_bearer = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="sk_live_... / sk_test_...",
    description="A secret API key from `nudgel keys create` or `POST /v1/keys`.",
    # We answer with our own problem (and the right challenge) instead.
    auto_error=False,
)

# Paths a write-only ingest key may POST to.
INGEST_PATHS = frozenset({"/v1/contacts", "/v1/events", "/v1/contacts/batch", "/v1/events/batch"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    workspace_id: int
    mode: KeyMode
    key_id: int
    scopes: frozenset[Scope] | None = None  # None: a full key

    @property
    def full(self) -> bool:
        return self.scopes is None


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


def rate_limit_headers(rate: RateLimit) -> dict[str, str]:
    """draft-ietf-httpapi-ratelimit-headers: the policy, and what is left of it."""
    headers = {
        "RateLimit-Policy": f'"per-key";q={rate.limit};w={max(1, math.ceil(rate.window))}',
        "RateLimit": f'"per-key";r={rate.remaining};t={math.ceil(rate.reset)}',
    }
    if rate.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(rate.retry_after)))
    return headers


def _route_path(request: Request) -> str:
    return str(request.scope.get("path", "")).rstrip("/") or "/"


def _check_scope(principal: Principal, request: Request) -> None:
    scopes = principal.scopes
    if scopes is None:
        return
    path = _route_path(request)
    if path.startswith("/v1/keys"):
        allowed = False  # only full keys manage keys
    elif request.method in _READ_METHODS:
        allowed = bool(scopes & {"read", "write"})
    elif request.method == "POST" and path in INGEST_PATHS:
        allowed = bool(scopes & {"ingest", "write"})
    else:
        allowed = "write" in scopes
    if not allowed:
        raise ProblemError(
            403,
            "Forbidden",
            f"This key is restricted to {', '.join(sorted(scopes))}: it cannot"
            f" {request.method} {path}.",
            type_=problem_type("forbidden"),
        )


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("Send your API key as `Authorization: Bearer sk_...`.", invalid=False)
    key = credentials.credentials
    if not key.startswith(("sk_live_", "sk_test_")):
        raise _unauthorized("The API key is malformed.", invalid=True)
    settings: Settings = request.app.state.settings
    async with pool_of(request).connection() as conn:
        admission = await admit(
            conn, hash_key(key), settings.rate_limit_per_second, settings.rate_limit_burst
        )
    if admission is None:
        raise _unauthorized("The API key is unknown, expired or revoked.", invalid=True)
    headers = rate_limit_headers(admission.rate)
    request.state.response_headers = headers
    if admission.limited:
        raise ProblemError(
            429,
            "Too Many Requests",
            f"This key may send {settings.rate_limit_per_second:g} requests per second"
            f" (bursts of {settings.rate_limit_burst}); retry after {headers['Retry-After']} s.",
            type_=problem_type("rate-limited"),
            headers=headers,
        )
    principal = Principal(
        workspace_id=admission.workspace_id,
        mode=admission.mode,
        key_id=admission.key_id,
        scopes=admission.scopes,
    )
    _check_scope(principal, request)
    return principal


Auth = Annotated[Principal, Depends(authenticate)]


class _TenantSlots:
    """Per process: how many pooled connections each workspace holds now."""

    def __init__(self, share: int) -> None:
        self.share = share
        self._slots: dict[int, asyncio.Semaphore] = {}

    def of(self, workspace_id: int) -> asyncio.Semaphore:
        slot = self._slots.get(workspace_id)
        if slot is None:
            slot = self._slots[workspace_id] = asyncio.Semaphore(self.share)
        return slot


def _busy(detail: str) -> ProblemError:
    return ProblemError(
        503,
        "Service Unavailable",
        detail,
        type_=problem_type("busy"),
        headers={"Retry-After": "1"},
    )


async def tenant_connection(request: Request, auth: Auth) -> AsyncIterator[AsyncConnection]:
    """FastAPI dependency: a pooled connection within the workspace's share of the pool."""
    settings: Settings = request.app.state.settings
    state = request.app.state
    slots: _TenantSlots | None = getattr(state, "tenant_slots", None)
    if slots is None:
        slots = state.tenant_slots = _TenantSlots(settings.workspace_max_connections)
    slot = slots.of(auth.workspace_id)
    try:
        await asyncio.wait_for(slot.acquire(), settings.pool_timeout)
    except TimeoutError:
        raise _busy(
            f"This workspace has {settings.workspace_max_connections} requests in progress"
            " (workspace_max_connections); retry shortly."
        ) from None
    try:
        async with pool_of(request).connection() as conn:
            yield conn
    finally:
        slot.release()


TenantConn = Annotated[AsyncConnection, Depends(tenant_connection)]
