"""Sending email: over SMTP when ``NUDGEL_SMTP_URL`` is set, else to the dev inbox.

``aiosmtplib`` sends on the event loop (no thread per email, timeouts on
every exchange, STARTTLS or implicit TLS). Without an SMTP URL, every email
is logged and kept in memory (the last :data:`DEV_INBOX_SIZE`) for the dev
inbox page, so double opt-in can be tried on a laptop with no mail server.
The dev inbox holds live confirm links: it exists only when no SMTP server is
configured, which a production deployment always has.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib
from fastapi import FastAPI
from nudgel.api.settings import Settings

__all__ = ["DEV_INBOX_SIZE", "DevInbox", "Mailer", "SmtpMailer", "mailer_of"]

log = logging.getLogger(__name__)

DEV_INBOX_SIZE = 200


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


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

    async def send(self, message: EmailMessage) -> None:
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
class Sent:
    at: datetime
    message: EmailMessage


class DevInbox:
    """No SMTP server: emails go to the log and stay here for ``/dev/inbox``."""

    def __init__(self) -> None:
        self.messages: deque[Sent] = deque(maxlen=DEV_INBOX_SIZE)

    async def send(self, message: EmailMessage) -> None:
        self.messages.appendleft(Sent(datetime.now(UTC), message))
        log.info("no NUDGEL_SMTP_URL: email not sent, kept for /dev/inbox\n%s", message.as_string())


def mailer_of(app: FastAPI) -> Mailer:
    """The app's mailer, made from its settings on first use."""
    mailer: Mailer | None = getattr(app.state, "mailer", None)
    if mailer is None:
        settings: Settings = app.state.settings
        if settings.smtp_url:
            mailer = SmtpMailer.from_url(settings.smtp_url, settings.smtp_timeout)
        else:
            mailer = DevInbox()
        app.state.mailer = mailer
    return mailer
