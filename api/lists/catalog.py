"""The lists themselves: create, read, update (templates checked in the render
workers), delete (with every contact's status on the list), and a list's
members by status.

A contact's status on a list is set by ``nudgel.api.lists.subscriptions``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from nudgel.api.contacts.definitions import Definitions
from nudgel.api.contacts.models import PRINTABLE_TEXT, ContactOut, ListName
from nudgel.api.contacts.views import contact_views
from nudgel.api.db.rows import fetch_one
from nudgel.api.lists.rendering import TemplateRenderer, list_template_errors
from nudgel.api.lists.subscriptions import LIST_COLUMNS, Status
from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.rules.realtime import Change
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "LISTS",
    "DeletedList",
    "ListCreate",
    "ListUpdate",
    "SubscriptionList",
    "check_templates",
    "delete_list",
    "list_members",
    "update_list",
]

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


class DeletedList(BaseModel):
    object: Literal["list"] = "list"
    name: str
    deleted: Literal[True] = True
    subscriptions_removed: int = Field(description="The contacts' statuses on it, now gone.")


# Create (``list.created``, 409 if the name is taken), list by name, get (404).
LISTS = Definitions(
    "list", "lists", SubscriptionList, tuple(LIST_COLUMNS.replace(" ", "").split(","))
)


async def check_templates(
    renderer: TemplateRenderer, workspace_id: int, values: dict[str, Any]
) -> None:
    """422 with every template that cannot be saved, its member and line (the
    checks run in the render worker processes, with their limits)."""
    errors = await list_template_errors(renderer, workspace_id, values)
    if errors:
        raise ProblemError(
            422,
            "Invalid template",
            "; ".join(f"{e.pointer[1:]}: {e.detail}" for e in errors),
            type_=problem_type("validation"),
            errors=errors,
        )


async def update_list(
    tx: Transaction, renderer: TemplateRenderer, name: str, body: ListUpdate
) -> SubscriptionList:
    """Change the members given; ``list.updated`` with ``previous_attributes``."""
    before = await LISTS.get(tx.conn, tx.workspace_id, name, for_update=True)
    given = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    changed = {k: v for k, v in given.items() if getattr(before, k) != v}
    if not changed:
        return before
    await check_templates(renderer, tx.workspace_id, {**before.model_dump(), **changed})
    # Column names come from ListUpdate's own fields, never from the request.
    assignments = ", ".join(f"{column} = %({column})s" for column in changed)
    after = await fetch_one(
        tx.conn,
        SubscriptionList,
        f"UPDATE lists SET {assignments}, updated_at = now()"
        f" WHERE workspace_id = %(ws)s AND name = %(name)s RETURNING {LIST_COLUMNS}",
        {**changed, "ws": tx.workspace_id, "name": name},
    )
    assert after is not None  # locked by the read above
    await tx.emit(
        "list.updated",
        {
            **after.model_dump(mode="json"),
            "previous_attributes": {k: getattr(before, k) for k in changed},
        },
    )
    return after


async def _remove_subscriptions(tx: Transaction, name: str) -> int:
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


async def delete_list(tx: Transaction, name: str) -> DeletedList:
    """Delete the list, every status on it and its links; ``list.deleted``."""
    deleted_row = await fetch_one(
        tx.conn,
        SubscriptionList,
        f"DELETE FROM lists WHERE workspace_id = %s AND name = %s RETURNING {LIST_COLUMNS}",
        (tx.workspace_id, name),
    )
    if deleted_row is None:
        raise LISTS.not_found(name)
    removed = await _remove_subscriptions(tx, name)
    for table in ("list_confirmations", "list_unsubscribe_links"):
        await tx.conn.execute(
            f"DELETE FROM {table} WHERE workspace_id = %s AND list = %s", (tx.workspace_id, name)
        )
    await tx.emit("list.deleted", {**deleted_row.model_dump(mode="json"), "deleted": True})
    return DeletedList(name=name, subscriptions_removed=removed)


async def list_members(
    conn: AsyncConnection,
    workspace_id: int,
    name: str,
    status: Status | None,
    starting_after: str | None,
    limit: int,
) -> list[ContactOut]:
    """The list's contacts (with ``status`` only, when given), in contact id order;
    404 for an unknown list."""
    await LISTS.get(conn, workspace_id, name)
    cur = await conn.execute(
        "SELECT c.pk FROM subscriptions s JOIN contacts c ON c.pk = s.contact_pk"
        " WHERE c.workspace_id = %s AND s.list = %s"
        " AND (%s::text IS NULL OR s.status = %s)"
        " AND (%s::text IS NULL OR c.id > %s) ORDER BY c.id LIMIT %s",
        (workspace_id, name, status, status, starting_after, starting_after, limit),
    )
    return await contact_views(conn, workspace_id, [int(r[0]) for r in await cur.fetchall()])
