"""``/v1/lists``: subscription lists, their double opt-in and its templates.

A contact's status on a list is set by ``POST /v1/contacts/{id}/subscriptions``
or the ``subscriptions`` of an upsert (``nudgel.api.lists.subscriptions``); rules read
it as ``subscribed "NAME"``. The templates (confirmation subject and body,
landing page) are checked when saved, in a render worker process with the
template limits (``nudgel.api.lists.rendering.list_template_errors``): a
syntax error, an unknown name, a failing trial render or one past a limit
(time, output size) is a 422 naming the member, the template's line and the
limit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, status
from nudgel.api.contacts.models import ContactOut
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, Writer, replayable
from nudgel.api.lists import catalog
from nudgel.api.lists.catalog import (
    LISTS,
    DeletedList,
    ListCreate,
    ListUpdate,
    SubscriptionList,
)
from nudgel.api.lists.rendering import renderer_of
from nudgel.api.lists.subscriptions import Status

router, OPENAPI_TAG = resource_router(
    "/lists",
    "Lists",
    "Subscription lists: double opt-in, the confirmation email and the landing page.",
)


class SubscriptionListPage(ListResponse[SubscriptionList]):
    pass


class ListMembers(ListResponse[ContactOut]):
    pass


NameParam = Annotated[str, Path(description="The list's name.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SubscriptionList,
    summary="Create a list",
    description="Fires `list.created`. 422 names each template that cannot be saved and its line.",
    response_description="Created.",
    responses={**replayable(201), **problem_responses(409, 422)},
)
async def create_list(body: ListCreate, writer: PostWriter) -> object:
    renderer = renderer_of(writer.request.app)
    await catalog.check_templates(renderer, writer.workspace_id, body.model_dump())
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        return await tx.respond(201, await LISTS.create(tx, body))


@router.get(
    "",
    response_model=SubscriptionListPage,
    summary="List lists",
    description="The workspace's subscription lists in name order, with their templates.",
    responses=problem_responses(422),
)
async def list_lists(auth: Auth, conn: Conn, page: PageParams) -> SubscriptionListPage:
    rows = await LISTS.page(conn, auth.workspace_id, page.starting_after, page.fetch)
    data, has_more, cursor = page_of(rows, page, lambda item: item.name)
    return SubscriptionListPage(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{name}",
    response_model=SubscriptionList,
    summary="Get a list",
    description="One list by name, e.g. `GET /v1/lists/newsletter`, with its double opt-in setting and templates.",
    responses=problem_responses(404),
)
async def get_list(name: NameParam, auth: Auth, conn: Conn) -> SubscriptionList:
    return await LISTS.get(conn, auth.workspace_id, name)


@router.get(
    "/{name}/contacts",
    response_model=ListMembers,
    summary="A list's contacts",
    description="The contacts with a status on the list (only those with `status`, when given),"
    " in contact id order. 404 for an unknown list.",
    responses=problem_responses(404),
)
async def list_members(
    name: NameParam,
    auth: Auth,
    conn: Conn,
    page: PageParams,
    status: Annotated[Status | None, Query(description="Only contacts with this status.")] = None,
) -> ListMembers:
    rows = await catalog.list_members(
        conn, auth.workspace_id, name, status, page.starting_after, page.fetch
    )
    data, has_more, cursor = page_of(rows, page, lambda c: c.id)
    return ListMembers(data=data, has_more=has_more, next_cursor=cursor)


@router.patch(
    "/{name}",
    response_model=SubscriptionList,
    summary="Update a list",
    description="Changes the members given. Fires `list.updated` with `previous_attributes` when"
    " something changed. 422 names each template that cannot be saved and its line. Statuses"
    " stay as they are (turning double opt-in on does not make subscribers pending).",
    responses=problem_responses(404, 422),
)
async def update_list(name: NameParam, body: ListUpdate, writer: Writer) -> object:
    renderer = renderer_of(writer.request.app)
    async with writer.transaction() as tx:
        return await tx.respond(200, await catalog.update_list(tx, renderer, name, body))


@router.delete(
    "/{name}",
    response_model=DeletedList,
    summary="Delete a list",
    description="Deletes the list and every contact's status on it (rules see the contacts"
    " leave it; no per-contact events); confirm and unsubscribe links sent for it stop working."
    " Fires `list.deleted`.",
    responses=problem_responses(404),
)
async def delete_list(name: NameParam, writer: Writer) -> object:
    async with writer.transaction() as tx:
        return await tx.respond(200, await catalog.delete_list(tx, name))
