"""Renderers that turn a list of diagnostics into text for people and for tools.

Every renderer is a pure function returning ``str`` (ending in a newline when it is
not empty) and lists the diagnostics sorted by file, line and column, so that the
output of ``rulec check`` is stable from run to run:

- :func:`render_human`: mypy/rustc style, with the source line and a marker;
- :func:`render_json`: the versioned document of ``docs/diagnostics-json.md``;
- :func:`render_github`: GitHub Actions workflow commands (annotations);
- :func:`render_sarif`: SARIF 2.1.0, for code-scanning tools.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nudgel.dsl.diagnostics import REGISTRY, Code, Diagnostic, Severity
from nudgel.dsl.span import NO_SPAN, Span

__all__ = [
    "INFORMATION_URI",
    "JSON_VERSION",
    "SARIF_SCHEMA_URI",
    "TAB_WIDTH",
    "render_github",
    "render_human",
    "render_json",
    "render_sarif",
]

JSON_VERSION = 1
TAB_WIDTH = 4
SARIF_SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
INFORMATION_URI = "https://pypi.org/project/nudgel/"


def _sorted(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=Diagnostic.sort_key)


def _counts(diagnostics: list[Diagnostic]) -> tuple[int, int]:
    errors = sum(1 for d in diagnostics if d.severity is Severity.ERROR)
    return errors, len(diagnostics) - errors


def _located(span: Span) -> bool:
    """False for the ``NO_SPAN`` sentinel: a problem with no place in a source file."""
    return span is not NO_SPAN


def _with_help(d: Diagnostic) -> str:
    return f"{d.message}\nhelp: {d.help}" if d.help else d.message


# --- human -------------------------------------------------------------------

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_BLUE = "\x1b[1;34m"
_LEVEL_STYLE = {Severity.ERROR: "\x1b[1;31m", Severity.WARNING: "\x1b[1;33m"}


def render_human(
    diagnostics: Iterable[Diagnostic], sources: Mapping[str, str], *, color: bool = False
) -> str:
    """Diagnostics as a person reads them in a terminal, then a one-line summary.

    ``sources`` maps a file name (as in ``Span.file``) to its text; a diagnostic
    whose file or line is not there is shown without its source line.
    """
    ds = _sorted(diagnostics)
    blocks = [_human_block(d, sources.get(d.span.file), color) for d in ds]
    blocks.append(_summary(ds))
    return "\n\n".join(blocks) + "\n"


def _human_block(d: Diagnostic, source: str | None, color: bool) -> str:
    def paint(text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if color else text

    span = d.span
    where = f"{span.file}:{span.line}:{span.column}: " if _located(span) else ""
    level = paint(f"{d.severity.value}[{d.code}]", _LEVEL_STYLE[d.severity])
    lines = [f"{where}{level}: {paint(d.message, _BOLD)}"]

    # The gutter is as wide as the line number, plus one space either side.
    pad = " " * (len(str(span.line)) + 2)
    text = _source_line(source, span.line) if _located(span) else None
    if text is not None:
        shown, indent, width = _snippet(text, span)
        number = paint(f" {span.line} |", _BLUE)
        marker = paint("^" + "~" * (width - 1), _LEVEL_STYLE[d.severity])
        lines += [
            paint(f"{pad}|", _BLUE),
            f"{number} {shown}".rstrip() if shown.strip() else number,
            f"{paint(f'{pad}|', _BLUE)} {' ' * indent}{marker}",
        ]
    if d.help:
        lines.append(f"{pad}{paint('=', _BLUE)} {paint('help', _BOLD)}: {d.help}")
    return "\n".join(lines)


def _source_line(source: str | None, line: int) -> str | None:
    # Split on "\n" only, as the lexer counts lines: str.splitlines would also
    # break at form feeds, U+2028 and the like and shift every later line.
    lines = [] if source is None else source.split("\n")
    if not 1 <= line <= len(lines):
        return None
    return lines[line - 1].removesuffix("\r")


def _cell(char: str, at: int) -> tuple[str, int]:
    """How ``char`` is drawn when it starts at terminal cell ``at``: text and width."""
    if char == "\t":
        # Expanded here, identically for the source line and the marker line,
        # because the terminal's own tab stops would not count the gutter.
        width = TAB_WIDTH - at % TAB_WIDTH
        return " " * width, width
    category = unicodedata.category(char)
    if category == "Cc":
        # A raw control character would drive the terminal rather than show.
        return "\ufffd", 1
    if category in ("Mn", "Me", "Cf"):
        return char, 0  # combining marks and joiners draw over their neighbour
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return char, 2
    return char, 1


def _snippet(text: str, span: Span) -> tuple[str, int, int]:
    """The source line as drawn, then where the marker starts and how wide it is
    (in terminal cells): from the span's first character to its end on this line,
    at least one cell so that an empty span still gets its ``^``."""
    cells: list[tuple[str, int]] = []
    at = 0
    for char in text:
        cells.append(_cell(char, at))
        at += cells[-1][1]

    line_end = len(text) + 1  # the column just past the last character
    start = min(max(span.column, 1), line_end)
    end = span.end_column if span.end_line == span.line else line_end
    end = min(max(end, start), line_end)

    indent = sum(width for _, width in cells[: start - 1])
    width = sum(width for _, width in cells[start - 1 : end - 1])
    return "".join(shown for shown, _ in cells), indent, max(width, 1)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary(ds: list[Diagnostic]) -> str:
    if not ds:
        return "No problems found"
    errors, warnings = _counts(ds)
    found = " and ".join(
        _plural(n, word) for n, word in ((errors, "error"), (warnings, "warning")) if n
    )
    files = len({d.span.file for d in ds if _located(d.span)})
    return f"Found {found} in {_plural(files, 'file')}" if files else f"Found {found}"


# --- JSON --------------------------------------------------------------------


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """The JSON document of ``docs/diagnostics-json.md``, valid against
    ``diagnostics.schema.json``. Columns count code points; the end is exclusive."""
    ds = _sorted(diagnostics)
    errors, warnings = _counts(ds)
    document = {
        "version": JSON_VERSION,
        "diagnostics": [
            {
                "code": d.code,
                "severity": d.severity.value,
                "message": d.message,
                "file": d.span.file,
                "line": d.span.line,
                "column": d.span.column,
                "end_line": d.span.end_line,
                "end_column": d.span.end_column,
                "help": d.help,
            }
            for d in ds
        ],
        "summary": {"errors": errors, "warnings": warnings},
    }
    # ASCII only (\u escapes), so that no console encoding can break it.
    return json.dumps(document, indent=2) + "\n"


# --- GitHub Actions ----------------------------------------------------------


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(diagnostics: Iterable[Diagnostic]) -> str:
    """One ``::error``/``::warning`` workflow command a line; the runner turns each
    into an annotation on the file (or on the run, for a diagnostic with no place)."""
    commands = []
    for d in _sorted(diagnostics):
        span = d.span
        props: list[tuple[str, object]] = []
        if _located(span):
            props += [("file", span.file), ("line", span.line)]
            if span.end_line == span.line:
                # GitHub's endColumn is the last column (inclusive) and defaults to
                # col; it takes columns only for an annotation on a single line.
                last = max(span.column, span.end_column - 1)
                props += [("col", span.column), ("endLine", span.line), ("endColumn", last)]
            else:
                props.append(("endLine", span.end_line))
        code = REGISTRY.get(d.code)
        props.append(("title", f"{d.code} {code.title}" if code else d.code))
        joined = ",".join(f"{key}={_escape_property(str(value))}" for key, value in props)
        commands.append(f"::{d.severity.value} {joined}::{_escape_data(_with_help(d))}")
    return "".join(f"{command}\n" for command in commands)


# --- SARIF -------------------------------------------------------------------


def render_sarif(
    diagnostics: Iterable[Diagnostic],
    *,
    tool_version: str,
    information_uri: str = INFORMATION_URI,
) -> str:
    """A SARIF 2.1.0 log with one run of ``rulec``; its rules are the whole registry.

    Columns are reported as code points (``run.columnKind``), as spans count them:
    the renderer has no source text to convert them to SARIF's default UTF-16 units.
    """
    rules = list(REGISTRY.values())
    index = {rule.code: i for i, rule in enumerate(rules)}
    run = {
        "tool": {
            "driver": {
                "name": "rulec",
                "version": tool_version,
                "informationUri": information_uri,
                "rules": [_sarif_rule(rule) for rule in rules],
            }
        },
        "columnKind": "unicodeCodePoints",
        "results": [_sarif_result(d, index.get(d.code)) for d in _sorted(diagnostics)],
    }
    log = {"$schema": SARIF_SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2) + "\n"


def _sarif_rule(rule: Code) -> dict[str, Any]:
    # SARIF wants `name` to read like an identifier: "unknown name" -> "UnknownName".
    name = "".join(word[0].upper() + word[1:] for word in re.findall(r"[A-Za-z0-9]+", rule.title))
    return {
        "id": rule.code,
        "name": name,
        "shortDescription": {"text": rule.title},
        "defaultConfiguration": {"level": rule.severity.value},
    }


def _sarif_result(d: Diagnostic, rule_index: int | None) -> dict[str, Any]:
    result: dict[str, Any] = {"ruleId": d.code}
    if rule_index is not None:
        result["ruleIndex"] = rule_index
    result["level"] = d.severity.value
    result["message"] = {"text": _with_help(d)}
    span = d.span
    if _located(span):
        region = {
            "startLine": span.line,
            "startColumn": span.column,
            "endLine": span.end_line,
            "endColumn": span.end_column,
        }
        location = {"artifactLocation": _artifact_location(span.file), "region": region}
        result["locations"] = [{"physicalLocation": location}]
    return result


def _artifact_location(file: str) -> dict[str, str]:
    if Path(file).is_absolute():
        return {"uri": Path(file).as_uri()}
    # A relative path stays as given (percent-encoded to be a URI reference),
    # resolved by the consumer against the checkout: %SRCROOT% by convention.
    return {"uri": quote(file.replace(os.sep, "/")), "uriBaseId": "%SRCROOT%"}
