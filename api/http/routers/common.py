"""What every resource router shares: the authenticated connection, base responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from nudgel.api.http.auth import authenticate, tenant_connection
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.query_params import reject_unknown_query
from nudgel.api.http.storable_text import refuse_unstorable_text
from nudgel.api.jobs.runner import JobHost
from nudgel.api.settings import Settings
from psycopg import AsyncConnection

__all__ = ["Conn", "job_host_of", "resource_router", "settings_of"]

Conn = Annotated[AsyncConnection, Depends(tenant_connection)]


def resource_router(prefix: str, tag: str, description: str) -> tuple[APIRouter, dict[str, Any]]:
    """A router for ``/v1{prefix}``: every route authenticated, documenting 401 and 422.

    422 is listed on every route so that no route falls back to FastAPI's own
    (non-problem) validation error schema; 400 (a query parameter the route
    does not take, checked after the key), 403 (a restricted key), 413 (body
    cap), 429 (rate limit) and 503 (busy) can answer any route.

    Also returns the OpenAPI tag entry (name and description) for the app.
    """
    router = APIRouter(
        prefix=prefix,
        tags=[tag],
        # After the key: a query parameter the route does not take is a 400,
        # then text PostgreSQL cannot store is a 422, on every route.
        dependencies=[
            Depends(authenticate),
            Depends(reject_unknown_query),
            Depends(refuse_unstorable_text),
        ],
        responses=problem_responses(400, 401, 403, 413, 422, 429, 503),
    )
    return router, {"name": tag, "description": description}


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def job_host_of(request: Request) -> JobHost:
    """Where this app runs jobs (set up by the lifespan)."""
    host: JobHost = request.app.state.job_host
    return host
