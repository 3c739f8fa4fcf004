"""A contact's status on a list: every change, and the confirmation email.

Statuses are ``pending``, ``subscribed``, ``unsubscribed`` and ``bounced``
(the ``subscriptions`` table, which the rules read as ``subscribed "list"``).
Asking for ``subscribed`` on a double opt-in list makes the status
``pending`` and sends a confirmation email; the contact's click on its link
(``GET /confirm/{token}``, ``nudgel.api.http.routers.pages``) makes it
``subscribed``.

Every change of status, in the transaction of the request that makes it:

- is an event on the contact's timeline, named ``list.<new status>`` with
  props ``{"list", "from", "to"}`` and the request's source (``email`` for a
  link in an email), as a merge is ``contact.merged``;
- fires the webhook event of the same name (``list.subscribed`` ...) with
  ``contact_id``, ``list``, ``status``, ``previous_status`` and ``source``;
- re-evaluates the contact's rules (``subscribed "list"``, and ``event``
  conditions that read the timeline event).

A request that leaves the status as it is changes nothing and fires nothing.

The confirmation email is rendered inside the transaction, in a render worker
process with a time limit (``nudgel.api.lists.rendering``), and sent after the
commit (:func:`send_all`): an email is never sent for a change that rolled
back, and the request does not hold its locks while an SMTP server answers.
A template that fails for this contact (an error, a limit, the time limit)
sends nothing: the status stays ``pending`` and the contact's timeline gets a
``list.confirmation_failed`` event (props ``{"list", "member", "reason"}``)
saying why; the request succeeds. A failed send is logged; asking to
subscribe again sends a new email.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal

from fastapi import FastAPI
from nudgel.api.contacts.models import RequestedStatus
from nudgel.api.lists import tokens
from nudgel.api.lists.mailer import mailer_of
from nudgel.api.lists.rendering import RenderFailed, TemplateRenderer, renderer_of
from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.api.rules.realtime import Change
from nudgel.api.settings import Settings
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = [
    "CONFIRMATION_FAILED",
    "STATUSES",
    "Confirming",
    "ListRow",
    "Outgoing",
    "Requested",
    "Status",
    "apply",
    "confirming_of",
    "contact_context",
    "get_list",
    "lock_lists",
    "send_all",
    "set_status",
    "subscribe",
    "unknown_list",
]

log = logging.getLogger(__name__)

Status = Literal["pending", "subscribed", "unsubscribed", "bounced"]
Requested = RequestedStatus
STATUSES: tuple[Status, ...] = ("pending", "subscribed", "unsubscribed", "bounced")
# The timeline event of a confirmation email that could not be made.
CONFIRMATION_FAILED = "list.confirmation_failed"

LIST_COLUMNS = (
    "name, title, double_opt_in, confirmation_subject, confirmation_body, landing_page,"
    " created_at, updated_at"
)


@dataclass(frozen=True)
class ListRow:
    name: str
    title: str
    double_opt_in: bool
    confirmation_subject: str
    confirmation_body: str
    landing_page: str


async def get_list(
    conn: AsyncConnection, workspace_id: int, name: str, *, share: bool = False
) -> ListRow | None:
    """The list; ``share`` locks it (FOR SHARE) so it cannot be deleted under the caller."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT name, title, double_opt_in, confirmation_subject, confirmation_body,"
        " landing_page FROM lists WHERE workspace_id = %s AND name = %s"
        + (" FOR SHARE" if share else ""),
        (workspace_id, name),
    )
    row = await cur.fetchone()
    return None if row is None else ListRow(**row)


