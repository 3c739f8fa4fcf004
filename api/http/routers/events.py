"""``/v1/events`` and ``/v1/contacts/{id}/timeline``: what contacts did, in order.

How an event finds (or creates, or merges) its contact, and how timelines
page, is ``nudgel.api.contacts.events``; this module is the HTTP surface.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from nudgel.api.contacts import events
from nudgel.api.contacts.events import (
    EventCreate,
    EventOut,
    event_identifiers,
    timeline,
)
from nudgel.api.contacts.views import find_pk
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router, settings_of
from nudgel.api.http.writes import PostWriter, replayable
from nudgel.api.problems import ProblemError

router, OPENAPI_TAG = resource_router(
    "",
    "Events",
    "What contacts did: events recorded against a contact, and its timeline.",
)


class Timeline(ListResponse[EventOut]):
    pass


@router.post(
    "/events",
    response_model=EventOut,
    status_code=201,
    summary="Record an event",
    description=(
        "Records an event on the contact named by exactly one of `contact_id`, `email`,"
        " `phone` or `external_id`. An email, phone or external id that matches nobody creates"
        " the contact (`contact.created`); an unknown `contact_id` is 404. `traits` are applied"
        " to the contact as an upsert (`contact.updated`, `contact.merged`, `contact.tagged`"
        " as `POST /v1/contacts` fires them); their identifiers may merge contacts, and the"
        " event is then recorded on the surviving (oldest) one. Fires `event.recorded`."
    ),
    responses={**replayable(201), **problem_responses(404, 409, 422)},
)
async def record_event(body: EventCreate, writer: PostWriter, request: Request) -> object:
    identifiers = event_identifiers(body, settings_of(request))
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        event = await events.record_event(tx, body, identifiers)
        return await tx.respond(201, event)


@router.get(
    "/contacts/{contact_id}/timeline",
    response_model=Timeline,
    summary="A contact's timeline",
    description=(
        "The contact's events in chronological order (`at`, then id), including those a merge"
        " brought over and the merge itself. `starting_after` is an event id of this timeline."
    ),
    responses=problem_responses(404),
)
async def contact_timeline(
    contact_id: Annotated[str, Path(description="The contact's id (`con_...`).")],
    auth: Auth,
    conn: Conn,
    page: PageParams,
) -> Timeline:
    pk = await find_pk(conn, auth.workspace_id, contact_id)
    if pk is None:
        raise ProblemError.not_found(f"Contact {contact_id!r}")
    rows = await timeline(conn, auth.workspace_id, pk, page.starting_after, page.fetch)
    data, has_more, cursor = page_of(rows, page, lambda e: e.id)
    return Timeline(data=data, has_more=has_more, next_cursor=cursor)
