"""Name resolution, typing and every diagnostic code of spec §11."""

from __future__ import annotations

import pytest
from nudgel.dsl import ast
from nudgel.dsl.checker import check_sources
from nudgel.dsl.diagnostics import REGISTRY, Diagnostic


def diagnostics(text: str, **more: str) -> list[Diagnostic]:
    return list(check_sources({"a.rules": text, **more}).diagnostics)


def codes(text: str) -> list[str]:
    return [d.code for d in diagnostics(text)]


def only(text: str, code: str) -> Diagnostic:
    found = [d for d in diagnostics(text) if d.code == code]
    assert len(found) == 1, diagnostics(text)
    return found[0]


def test_every_registered_code_has_a_title_and_severity() -> None:
    for code, entry in REGISTRY.items():
        assert entry.code == code and entry.title
        assert code[0] == ("E" if entry.severity.value == "error" else "W")


def test_unknown_names_with_suggestions() -> None:
    d = only('field plan: text\nsegment s { fields.plam = "pro" }', "E200")
    assert (d.span.line, d.span.column) == (2, 13)
    assert d.message == "unknown field `plam`" and d.help == 'did you mean "plan"?'
    assert only(
        "segment s { score.engagment > 1 }\nscore engagement { +1 when true }", "E200"
    ).help == ('did you mean "engagement"?')
    assert "fields.plan" in (only("field plan: text\nsegment s { plan is set }", "E200").help or "")
    assert "lifecycle" in (only('segment s { stage = "lead" }', "E200").help or "")
    assert "where" in (only("segment s { at > now }", "E200").help or "")
    assert "where" in (only("segment s { props.x = 1 }", "E200").help or "")


def test_duplicates_across_files() -> None:
    found = check_sources(
        {"a.rules": "segment s { true }", "b.rules": "segment s { false }"}
    ).diagnostics
    (d,) = found
    assert (d.code, d.span.file, d.span.line) == ("E201", "b.rules", 1)
    assert "a.rules:1" in (d.help or "")
    assert codes("lifecycle { a when true a when false }") == ["E201"]
    assert codes("lifecycle { a when true }\nlifecycle { b when true }") == ["E201"]


@pytest.mark.parametrize(
    "condition",
    [
        'fields.n > "1"',
        "name > 5",
        "fields.b > true",
        "fields.d = 5",
        "fields.j = fields.d",
        'name in [1, "a"]',
        "name = [1]",
        'fields.n contains "a"',
        'name has "a"',
        "name",
        "fields.n + 3d > now",
        "stage = 3",
    ],
)
def test_type_mismatches(condition: str) -> None:
    text = (
        "field n: number\nfield b: bool\nfield d: date\nfield j: json\n"
        f"lifecycle {{ lead when true }}\nsegment s {{ {condition} }}"
    )
    assert "E210" in codes(text), diagnostics(text)


@pytest.mark.parametrize(
    "condition",
    [
        "fields.n > 1 and fields.b = false and fields.b != true",
        'fields.d < "2026-01-01" and fields.t >= "2026-01-01T00:00:00+03:00" and fields.d < fields.t',
        'fields.j.a = 1 and fields.j.a = "x" and fields.j.a = true and fields.j.a > fields.j.b',
        'fields.j.langs has "sw" and fields.j.n has 5 and fields.j',
        'name < email and email in ["a@x.com"] and fields.u contains "x"',
        'stage >= "lead" and stage in ["lead", "customer"] and stage between "lead" and "customer"',
        "fields.t + 3d > now and created_at < now - 2w and first(event *) < last(event *)",
        'avg(event "p", props.amount) > 1.5 and min(event "p", props.a) <= max(event "p", props.a)',
    ],
)
def test_well_typed_conditions(condition: str) -> None:
    text = (
        "field n: number\nfield b: bool\nfield d: date\nfield t: timestamp\nfield j: json\n"
        "field u: url\nlifecycle { lead when true customer when false }\n"
        f"segment s {{ {condition} }}"
    )
    result = check_sources({"a.rules": text})
    assert not [d for d in result.diagnostics if d.is_error], result.diagnostics


