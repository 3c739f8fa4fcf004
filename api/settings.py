"""Service settings, read from the environment.

Every setting is ``NUDGEL_<NAME>`` (``NUDGEL_PORT=9000``), except the database,
which is the conventional unprefixed ``DATABASE_URL`` (``NUDGEL_DATABASE_URL``
also works). Lists accept JSON (``["a", "b"]``) or comma-separated text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from nudgel.api.db.embedded import default_data_dir, ensure_embedded_postgres
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NUDGEL_",
        # Settings(database_url=...) in code and tests, DATABASE_URL in the environment.
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "NUDGEL_DATABASE_URL", "database_url"),
        description="PostgreSQL URL; unset or empty starts the embedded server in data_dir.",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Folder for the embedded PostgreSQL (default: the user's data folder).",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    migrate_on_startup: bool = Field(
        default=True, description="Apply pending migrations when the service starts."
    )

    default_phone_region: str = Field(
        default="KE",
        pattern=r"^[A-Z]{2}$",
        description="Region for phone numbers written without a country code.",
    )
    # Identifiers that never identify anyone (shared test inboxes, placeholder
    # numbers): they never match an existing contact, so they never merge two.
    blocked_identifiers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["test@example.com"]
    )

    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    pool_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a request waits for a free connection."
    )

    # Webhook delivery (nudgel.api.webhooks.delivery).
    run_worker: bool = Field(
        default=True,
        description="Run the background work (webhook delivery, re-evaluation as time passes)"
        " inside `nudgel serve`.",
    )
    schedule_interval: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Seconds between rounds of re-evaluating contacts whose time-dependent"
        " results fell due (a contact leaves a `within 30d` segment at most this late).",
    )
    webhook_max_attempts: int = Field(default=12, ge=1)
    webhook_backoff_base: float = Field(default=5.0, gt=0, description="Seconds, doubled per try.")
    webhook_backoff_max: float = Field(default=3600.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_lease_margin: float = Field(
        default=30.0,
        gt=0,
        description="Seconds beyond webhook_timeout a claimed delivery stays reserved;"
        " a crashed worker's deliveries are retried after that.",
    )
    webhook_poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds the worker waits when there is nothing to send."
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhook URLs reach loopback, private, link-local and other"
        " non-public addresses (local development only: otherwise anyone with a key could"
        " make the service probe its own network). Cloud metadata addresses stay refused.",
    )
    webhook_resolve_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds to resolve a webhook's host name when it is created (a host"
        " that does not resolve in time is checked again at each delivery).",
    )

    idempotency_retention_hours: int = Field(
        default=24,
        ge=1,
        description="Hours an Idempotency-Key's record (and its replayable response) is kept.",
    )
    idempotency_purge_interval: float = Field(
        default=600.0,
        gt=0,
        description="Seconds between purges of idempotency records past their retention.",
    )
    idempotency_purge_batch: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Records deleted per statement (and so per short transaction) by a purge.",
    )
    import_max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="The largest CSV `POST /v1/imports` takes."
    )

    # Lists and double opt-in (nudgel.api.lists.mailer, nudgel.api.lists.tokens).
    smtp_url: str | None = Field(
        default=None,
        description="Where emails go: `smtp://user:password@host:587` (STARTTLS when the"
        " server offers it) or `smtps://...:465` (TLS from the start). Unset: emails are"
        " written to the log and kept for the dev inbox page (`/dev/inbox`).",
    )
    mail_from: str = Field(
        default="Nudgel <no-reply@localhost>", description="The From of the emails sent."
    )
    smtp_timeout: float = Field(default=10.0, gt=0, description="Seconds per SMTP exchange.")
    public_url: str | None = Field(
        default=None,
        description="The service's address as people reach it, for the links in emails"
        " (`https://lists.example.com`). Default `http://{host}:{port}`.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs the confirm and unsubscribe links. Unset: a key generated once and"
        " kept in the database (table service_secrets), so links survive restarts and every"
        " instance on the database accepts them.",
    )
    confirmation_max_age: int = Field(
        default=7 * 24 * 3600, ge=1, description="Seconds a confirm link stays valid."
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: Any) -> Any:
        # DATABASE_URL= (empty) means "no server": the embedded one, as elsewhere.
        return value or None

    @field_validator("blocked_identifiers", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("smtp_url", "public_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

    def base_url(self) -> str:
        """Where links in emails point: ``public_url``, else this server's address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def embedded_data_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data."""
        return self.data_dir / "pg" if self.data_dir is not None else default_data_dir()

    def resolve_database_url(self) -> str:
        """The configured URL, or the embedded server's (starting it; blocking, seconds)."""
        if self.database_url:
            return self.database_url
        return ensure_embedded_postgres(self.embedded_data_dir())
