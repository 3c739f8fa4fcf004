"""The pages people reach from emails: confirm and unsubscribe.

Not under ``/v1`` and not authenticated: the signed token in the link is the
authority (``nudgel.api.lists.tokens``: an opaque nonce, no personal data).
They answer HTML for a browser and are left out of the OpenAPI document,
which describes the API.

People click, scanners don't: mail scanners and link previews fetch (GET)
every link in an email, so a GET changes nothing. It checks the token and
shows a page with a button; the button's form POSTs to the same address, and
only the POST acts.

- ``GET /confirm/{token}``: a page asking to confirm. ``POST``: a pending
  subscription becomes ``subscribed`` (source ``email``) and the list's
  landing page is shown. A forged token (400), an expired one (410), a used
  one or one for a subscription already confirmed (409), or one whose
  subscription is no longer pending (410) shows a page saying so and changes
  nothing, on either method.
- ``GET /unsubscribe/{token}``: a page asking to unsubscribe. ``POST``: the
  status becomes ``unsubscribed``; it is also the RFC 8058 one-click
  unsubscribe mail clients send (``List-Unsubscribe-Post``), with no page in
  between. Unsubscribe links expire after ``unsubscribe_max_age`` (a year by
  default); unsubscribing twice is harmless.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse
from nudgel.api.db.pool import connection
from nudgel.api.http.writes import WriteContext
from nudgel.api.lists import subscriptions as subscribing
from nudgel.api.lists import tokens
from nudgel.api.lists.rendering import RenderFailed, renderer_of
from nudgel.api.settings import Settings
from psycopg import AsyncConnection

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

Conn = Annotated[AsyncConnection, Depends(connection)]
TokenParam = Annotated[str, Path(max_length=2000)]


def page(title: str, body_html: str, status: int = 200) -> HTMLResponse:
    """A small, self-contained HTML page (``body_html`` is trusted markup)."""
    return HTMLResponse(
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=robots content="noindex,nofollow">'
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;"
        "padding:0 1rem;line-height:1.5}pre{white-space:pre-wrap}</style></head>"
        f"<body>\n{body_html}\n</body></html>\n",
        status_code=status,
        # Token pages must not be cached or leak the token in a Referer.
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def notice(status: int, title: str, text: str) -> HTMLResponse:
    return page(title, f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(text)}</p>", status)


FORGED = (400, "This link is not valid", "Check that you copied the whole link from the email.")
EXPIRED = (
    410,
    "This link has expired",
    "Confirmation links are valid for a limited time. Subscribe again to get a new one.",
)
USED = (409, "This link was already used", "Your subscription was already confirmed.")
ALREADY = (409, "Already confirmed", "Your subscription is already confirmed.")
GONE = (
    410,
    "This link no longer applies",
    "The subscription it confirms was changed or removed since the email was sent.",
)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _pending_confirmation(
    request: Request, conn: AsyncConnection, token: str
) -> tuple[str, int, str] | HTMLResponse:
    """The token's (nonce, workspace id, list) while it can still confirm, else
    the page that says why not. Reads only."""
    settings = _settings(request)
    key = await tokens.signing_key(request.app, conn)
    try:
        nonce = tokens.read_confirm_token(key, token, settings.confirmation_max_age)
    except tokens.ExpiredToken:
        return notice(*EXPIRED)
    except tokens.InvalidToken:
        return notice(*FORGED)
    cur = await conn.execute(
        "SELECT n.workspace_id, n.list, n.used_at, s.status FROM list_confirmations n"
        " LEFT JOIN subscriptions s ON s.contact_pk = n.contact_pk AND s.list = n.list"
        " WHERE n.nonce = %s",
        (nonce,),
    )
    row = await cur.fetchone()
    if row is None:
        # Signed by us, so it existed: its contact or list was deleted since.
        return notice(*GONE)
    workspace_id, list_name, used_at, status = row
    if used_at is not None:
        return notice(*USED)
    if status == "subscribed":  # by another link of the same request, or the API
        return notice(*ALREADY)
    if status != "pending":
        return notice(*GONE)
    return nonce, int(workspace_id), str(list_name)


def _button_page(title: str, text: str, button: str) -> HTMLResponse:
    """A page whose button POSTs to this same address (a form with no action)."""
    return page(
        title,
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(text)}</p>\n"
        f"<form method=post><button type=submit>{html.escape(button)}</button></form>",
    )


@router.get("/confirm/{token}", response_class=HTMLResponse, summary="Confirm (the page)")
async def confirm_page(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    found = await _pending_confirmation(request, conn, token)
    if isinstance(found, HTMLResponse):
        return found
    _, workspace_id, list_name = found
    lst = await subscribing.get_list(conn, workspace_id, list_name)
    if lst is None:
        return notice(*GONE)
    return _button_page(
        f"Confirm your subscription to {lst.title}",
        f"Press the button to confirm that you want to receive {lst.title}.",
        "Confirm my subscription",
    )


@router.post("/confirm/{token}", response_class=HTMLResponse, summary="Confirm a subscription")
async def confirm(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    settings = _settings(request)
    found = await _pending_confirmation(request, conn, token)
    if isinstance(found, HTMLResponse):
        return found
    nonce, workspace_id, list_name = found
    key = await tokens.signing_key(request.app, conn)
    writer = WriteContext(request, conn, workspace_id, None)
    async with writer.transaction() as tx:
        # The list, then the contact: the order every path locks them in.
        lst = await subscribing.get_list(conn, tx.workspace_id, list_name, share=True)
        cur = await conn.execute(
            "SELECT c.pk, c.id, s.status, n.used_at FROM list_confirmations n"
            " JOIN contacts c ON c.pk = n.contact_pk"
            " LEFT JOIN subscriptions s ON s.contact_pk = c.pk AND s.list = n.list"
            " WHERE n.nonce = %s FOR UPDATE OF c, n",
            (nonce,),
        )
        locked = await cur.fetchone()
        if locked is None or lst is None:
            return notice(*GONE)
        pk, contact_id, current, used_at = locked
        if used_at is not None:  # a concurrent click won
            return notice(*USED)
        if current == "subscribed":
            return notice(*ALREADY)
        if current != "pending":
            return notice(*GONE)
        await conn.execute(
            "UPDATE list_confirmations SET used_at = now() WHERE nonce = %s", (nonce,)
        )
        await subscribing.set_status(tx, pk, contact_id, list_name, "subscribed", "email")
        context = await subscribing.contact_context(conn, pk)
        unsubscribe = tokens.new_nonce()
        await tokens.store_unsubscribe(conn, unsubscribe, tx.workspace_id, pk, list_name)
    context.update(
        list={"name": lst.name, "title": lst.title},
        unsubscribe_url=f"{settings.base_url()}/unsubscribe/"
        + tokens.unsubscribe_token(key, unsubscribe),
    )
    try:
        content = await renderer_of(request.app).render(lst.landing_page, context, html=True)
    except RenderFailed as failed:
        # The confirmation stands; the page falls back to a plain one.
        log.warning("the landing page of list %r failed to render: %s", list_name, failed)
        content = f"<h1>You are subscribed to {html.escape(lst.title)}</h1>"
    return page(lst.title, content)


GONE_LIST = (410, "Nothing to unsubscribe from", "This subscription no longer exists.")
EXPIRED_UNSUBSCRIBE = (
    410,
    "This link has expired",
    "Unsubscribe links are valid for a limited time. Use the link in a more recent email.",
)


async def _unsubscribe_target(
    request: Request, conn: AsyncConnection, token: str
) -> tuple[str, tokens.Unsubscribe] | HTMLResponse:
    """The token's nonce and what it unsubscribes, else the page that says why not."""
    key = await tokens.signing_key(request.app, conn)
    try:
        nonce = tokens.read_unsubscribe_token(key, token, _settings(request).unsubscribe_max_age)
    except tokens.ExpiredToken:
        return notice(*EXPIRED_UNSUBSCRIBE)
    except tokens.InvalidToken:
        return notice(*FORGED)
    target = await tokens.unsubscribe_target(conn, nonce)
    if target is None:
        return notice(*GONE_LIST)
    return nonce, target


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe (the page)")
async def unsubscribe_page(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    found = await _unsubscribe_target(request, conn, token)
    if isinstance(found, HTMLResponse):
        return found
    _, target = found
    lst = await subscribing.get_list(conn, target.workspace_id, target.list)
    if lst is None:
        return notice(*GONE_LIST)
    return _button_page(
        f"Unsubscribe from {lst.title}",
        f"Press the button and you will no longer receive {lst.title}.",
        "Unsubscribe",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe")
async def unsubscribe(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    """The page's button, and the RFC 8058 one-click POST of mail clients."""
    found = await _unsubscribe_target(request, conn, token)
    if isinstance(found, HTMLResponse):
        return found
    nonce, target = found
    writer = WriteContext(request, conn, target.workspace_id, None)
    async with writer.transaction() as tx:
        lst = await subscribing.get_list(conn, target.workspace_id, target.list, share=True)
        # The link's contact now (a merge may have moved the link), locked.
        cur = await conn.execute(
            "SELECT c.pk, c.id FROM list_unsubscribe_links u JOIN contacts c ON c.pk = u.contact_pk"
            " WHERE u.nonce = %s FOR UPDATE OF c",
            (nonce,),
        )
        row = await cur.fetchone()
        if row is None or lst is None:
            return notice(*GONE_LIST)
        await subscribing.set_status(
            tx, int(row[0]), str(row[1]), target.list, "unsubscribed", "email"
        )
    return notice(200, "You are unsubscribed", f"You will no longer receive {lst.title}.")
