"""Tokens for the links in list emails: confirm and unsubscribe.

A token is an opaque random nonce, signed: it carries no workspace, contact,
email or list, only the nonce (and the time it was signed), so a link that
leaks (a forwarded email, a log, a scanner's report) tells nothing about
who it belongs to. The nonce names a row that says what the link does:
``list_confirmations`` (which subscription it confirms, and whether it was
used: single use) or ``list_unsubscribe_links`` (which contact and list).
Merges move both kinds of row to the surviving contact.

``itsdangerous`` signs them (HMAC, URL-safe, with a timestamp for expiry), so
a forged or altered token is refused before any query; each purpose has its
own salt, so a token made for one can never be used as the other. Confirm
tokens last ``confirmation_max_age``, unsubscribe tokens
``unsubscribe_max_age`` (a year by default: people unsubscribe from old
emails; doing it twice is harmless).

The signing key is ``NUDGEL_SECRET_KEY`` when set, else one generated once and
stored in the database (``service_secrets``), so links survive restarts and
work on every instance sharing the database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer
from nudgel.api.settings import Settings
from psycopg import AsyncConnection

__all__ = [
    "ExpiredToken",
    "InvalidToken",
    "Unsubscribe",
    "confirm_token",
    "new_nonce",
    "read_confirm_token",
    "read_unsubscribe_token",
    "signing_key",
    "store_unsubscribe",
    "unsubscribe_target",
    "unsubscribe_token",
]

_CONFIRM_SALT = "nudgel.list.confirm"
_UNSUBSCRIBE_SALT = "nudgel.list.unsubscribe"
_KEY_NAME = "token_signing_key"


class InvalidToken(Exception):
    """Not a token this service signed (forged, altered, truncated, other purpose)."""


class ExpiredToken(Exception):
    """Signed by this service, but older than its maximum age."""


async def signing_key(app: FastAPI, conn: AsyncConnection) -> str:
    """The key tokens are signed with (cached on the app after the first read)."""
    cached: str | None = getattr(app.state, "token_signing_key", None)
    if cached is not None:
        return cached
    settings: Settings = app.state.settings
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value()
    else:
        # First come, first stored: concurrent instances all read the winner's key.
        await conn.execute(
            "INSERT INTO service_secrets (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (_KEY_NAME, secrets.token_urlsafe(48)),
        )
        cur = await conn.execute("SELECT value FROM service_secrets WHERE name = %s", (_KEY_NAME,))
        row = await cur.fetchone()
        assert row is not None
        key = str(row[0])
    app.state.token_signing_key = key
    return key


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def _serializer(key: str, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=salt)


def confirm_token(key: str, nonce: str) -> str:
    return _serializer(key, _CONFIRM_SALT).dumps({"n": nonce})


def read_confirm_token(key: str, token: str, max_age: int) -> str:
    """The nonce of a valid confirm token; raises InvalidToken or ExpiredToken."""
    return _nonce(_load(key, _CONFIRM_SALT, token, max_age), token)


def unsubscribe_token(key: str, nonce: str) -> str:
    return _serializer(key, _UNSUBSCRIBE_SALT).dumps({"n": nonce})


def read_unsubscribe_token(key: str, token: str, max_age: int) -> str:
    """The nonce of a valid unsubscribe token; raises InvalidToken or ExpiredToken."""
    return _nonce(_load(key, _UNSUBSCRIBE_SALT, token, max_age), token)


@dataclass(frozen=True)
class Unsubscribe:
    """What an unsubscribe link unsubscribes."""

    workspace_id: int
    contact_pk: int
    list: str


async def store_unsubscribe(
    conn: AsyncConnection, nonce: str, workspace_id: int, contact_pk: int, list_name: str
) -> None:
    """Keep what the unsubscribe link with ``nonce`` names (in the caller's transaction)."""
    await conn.execute(
        "INSERT INTO list_unsubscribe_links (nonce, workspace_id, contact_pk, list)"
        " VALUES (%s, %s, %s, %s)",
        (nonce, workspace_id, contact_pk, list_name),
    )


async def unsubscribe_target(conn: AsyncConnection, nonce: str) -> Unsubscribe | None:
    """What the link unsubscribes; None when its contact was deleted since."""
    cur = await conn.execute(
        "SELECT workspace_id, contact_pk, list FROM list_unsubscribe_links WHERE nonce = %s",
        (nonce,),
    )
    row = await cur.fetchone()
    return None if row is None else Unsubscribe(int(row[0]), int(row[1]), str(row[2]))


def _nonce(payload: Any, token: str) -> str:
    nonce = payload.get("n") if isinstance(payload, dict) else None
    if not isinstance(nonce, str):
        raise InvalidToken(token)
    return nonce


def _load(key: str, salt: str, token: str, max_age: int | None) -> Any:
    try:
        return _serializer(key, salt).loads(token, max_age=max_age)
    except SignatureExpired as error:
        # Checked first: SignatureExpired is a kind of BadData.
        raise ExpiredToken(token) from error
    except BadData as error:  # a bad signature, or a payload that does not decode
        raise InvalidToken(token) from error
