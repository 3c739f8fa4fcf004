"""Signed tokens for the links in list emails: confirm and unsubscribe.

``itsdangerous`` signs them (HMAC, URL-safe, with a timestamp for expiry);
each purpose has its own salt, so a token made for one can never be used as
the other. A confirm token carries only a nonce: the ``list_confirmations``
row it names says which subscription it confirms and whether it was used
(single use). An unsubscribe token carries the workspace, contact and list
and never expires: people unsubscribe from old emails, and doing it twice is
harmless.

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
    payload = _load(key, _CONFIRM_SALT, token, max_age)
    nonce = payload.get("n") if isinstance(payload, dict) else None
    if not isinstance(nonce, str):
        raise InvalidToken(token)
    return nonce


@dataclass(frozen=True)
class Unsubscribe:
    workspace_id: int
    contact_id: str
    list: str


def unsubscribe_token(key: str, target: Unsubscribe) -> str:
    return _serializer(key, _UNSUBSCRIBE_SALT).dumps(
        [target.workspace_id, target.contact_id, target.list]
    )


def read_unsubscribe_token(key: str, token: str) -> Unsubscribe:
    payload = _load(key, _UNSUBSCRIBE_SALT, token, None)
    if (
        not isinstance(payload, list)
        or len(payload) != 3
        or not isinstance(payload[0], int)
        or not all(isinstance(p, str) for p in payload[1:])
    ):
        raise InvalidToken(token)
    return Unsubscribe(payload[0], payload[1], payload[2])


def _load(key: str, salt: str, token: str, max_age: int | None) -> Any:
    try:
        return _serializer(key, salt).loads(token, max_age=max_age)
    except SignatureExpired as error:
        # Checked first: SignatureExpired is a kind of BadData.
        raise ExpiredToken(token) from error
    except BadData as error:  # a bad signature, or a payload that does not decode
        raise InvalidToken(token) from error