async def contact_context(conn: AsyncConnection, pk: int) -> dict[str, Any]:
    """The contact as templates see it (``contact`` and ``fields``)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT id, email, phone, whatsapp_id, external_id, name, fields FROM contacts"
        " WHERE pk = %s",
        (pk,),
    )
    row = await cur.fetchone()
    assert row is not None
    return {"contact": dict(row), "fields": row["fields"]}


async def set_status(
    tx: Transaction, pk: int, contact_id: str, list_name: str, status: Status, source: str
) -> Status | None:
    """Set the contact's status on the list; returns the previous one (None: none).

    The caller holds the contact's row lock. No-op when the status is already ``status``.
    """
    cur = await tx.conn.execute(
        "SELECT status FROM subscriptions WHERE contact_pk = %s AND list = %s", (pk, list_name)
    )
    row = await cur.fetchone()
    before: Status | None = None if row is None else row[0]
    if before == status:
        return before
    await tx.conn.execute(
        "INSERT INTO subscriptions (contact_pk, list, status) VALUES (%s, %s, %s)"
        " ON CONFLICT (contact_pk, list) DO UPDATE SET status = excluded.status,"
        " updated_at = now()",
        (pk, list_name, status),
    )
    name = f"list.{status}"
    await tx.conn.execute(
        "INSERT INTO events (contact_pk, name, at, props, source) VALUES (%s, %s, now(), %s, %s)",
        (pk, name, Jsonb({"list": list_name, "from": before, "to": status}), source),
    )
    await tx.emit(
        name,
        {
            "contact_id": contact_id,
            "list": list_name,
            "status": status,
            "previous_status": before,
            "source": source,
        },
        pk,
    )
    tx.touch(pk, Change(name, lists={list_name}, events={name}))
    return before


@dataclass(frozen=True)
class Confirming:
    """What confirmation emails need: the settings (links, sender), the token
    signing key and the renderer of the lists' templates."""

    settings: Settings
    key: str
    renderer: TemplateRenderer


async def confirming_of(app: FastAPI, conn: AsyncConnection) -> Confirming:
    """The app's :class:`Confirming`. Call it outside the request's transaction: a
    signing key generated now must be stored whatever happens to the request."""
    settings: Settings = app.state.settings
    return Confirming(settings, await tokens.signing_key(app, conn), renderer_of(app))


@dataclass(frozen=True)
class Outgoing:
    """A confirmation email, rendered in the transaction, to send after its commit."""

    workspace_id: int
    message: EmailMessage


async def subscribe(
    tx: Transaction,
    confirming: Confirming,
    pk: int,
    contact_id: str,
    lst: ListRow,
    requested: Requested,
    source: str,
    *,
    pointer: str,
    resend: bool = False,
) -> Outgoing | None:
    """Apply a requested status; returns the confirmation email to send, if any.

    ``subscribed`` on a double opt-in list: ``pending`` and a confirmation
    email, unless already subscribed; when already pending, a new email only
    if ``resend``. ``pointer`` names the request member in a 422.
    """
    if requested != "subscribed" or not lst.double_opt_in:
        await set_status(tx, pk, contact_id, lst.name, requested, source)
        return None
    cur = await tx.conn.execute(
        "SELECT status FROM subscriptions WHERE contact_pk = %s AND list = %s", (pk, lst.name)
    )
    row = await cur.fetchone()
    current = None if row is None else row[0]
    if current == "subscribed" or (current == "pending" and not resend):
        return None
    context = await contact_context(tx.conn, pk)
    if not context["contact"]["email"]:
        raise ProblemError(
            422,
            "No email address",
            f"List {lst.name!r} is double opt-in: the contact needs an email address to"
            " receive the confirmation.",
            type_=problem_type("validation"),
            errors=[
                FieldError(
                    location="body",
                    pointer=pointer,
                    detail="the contact has no email address to confirm with",
                    code="no_email",
                )
            ],
        )
    await set_status(tx, pk, contact_id, lst.name, "pending", source)
    confirm_nonce, unsubscribe_nonce = tokens.new_nonce(), tokens.new_nonce()
    base = confirming.settings.base_url()
    context.update(
        list={"name": lst.name, "title": lst.title},
        confirm_url=f"{base}/confirm/{tokens.confirm_token(confirming.key, confirm_nonce)}",
        unsubscribe_url=f"{base}/unsubscribe/"
        + tokens.unsubscribe_token(confirming.key, unsubscribe_nonce),
    )
    try:
        message = await _message(confirming, tx.workspace_id, lst, context)
    except _Failed as failed:
        await _record_failure(tx, pk, lst.name, failed, source)
        return None
    await tx.conn.execute(
        "INSERT INTO list_confirmations (nonce, workspace_id, contact_pk, list)"
        " VALUES (%s, %s, %s, %s)",
        (confirm_nonce, tx.workspace_id, pk, lst.name),
    )
    await tokens.store_unsubscribe(tx.conn, unsubscribe_nonce, tx.workspace_id, pk, lst.name)
    return Outgoing(tx.workspace_id, message)