def test_text_literals_in_time_and_stage_context_are_parsed() -> None:
    result = check_sources(
        {
            "a.rules": 'field d: date\nlifecycle { lead when true }\nsegment s { fields.d < "2026-01-02" and stage = "lead" }'
        }
    )
    assert result.rules is not None
    body = result.rules.segments["s"].body
    assert isinstance(body, ast.AndExpr)
    date, stage = body.items
    assert isinstance(date, ast.Compare) and isinstance(date.right, ast.TimeLiteral)
    assert date.right.micros == 1767312000 * 10**6
    assert isinstance(stage, ast.Compare) and stage.right == ast.StageLiteral(
        "lead", 0, type=ast.Type.STAGE
    )


@pytest.mark.parametrize(
    "literal",
    [
        '"2026-13-01T00:00:00Z"',
        '"2026-01-01T00:00:00"',
        '"2026-02-30"',
        '"2026-01-01T24:00:00Z"',
        '"yesterday"',
        '"2026-06-30T23:59:60Z"',
    ],
)
def test_invalid_time_literals(literal: str) -> None:
    d = only(f"field t: timestamp\nsegment s {{ fields.t > {literal} }}", "E220")
    assert d.span.column == 24


def test_regex_errors_point_into_the_pattern() -> None:
    d = only('segment a { name matches "ab\\\\bc" }', "E221")
    assert d.span.line == 1 and d.span.column > 25


def test_cycles_name_the_cycle() -> None:
    d = only(
        "segment a { in segment b }\nsegment b { in segment c }\nsegment c { in segment a }", "E230"
    )
    assert "segment `a` -> segment `b` -> segment `c` -> segment `a`" in d.message
    assert codes("segment a { in segment a }") == ["E230"]
    assert codes('lifecycle { x when stage = "x" }') == ["E230"]
    assert codes("score a { +1 when in segment s }\nsegment s { score.a > 1 }") == ["E230"]


def test_contact_data_inside_event_filters() -> None:
    for inner in (
        'email = "a"',
        'tag "x"',
        "fields.n > 1",
        "score.s > 1",
        "in segment t",
        'event "x"',
        "stage is set",
    ):
        text = (
            "field n: number\nscore s { +1 when true }\nsegment t { true }\nlifecycle { a when true }\n"
            f'segment q {{ event "p" where ({inner}) }}'
        )
        assert "E240" in codes(text), (inner, diagnostics(text))
    assert codes('segment q { event "p" where (props.a > 1 and at < now - 1d) }') == []


def test_score_numbers() -> None:
    assert codes('score s { +1 per event "x" max 0 }') == ["E250"]
    assert codes('score s { +1 per event "x" max -3 }') == ["E250"]
    assert codes("score s { +1 when true clamp 5..1 }") == ["E250"]
    assert codes('score s { -1.5 per event "x" max 10 clamp -5..5 }') == []


def test_warnings() -> None:
    assert codes('segment s { count(event "x") < 0 }') == ["W300"]
    assert codes('segment s { count(event "x") >= 0 }') == ["W300"]
    assert codes('segment s { count(event "x") = 1.5 }') == ["W300"]
    assert codes('segment s { name = "" }') == ["W300"]
    assert codes("segment s { name in [] }") == ["W300"]
    assert codes("segment s { fields.n between 5 and 1 }\nfield n: number") == ["W300"]
    assert codes("field plan: text\nsegment s { true }") == ["W301"]
    d = only('segment s { email = "Ada@Example.com" }', "W302")
    assert d.help == 'write it in lower case: "ada@example.com"'
    assert codes('segment s { email in ["a@x.com", "B@x.com"] }') == ["W302"]
    assert codes('segment s { email = "ada@example.com" and name = "Ada" }') == []


def test_all_errors_of_a_rule_set_are_reported() -> None:
    text = 'segment a { fields.x = 1 }\nsegment b { name > 5 }\nsegment c { in segment zz }\nscore d { +1 per event "x" max 0 }'
    assert codes(text) == ["E200", "E210", "E200", "E250"]


def test_evaluation_order_puts_dependencies_first() -> None:
    result = check_sources(
        {
            "a.rules": 'segment b { in segment a and score.e > 1 }\nsegment a { stage = "x" }\nscore e { +1 when true }\nlifecycle { x when score.e > 0 }'
        }
    )
    assert result.rules is not None
    order = list(result.rules.order)
    assert (
        order.index(("score", "e")) < order.index(("lifecycle", "")) < order.index(("segment", "a"))
    )
    assert order.index(("segment", "a")) < order.index(("segment", "b"))


def test_unknown_field_type() -> None:
    d = only("field x: txt\nsegment s { fields.x is set }", "E100")
    assert d.help is not None and 'did you mean "text"' in d.help
