"""``POST /v1/contacts/{id}/subscriptions``: set a contact's status on a list.

The rules of statuses, events and the confirmation email are in
``nudgel.api.lists.subscriptions``; the upsert's ``subscriptions`` member applies the
same ones.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from nudgel.api.contacts.models import DEFAULT_SOURCE, ContactOut, ListName, Source
from nudgel.api.contacts.views import contact_views, lock_contact
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import resource_router
from nudgel.api.http.writes import PostWriter, replayable
from nudgel.api.lists import subscriptions as subscribing
from pydantic import BaseModel, ConfigDict, Field

router, OPENAPI_TAG = resource_router(
    "/contacts",
    "Subscriptions",
    "A contact's status on each list: `pending`, `subscribed`, `unsubscribed`, `bounced`.",
)

IdParam = Annotated[str, Path(description="The contact's id (`con_...`).")]

STATUS_DOC = (
    "`subscribed` (the default) subscribes: on a double opt-in list the status becomes"
    " `pending` and a confirmation email is sent (a contact already `subscribed` stays so)."
    " `unsubscribed` and `bounced` set that status."
)


class SubscriptionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"list": "newsletter"}]}
    )

    list: ListName = Field(description="The list's name (/v1/lists).")
    status: subscribing.Requested = Field(default="subscribed", description=STATUS_DOC)
    source: Source = Field(
        default=DEFAULT_SOURCE, description="Recorded on the timeline event. Default `api`."
    )


@router.post(
    "/{contact_id}/subscriptions",
    response_model=ContactOut,
    summary="Subscribe or unsubscribe a contact",
    description=STATUS_DOC + " A contact already `pending` gets the confirmation email again."
    " Each change of status is a `list.<status>` event on the timeline and a webhook event of"
    " that name. 422 for an unknown list, or a double opt-in list and a contact without email.",
    responses={**replayable(200), **problem_responses(404, 409, 422)},
)
async def set_subscription(
    contact_id: IdParam, body: SubscriptionRequest, writer: PostWriter, request: Request
) -> object:
    # Outside the transaction: a key generated now must be stored whatever happens to it.
    confirming = await subscribing.confirming_of(request.app, writer.conn)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        await subscribing.lock_lists(tx, [body.list], lambda _: "/list")
        pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
        outgoing = await subscribing.apply(
            tx,
            confirming,
            pk,
            contact_id,
            {body.list: body.status},
            body.source,
            pointer=lambda _: "/list",
            resend=True,
        )
        views = await contact_views(tx.conn, tx.workspace_id, [pk])
        response = await tx.respond(200, views[0])
    await subscribing.send_all(request.app, outgoing)
    return response
