"""`nudgel rules apply DIR` and `nudgel rules verify`: deploy a workspace's
rules from the command line (with the backfill's progress bar), and check
the stored real-time state against a fresh SQL evaluation."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from nudgel.api.db.embedded import database_url_from_env
from nudgel.api.db.pool import make_pool
from nudgel.api.jobs.runner import JobHost
from nudgel.api.problems import ProblemError
from nudgel.api.rules.backfill import run_backfill
from nudgel.api.rules.deploy import deploy, verify
from nudgel.api.rules.store import pull_files
from nudgel.api.settings import Settings
from nudgel.cli.job_progress import follow_job
from nudgel.cli.rulec import collect_rule_files
from nudgel.cli.workspaces import resolve_workspace, workspace_options
from nudgel.dsl.render import render_human
from psycopg_pool import AsyncConnectionPool

__all__ = ["rules"]


@click.group()
def rules() -> None:
    """Deploy and verify a workspace's segments, scores and lifecycle."""


def _read_sources(paths: tuple[str, ...]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for path in collect_rule_files(paths):
        base = next((Path(p) for p in paths if Path(p).is_dir() and path.is_relative_to(p)), None)
        name = str(path.relative_to(base)) if base is not None else path.name
        try:
            sources[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise click.ClickException(f"{path}: not valid UTF-8 ({error.reason})") from None
    return sources


def _pool() -> AsyncConnectionPool:
    return make_pool(database_url_from_env(), Settings(), for_jobs=True)


@rules.command()
@click.argument("paths", nargs=-1, required=True)
@workspace_options
@click.option(
    "--force-backfill",
    is_flag=True,
    help="Evaluate every contact even if the files are those in force (after a backfill"
    " failed or was cut short).",
)
def apply(paths: tuple[str, ...], workspace: str, test_mode: bool, force_backfill: bool) -> None:
    """Compile PATHS (files or folders of .rules) and deploy them; with errors,
    print them like `rulec check` and change nothing (exit 1).

    If this command is stopped during the backfill, a running `nudgel serve`
    or `nudgel worker` resumes it once its lease lapses."""
    sources = _read_sources(paths)
    sys.exit(asyncio.run(_apply(sources, workspace, test_mode, force_backfill)))


async def _apply(
    sources: dict[str, str], workspace: str, test_mode: bool, force_backfill: bool
) -> int:
    settings = Settings()
    pool = make_pool(database_url_from_env(), settings, for_jobs=True)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            workspace_id = await resolve_workspace(conn, workspace, test_mode)
            try:
                async with conn.transaction():
                    deployment = await deploy(
                        conn, workspace_id, sources, settings, force_backfill=force_backfill
                    )
            except ProblemError as refused:
                raise click.ClickException(refused.detail or refused.title) from None
        if deployment.diagnostics:
            click.echo(render_human(deployment.diagnostics, sources), err=True, nl=False)
        if deployment.version is None:
            return 1
        if deployment.job_id is None:
            click.echo(f"version {deployment.version} is already in force; nothing to do")
            return 0
        if deployment.unchanged:
            click.echo(f"version {deployment.version} is in force; evaluating every contact again")
        else:
            click.echo(f"deployed version {deployment.version}; evaluating every contact")
        host = JobHost(pool, settings)
        task = asyncio.create_task(run_backfill(host, deployment.job_id))
        status, _, error = await follow_job(pool, deployment.job_id, task, "backfill")
        if status != "succeeded":
            click.echo(f"the backfill failed: {error}", err=True)
            return 1
        return 0
    finally:
        await pool.close()


@rules.command(name="verify")
@workspace_options
def verify_command(workspace: str, test_mode: bool) -> None:
    """Recompute every membership, score and stage with the SQL backend and
    report each difference from the stored real-time state (exit 1 if any)."""
    sys.exit(asyncio.run(_verify(workspace, test_mode)))


async def _verify(workspace: str, test_mode: bool) -> int:
    pool = _pool()
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            workspace_id = await resolve_workspace(conn, workspace, test_mode)
            drifts = await verify(conn, workspace_id)
    finally:
        await pool.close()
    for drift in drifts:
        click.echo(str(drift))
    click.echo(f"{len(drifts)} difference{'s' if len(drifts) != 1 else ''}", err=True)
    return 1 if drifts else 0


@rules.command(name="pull")
@click.argument("directory", type=click.Path(file_okay=False))
@workspace_options
def pull(directory: str, workspace: str, test_mode: bool) -> None:
    """Write the workspace's deployed rule files, and its fields as
    `workspace_fields.rules`, into DIRECTORY, so that `rulec check DIRECTORY`
    checks the names and types a deploy will see. Files of the same names are
    overwritten; others are left alone."""
    files = asyncio.run(_pull(workspace, test_mode))
    target = Path(directory).resolve()
    for name, text in sorted(files.items()):
        path = (target / name).resolve()
        # File names come from whoever deployed: never write outside DIRECTORY.
        if not path.is_relative_to(target):
            raise click.ClickException(f"refusing to write {name!r} outside {directory}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        click.echo(str(path))
    click.echo(f"pulled {len(files)} file{'s' if len(files) != 1 else ''}", err=True)


async def _pull(workspace: str, test_mode: bool) -> dict[str, str]:
    pool = _pool()
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            workspace_id = await resolve_workspace(conn, workspace, test_mode)
            return await pull_files(conn, workspace_id)
    finally:
        await pool.close()
