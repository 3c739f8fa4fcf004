"""`rulec`: check, format, compile and evaluate rule files (spec §13).

Exit codes: 0 clean (or warnings only), 1 errors in the rules or the data,
2 usage or I/O errors and internal errors (which print a traceback).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from nudgel.dsl import render
from nudgel.dsl.checker import CheckedRules, CheckResult, check_sources
from nudgel.dsl.diagnostics import SYNTAX, Diagnostic
from nudgel.dsl.span import Span
from nudgel.dsl.timeparse import parse_timestamp

from nudgel import __version__

FORMATS = ("human", "json", "github", "sarif")


class RuleFiles:
    """The rule set named on the command line: files and directories, read as
    UTF-8. Undecodable files become diagnostics, not crashes."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.sources: dict[str, str] = {}
        self.read_errors: list[Diagnostic] = []
        for path in collect_rule_files(paths):
            data = read_bytes(path)
            try:
                self.sources[str(path)] = data.decode("utf-8")
            except UnicodeDecodeError as error:
                line = data[: error.start].count(b"\n") + 1
                column = (
                    len(data[: error.start].rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
                )
                self.read_errors.append(
                    SYNTAX(
                        Span.point(str(path), line, column),
                        message=f"the file is not valid UTF-8 (byte 0x{data[error.start]:02x})",
                    )
                )

    def check(self) -> CheckResult:
        result = check_sources(self.sources)
        if not self.read_errors:
            return result
        diagnostics = sorted([*self.read_errors, *result.diagnostics], key=Diagnostic.sort_key)
        return CheckResult(None, tuple(diagnostics))


def collect_rule_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.rules") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            fail(f"no such file or directory: {name}")
    if not files:
        fail("no .rules files found in " + ", ".join(paths))
    return files


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror or error}")


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"rulec: {message}", err=True)
    sys.exit(code)


def render_diagnostics(result: CheckResult, sources: dict[str, str], fmt: str, color: bool) -> str:
    if fmt == "json":
        return render.render_json(result.diagnostics)
    if fmt == "github":
        return render.render_github(result.diagnostics)
    if fmt == "sarif":
        return render.render_sarif(result.diagnostics, tool_version=__version__)
    return render.render_human(result.diagnostics, sources, color=color)


def checked_rules(files: RuleFiles) -> CheckedRules:
    """The rules, or exit 1 with the diagnostics on standard error."""
    result = files.check()
    if result.rules is None:
        color = sys.stderr.isatty()
        click.echo(
            render.render_human(result.diagnostics, files.sources, color=color), err=True, nl=False
        )
        sys.exit(1)
    return result.rules


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rulec")
def cli() -> None:
    """Check, format, compile and evaluate Nudgel rule files."""


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="human", show_default=True)
@click.option(
    "--color/--no-color", default=None, help="Colour the human format (default: on a terminal)."
)
def check(paths: tuple[str, ...], fmt: str, color: bool | None) -> None:
    """Parse, resolve and type-check rule files and directories."""
    files = RuleFiles(paths)
    result = files.check()
    use_color = sys.stdout.isatty() if color is None else color
    click.echo(render_diagnostics(result, files.sources, fmt, use_color), nl=False)
    sys.exit(1 if result.has_errors else 0)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--check", "check_only", is_flag=True, help="Exit 1 if a file would change; write nothing."
)
def fmt(paths: tuple[str, ...], check_only: bool) -> None:
    """Rewrite rule files in the canonical layout."""
    from nudgel.dsl.fmt import FormatError, format_source

    files = RuleFiles(paths)
    if files.read_errors:
        click.echo(render.render_human(files.read_errors, {}), err=True, nl=False)
        sys.exit(1)
    changed: list[str] = []
    failed = False
    for path, source in files.sources.items():
        try:
            formatted = format_source(source, path)
        except FormatError as error:
            click.echo(render.render_human(error.diagnostics, {path: source}), err=True, nl=False)
            failed = True
            continue
        if formatted != source:
            changed.append(path)
            if not check_only:
                Path(path).write_text(formatted, encoding="utf-8")
    for path in changed:
        click.echo(f"would reformat {path}" if check_only else f"reformatted {path}")
    if failed or (check_only and changed):
        sys.exit(1)


