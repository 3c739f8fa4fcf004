"""The dev inbox: with no SMTP server, the emails the service would have sent.

They are kept in the database per workspace (``dev_inbox_messages``) and read
with that workspace's key (``GET /v1/dev/inbox``), never on a public page:
they hold live confirm and unsubscribe links. A workspace keeps its newest
``dev_inbox_max_messages``; an email's text is cut to
``dev_inbox_max_message_bytes``. With an SMTP server there is no dev inbox
(404): emails go out and nothing is kept.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.message import EmailMessage
from typing import Literal

from nudgel.api.problems import ProblemError, problem_type
from nudgel.api.settings import Settings
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

__all__ = ["HEADERS", "KeptMessage", "keep", "kept_messages"]

# The headers kept, in this order.
HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
_URL = re.compile(r"https?://[^\s<>\"]+")


class KeptMessage(BaseModel):
    object: Literal["dev_inbox_message"] = "dev_inbox_message"
    id: str = Field(description="`msg_` and a number; newer messages have larger numbers.")
    created_at: datetime = Field(description="When the service would have sent it.")
    headers: dict[str, str] = Field(description="From, To, Subject, Date, Message-ID, List-*.")
    text: str = Field(description="The plain-text body.")
    truncated: bool = Field(description="The text was cut to `dev_inbox_max_message_bytes`.")
    links: list[str] = Field(description="The URLs in the text, in order.")


async def keep(
    pool: AsyncConnectionPool, settings: Settings, workspace_id: int, message: EmailMessage
) -> None:
    """Keep ``message`` in the workspace's dev inbox; the oldest beyond the cap go."""
    headers = {name: str(message[name]) for name in HEADERS if message[name] is not None}
    body = message.get_body(("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    encoded = text.encode()
    limit = settings.dev_inbox_max_message_bytes
    truncated = len(encoded) > limit
    if truncated:
        text = encoded[:limit].decode(errors="ignore")
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO dev_inbox_messages (workspace_id, headers, text, truncated)"
            " VALUES (%s, %s, %s, %s)",
            (workspace_id, Jsonb(headers), text, truncated),
        )
        await conn.execute(
            "DELETE FROM dev_inbox_messages WHERE workspace_id = %s AND id <= ("
            " SELECT id FROM dev_inbox_messages WHERE workspace_id = %s"
            " ORDER BY id DESC OFFSET %s LIMIT 1)",
            (workspace_id, workspace_id, settings.dev_inbox_max_messages),
        )


def _cursor(starting_after: str | None) -> int | None:
    if starting_after is None:
        return None
    number = starting_after.removeprefix("msg_")
    if not number.isdigit() or len(number) > 18:
        raise ProblemError(
            422,
            "Invalid cursor",
            f"starting_after {starting_after!r} is not a dev inbox message id (msg_...).",
            type_=problem_type("validation"),
        )
    return int(number)


async def kept_messages(
    conn: AsyncConnection,
    settings: Settings,
    workspace_id: int,
    limit: int,
    starting_after: str | None,
) -> list[KeptMessage]:
    """The workspace's kept emails, newest first: up to ``limit`` older than
    ``starting_after`` (a message id). 404 when an SMTP server is configured."""
    if settings.smtp_url:
        raise ProblemError(
            404,
            "Not found",
            "There is no dev inbox: emails go to the SMTP server (NUDGEL_SMTP_URL).",
            type_=problem_type("not-found"),
        )
    before = _cursor(starting_after)
    cur = await conn.execute(
        "SELECT id, created_at, headers, text, truncated FROM dev_inbox_messages"
        " WHERE workspace_id = %s AND (%s::bigint IS NULL OR id < %s)"
        " ORDER BY id DESC LIMIT %s",
        (workspace_id, before, before, limit),
    )
    return [
        KeptMessage(
            id=f"msg_{id_}",
            created_at=created_at,
            headers=headers,
            text=text,
            truncated=truncated,
            links=_URL.findall(text),
        )
        for id_, created_at, headers, text, truncated in await cur.fetchall()
    ]
