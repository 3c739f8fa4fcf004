"""`nudgel`: run and administer the Nudgel service.

With no ``DATABASE_URL`` every command uses the embedded PostgreSQL in
``$NUDGEL_DATA_DIR`` (default: the user's data folder), shared by every
`nudgel` process with the same settings.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import click
import psycopg
from nudgel.api.db.embedded import database_url_from_env
from nudgel.api.keys.store import (
    SCOPES,
    KeyMode,
    Scope,
    create_key,
    key_id_text,
    list_keys_sync,
    revoke_key,
    revoke_key_id_sync,
    workspace_id_of,
)
from nudgel.api.settings import Settings
from nudgel.cli.export_command import export_command
from nudgel.cli.import_command import import_command
from nudgel.cli.rules_commands import rules
from nudgel.cli.workspaces import workspace_options
from nudgel.schema.migrate import apply_migrations

from nudgel import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nudgel")
def cli() -> None:
    """Contacts, segments and scoring, compiled."""


@cli.command()
def migrate() -> None:
    """Apply the database migrations that have not run yet."""
    url = database_url_from_env()
    with psycopg.connect(url, autocommit=True) as conn:
        applied = apply_migrations(conn)
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("the database is up to date")


@cli.command(name="database-url")
def database_url() -> None:
    """Print the URL of the database the service uses (starting the embedded one)."""
    click.echo(database_url_from_env())


@cli.command()
@click.option(
    "--host", default=None, help="Interface to listen on [default: NUDGEL_HOST or 127.0.0.1]."
)
@click.option("--port", type=int, default=None, help="Port [default: NUDGEL_PORT or 8000].")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API (uvicorn), applying pending migrations first."""
    import uvicorn
    from nudgel.api.app import create_app

    settings = Settings()
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    if settings.database_url:
        click.echo("nudgel: database from DATABASE_URL")
    else:
        # Started here rather than in the app's start-up, so the location is
        # printed before anything else; the app reuses the running server.
        settings.database_url = settings.resolve_database_url()
        click.echo(f"nudgel: embedded PostgreSQL in {settings.embedded_data_dir()}")
    click.echo(f"nudgel: API on http://{settings.host}:{settings.port} (docs at /docs)")
    # After a graceful shutdown uvicorn re-raises the signal that stopped it
    # under the handler that was there before. With the default SIGTERM
    # handler the process would die without running atexit hooks, and the
    # embedded PostgreSQL (stopped by one) would outlive it; exiting normally
    # lets it stop.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


@cli.command()
def worker() -> None:
    """Deliver webhooks, re-evaluate contacts as time passes and resume jobs
    whose process died, until Ctrl-C or SIGTERM (what `nudgel serve` also runs).

    Any number of workers may run side by side, with or without `serve`:
    they share the deliveries without sending one twice at the same time,
    and a job is resumed by one of them.
    """
    import asyncio

    from nudgel.api.webhooks.delivery import run_standalone

    settings = Settings()
    url = settings.resolve_database_url()
    if settings.migrate_on_startup:
        with psycopg.connect(url, autocommit=True) as conn:
            apply_migrations(conn)
    click.echo(
        "nudgel: delivering webhooks, re-evaluating contacts as time passes and resuming"
        " jobs (Ctrl-C stops)",
        err=True,
    )
    asyncio.run(run_standalone(url, settings))
    click.echo("nudgel: worker stopped", err=True)


@cli.group()
def keys() -> None:
    """Create, list, rotate and revoke API keys."""


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    match = re.fullmatch(r"([1-9][0-9]{0,5})([hd])", text)
    if match is None:
        raise click.BadParameter("give a number of hours or days, e.g. 12h or 90d")
    amount = int(match.group(1))
    return datetime.now(UTC) + (
        timedelta(hours=amount) if match.group(2) == "h" else timedelta(days=amount)
    )


@keys.command(name="create")
@click.option("--workspace", required=True, help="Workspace name; created if new.")
@click.option("--test", "test_mode", is_flag=True, help="Make an sk_test_ key instead of sk_live_.")
@click.option("--name", default=None, help="A label to tell keys apart.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPES),
    help="Restrict the key (repeatable): read, write or ingest. None: a full key.",
)
@click.option("--expires-in", default=None, help="Expire after this long: 12h, 90d.")
def keys_create(
    workspace: str,
    test_mode: bool,
    name: str | None,
    scopes: tuple[Scope, ...],
    expires_in: str | None,
) -> None:
    """Create a key and print it (it is shown only this once)."""
    expires_at = _expiry(expires_in)
    with psycopg.connect(Settings().resolve_database_url(), autocommit=True) as conn:
        apply_migrations(conn)
        issued = create_key(
            conn,
            workspace,
            "test" if test_mode else "live",
            name=name,
            scopes=scopes or None,
            expires_at=expires_at,
        )
    click.echo(issued.secret)
    click.echo(
        f"created {issued.mode} key {key_id_text(issued.id)} ({issued.prefix}...) for workspace"
        f" {workspace!r}; store it now, it cannot be shown again",
        err=True,
    )


@keys.command(name="list")
@workspace_options
def keys_list(workspace: str, test_mode: bool) -> None:
    """List the keys of a workspace (one mode): id, prefix, name, scopes, dates."""
    mode: KeyMode = "test" if test_mode else "live"
    with psycopg.connect(Settings().resolve_database_url(), autocommit=True) as conn:
        apply_migrations(conn)
        workspace_id = workspace_id_of(conn, workspace, mode)
        if workspace_id is None:
            raise click.ClickException(f"workspace {workspace!r} has no {mode} keys")
        for key in list_keys_sync(conn, workspace_id):
            state = "revoked" if key.revoked_at else "active"
            click.echo(
                "\t".join(
                    [
                        key_id_text(key.id),
                        key.prefix + "...",
                        state,
                        key.name or "-",
                        ",".join(key.scopes) if key.scopes else "full",
                        f"created {key.created_at:%Y-%m-%d %H:%M}",
                        f"last used {key.last_used_at:%Y-%m-%d %H:%M}"
                        if key.last_used_at
                        else "never used",
                        f"expires {key.expires_at:%Y-%m-%d %H:%M}"
                        if key.expires_at
                        else "no expiry",
                    ]
                )
            )


@keys.command(name="revoke")
@click.argument("key")
@click.option("--workspace", default=None, help="With a key id (key_...): its workspace.")
@click.option("--test", "test_mode", is_flag=True, help="With a key id: a test key.")
def keys_revoke(key: str, workspace: str | None, test_mode: bool) -> None:
    """Revoke KEY, given in full or by id (key_... with --workspace): requests with it get
    401 from now on."""
    with psycopg.connect(Settings().resolve_database_url(), autocommit=True) as conn:
        apply_migrations(conn)
        match = re.fullmatch(r"key_([1-9][0-9]{0,17})", key)
        if match is None:
            done = revoke_key(conn, key)
        else:
            if workspace is None:
                raise click.UsageError("a key id needs --workspace")
            workspace_id = workspace_id_of(conn, workspace, "test" if test_mode else "live")
            done = workspace_id is not None and revoke_key_id_sync(
                conn, workspace_id, int(match.group(1))
            )
        if not done:
            raise click.ClickException("no such active key")
    click.echo("revoked")


cli.add_command(rules)
cli.add_command(import_command)
cli.add_command(export_command)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="nudgel")


if __name__ == "__main__":
    main()
