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

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, status
from nudgel.api.contacts.models import PRINTABLE_TEXT, ListName
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import (
    PostWriter,
    RequestTransaction,
    WriteContext,
    Writer,
    replayable,
)
from nudgel.api.lists.rendering import list_template_errors, renderer_of
from nudgel.api.lists.subscriptions import LIST_COLUMNS
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.realtime import Change
from psycopg.rows import dict_row
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

router, OPENAPI_TAG = resource_router(
    "/lists",
    "Lists",
    "Subscription lists: double opt-in, the confirmation email and the landing page.",
)

Title = Annotated[str, StringConstraints(pattern=PRINTABLE_TEXT, min_length=1, max_length=200)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


TemplateSource = Annotated[
    str, StringConstraints(min_length=1, max_length=20_000), AfterValidator(_no_nul)
]

DEFAULT_SUBJECT = "Please confirm your subscription to {{ list.title }}"
DEFAULT_BODY = """\
Hello {{ contact.name or "there" }},

Please confirm that you want to receive {{ list.title }}:

{{ confirm_url }}

If you did not ask for this, ignore this email and nothing will be sent.
"""
DEFAULT_LANDING_PAGE = """\
<h1>Thank you{% if contact.name %}, {{ contact.name }}{% endif %}!</h1>
<p>You are now subscribed to {{ list.title }}.</p>
"""

_TEMPLATE_DOC = (
    " A sandboxed Jinja2 template; it can use `contact` (`id`, `email`, `phone`,"
    " `whatsapp_id`, `external_id`, `name`, `fields`), `fields`, `list` (`name`, `title`)"
    " and `unsubscribe_url`"
)


class ListCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "newsletter", "title": "Monthly newsletter", "double_opt_in": True}
            ]
        },
    )

    name: ListName = Field(description='How rules (`subscribed "NAME"`) and requests name it.')
    title: Title = Field(description="The name people see in emails and pages.")
    double_opt_in: bool = Field(
        default=False,
        description="Subscribing makes the status `pending` and sends the confirmation email;"
        " the contact's click on its link makes it `subscribed`.",
    )
    confirmation_subject: TemplateSource = Field(
        default=DEFAULT_SUBJECT,
        description="Subject of the confirmation email." + _TEMPLATE_DOC + ", `confirm_url`.",
    )
    confirmation_body: TemplateSource = Field(
        default=DEFAULT_BODY,
        description="Plain-text body of the confirmation email; on a double opt-in list it must"
        " use `confirm_url`. An unsubscribe link is always appended."
        + _TEMPLATE_DOC
        + ", `confirm_url`.",
    )
    landing_page: TemplateSource = Field(
        default=DEFAULT_LANDING_PAGE,
        description="HTML shown when the contact confirms (autoescaped)." + _TEMPLATE_DOC + ".",
    )


class ListUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"title": "Weekly newsletter"}]}
    )

    title: Title | None = Field(default=None, description="Omit to keep.")
    double_opt_in: bool | None = Field(default=None, description="Omit to keep.")
    confirmation_subject: TemplateSource | None = Field(default=None, description="Omit to keep.")
    confirmation_body: TemplateSource | None = Field(default=None, description="Omit to keep.")
    landing_page: TemplateSource | None = Field(default=None, description="Omit to keep.")


class SubscriptionList(BaseModel):
    object: Literal["list"] = "list"
    name: str
    title: str
    double_opt_in: bool
    confirmation_subject: str
    confirmation_body: str
    landing_page: str
    created_at: datetime
    updated_at: datetime


class SubscriptionListPage(ListResponse[SubscriptionList]):
    pass


class DeletedList(BaseModel):
    object: Literal["list"] = "list"
    name: str
    deleted: Literal[True] = True
    subscriptions_removed: int = Field(description="The contacts' statuses on it, now gone.")


NameParam = Annotated[str, Path(description="The list's name.")]


async def _check_templates(writer: WriteContext, values: dict[str, Any]) -> None:
    """422 with every template that cannot be saved, its member and line (the
    checks run in the render worker processes, with their limits)."""
    errors = await list_template_errors(
        renderer_of(writer.request.app), writer.workspace_id, values
    )
    if errors:
        raise ProblemError(
            422,
            "Invalid template",
            "; ".join(f"{e.pointer[1:]}: {e.detail}" for e in errors),
            type_=problem_type("validation"),
            errors=errors,
        )


