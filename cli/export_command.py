"""`nudgel export --workspace NAME`: the contacts of ``GET /v1/contacts/export``
from the command line, straight from the database (``nudgel.api.contacts.export``).

The same file as the API's: CSV with the columns ``nudgel import`` reads, or
JSON lines; streamed, so memory stays flat whatever the count. With
``--output`` the file appears under its name only once complete.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import BinaryIO

import click
import psycopg
from nudgel.api.contacts.export import ExportFormat, open_export
from nudgel.api.db.embedded import database_url_from_env
from nudgel.api.problems import ProblemError
from nudgel.api.settings import Settings
from nudgel.cli.workspaces import resolve_workspace, workspace_options
from nudgel.schema.migrate import apply_migrations

__all__ = ["export_command"]


@click.command(name="export")
@workspace_options
@click.option(
    "--where",
    default=None,
    help="Export only the contacts this rules-language condition holds for, e.g. 'tag \"vip\"'.",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
    help="csv: the columns `nudgel import` reads; jsonl: one contact per line, as the API shows it.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file (default: standard output).",
)
def export_command(
    workspace: str, test_mode: bool, where: str | None, format_: ExportFormat, output: str | None
) -> None:
    """Export the contacts of a workspace, in id order.

    CSV cells that a spreadsheet would run as a formula start with a `'`
    (plain numbers and E.164 phones are left as they are). Exit 1 when the
    workspace or the condition is not right, or the export failed.
    """
    settings = Settings()
    url = database_url_from_env()
    with psycopg.connect(url, autocommit=True) as conn:
        apply_migrations(conn)
    if output is None:
        asyncio.run(
            _export(url, settings, (workspace, test_mode), where, format_, sys.stdout.buffer)
        )
        return
    partial = f"{output}.partial"
    try:
        with open(partial, "wb") as out:
            asyncio.run(_export(url, settings, (workspace, test_mode), where, format_, out))
        os.replace(partial, output)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    click.echo(f"wrote {output} ({os.path.getsize(output):,} bytes)", err=True)


async def _export(
    url: str,
    settings: Settings,
    workspace: tuple[str, bool],
    where: str | None,
    format_: ExportFormat,
    out: BinaryIO,
) -> None:
    # No statement timeout: a command over a whole workspace, as jobs run.
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        workspace_id = await resolve_workspace(conn, *workspace)
        try:
            export = await open_export(
                conn, workspace_id, where, format_, settings.export_batch_size
            )
        except ProblemError as error:
            raise click.ClickException(error.detail or error.title) from None
        async for chunk in export.chunks:
            out.write(chunk)
        out.flush()
