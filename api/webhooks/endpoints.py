"""Webhook endpoints: creating one (its URL checked, its signing secret made) and
reading its secret back for an idempotent replay of the creation.

The secret is stored in clear in ``webhooks`` (every delivery is signed with
it) and nowhere else: the stored response of ``POST /v1/webhooks`` for
``Idempotency-Key`` replays leaves it out, and a replay reads it from here.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.api.settings import Settings
from nudgel.api.transaction import Transaction
from nudgel.api.webhooks.destinations import BlockedAddress, check_url
from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["COLUMNS", "create", "new_secret", "new_webhook_id", "secret_of"]

COLUMNS = "id, url, events, created_at"


def new_webhook_id() -> str:
    """``wh_`` + 12 hex digits of milliseconds + 80 random bits: time-ordered, unguessable."""
    return f"wh_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _blocked(reason: str, settings: Settings) -> ProblemError:
    detail = (
        f"Webhooks are only sent to public addresses: {reason}."
        " Use a URL whose host is reachable from the internet."
    )
    if not settings.webhook_allow_private:
        detail += " (A server for local development can allow it: NUDGEL_WEBHOOK_ALLOW_PRIVATE.)"
    return ProblemError(
        422,
        "Invalid request",
        f"body/url: {detail}",
        type_=problem_type("validation"),
        errors=[FieldError(location="body", pointer="/url", detail=detail, code="blocked_address")],
    )


async def create(
    tx: Transaction, url: str, events: list[str], settings: Settings
) -> dict[str, Any]:
    """A new webhook (its row, ``secret`` included); 422 when ``url`` is not public."""
    try:
        await check_url(
            url,
            allow_private=settings.webhook_allow_private,
            resolve_timeout=settings.webhook_resolve_timeout,
        )
    except BlockedAddress as exc:
        raise _blocked(str(exc), settings) from None
    cur = tx.conn.cursor(row_factory=dict_row)
    await cur.execute(
        "INSERT INTO webhooks (workspace_id, id, url, events, secret)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {COLUMNS}, secret",
        (tx.workspace_id, new_webhook_id(), url, events, new_secret()),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def secret_of(conn: AsyncConnection, workspace_id: int, webhook_id: str) -> str | None:
    """The signing secret of a webhook of the workspace; None if it was deleted."""
    cur = await conn.execute(
        "SELECT secret FROM webhooks WHERE workspace_id = %s AND id = %s",
        (workspace_id, webhook_id),
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])