def _not_found(name: str) -> ProblemError:
    return ProblemError.not_found(f"List {name!r}")


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
    values = body.model_dump()
    await _check_templates(writer, values)
    async with writer.transaction() as tx:
        if tx.replay is not None:
            return tx.replay
        cur = tx.conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO lists (workspace_id, name, title, double_opt_in, confirmation_subject,"
            " confirmation_body, landing_page) VALUES (%(ws)s, %(name)s, %(title)s,"
            " %(double_opt_in)s, %(confirmation_subject)s, %(confirmation_body)s,"
            f" %(landing_page)s) ON CONFLICT DO NOTHING RETURNING {LIST_COLUMNS}",
            {**values, "ws": tx.workspace_id},
        )
        row = await cur.fetchone()
        if row is None:
            raise ProblemError.conflict(f"List {body.name!r} exists already.")
        created = SubscriptionList.model_validate(row)
        await tx.emit("list.created", created.model_dump(mode="json"))
        return await tx.respond(201, created)


@router.get(
    "", response_model=SubscriptionListPage, summary="List lists", responses=problem_responses(422)
)
async def list_lists(auth: Auth, conn: Conn, page: PageParams) -> SubscriptionListPage:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {LIST_COLUMNS} FROM lists"
        " WHERE workspace_id = %s AND (%s::text IS NULL OR name > %s) ORDER BY name LIMIT %s",
        (auth.workspace_id, page.starting_after, page.starting_after, page.fetch),
    )
    rows = [SubscriptionList.model_validate(r) for r in await cur.fetchall()]
    data, has_more, cursor = page_of(rows, page, lambda item: item.name)
    return SubscriptionListPage(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{name}",
    response_model=SubscriptionList,
    summary="Get a list",
    responses=problem_responses(404),
)
async def get_list(name: NameParam, auth: Auth, conn: Conn) -> SubscriptionList:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {LIST_COLUMNS} FROM lists WHERE workspace_id = %s AND name = %s",
        (auth.workspace_id, name),
    )
    row = await cur.fetchone()
    if row is None:
        raise _not_found(name)
    return SubscriptionList.model_validate(row)


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
    async with writer.transaction() as tx:
        cur = tx.conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT {LIST_COLUMNS} FROM lists WHERE workspace_id = %s AND name = %s FOR UPDATE",
            (tx.workspace_id, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise _not_found(name)
        before = SubscriptionList.model_validate(row)
        given = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
        changed = {k: v for k, v in given.items() if getattr(before, k) != v}
        if not changed:
            return await tx.respond(200, before)
        await _check_templates(writer, {**before.model_dump(), **changed})
        assignments = ", ".join(f"{column} = %({column})s" for column in changed)
        await cur.execute(
            f"UPDATE lists SET {assignments}, updated_at = now()"
            f" WHERE workspace_id = %(ws)s AND name = %(name)s RETURNING {LIST_COLUMNS}",
            {**changed, "ws": tx.workspace_id, "name": name},
        )
        after = SubscriptionList.model_validate(await cur.fetchone())
        await tx.emit(
            "list.updated",
            {
                **after.model_dump(mode="json"),
                "previous_attributes": {k: getattr(before, k) for k in changed},
            },
        )
        return await tx.respond(200, after)


async def _remove_subscriptions(tx: RequestTransaction, name: str) -> int:
    """Delete every contact's status on the list; their rules see them leave it."""
    # Contacts in pk order, as every path that locks several contacts does.
    cur = await tx.conn.execute(
        "SELECT c.pk FROM contacts c JOIN subscriptions s ON s.contact_pk = c.pk"
        " WHERE c.workspace_id = %s AND s.list = %s ORDER BY c.pk FOR UPDATE OF c",
        (tx.workspace_id, name),
    )
    pks = [int(r[0]) for r in await cur.fetchall()]
    await tx.conn.execute(
        "DELETE FROM subscriptions WHERE contact_pk = ANY(%s) AND list = %s", (pks, name)
    )
    for pk in pks:
        tx.touch(pk, Change("list.deleted", lists={name}))
    return len(pks)


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
        cur = tx.conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"DELETE FROM lists WHERE workspace_id = %s AND name = %s RETURNING {LIST_COLUMNS}",
            (tx.workspace_id, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise _not_found(name)
        removed = await _remove_subscriptions(tx, name)
        await tx.conn.execute(
            "DELETE FROM list_confirmations WHERE workspace_id = %s AND list = %s",
            (tx.workspace_id, name),
        )
        await tx.conn.execute(
            "DELETE FROM list_unsubscribe_links WHERE workspace_id = %s AND list = %s",
            (tx.workspace_id, name),
        )
        deleted = DeletedList(name=name, subscriptions_removed=removed)
        await tx.emit(
            "list.deleted",
            {**SubscriptionList.model_validate(row).model_dump(mode="json"), "deleted": True},
        )
        return await tx.respond(200, deleted)
