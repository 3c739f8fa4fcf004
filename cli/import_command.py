"""`nudgel import FILE.csv --workspace NAME`: the CSV import of ``POST /v1/imports``
from the command line, with a progress bar.

The file is staged and applied in this process (``nudgel.api.jobs.imports``),
straight on the database; the job is the same as the API's, so
``GET /v1/imports/{id}`` shows it afterwards, and if this command is stopped
mid-way, a running ``nudgel serve`` or ``nudgel worker`` resumes it once its
lease lapses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import IO

import click
import psycopg
from nudgel.api.db.embedded import database_url_from_env
from nudgel.api.db.pool import make_pool
from nudgel.api.jobs.imports import (
    DEFAULT_SOURCE,
    ImportRefused,
    prepare_import,
    rejected_rows,
    run_import,
)
from nudgel.api.jobs.runner import JobHost
from nudgel.api.settings import Settings
from nudgel.cli.job_progress import follow_job
from nudgel.cli.workspaces import resolve_workspace, workspace_options
from nudgel.schema.migrate import apply_migrations

__all__ = ["import_command"]

SHOWN_REJECTIONS = 10


@click.command(name="import")
@click.argument("path", metavar="FILE.csv")
@workspace_options
@click.option("--tag", "tags", multiple=True, help="Add this tag to every contact (repeatable).")
@click.option(
    "--list",
    "list_name",
    default=None,
    help="Subscribe every contact to this list (double opt-in: pending and a confirmation email).",
)
@click.option(
    "--mapping",
    default=None,
    help='JSON object of header: target, e.g. \'{"E-mail": "email", "Notes": "-"}\'.',
)
@click.option(
    "--source", default=DEFAULT_SOURCE, show_default=True, help="Origin recorded for the values."
)
def import_command(
    path: str,
    workspace: str,
    test_mode: bool,
    tags: tuple[str, ...],
    list_name: str | None,
    mapping: str | None,
    source: str,
) -> None:
    """Import contacts from FILE.csv (UTF-8, a header row first).

    Columns map to attributes (email, phone, whatsapp_id, external_id, name,
    tags, push_tokens) and fields by header name; --mapping overrides that
    ("-" ignores a column). Rows merge like `POST /v1/contacts` upserts; a bad
    row is reported with its row number (the header is row 1) and reason and
    the rest goes on. Exit 0 when the import ran, rejected rows or not; 1 when
    the file cannot be read or imported at all, or the import failed.

    With --list on a double opt-in list, the confirmation emails go through
    NUDGEL_SMTP_URL; without it they are kept in the workspace's dev inbox
    (GET /v1/dev/inbox), as the service keeps them. Their templates render in
    worker processes with the service's limits.
    """
    columns = _parse_mapping(mapping)
    try:
        binary = open(path, "rb")  # noqa: SIM115 - closed below, after the async part
    except OSError as error:
        raise click.ClickException(f"cannot read {path}: {error.strerror}") from None
    with binary:
        settings = Settings()
        url = database_url_from_env()
        with psycopg.connect(url, autocommit=True) as conn:
            apply_migrations(conn)
        sys.exit(
            asyncio.run(
                _import(
                    url,
                    settings,
                    binary,
                    path,
                    (workspace, test_mode),
                    columns,
                    tags,
                    list_name,
                    source,
                )
            )
        )


def _parse_mapping(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--mapping") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise click.BadParameter("a JSON object of header: target", param_hint="--mapping")
    return value


async def _import(
    url: str,
    settings: Settings,
    binary: IO[bytes],
    path: str,
    workspace: tuple[str, bool],
    mapping: dict[str, str] | None,
    tags: tuple[str, ...],
    list_name: str | None,
    source: str,
) -> int:
    pool = make_pool(url, settings, for_jobs=True)
    await pool.open(wait=True)
    host: JobHost | None = None
    try:
        async with pool.connection() as conn:
            workspace_id = await resolve_workspace(conn, *workspace)
            click.echo(f"staging {path} ...", err=True)
            try:
                async with conn.transaction():
                    job_id, total = await prepare_import(
                        conn,
                        workspace_id,
                        binary,
                        filename=path,
                        mapping=mapping,
                        tags=list(tags),
                        source=source,
                        list_name=list_name,
                        lease_seconds=settings.job_lease_seconds,
                    )
            except ImportRefused as error:
                raise click.ClickException(error.detail) from None
        click.echo(f"import {job_id}: {total} rows", err=True)
        # The signing key, the template renderer and the mailer of list emails
        # hang off the host's app state (an app object of its own, with the
        # same settings; the renderer is started if the import needs one).
        host = JobHost(pool, settings)
        task = asyncio.create_task(run_import(host, job_id))
        status, result, error_text = await follow_job(pool, job_id, task, "importing")
        if status != "succeeded":
            click.echo(f"the import failed: {error_text}", err=True)
            return 1
        assert result is not None
        click.echo(
            f"{result['rows']} rows: {result['created']} created, {result['updated']} updated,"
            f" {result['merged']} merged, {result['unchanged']} unchanged,"
            f" {result['rejected']} rejected"
        )
        if result["rejected"]:
            async with pool.connection() as conn:
                shown = await rejected_rows(conn, job_id, 0, SHOWN_REJECTIONS)
            for rejection in shown:
                where = f" ({rejection.column})" if rejection.column else ""
                click.echo(f"row {rejection.row}{where}: {rejection.reason}")
            if result["rejected"] > len(shown):
                click.echo(
                    f"... and {result['rejected'] - len(shown)} more:"
                    f" GET /v1/imports/{job_id}/rejected"
                )
        return 0
    finally:
        if host is not None:
            await host.stop()
        await pool.close()
