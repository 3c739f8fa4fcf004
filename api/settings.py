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
    # Databases that say no politely (issue #11): every pooled API connection
    # has these; jobs set their own per transaction.
    statement_timeout_ms: int = Field(
        default=15_000,
        ge=0,
        description="Longest a single API statement may run (0: no limit); a `where=` that"
        " runs longer is a 422 naming this limit.",
    )
    idle_in_transaction_timeout_ms: int = Field(
        default=60_000, ge=0, description="A transaction left idle this long is ended."
    )
    job_statement_timeout_ms: int = Field(
        default=0,
        ge=0,
        description="Longest statement of a job (backfill, import, verify; 0: no limit).",
    )
    job_idle_in_transaction_timeout_ms: int = Field(
        default=600_000, ge=0, description="A job's transaction left idle this long is ended."
    )
    job_pool_max_size: int = Field(
        default=4, ge=2, description="Connections of the jobs' own pool (per process)."
    )
    workspace_max_connections: int = Field(
        default=5,
        ge=1,
        description="Pooled connections one workspace may hold at once (per server process):"
        " a busy tenant queues behind itself, not in front of the others.",
    )
    workspace_max_scans: int = Field(
        default=2,
        ge=1,
        description="Scans one workspace may run at once (per server process): contact lists"
        " with where=, q=, sort= or include=total_count, and exports; a scan can take a"
        " database core, so the others wait their turn.",
    )
    total_count_max: int = Field(
        default=100_000,
        ge=1,
        description="`include=total_count` counts the matching contacts up to this many; past"
        " it the list says `total_count_exact: false` (a bound on what one count costs).",
    )
    export_batch_size: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Contacts an export reads from the database per fetch: its memory is about"
        " one batch, whatever the number of contacts.",
    )
    # Limits before work: checked before authentication and before parsing.
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body (JSON), in bytes: 413."
    )
    max_props_bytes: int = Field(
        default=64 * 1024, ge=1, description="Largest `props` of one event, as JSON, in bytes."
    )
    max_fields_per_request: int = Field(
        default=200, ge=1, description="Most custom field values one upsert or event may set."
    )
    max_field_value_bytes: int = Field(
        default=64 * 1024, ge=1, description="Largest custom field value, as JSON, in bytes."
    )
    # Rate limits per API key (GCRA, shared by every server process through the
    # database). Benchmarks raise them.
    rate_limit_per_second: float = Field(
        default=100.0, gt=0, description="Sustained requests per second per key."
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, description="Requests a key may send at once before being limited."
    )
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
    import_batch_size: int = Field(
        default=250,
        ge=1,
        le=10_000,
        description="Rows an import applies per transaction (each holds its contacts' locks"
        " until it commits).",
    )

    # Rule sets and their backfills (nudgel.api.rules).
    rules_max_nodes: int = Field(
        default=10_000,
        ge=1,
        description="The most segments plus scores a workspace's rules may have: a deploy with"
        " more is refused (422). Each is a value per contact to compute and store.",
    )
    backfill_batch_size: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="Contacts a backfill evaluates and writes per transaction.",
    )
    backfill_max_columns: int = Field(
        default=1000,
        ge=3,
        le=1664,
        description="Values per contact (segments, scores, aggregates) one backfill query"
        " computes; larger rule sets are evaluated in several queries over one snapshot"
        " (PostgreSQL refuses more than 1,664). A segment or score that alone needs more is"
        " refused at deploy.",
    )

    # Jobs (backfills, imports) and their leases (nudgel.api.jobs).
    job_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a job stays with the process running it without a heartbeat"
        " (one every third of this): a crashed process's jobs are resumed by another"
        " `nudgel serve` or `nudgel worker` this long after its last heartbeat.",
    )
    job_resume_interval: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between looks for jobs whose lease lapsed (also done at start-up),"
        " in `nudgel serve` (with run_worker) and `nudgel worker`.",
    )

    # Lists and double opt-in (nudgel.api.lists.mailer, nudgel.api.lists.tokens).
    smtp_url: str | None = Field(
        default=None,
        description="Where emails go: `smtp://user:password@host:587` (STARTTLS when the"
        " server offers it) or `smtps://...:465` (TLS from the start). Unset: emails are"
        " written to the log and kept per workspace for `GET /v1/dev/inbox`.",
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
    unsubscribe_max_age: int = Field(
        default=365 * 24 * 3600,
        ge=1,
        description="Seconds an unsubscribe link stays valid (people unsubscribe from old"
        " emails: keep it long).",
    )
    dev_inbox_max_messages: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="With no SMTP server: the emails kept per workspace for `GET /v1/dev/inbox`"
        " (the oldest go first).",
    )
    dev_inbox_max_message_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="With no SMTP server: the text of a kept email is cut to this many bytes.",
    )

    # User-written list templates (nudgel.api.lists.rendering): each render runs
    # in a worker process, bounded in time, output and memory.
    template_timeout_ms: int = Field(
        default=1000,
        ge=10,
        le=60_000,
        description="Milliseconds a template render may take; past that its worker process is"
        " killed and replaced, and the render fails.",
    )
    template_max_output: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Bytes a rendered template may have (also bounds what a template builds on"
        " the way: repeated strings, powers, format widths).",
    )
    template_max_range: int = Field(
        default=10_000, ge=1, description="The most items `range()` gives in a template."
    )
    template_workers: int = Field(
        default=2, ge=1, le=64, description="Worker processes that render templates."
    )
    template_renders_per_workspace: int = Field(
        default=1,
        ge=1,
        description="Renders one workspace may have running at once (per server process), so"
        " one workspace's slow templates leave workers free for the others.",
    )
    template_worker_memory_mb: int = Field(
        default=512,
        ge=64,
        description="Address space (MiB) of a render worker process; a render that needs more"
        " fails.",
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
