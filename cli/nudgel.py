"""`nudgel`: run and administer the Nudgel service.

With no ``DATABASE_URL`` every command uses the embedded PostgreSQL in
``$NUDGEL_DATA_DIR`` (default: the user's data folder), shared by every
`nudgel` process with the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import click
import psycopg
from nudgel.api.embedded import database_url_from_env
from nudgel.api.migrate import apply_migrations

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


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="nudgel")


if __name__ == "__main__":
    main()
