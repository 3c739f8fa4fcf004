"""What the links in list emails do: confirm a pending subscription, unsubscribe.

A link's token (``nudgel.api.lists.tokens``) is checked first; a link that
cannot act raises :class:`LinkRefused` with why, and changes nothing. The
``check_*`` functions only read (what a ``GET`` of a link may do: mail
scanners fetch every link); :func:`confirm` and :func:`unsubscribe` act,
each in its own transaction, locking the list and then the contact as every
path does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI
from nudgel.api.lists import subscriptions as subscribing
from nudgel.api.lists import tokens
from nudgel.api.lists.rendering import RenderFailed, renderer_of
from nudgel.api.lists.subscriptions import ListRow
from nudgel.api.settings import Settings
from nudgel.api.transaction import Transaction
from psycopg import AsyncConnection

__all__ = [
    "Confirmed",
    "LinkRefused",
    "check_confirm",
    "check_unsubscribe",
    "confirm",
    "unsubscribe",
]

Refusal = Literal[
    "forged",  # not a token of ours for this purpose
    "expired",  # a confirm token past confirmation_max_age
    "used",  # a confirm token already used
    "already",  # the subscription was confirmed by another link or the API
    "gone",  # the contact or list was deleted, or the status is no longer pending
    "expired_unsubscribe",  # an unsubscribe token past unsubscribe_max_age
    "nothing_to_unsubscribe",  # the contact or list was deleted
]


class LinkRefused(Exception):
    def __init__(self, why: Refusal) -> None:
        super().__init__(why)
        self.why: Refusal = why


@dataclass(frozen=True)
class _Confirmation:
    nonce: str
    workspace_id: int
    list: ListRow


@dataclass(frozen=True)
class Confirmed:
    """A confirmation done: the list, and its landing page for the contact (None:
    the page failed to render; the confirmation stands)."""

    list: ListRow
    landing_page: str | None


@dataclass(frozen=True)
class _Unsubscribing:
    nonce: str
    target: tokens.Unsubscribe
    list: ListRow


def _settings(app: FastAPI) -> Settings:
    settings: Settings = app.state.settings
    return settings


async def _confirmation(app: FastAPI, conn: AsyncConnection, token: str) -> _Confirmation:
    key = await tokens.signing_key(app, conn)
    try:
        nonce = tokens.read_confirm_token(key, token, _settings(app).confirmation_max_age)
    except tokens.ExpiredToken:
        raise LinkRefused("expired") from None
    except tokens.InvalidToken:
        raise LinkRefused("forged") from None
    cur = await conn.execute(
        "SELECT n.workspace_id, n.list, n.used_at, s.status FROM list_confirmations n"
        " LEFT JOIN subscriptions s ON s.contact_pk = n.contact_pk AND s.list = n.list"
        " WHERE n.nonce = %s",
        (nonce,),
    )
    row = await cur.fetchone()
    if row is None:
        # Signed by us, so it existed: its contact or list was deleted since.
        raise LinkRefused("gone")
    workspace_id, list_name, used_at, status = row
    _check_pending(used_at is not None, status)
    lst = await subscribing.get_list(conn, int(workspace_id), list_name)
    if lst is None:
        raise LinkRefused("gone")
    return _Confirmation(nonce, int(workspace_id), lst)


def _check_pending(used: bool, status: str | None) -> None:
    if used:
        raise LinkRefused("used")
    if status == "subscribed":  # by another link of the same request, or the API
        raise LinkRefused("already")
    if status != "pending":
        raise LinkRefused("gone")


async def check_confirm(app: FastAPI, conn: AsyncConnection, token: str) -> ListRow:
    """The list a confirm link would subscribe to; raises LinkRefused. Reads only."""
    return (await _confirmation(app, conn, token)).list


async def confirm(app: FastAPI, conn: AsyncConnection, token: str) -> Confirmed:
    """Make the link's pending subscription ``subscribed`` (source ``email``), use
    the link up, and render the list's landing page; raises LinkRefused."""
    found = await _confirmation(app, conn, token)
    async with conn.transaction():
        tx = Transaction(conn, found.workspace_id)
        # The list, then the contact: the order every path locks them in.
        lst = await subscribing.get_list(conn, tx.workspace_id, found.list.name, share=True)
        cur = await conn.execute(
            "SELECT c.pk, c.id, s.status, n.used_at FROM list_confirmations n"
            " JOIN contacts c ON c.pk = n.contact_pk"
            " LEFT JOIN subscriptions s ON s.contact_pk = c.pk AND s.list = n.list"
            " WHERE n.nonce = %s FOR UPDATE OF c, n",
            (found.nonce,),
        )
        locked = await cur.fetchone()
        if locked is None or lst is None:
            raise LinkRefused("gone")
        pk, contact_id, current, used_at = locked
        _check_pending(used_at is not None, current)  # a concurrent click may have won
        await conn.execute(
            "UPDATE list_confirmations SET used_at = now() WHERE nonce = %s", (found.nonce,)
        )
        await subscribing.set_status(tx, pk, contact_id, lst.name, "subscribed", "email")
        context = await subscribing.contact_context(conn, pk)
        unsubscribe_nonce = tokens.new_nonce()
        await tokens.store_unsubscribe(conn, unsubscribe_nonce, tx.workspace_id, pk, lst.name)
        await tx.reevaluate()
    key = await tokens.signing_key(app, conn)
    context.update(
        list={"name": lst.name, "title": lst.title},
        unsubscribe_url=f"{_settings(app).base_url()}/unsubscribe/"
        + tokens.unsubscribe_token(key, unsubscribe_nonce),
    )
    try:
        content = await renderer_of(app).render(
            found.workspace_id, lst.landing_page, context, html=True
        )
    except RenderFailed:
        content = None
    return Confirmed(lst, content)


