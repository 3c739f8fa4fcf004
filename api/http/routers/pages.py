"""The pages people reach from emails: confirm and unsubscribe.

Not under ``/v1`` and not authenticated: the signed token in the link is the
authority (``nudgel.api.lists.tokens``: an opaque nonce, no personal data);
``nudgel.api.lists.links`` checks it and acts.
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
from nudgel.api.lists import links
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


REFUSED: dict[links.Refusal, tuple[int, str, str]] = {
    "forged": (
        400,
        "This link is not valid",
        "Check that you copied the whole link from the email.",
    ),
    "expired": (
        410,
        "This link has expired",
        "Confirmation links are valid for a limited time. Subscribe again to get a new one.",
    ),
    "used": (409, "This link was already used", "Your subscription was already confirmed."),
    "already": (409, "Already confirmed", "Your subscription is already confirmed."),
    "gone": (
        410,
        "This link no longer applies",
        "The subscription it confirms was changed or removed since the email was sent.",
    ),
    "expired_unsubscribe": (
        410,
        "This link has expired",
        "Unsubscribe links are valid for a limited time. Use the link in a more recent email.",
    ),
    "nothing_to_unsubscribe": (
        410,
        "Nothing to unsubscribe from",
        "This subscription no longer exists.",
    ),
}


def refused(error: links.LinkRefused) -> HTMLResponse:
    return notice(*REFUSED[error.why])


def button_page(title: str, text: str, button: str) -> HTMLResponse:
    """A page whose button POSTs to this same address (a form with no action)."""
    return page(
        title,
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(text)}</p>\n"
        f"<form method=post><button type=submit>{html.escape(button)}</button></form>",
    )


@router.get("/confirm/{token}", response_class=HTMLResponse, summary="Confirm (the page)")
async def confirm_page(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    try:
        lst = await links.check_confirm(request.app, conn, token)
    except links.LinkRefused as error:
        return refused(error)
    return button_page(
        f"Confirm your subscription to {lst.title}",
        f"Press the button to confirm that you want to receive {lst.title}.",
        "Confirm my subscription",
    )


@router.post("/confirm/{token}", response_class=HTMLResponse, summary="Confirm a subscription")
async def confirm(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    try:
        done = await links.confirm(request.app, conn, token)
    except links.LinkRefused as error:
        return refused(error)
    if done.landing_page is None:
        # The confirmation stands; the page falls back to a plain one.
        log.warning("the landing page of list %r failed to render", done.list.name)
        return notice(200, f"You are subscribed to {done.list.title}", "Thank you.")
    return page(done.list.title, done.landing_page)


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe (the page)")
async def unsubscribe_page(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    try:
        lst = await links.check_unsubscribe(request.app, conn, token)
    except links.LinkRefused as error:
        return refused(error)
    return button_page(
        f"Unsubscribe from {lst.title}",
        f"Press the button and you will no longer receive {lst.title}.",
        "Unsubscribe",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe")
async def unsubscribe(token: TokenParam, request: Request, conn: Conn) -> HTMLResponse:
    """The page's button, and the RFC 8058 one-click POST of mail clients."""
    try:
        lst = await links.unsubscribe(request.app, conn, token)
    except links.LinkRefused as error:
        return refused(error)
    return notice(200, "You are unsubscribed", f"You will no longer receive {lst.title}.")
