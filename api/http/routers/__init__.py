"""One router per resource: :data:`ROUTERS` is what the app mounts under ``/v1``,
:data:`OPENAPI_TAGS` their sections of the API's document, in the same order."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from nudgel.api.http.routers import (
    contacts,
    dev_inbox,
    events,
    fields,
    history,
    imports,
    jobs,
    keys,
    lists,
    rules,
    segments,
    subscriptions,
    tags,
    test_clock,
    webhooks,
)

__all__ = ["OPENAPI_TAGS", "ROUTERS"]

_RESOURCES = (
    contacts,
    events,
    fields,
    tags,
    webhooks,
    rules,
    history,
    segments,
    jobs,
    imports,
    test_clock,
    lists,
    subscriptions,
    keys,
    dev_inbox,
)
ROUTERS: list[APIRouter] = [resource.router for resource in _RESOURCES]
OPENAPI_TAGS: list[dict[str, Any]] = [resource.OPENAPI_TAG for resource in _RESOURCES]
