"""Tests for nudgel.dsl.render: exact human output, and the machine formats
validated against their schemas (ours, and the official SARIF 2.1.0 one)."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from nudgel.dsl.diagnostics import (
    BAD_REGEX,
    CYCLE,
    REGISTRY,
    SYNTAX,
    UNKNOWN_NAME,
    UNUSED_FIELD,
    Diagnostic,
)
from nudgel.dsl.render import render_github, render_human, render_json, render_sarif
from nudgel.dsl.span import NO_SPAN, Span

# Vendored from PyPI (see tests/data/sarif-schema-2.1.0.md for where it came from).
SARIF_SCHEMA_PATH = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"

F = "rules/marketing.rules"
MARKETING = 'field plan: text\nsegment s { fields.plam = "pro" }\n'


def unknown(span: Span, name: str = "plam", help: str | None = None) -> Diagnostic:
    return UNKNOWN_NAME(span, help, kind="field", name=name)


def plam() -> Diagnostic:
    return unknown(Span(F, 2, 13, 2, 24), help='did you mean "plan"?')


def unused_plan() -> Diagnostic:
    return UNUSED_FIELD(Span(F, 1, 7, 1, 11), name="plan")


def human(source: str, *diagnostics: Diagnostic) -> str:
    return render_human(diagnostics, {F: source})


# --- human -------------------------------------------------------------------


def test_human_example_from_the_brief_sorted_with_summary() -> None:
    assert human(MARKETING, plam(), unused_plan()) == (
        "rules/marketing.rules:1:7: warning[W301]: field `plan` is declared but never used\n"
        "   |\n"
        " 1 | field plan: text\n"
        "   |       ^~~~\n"
        "\n"
        "rules/marketing.rules:2:13: error[E200]: unknown field `plam`\n"
        "   |\n"
        ' 2 | segment s { fields.plam = "pro" }\n'
        "   |             ^~~~~~~~~~~\n"
        '   = help: did you mean "plan"?\n'
        "\n"
        "Found 1 error and 1 warning in 1 file\n"
    )


def test_human_colour() -> None:
    red, yellow, blue, bold, reset = "\x1b[1;31m", "\x1b[1;33m", "\x1b[1;34m", "\x1b[1m", "\x1b[0m"
    out = render_human([plam(), unused_plan()], {F: MARKETING}, color=True)
    assert out == (
        f"rules/marketing.rules:1:7: {yellow}warning[W301]{reset}: "
        f"{bold}field `plan` is declared but never used{reset}\n"
        f"{blue}   |{reset}\n"
        f"{blue} 1 |{reset} field plan: text\n"
        f"{blue}   |{reset}       {yellow}^~~~{reset}\n"
        "\n"
        f"rules/marketing.rules:2:13: {red}error[E200]{reset}: {bold}unknown field `plam`{reset}\n"
        f"{blue}   |{reset}\n"
        f'{blue} 2 |{reset} segment s {{ fields.plam = "pro" }}\n'
        f"{blue}   |{reset}             {red}^~~~~~~~~~~{reset}\n"
        f'   {blue}={reset} {bold}help{reset}: did you mean "plan"?\n'
        "\n"
        "Found 1 error and 1 warning in 1 file\n"
    )
    assert "\x1b" not in render_human([plam()], {F: MARKETING})


def test_human_tabs_expand_alike_in_source_and_marker() -> None:
    # Tab stops every 4 cells: "  \t" fills cells 0-3, "foo" 4-6, the second
    # tab only cell 7, so `bar` (column 8) starts at cell 8.
    source = "  \tfoo\tbar\nx\t= 1\n"
    assert human(source, unknown(Span(F, 1, 8, 1, 11), "bar")) == (
        "rules/marketing.rules:1:8: error[E200]: unknown field `bar`\n"
        "   |\n"
        " 1 |     foo bar\n"
        "   |         ^~~\n"
        "\n"
        "Found 1 error in 1 file\n"
    )
    # A tab inside the span is marked over its whole width.
    assert human(source, unknown(Span(F, 2, 1, 2, 4), "x")).splitlines()[2:4] == [
        " 2 | x   = 1",
        "   | ^~~~~",
    ]


def test_human_non_ascii_and_combining_characters_are_one_column() -> None:
    # "café" precomposed, then "cafe\u0301" whose accent draws over the "e".
    source = 'f = "café" + "cafe\u0301" + zz\n'
    out = human(source, unknown(Span(F, 1, 24, 1, 26), "zz"))
    assert out.splitlines()[2:4] == [
        ' 1 | f = "café" + "cafe\u0301" + zz',
        "   | " + " " * 22 + "^~",
    ]


def test_human_wide_characters_take_two_cells() -> None:
    source = 'name = "日本語" + 😀x\n'
    # `x` is column 17 (code points), but the four wide characters before it
    # push it to cell 20 of the terminal.
    assert human(source, unknown(Span(F, 1, 17, 1, 18), "x")).splitlines()[2:4] == [
        ' 1 | name = "日本語" + 😀x',
        "   | " + " " * 20 + "^",
    ]
    # A span over wide characters is marked over both cells of each.
    assert human(source, unknown(Span(F, 1, 9, 1, 12), "日本語")).splitlines()[3] == (
        "   | " + " " * 8 + "^~~~~~"
    )


def test_human_span_at_end_of_file() -> None:
    # After the final newline: the empty line after it, marked with a lone ^.
    source = "segment s {\n"
    assert human(source, SYNTAX(Span(F, 2, 1, 2, 1), message="expected `}`")) == (
        "rules/marketing.rules:2:1: error[E100]: expected `}`\n"
        "   |\n"
        " 2 |\n"
        "   | ^\n"
        "\n"
        "Found 1 error in 1 file\n"
    )
    # No final newline: just past the last character of the last line.
    out = human("segment s {", SYNTAX(Span(F, 1, 12, 1, 12), message="expected `}`"))
    assert out.splitlines()[2:4] == [" 1 | segment s {", "   |            ^"]


def test_human_multi_line_span_is_marked_to_the_end_of_its_first_line() -> None:
    source = "segment a { segment.b }\nsegment b { segment.a }\n"
    cycle = CYCLE(Span(F, 1, 13, 2, 22), cycle="a -> b -> a")
    assert human(source, cycle).splitlines()[2:4] == [
        " 1 | segment a { segment.b }",
        "   |             ^~~~~~~~~~~",
    ]


def test_human_span_past_the_end_of_the_line_is_clamped() -> None:
    out = human("ab\n", unknown(Span(F, 1, 1, 1, 40), "ab"))
    assert out.splitlines()[2:4] == [" 1 | ab", "   | ^~"]


def test_human_wide_gutter_control_characters_and_crlf() -> None:
    source = "\r\n" * 11 + "a\x1bb = 1\r\n"
    assert human(source, unknown(Span(F, 12, 3, 12, 4), "b")) == (
        "rules/marketing.rules:12:3: error[E200]: unknown field `b`\n"
        "    |\n"
        " 12 | a\ufffdb = 1\n"
        "    |   ^\n"
        "\n"
        "Found 1 error in 1 file\n"
    )


def test_human_without_source_or_place() -> None:
    syntax = SYNTAX(NO_SPAN, message="no input files")
    missing = plam()
    assert render_human([missing, syntax], {}) == (
        "error[E100]: no input files\n"
        "\n"
        "rules/marketing.rules:2:13: error[E200]: unknown field `plam`\n"
        '   = help: did you mean "plan"?\n'
        "\n"
        "Found 2 errors in 1 file\n"
    )


def test_human_summary_counts() -> None:
    assert render_human([], {}) == "No problems found\n"
    other = UNUSED_FIELD(Span("rules/other.rules", 1, 1, 1, 2), name="x")
    out = render_human([unused_plan(), other], {})
    assert out.endswith("\n\nFound 2 warnings in 2 files\n")


# --- JSON --------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    text = files("nudgel.dsl").joinpath("diagnostics.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_json(document: object) -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


def test_json_document() -> None:
    text = render_json([plam(), unused_plan(), SYNTAX(NO_SPAN, message="日本 😀")])
    assert text.isascii() and text.endswith("}\n")
    document = json.loads(text)
    validate_json(document)
    assert document["version"] == 1
    assert document["summary"] == {"errors": 2, "warnings": 1}
    assert [d["code"] for d in document["diagnostics"]] == ["E100", "W301", "E200"]
    assert document["diagnostics"][0]["message"] == "日本 😀"
    assert document["diagnostics"][2] == {
        "code": "E200",
        "severity": "error",
        "message": "unknown field `plam`",
        "file": F,
        "line": 2,
        "column": 13,
        "end_line": 2,
        "end_column": 24,
        "help": 'did you mean "plan"?',
    }
    assert document["diagnostics"][1]["help"] is None


def test_json_empty_and_schema_is_strict() -> None:
    document = json.loads(render_json([]))
    validate_json(document)
    assert document == {"version": 1, "diagnostics": [], "summary": {"errors": 0, "warnings": 0}}

    bad = json.loads(render_json([plam()]))
    bad["diagnostics"][0]["severity"] = "info"
    with pytest.raises(jsonschema.ValidationError):
        validate_json(bad)


# --- GitHub Actions ----------------------------------------------------------


def test_github_commands() -> None:
    out = render_github([plam(), unused_plan()])
    assert out == (
        "::warning file=rules/marketing.rules,line=1,col=7,endLine=1,endColumn=10,"
        "title=W301 declared field never used::field `plan` is declared but never used\n"
        "::error file=rules/marketing.rules,line=2,col=13,endLine=2,endColumn=23,"
        'title=E200 unknown name::unknown field `plam`%0Ahelp: did you mean "plan"?\n'
    )
    assert render_github([]) == ""


def test_github_escaping() -> None:
    diagnostic = BAD_REGEX(
        Span("rules/a,b:c%.rules", 3, 5, 3, 5),
        "use [a-z], not \\w: 100%\r\nportable",
        message="`\\w` is not portable: 50% of engines, a,b",
    )
    assert render_github([diagnostic]) == (
        "::error file=rules/a%2Cb%3Ac%25.rules,line=3,col=5,endLine=3,endColumn=5,"
        "title=E221 regular expression outside the portable subset"
        "::`\\w` is not portable: 50%25 of engines, a,b"
        "%0Ahelp: use [a-z], not \\w: 100%25%0D%0Aportable\n"
    )


def test_github_multi_line_and_placeless() -> None:
    cycle = CYCLE(Span(F, 1, 13, 2, 22), cycle="a -> b -> a")
    nowhere = SYNTAX(NO_SPAN, message="no input files")
    assert render_github([cycle, nowhere]) == (
        "::error title=E100 syntax error::no input files\n"
        "::error file=rules/marketing.rules,line=1,endLine=2,title=E230 reference cycle"
        "::reference cycle: a -> b -> a\n"
    )


# --- SARIF -------------------------------------------------------------------

# RFC 3986 characters: the schema's "uri-reference" format is only checked when
# an optional package is installed, so check the shape here.
URI_REFERENCE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")


def sarif(diagnostics: list[Diagnostic]) -> dict[str, Any]:
    log: dict[str, Any] = json.loads(render_sarif(diagnostics, tool_version="0.1.0"))
    schema = json.loads(SARIF_SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(log)
    return log


def test_sarif_is_valid_and_describes_every_rule() -> None:
    log = sarif([plam(), unused_plan(), SYNTAX(NO_SPAN, message="no input files")])
    assert log["version"] == "2.1.0"
    assert log["$schema"] == json.loads(SARIF_SCHEMA_PATH.read_text(encoding="utf-8"))["id"]
    [run] = log["runs"]
    assert run["columnKind"] == "unicodeCodePoints"
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("rulec", "0.1.0")
    assert driver["informationUri"].startswith("https://")
    rules = driver["rules"]
    assert [rule["id"] for rule in rules] == list(REGISTRY)
    assert rules[[r["id"] for r in rules].index("E240")] == {
        "id": "E240",
        "name": "ContactDataInsideAnEventFilter",
        "shortDescription": {"text": "contact data inside an event filter"},
        "defaultConfiguration": {"level": "error"},
    }
    assert {r["defaultConfiguration"]["level"] for r in rules if r["id"][0] == "W"} == {"warning"}

    nowhere, unused, unknown_name = run["results"]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    assert "locations" not in nowhere
    assert unused["level"] == "warning"
    assert unknown_name == {
        "ruleId": "E200",
        "ruleIndex": list(REGISTRY).index("E200"),
        "level": "error",
        "message": {"text": 'unknown field `plam`\nhelp: did you mean "plan"?'},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": F, "uriBaseId": "%SRCROOT%"},
                    "region": {"startLine": 2, "startColumn": 13, "endLine": 2, "endColumn": 24},
                }
            }
        ],
    }


def test_sarif_paths_and_code_point_columns() -> None:
    # 😀 is one code point but two UTF-16 units: columns stay in code points,
    # as run.columnKind says.
    astral = unknown(Span("rules/ünï code.rules", 1, 4, 1, 5), "x")
    absolute = unknown(Span("/srv/rules/a.rules", 1, 1, 1, 2), "y")
    [run] = sarif([astral, absolute])["runs"]
    locations = [r["locations"][0]["physicalLocation"] for r in run["results"]]
    assert locations[0]["artifactLocation"] == {"uri": "file:///srv/rules/a.rules"}
    assert locations[1]["artifactLocation"] == {
        "uri": "rules/%C3%BCn%C3%AF%20code.rules",
        "uriBaseId": "%SRCROOT%",
    }
    assert locations[1]["region"]["startColumn"] == 4
    for location in locations:
        assert URI_REFERENCE.fullmatch(location["artifactLocation"]["uri"])


def test_sarif_without_results_is_valid() -> None:
    [run] = sarif([])["runs"]
    assert run["results"] == []
