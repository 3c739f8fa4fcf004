"""The pages people reach from emails: confirm, unsubscribe, and the dev inbox.

Not under ``/v1`` and not authenticated: the signed token in the link is the
authority (``nudgel.api.lists.tokens``). They answer HTML for a browser and are
left out of the OpenAPI document, which describes the API.

- ``GET /confirm/{token}``: a pending subscription becomes ``subscribed``
  (source ``email``) and the list's landing page is shown. A forged token
  (400), an expired one (410), a used one or one for a subscription already
  confirmed (409), or one whose subscription is no longer pending (410)
  shows a page saying so and changes nothing.
- ``GET`` or ``POST /unsubscribe/{token}``: the status becomes
  ``unsubscribed`` (POST is the RFC 8058 one-click of ``List-Unsubscribe-Post``).
  These tokens do not expire; unsubscribing twice is harmless.
- ``GET /dev/inbox``: with no SMTP server configured, the emails the service
  would have sent (404 otherwise).

Both actions run on ``GET`` because the links are followed from emails; a
mail scanner that prefetches links could confirm a subscription, which is
the usual trade-off of link-based double opt-in.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse
from nudgel.api.db.pool import connection
from nudgel.api.http.writes import WriteContext
from nudgel.api.lists import subscriptions as subscribing
from nudgel.api.lists import templates, tokens
from nudgel.api.lists.mailer import DevInbox, mailer_of
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


@router.get("/confirm/{token}", response_class=HTMLResponse, summary="Confirm a subscription")
async def confirm(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    settings = _settings(request)
    key = await tokens.signing_key(request.app, conn)
    try:
        nonce = tokens.read_confirm_token(key, token, settings.confirmation_max_age)
    except tokens.ExpiredToken:
        return notice(*EXPIRED)
    except tokens.InvalidToken:
        return notice(*FORGED)
    cur = await conn.execute(
        "SELECT workspace_id, contact_pk, list, used_at FROM list_confirmations WHERE nonce = %s",
        (nonce,),
    )
    row = await cur.fetchone()
    if row is None:
        # Signed by us, so it existed: its contact or list was deleted since.
        return notice(*GONE)
    workspace_id, pk, list_name, used_at = row
    if used_at is not None:
        return notice(*USED)
    writer = WriteContext(request, conn, int(workspace_id), None)
    async with writer.transaction() as tx:
        # The list, then the contact: the order every path locks them in.
        lst = await subscribing.get_list(conn, tx.workspace_id, list_name, share=True)
        cur = await conn.execute(
            "SELECT c.id, s.status, n.used_at FROM contacts c"
            " JOIN list_confirmations n ON n.contact_pk = c.pk AND n.nonce = %s"
            " LEFT JOIN subscriptions s ON s.contact_pk = c.pk AND s.list = %s"
            " WHERE c.pk = %s FOR UPDATE OF c, n",
            (nonce, list_name, pk),
        )
        locked = await cur.fetchone()
        if locked is None or lst is None:
            return notice(*GONE)
        contact_id, current, used_at = locked
        if used_at is not None:  # a concurrent click won
            return notice(*USED)
        if current == "subscribed":  # by another link of the same request, or the API
            return notice(*ALREADY)
        if current != "pending":
            return notice(*GONE)
        await conn.execute(
            "UPDATE list_confirmations SET used_at = now() WHERE nonce = %s", (nonce,)
        )
        await subscribing.set_status(tx, pk, contact_id, list_name, "subscribed", "email")
        context = await subscribing.contact_context(conn, pk)
    unsubscribe = tokens.unsubscribe_token(
        key, tokens.Unsubscribe(int(workspace_id), contact_id, list_name)
    )
    context.update(
        list={"name": lst.name, "title": lst.title},
        unsubscribe_url=f"{settings.base_url()}/unsubscribe/{unsubscribe}",
    )
    try:
        content = templates.render(lst.landing_page, context, html=True)
    except Exception:
        # The confirmation stands; the page falls back to a plain one.
        log.exception("the landing page of list %r failed to render", list_name)
        content = f"<h1>You are subscribed to {html.escape(lst.title)}</h1>"
    return page(lst.title, content)


async def _unsubscribe(token: str, request: Request, conn: Conn) -> HTMLResponse:
    key = await tokens.signing_key(request.app, conn)
    try:
        target = tokens.read_unsubscribe_token(key, token)
    except (tokens.InvalidToken, tokens.ExpiredToken):
        return notice(*FORGED)
    writer = WriteContext(request, conn, target.workspace_id, None)
    async with writer.transaction() as tx:
        lst = await subscribing.get_list(conn, target.workspace_id, target.list, share=True)
        cur = await conn.execute(
            "SELECT pk FROM contacts WHERE workspace_id = %s AND id = %s FOR UPDATE",
            (target.workspace_id, target.contact_id),
        )
        row = await cur.fetchone()
        if row is None or lst is None:
            return notice(410, "Nothing to unsubscribe from", "This subscription no longer exists.")
        await subscribing.set_status(
            tx, int(row[0]), target.contact_id, target.list, "unsubscribed", "email"
        )
    return notice(
        200,
        "You are unsubscribed",
        f"You will no longer receive {lst.title}.",
    )


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe")
async def unsubscribe(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    return await _unsubscribe(token, request, conn)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe (one click)")
async def unsubscribe_one_click(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    return await _unsubscribe(token, request, conn)


_URL = re.compile(r"https?://[^\s<>\"]+")


def _linked(text: str) -> str:
    """Escaped text with its URLs as links."""
    out, last = [], 0
    for match in _URL.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        url = html.escape(match.group())
        out.append(f'<a href="{url}">{url}</a>')
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


@router.get("/dev/inbox", response_class=HTMLResponse, summary="Dev inbox")
async def dev_inbox(request: Request) -> HTMLResponse:
    mailer = mailer_of(request.app)
    if not isinstance(mailer, DevInbox):
        return notice(404, "Not found", "The dev inbox exists only when no SMTP server is set.")
    items = []
    for sent in mailer.messages:
        message = sent.message
        content = message.get_body(("plain",))
        text = content.get_content() if content is not None else ""
        items.append(
            f"<article><h2>{html.escape(str(message['Subject']))}</h2>"
            f"<p>To {html.escape(str(message['To']))}, {sent.at:%Y-%m-%d %H:%M:%S} UTC</p>"
            f"<pre>{_linked(text)}</pre></article><hr>"
        )
    body = "".join(items) or "<p>No emails yet.</p>"
    return page(
        "Dev inbox",
        f"<h1>Dev inbox</h1>\n<p>Emails the service did not send (no"
        f" NUDGEL_SMTP_URL), newest first.</p>\n{body}",
    )
