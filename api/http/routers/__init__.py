"""One router per resource; :data:`ROUTERS` is what the app mounts under ``/v1``."""

from __future__ import annotations

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

__all__ = ["ROUTERS"]

ROUTERS: list[APIRouter] = [
    contacts.router,
    events.router,
    fields.router,
    tags.router,
    webhooks.router,
    rules.router,
    history.router,
    segments.router,
    jobs.router,
    imports.router,
    test_clock.router,
    lists.router,
    subscriptions.router,
    keys.router,
    dev_inbox.router,
]
