"""``POST /v1/contacts/{id}/subscriptions``: set a contact's status on a list.

The rules of statuses, events and the confirmation email are in
``nudgel.api.subscribing``; the upsert's ``subscriptions`` member applies the
same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

from fastapi import Path, Request
from nudgel.api import subscribing, tokens
from nudgel.api.contact_models import DEFAULT_SOURCE, ContactOut, ListName, Source
from nudgel.api.contact_views import contact_views, lock_contact
from nudgel.api.mutation import PostWriter, Transaction, replayable
from nudgel.api.problems import FieldError, ProblemError, problem_responses, problem_type
from nudgel.api.routers.common import resource_router, settings_of
from nudgel.api.settings import Settings
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


def unknown_list(name: str, pointer: str) -> ProblemError:
    detail = f"there is no list {name!r} (create it with POST /v1/lists)"
    return ProblemError(
        422,
        "Unknown list",
        detail,
        type_=problem_type("validation"),
        errors=[FieldError(location="body", pointer=pointer, detail=detail, code="unknown_list")],
    )


async def lock_lists(
    tx: Transaction, names: Iterable[str], pointer: Callable[[str], str]
) -> dict[str, subscribing.ListRow]:
    """The lists, locked FOR SHARE (422 for an unknown one).

    Lists are locked before the contact on every path (a list's deletion
    locks the list, then its contacts), so the two never wait on each other
    in opposite orders.
    """
    found = {}
    for name in sorted(set(names)):
        lst = await subscribing.get_list(tx.conn, tx.workspace_id, name, share=True)
        if lst is None:
            raise unknown_list(name, pointer(name))
        found[name] = lst
    return found


async def apply(
    tx: Transaction,
    settings: Settings,
    key: str,
    pk: int,
    contact_id: str,
    requested: dict[str, subscribing.Requested],
    source: str,
    *,
    pointer: Callable[[str], str],
    resend: bool = False,
) -> list[subscribing.Outgoing]:
    """Apply ``{list: status}`` to a locked contact; the emails to send after commit.

    Call :func:`lock_lists` before locking the contact.

    ``pointer(list)`` is the request member a 422 about that list points at.
    """
    lists = await lock_lists(tx, requested, pointer)  # locked already: no wait here
    outgoing = []
    for name, lst in lists.items():
        mail = await subscribing.subscribe(
            tx,
            settings,
            key,
            pk,
            contact_id,
            lst,
            requested[name],
            source,
            pointer=pointer(name),
            resend=resend,
        )
        if mail is not None:
            outgoing.append(mail)
    return outgoing


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
    settings = settings_of(request)
    # Outside the transaction: a key generated now must be stored whatever happens to it.
    key = await tokens.signing_key(request.app, writer.conn)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        await lock_lists(tx, [body.list], lambda _: "/list")
        pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
        outgoing = await apply(
            tx,
            settings,
            key,
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
