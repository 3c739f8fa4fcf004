"""``--workspace NAME [--test]``: which workspace, in which mode, a command acts on.

A workspace name has separate live and test data (as its ``sk_live_`` and
``sk_test_`` keys do); commands act on live data unless ``--test`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from psycopg import AsyncConnection

__all__ = ["mode_of", "resolve_workspace", "workspace_options"]

F = TypeVar("F", bound=Callable[..., Any])


def workspace_options(function: F) -> F:
    function = click.option(
        "--test", "test_mode", is_flag=True, help="Act on the workspace's test data (sk_test_)."
    )(function)
    return click.option("--workspace", required=True, help="The workspace's name.")(function)


def mode_of(test_mode: bool) -> str:
    return "test" if test_mode else "live"


async def resolve_workspace(conn: AsyncConnection, name: str, test_mode: bool) -> int:
    """The id of workspace ``name`` in the mode asked for; a clear error when it has none."""
    cur = await conn.execute("SELECT id, mode FROM workspaces WHERE name = %s", (name,))
    rows = {mode: int(id_) for id_, mode in await cur.fetchall()}
    mode = mode_of(test_mode)
    if mode in rows:
        return rows[mode]
    if rows:
        other = next(iter(rows))
        hint = "pass --test" if other == "test" else "drop --test"
        raise click.ClickException(f"workspace {name!r} has no {mode} data, only {other} ({hint})")
    raise click.ClickException(f"no workspace named {name!r}")