@cli.command(name="compile")
@click.argument("paths", nargs=-1, required=True)
@click.option("--segment", help="Compile this segment's membership query.")
@click.option("--score", help="Compile this score model's query.")
@click.option("--lifecycle", is_flag=True, help="Compile the lifecycle stage query.")
def compile_command(
    paths: tuple[str, ...], segment: str | None, score: str | None, lifecycle: bool
) -> None:
    """Print the parameterised PostgreSQL for a segment, score or the lifecycle."""
    from nudgel.compiler.sql import SqlCompiler

    if (segment is not None) + (score is not None) + lifecycle != 1:
        fail("give exactly one of --segment NAME, --score NAME or --lifecycle")
    rules = checked_rules(RuleFiles(paths))
    compiler = SqlCompiler(rules)
    if segment is not None:
        if segment not in rules.segments:
            fail(f"unknown segment `{segment}`", 1)
        query = compiler.segment_members(segment)
    elif score is not None:
        if score not in rules.scores:
            fail(f"unknown score `{score}`", 1)
        query = compiler.score_values(score)
    else:
        if rules.lifecycle is None:
            fail("the rule set has no lifecycle block", 1)
        query = compiler.stages()
    click.echo(query.sql.rstrip() + ";")
    click.echo("-- parameters:")
    click.echo(json.dumps(query.params, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    return str(value)


@cli.command(name="eval")
@click.argument("paths", nargs=-1, required=True)
@click.option("--contacts", "contacts_path", required=True, type=click.Path(dir_okay=False))
@click.option("--now", "now_text", required=True, help="RFC 3339 timestamp with an offset.")
@click.option(
    "--backend", type=click.Choice(("memory", "postgres")), default="memory", show_default=True
)
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    help="PostgreSQL for --backend postgres (default: embedded).",
)
def eval_command(
    paths: tuple[str, ...],
    contacts_path: str,
    now_text: str,
    backend: str,
    database_url: str | None,
) -> None:
    """Evaluate every segment, score and the lifecycle for each contact."""
    from nudgel.runtime.contact import DataError, load_contacts, parse_jsonl

    now = parse_timestamp(now_text)
    if now is None:
        fail(f"--now must be an RFC 3339 timestamp with an offset, got {now_text!r}")
    rules = checked_rules(RuleFiles(paths))
    try:
        text = read_bytes(Path(contacts_path)).decode("utf-8")
    except UnicodeDecodeError as error:
        fail(f"{contacts_path}: not valid UTF-8 ({error.reason} at byte {error.start})")
    field_types = {name: rules.field_type(name) for name in rules.fields}
    try:
        contacts = load_contacts(parse_jsonl(text), field_types, rules.stage_names)
    except DataError as error:
        fail(str(error), 1)
    except ValueError as error:
        fail(f"{contacts_path}: {error}", 1)
    if backend == "memory":
        from nudgel.runtime.program import Program

        result = Program.compile(rules).evaluate_all(contacts, now)
    else:
        from nudgel.api.db.embedded import database_url_from_env
        from nudgel.runtime.postgres_eval import evaluate_postgres

        url = database_url or database_url_from_env()
        result = evaluate_postgres(rules, contacts, now, url)
    click.echo(json.dumps(result.to_json(), ensure_ascii=False))


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="rulec", standalone_mode=True
        )
    except SystemExit:
        raise
    except Exception:  # an internal error: a crash, reported as one
        traceback.print_exc()
        click.echo("rulec: internal error (this is a bug in rulec; please report it)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
