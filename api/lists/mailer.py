"""Sending email: over SMTP when ``NUDGEL_SMTP_URL`` is set, else to the dev inbox.

``aiosmtplib`` sends on the event loop (no thread per email, timeouts on
every exchange, STARTTLS or implicit TLS). Without an SMTP URL, every email
is kept in the sending workspace's dev inbox (``nudgel.api.lists.dev_inbox``,
read with that workspace's key), so double opt-in can be tried on a laptop
with no mail server. The log says an email was kept, not what it says: it
holds live links.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib
from fastapi import FastAPI
from nudgel.api.lists import dev_inbox
from nudgel.api.settings import Settings
from psycopg_pool import AsyncConnectionPool

__all__ = ["DevInbox", "Mailer", "SmtpMailer", "mailer_of"]

log = logging.getLogger(__name__)


class Mailer(Protocol):
    async def send(self, message: EmailMessage, workspace_id: int) -> None: ...


@dataclass(frozen=True)
class SmtpMailer:
    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    timeout: float

    @classmethod
    def from_url(cls, url: str, timeout: float) -> SmtpMailer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("NUDGEL_SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
        tls = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname,
            port=parts.port or (465 if tls else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=tls,
            timeout=timeout,
        )

    async def send(self, message: EmailMessage, workspace_id: int) -> None:
        # start_tls=None: STARTTLS when the server offers it (smtp://), never
        # on top of implicit TLS (smtps://).
        await aiosmtplib.send(
            message,
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=None if not self.use_tls else False,
            timeout=self.timeout,
        )


@dataclass(frozen=True)
class DevInbox:
    """No SMTP server: emails are kept in their workspace's dev inbox."""

    pool: AsyncConnectionPool
    settings: Settings

    async def send(self, message: EmailMessage, workspace_id: int) -> None:
        await dev_inbox.keep(self.pool, self.settings, workspace_id, message)
        log.info(
            "no NUDGEL_SMTP_URL: email %s kept in the dev inbox of workspace %d",
            message["Message-ID"],
            workspace_id,
        )


def mailer_of(app: FastAPI) -> Mailer:
    """The app's mailer, made from its settings on first use (after the app's
    lifespan opened its pool, ``app.state.pool``)."""
    mailer: Mailer | None = getattr(app.state, "mailer", None)
    if mailer is None:
        settings: Settings = app.state.settings
        if settings.smtp_url:
            mailer = SmtpMailer.from_url(settings.smtp_url, settings.smtp_timeout)
        else:
            mailer = DevInbox(app.state.pool, settings)
        app.state.mailer = mailer
    return mailer
