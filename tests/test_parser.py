"""The grammar and the parser: every construct, spans, comments, syntax errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from nudgel.dsl import ast
from nudgel.dsl.parser import parse


def declarations(text: str) -> tuple[ast.Declaration, ...]:
    result = parse(text, "t.rules")
    assert result.file is not None, result.diagnostics
    return result.file.declarations


def body(text: str) -> ast.Expr:
    (segment,) = declarations(f"segment s {{ {text} }}")
    assert isinstance(segment, ast.SegmentDecl)
    return segment.body


def error(text: str) -> tuple[int, int, str]:
    result = parse(text, "t.rules")
    assert result.file is None
    (diagnostic,) = result.diagnostics
    assert diagnostic.code == "E100"
    return diagnostic.span.line, diagnostic.span.column, diagnostic.message


def test_precedence_not_and_or() -> None:
    expr = body('not tag "a" and tag "b" or tag "c"')
    assert isinstance(expr, ast.OrExpr)
    first, second = expr.items
    assert isinstance(first, ast.AndExpr) and isinstance(first.items[0], ast.NotOp)
    assert second == ast.TagTest("c")


def test_between_inside_an_and_chain() -> None:
    expr = body('fields.x between 1 and 2 and tag "y"')
    assert isinstance(expr, ast.AndExpr)
    between, tag = expr.items
    assert isinstance(between, ast.Between) and not between.negated
    assert (between.low, between.high) == (
        ast.NumberLiteral(Decimal(1)),
        ast.NumberLiteral(Decimal(2)),
    )
    assert tag == ast.TagTest("y")


@pytest.mark.parametrize(
    ("text", "node", "negated"),
    [
        ('name not in ["a"]', ast.InList, True),
        ("fields.n not between 1 and 2", ast.Between, True),
        ('name not contains "x"', ast.TextMatch, True),
        ('name not starts_with "x"', ast.TextMatch, True),
        ('name not ends_with "x"', ast.TextMatch, True),
        ('name not matches "x"', ast.Matches, True),
        ('fields.p not has "x"', ast.Has, True),
        ("name is not set", ast.IsSet, True),
        ("name is set", ast.IsSet, False),
    ],
)
def test_negated_forms(text: str, node: type, negated: bool) -> None:
    expr = body(text)
    assert isinstance(expr, node)
    assert expr.negated is negated


def test_json_paths_allow_keywords_and_quoted_keys() -> None:
    expr = body('fields.prefs.count.max."first-name" = "x" and event "e" where (props.at.set = 1)')
    assert isinstance(expr, ast.AndExpr)
    compare = expr.items[0]
    assert isinstance(compare, ast.Compare)
    assert compare.left == ast.FieldRef("prefs", ("count", "max", "first-name"))


def test_keywords_cannot_be_names() -> None:
    line, column, message = error("segment score { true }")
    assert (line, column) == (1, 9)
    assert "keyword" in message


def test_score_rules_follow_expressions_ending_in_time() -> None:
    (score,) = declarations(
        "score s {\n  +5 when created_at > now\n  -5 when created_at < now-30d\n  +1 per event * max 3\n  clamp -1..10\n}"
    )
    assert isinstance(score, ast.ScoreDecl)
    assert [r.points for r in score.rules] == [Decimal(5), Decimal(-5), Decimal(1)]
    second = score.rules[1]
    assert isinstance(second, ast.ScoreWhen) and isinstance(second.condition, ast.Compare)
    shift = second.condition.right
    assert isinstance(shift, ast.TimeShift) and shift.offset_seconds == -30 * 86400
    assert score.clamp is not None and (score.clamp.low, score.clamp.high) == (
        Decimal(-1),
        Decimal(10),
    )


def test_events_and_aggregates() -> None:
    expr = body(
        'count(event "p" where (props.amount >= 10 and at < now) within 2w) >= 2 '
        'and sum(event *, props.amount) > 1 and last(event "x") < now - 1h'
    )
    assert isinstance(expr, ast.AndExpr)
    count = expr.items[0]
    assert isinstance(count, ast.Compare) and isinstance(count.left, ast.CountAgg)
    spec = count.left.event
    assert spec.name == "p" and spec.within is not None and spec.within.seconds == 14 * 86400
    total = expr.items[1]
    assert isinstance(total, ast.Compare) and isinstance(total.left, ast.ValueAgg)
    assert total.left.event.name is None and total.left.prop == ast.PropsRef(("amount",))


def test_lifecycle_and_titles_and_comments() -> None:
    text = '# head\nlifecycle {\n  lead when email is set # trailing\n  customer when event "p"\n}\nsegment a "A \\"quoted\\" title" { true }\n'
    result = parse(text, "t.rules")
    assert result.file is not None
    lifecycle, segment = result.file.declarations
    assert isinstance(lifecycle, ast.LifecycleDecl)
    assert [s.name for s in lifecycle.stages] == ["lead", "customer"]
    assert isinstance(segment, ast.SegmentDecl) and segment.title == 'A "quoted" title'
    assert [(c.line, c.column, c.text) for c in result.file.comments] == [
        (1, 1, "# head"),
        (3, 26, "# trailing"),
    ]


def test_spans_count_code_points() -> None:
    (segment,) = declarations('segment s { name = "éé" and fields.x = 1 }')
    assert isinstance(segment, ast.SegmentDecl) and isinstance(segment.body, ast.AndExpr)
    second = segment.body.items[1]
    assert (second.span.line, second.span.column) == (1, 29)


def test_syntax_error_at_the_token_that_cannot_continue() -> None:
    line, column, message = error('field plan: text\nsegment s {\n  fields.plan = "pro" and\n}\n')
    assert (line, column) == (4, 1)
    assert message == "unexpected `}`, expected a condition"


def test_syntax_error_at_end_of_file() -> None:
    line, column, message = error('segment s { name = "a"\n\n')
    assert (line, column) == (1, 23)
    assert message.startswith("unexpected end of file")


def test_unterminated_string_and_upper_case_names() -> None:
    assert "string" in error('segment s { name = "abc }')[2]
    assert "lower case" in error("segment S { true }")[2]


def test_strings_cannot_hold_nul() -> None:
    assert "U+0000" in error('segment s { name = "a\\u0000" }')[2]


def test_durations_are_units_not_names() -> None:
    assert error('segment s { event "x" within 30days }')[2] == (
        "`30days` is not a duration: write 30d"
    )