async def _unsubscribing(app: FastAPI, conn: AsyncConnection, token: str) -> _Unsubscribing:
    key = await tokens.signing_key(app, conn)
    try:
        nonce = tokens.read_unsubscribe_token(key, token, _settings(app).unsubscribe_max_age)
    except tokens.ExpiredToken:
        raise LinkRefused("expired_unsubscribe") from None
    except tokens.InvalidToken:
        raise LinkRefused("forged") from None
    target = await tokens.unsubscribe_target(conn, nonce)
    if target is None:
        raise LinkRefused("nothing_to_unsubscribe")
    lst = await subscribing.get_list(conn, target.workspace_id, target.list)
    if lst is None:
        raise LinkRefused("nothing_to_unsubscribe")
    return _Unsubscribing(nonce, target, lst)


async def check_unsubscribe(app: FastAPI, conn: AsyncConnection, token: str) -> ListRow:
    """The list an unsubscribe link would unsubscribe from; raises LinkRefused.
    Reads only."""
    return (await _unsubscribing(app, conn, token)).list


async def unsubscribe(app: FastAPI, conn: AsyncConnection, token: str) -> ListRow:
    """Make the link's contact ``unsubscribed`` from its list (source ``email``;
    nothing changes when it already is); raises LinkRefused."""
    found = await _unsubscribing(app, conn, token)
    async with conn.transaction():
        tx = Transaction(conn, found.target.workspace_id)
        lst = await subscribing.get_list(conn, tx.workspace_id, found.target.list, share=True)
        # The link's contact now (a merge may have moved the link), locked.
        cur = await conn.execute(
            "SELECT c.pk, c.id FROM list_unsubscribe_links u JOIN contacts c"
            " ON c.pk = u.contact_pk WHERE u.nonce = %s FOR UPDATE OF c",
            (found.nonce,),
        )
        row = await cur.fetchone()
        if row is None or lst is None:
            raise LinkRefused("nothing_to_unsubscribe")
        await subscribing.set_status(
            tx, int(row[0]), str(row[1]), lst.name, "unsubscribed", "email"
        )
        await tx.reevaluate()
    return lst