class _Failed(Exception):
    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"{member}: {reason}")
        self.member = member
        self.reason = reason


async def _message(
    confirming: Confirming, workspace_id: int, lst: ListRow, context: dict[str, Any]
) -> EmailMessage:
    parts = {}
    for member in ("confirmation_subject", "confirmation_body"):
        try:
            parts[member] = await confirming.renderer.render(
                workspace_id, getattr(lst, member), context, html=False
            )
        except RenderFailed as failed:
            raise _Failed(member, str(failed.problem)) from None
    message = EmailMessage()
    message["From"] = confirming.settings.mail_from
    message["To"] = context["contact"]["email"]
    # One line, whatever the template's white space: a header cannot hold a line break.
    message["Subject"] = re.sub(r"\s+", " ", parts["confirmation_subject"]).strip()[:250]
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="nudgel")
    unsubscribe_url = context["unsubscribe_url"]
    # RFC 2369 and RFC 8058: mail clients show an unsubscribe button that
    # POSTs to the link (one click, no page to fill in).
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # The unsubscribe link is in every email, whatever the template says.
    body = parts["confirmation_body"].rstrip("\n")
    message.set_content(f"{body}\n\n-- \nUnsubscribe: {unsubscribe_url}\n")
    return message


async def _record_failure(
    tx: Transaction, pk: int, list_name: str, failed: _Failed, source: str
) -> None:
    """The timeline says why no confirmation email was sent (the status stays)."""
    log.warning("no confirmation email for list %r: %s", list_name, failed)
    await tx.conn.execute(
        "INSERT INTO events (contact_pk, name, at, props, source) VALUES (%s, %s, now(), %s, %s)",
        (
            pk,
            CONFIRMATION_FAILED,
            Jsonb({"list": list_name, "member": failed.member, "reason": failed.reason}),
            source,
        ),
    )
    tx.touch(pk, Change(CONFIRMATION_FAILED, events={CONFIRMATION_FAILED}))


async def send_all(app: FastAPI, outgoing: list[Outgoing]) -> None:
    """Send emails whose change committed. A failure is logged, never raised: the
    change stands, and subscribing again sends a new email."""
    mailer = mailer_of(app)
    for item in outgoing:
        try:
            await mailer.send(item.message, item.workspace_id)
        except Exception:
            log.exception("could not send the email to %s", item.message["To"])


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
) -> dict[str, ListRow]:
    """The lists, locked FOR SHARE (422 for an unknown one).

    Lists are locked before the contact on every path (a list's deletion
    locks the list, then its contacts), so the two never wait on each other
    in opposite orders.
    """
    found = {}
    for name in sorted(set(names)):
        lst = await get_list(tx.conn, tx.workspace_id, name, share=True)
        if lst is None:
            raise unknown_list(name, pointer(name))
        found[name] = lst
    return found


async def apply(
    tx: Transaction,
    confirming: Confirming,
    pk: int,
    contact_id: str,
    requested: dict[str, Requested],
    source: str,
    *,
    pointer: Callable[[str], str],
    resend: bool = False,
) -> list[Outgoing]:
    """Apply ``{list: status}`` to a locked contact; the emails to send after commit.

    Call :func:`lock_lists` before locking the contact.

    ``pointer(list)`` is the request member a 422 about that list points at.
    """
    lists = await lock_lists(tx, requested, pointer)  # locked already: no wait here
    outgoing = []
    for name, lst in lists.items():
        mail = await subscribe(
            tx,
            confirming,
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
