"""`rulec fmt`'s layout (``nudgel.dsl.fmt``): golden outputs for every construct
and for comments, and properties over generated rule sets: idempotent, same
AST, every comment kept in order."""

from __future__ import annotations

import dataclasses
import textwrap
from decimal import Decimal

import pytest
from conformance import load_cases
from hypothesis import HealthCheck, assume, given, settings
from nudgel.dsl import ast
from nudgel.dsl.fmt import WIDTH, FormatError, format_source
from nudgel.dsl.parser import parse
from strategies import RuleSet, mutated, rule_sets, rule_sets_with_comments


def fmt(text: str) -> str:
    return format_source(textwrap.dedent(text))


def body(condition: str) -> str:
    """The formatted body of ``segment s { condition }``, without the frame."""
    out = format_source(f"segment s {{ {condition} }}")
    lines = out.split("\n")[:-1]  # not splitlines(): strings may hold U+2028
    assert lines[0] == "segment s {" and lines[-1] == "}", out
    return "\n".join(line[2:] for line in lines[1:-1])


def tree(text: str) -> ast.RuleFile:
    result = parse(text)
    assert result.file is not None, result.diagnostics
    return result.file


def comments(text: str) -> list[str]:
    return [c.text for c in tree(text).comments]


# ---- the language reference's example -------------------------------------------------

SPEC_EXAMPLE = """\
# rules/marketing.rules
field plan: text
field ltv: number
field trial_ends: timestamp
field birthday: date
field beta: bool
field prefs: json

segment hot_leads "Hot leads" {
  score.engagement >= 50
  and tag "premium"
  and fields.plan in ["pro", "enterprise"]
  and (email ends_with "@acme.com" or phone starts_with "+254")
  and count(event "purchase" within 30d) >= 2
}

segment lapsed_customers "Bought before, not in 90 days" {
  event "purchase" and not event "purchase" within 90d
}

segment big_spenders_ke {
  in segment hot_leads
  and sum(event "purchase" where (props.currency = "KES"), props.amount) > 100000
}

score engagement {
  +10 per event "email_open" within 90d max 50   # 10 x count, capped at 50
  +25 per event "purchase"
  -5  when not event * within 30d                # -5 while inactive
  +15 when fields.plan = "pro"
  clamp 0..100
}

lifecycle {
  subscriber  when subscribed "newsletter"
  lead        when email is set
  opportunity when score.engagement >= 60
  customer    when event "purchase"
}
"""


def test_spec_example_is_canonical_but_for_score_alignment() -> None:
    out = format_source(SPEC_EXAMPLE)
    expected = SPEC_EXAMPLE.replace("max 50   # 10", "max 50 # 10").replace(
        "-5  when not event * within 30d                #", "-5 when not event * within 30d #"
    )
    assert out == expected
    assert format_source(out) == out


def test_spec_example_written_on_few_lines() -> None:
    squeezed = " ".join(
        line.split("#")[0].strip() for line in SPEC_EXAMPLE.splitlines() if line.split("#")[0]
    )
    out = format_source(squeezed)
    without_comments = "\n".join(
        line.split(" #")[0].rstrip()
        for line in SPEC_EXAMPLE.splitlines()
        if not line.startswith("#")
    )
    expected = without_comments.replace("-5  when", "-5 when") + "\n"
    assert out == expected


def test_spec_example_in_the_repository_is_canonical() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "marketing.rules"
    if example.exists():
        text = example.read_text("utf-8")
        assert format_source(text) == text


# ---- declarations ----------------------------------------------------------------------


def test_declarations_are_separated_by_one_blank_line_and_fields_grouped() -> None:
    out = fmt(
        """
        field a:text field b :  number segment s{true}


        score e{}lifecycle{} field c: json
        """
    )
    assert out == (
        "field a: text\nfield b: number\n\nsegment s {\n  true\n}\n\n"
        "score e {}\n\nlifecycle {}\n\nfield c: json\n"
    )


def test_a_blank_line_between_fields_is_kept_once() -> None:
    out = fmt(
        """
        field a: text


        field b: text
        field c: text
        """
    )
    assert out == "field a: text\n\nfield b: text\nfield c: text\n"


def test_segment_title_and_empty_blocks() -> None:
    assert fmt('segment s "T" { true }') == 'segment s "T" {\n  true\n}\n'
    assert fmt("score e {\n\n}") == "score e {}\n"
    assert fmt("lifecycle { }") == "lifecycle {}\n"


def test_score_rules_have_explicit_signs_and_canonical_numbers() -> None:
    out = fmt(
        """
        score e {
          10 per event "x" max 05.0
          + 2.50 when true
          - 0.75 per event * within 030d
          -0 when false
          clamp - 5 .. 10.0
        }
        """
    )
    assert out == (
        "score e {\n"
        '  +10 per event "x" max 5\n'
        "  +2.5 when true\n"
        "  -0.75 per event * within 30d\n"
        "  +0 when false\n"
        "  clamp -5..10\n"
        "}\n"
    )


def test_lifecycle_stages_align_their_when() -> None:
    out = fmt('lifecycle { a when true lead when false opportunity when tag "x" }')
    assert out == (
        "lifecycle {\n"
        "  a           when true\n"
        "  lead        when false\n"
        '  opportunity when tag "x"\n'
        "}\n"
    )


# ---- conditions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # Parentheses the tree needs stay...
        ('tag "a" and (tag "b" or tag "c")', 'tag "a" and (tag "b" or tag "c")'),
        ('(tag "a" or tag "b") and tag "c"', '(tag "a" or tag "b") and tag "c"'),
        ('not (tag "a" and tag "b")', 'not (tag "a" and tag "b")'),
        ('not (tag "a" or tag "b")', 'not (tag "a" or tag "b")'),
        # ... including around a chain in a chain of the same operator: it is
        # another tree than the flat chain.
        ('tag "a" or (tag "b" or tag "c")', 'tag "a" or (tag "b" or tag "c")'),
        ('(tag "a" and tag "b") and tag "c"', '(tag "a" and tag "b") and tag "c"'),
        # ... and the redundant ones go.
        ('(tag "a" and tag "b") or tag "c"', 'tag "a" and tag "b" or tag "c"'),
        ('tag "a" or (tag "b" and tag "c")', 'tag "a" or tag "b" and tag "c"'),
        ('((tag "a"))', 'tag "a"'),
        ('not (tag "a")', 'not tag "a"'),
        ("not (not (fields.x))", "not not fields.x"),
        ('(not tag "a") and tag "b"', 'not tag "a" and tag "b"'),
        ("event * where ((props.a = 1))", "event * where (props.a = 1)"),
        (
            "event * where (props.a = 1 or (props.b = 2))",
            "event * where (props.a = 1 or props.b = 2)",
        ),
    ],
)
def test_parentheses_exactly_where_the_tree_needs_them(source: str, expected: str) -> None:
    assert body(source) == expected
    assert tree(format_source(f"segment s {{ {source} }}")) == tree(f"segment s {{ {source} }}")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("fields.n=1", "fields.n = 1"),
        ("fields.n!=1", "fields.n != 1"),
        ("fields.n<1", "fields.n < 1"),
        ("fields.n<=1", "fields.n <= 1"),
        ("fields.n>1", "fields.n > 1"),
        ("fields.n>=- 1", "fields.n >= -1"),
        ('name in[ "a" ,"b" ]', 'name in ["a", "b"]'),
        ("name not   in [ ]", "name not in []"),
        ("fields.n not between 1 and 2", "fields.n not between 1 and 2"),
        ('name not contains "x"', 'name not contains "x"'),
        ('name not starts_with "x"', 'name not starts_with "x"'),
        ('name not ends_with "x"', 'name not ends_with "x"'),
        ('name not matches "^a"', 'name not matches "^a"'),
        ('fields.p not has "x"', 'fields.p not has "x"'),
        ("name is not set", "name is not set"),
        ("name is  set", "name is set"),
        ("now -30d < created_at", "now - 30d < created_at"),
        ("fields.ts+ 3d > now-1w", "fields.ts + 3d > now - 1w"),
        ("now - 30d + 1d > created_at", "now - 30d + 1d > created_at"),
        ('count ( event "x" within 007d )>=2', 'count(event "x" within 7d) >= 2'),
        ('sum(event "x" , props . amount)>0', 'sum(event "x", props.amount) > 0'),
        ('first(event "x")=last(event "x")', 'first(event "x") = last(event "x")'),
        ("score . e >= 1.50", "score.e >= 1.5"),
        ('stage>="lead"', 'stage >= "lead"'),
        ("in  segment   other", "in segment other"),
        ('subscribed"newsletter"', 'subscribed "newsletter"'),
        (
            "fields.n in [007, -0.50, 1.0, 12345678901234567890.000]",
            "fields.n in [7, -0.5, 1, 12345678901234567890]",
        ),
    ],
)
def test_canonical_spacing_and_numbers(source: str, expected: str) -> None:
    assert body(source) == expected


@pytest.mark.parametrize(
    "condition",
    [
        "[]",
        '"x"',
        "5",
        "-5",
        "now - 1d",
        "[1, [2, []]] in []",
        "count(event *) has [1]",
        "at",
        "props.x",
        '"2026-01-01" + 1d > now',
        "true = false",
        "x between [1] and [] and y",
        "not not not x",
        "5 - 3d",
        "score.x is not set",
        "stage",
    ],
)
def test_conditions_that_parse_but_do_not_check_are_formatted(condition: str) -> None:
    assert body(condition) == condition


def test_between_inside_an_and_chain() -> None:
    assert body('fields.n between 1 and 2 and tag "x"') == 'fields.n between 1 and 2 and tag "x"'
    long = " and ".join(f"fields.n{i} between {i} and {i + 1000000}" for i in range(5))
    assert body(long) == "\n".join(
        ["fields.n0 between 0 and 1000000"]
        + [f"and fields.n{i} between {i} and {i + 1000000}" for i in range(1, 5)]
    )


def test_a_long_chain_breaks_one_operand_per_line() -> None:
    # An `and` chain inside a broken `or` chain breaks only when it must.
    condition = " or ".join(f'tag "{c * 20}"' for c in "abc") + ' and tag "e" and tag "f"'
    assert body(condition) == textwrap.dedent(
        f"""\
        tag "{"a" * 20}"
        or tag "{"b" * 20}"
        or tag "{"c" * 20}" and tag "e" and tag "f\""""
    )
    condition = " or ".join(f'tag "{c * 40}"' for c in "ab") + f' and tag "{"e" * 60}"'
    assert body(condition) == textwrap.dedent(
        f"""\
        tag "{"a" * 40}"
        or tag "{"b" * 40}"
          and tag "{"e" * 60}\""""
    )


def test_the_line_width_is_100_columns() -> None:
    # "  " + condition: exactly 100 columns stay on one line, 101 break.
    def condition(width: int) -> str:
        filler = "x" * (width - len('  tag "" or tag "y"'))
        return f'tag "{filler}" or tag "y"'

    assert body(condition(WIDTH)) == condition(WIDTH)
    assert body(condition(WIDTH + 1)) == condition(WIDTH + 1).replace(" or ", "\nor ")


def test_brackets_break_black_style() -> None:
    items = ", ".join(f'"{c * 30}"' for c in "abc")
    assert body(f"name in [{items}]") == textwrap.dedent(
        f"""\
        name in [
          "{"a" * 30}",
          "{"b" * 30}",
          "{"c" * 30}"
        ]"""
    )
    where = " and ".join(f'props.{c * 12} = "{c * 12}"' for c in "abc")
    assert body(f"count(event * where ({where}) within 30d) > 1") == textwrap.dedent(
        f"""\
        count(
          event * where (
            {where.replace(" and ", f"{chr(10)}            and ")}
          ) within 30d
        ) > 1"""
    )
    parens = " or ".join(f'tag "{c * 30}"' for c in "abc")
    assert body(f'tag "x" and ({parens})') == textwrap.dedent(
        f"""\
        tag "x"
        and (
          tag "{"a" * 30}"
          or tag "{"b" * 30}"
          or tag "{"c" * 30}"
        )"""
    )


def test_a_broken_when_condition_continues_deeper() -> None:
    condition = " and ".join(f'tag "{c * 30}"' for c in "abc")
    out = format_source(f"score e {{ +1 when {condition} clamp 0..1 }}")
    assert out == textwrap.dedent(
        f"""\
        score e {{
          +1 when tag "{"a" * 30}"
            and tag "{"b" * 30}"
            and tag "{"c" * 30}"
          clamp 0..1
        }}
        """
    )


# ---- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('"\\u00e9t\\u00E9"', '"été"'),
        ('"a\\/b"', '"a/b"'),
        ('"\\ud83d\\ude00"', '"😀"'),
        ('"tab\\there\\nnew\\r\\b\\f"', '"tab\\there\\nnew\\r\\b\\f"'),
        ('"\\u0001\\u001F"', '"\\u0001\\u001f"'),
        ('"say \\"hi\\" \\\\ back"', '"say \\"hi\\" \\\\ back"'),
        ('"Zoë ß İ K Σ 😀 \u2028"', '"Zoë ß İ K Σ 😀 \u2028"'),
        ('"# not a comment"', '"# not a comment"'),
    ],
)
def test_strings_are_escaped_canonically(source: str, expected: str) -> None:
    assert body(f"name = {source}") == f"name = {expected}"
    assert tree(format_source(f"segment s {{ name = {source} }}")) == tree(
        f"segment s {{ name = {source} }}"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('fields.p."first-name"', 'fields.p."first-name"'),
        ('fields.p."theme"', "fields.p.theme"),
        ("fields.p.count.max", "fields.p.count.max"),
        ("fields.p.and.or.not.in.is.set", "fields.p.and.or.not.in.is.set"),
        ('fields.p."zoë"', 'fields.p."zoë"'),
        ('fields.p."1st"', 'fields.p."1st"'),
        ('fields.p.""', 'fields.p.""'),
        ('fields.p."a b"."c.d"', 'fields.p."a b"."c.d"'),
        ("fields.p.Theme_2", "fields.p.Theme_2"),
    ],
)
def test_path_keys_are_bare_when_they_can_be(source: str, expected: str) -> None:
    assert body(f"{source} = 1") == f"{expected} = 1"
    assert body(f"event * where (props.{source[9:]} = 1)") == (
        f"event * where (props.{expected[9:]} = 1)"
    )


# ---- comments -------------------------------------------------------------------------------

COMMENTED = """\
# header

# about fields
field a: text   # trailing a
field b: number
# group 2
field c: json
segment s "T" # before brace
{ # after brace
  # leading first
  fields.a = "x" # t1
  # own1
  and ( # after paren
    fields.b > 1 or # after or
    fields.b < - 5 # t2
    # before close
  )
  and fields.c.
  # inside a path
  "first-name" = 1
  # before end
} # after end
score e {
  10 per event "x" within 3d max 05 # cap
  - 5 when fields.b between 1 and 2 and not (fields.a is set or fields.a is not set)
  # before clamp
  clamp -5..10.50
}
score empty { # nothing
}
lifecycle {
  lead when tag "a"
  # between stages
  customer when event * where (props.x = 1 # in where
  ) within 2w
}



# eof 1
# eof 2
"""

COMMENTED_FORMATTED = """\
# header

# about fields
field a: text # trailing a
field b: number
# group 2
field c: json

segment s "T" { # before brace
  # after brace
  # leading first
  fields.a = "x" # t1
  # own1
  and ( # after paren
    fields.b > 1
    or # after or
      fields.b < -5 # t2
    # before close
  )
  and fields.c."first-name"
    # inside a path
    = 1
  # before end
} # after end

score e {
  +10 per event "x" within 3d max 5 # cap
  -5 when fields.b between 1 and 2 and not (fields.a is set or fields.a is not set)
  # before clamp
  clamp -5..10.5
}

score empty { # nothing
}

lifecycle {
  lead     when tag "a"
  # between stages
  customer when event * where (
    props.x = 1 # in where
  ) within 2w
}

# eof 1
# eof 2
"""


def test_comments_everywhere() -> None:
    out = format_source(COMMENTED)
    assert out == COMMENTED_FORMATTED
    assert format_source(out) == out
    assert comments(out) == comments(COMMENTED)


def test_a_trailing_comment_ends_the_line_and_the_condition_breaks() -> None:
    assert body('tag "a" # why a\n and tag "b"') == 'tag "a" # why a\nand tag "b"'
    assert body('tag "a" and # why b\n tag "b" or tag "c"') == (
        'tag "a"\n  and # why b\n    tag "b"\nor tag "c"'
    )


def test_comment_inside_an_unbreakable_construct_moves_the_rest_down() -> None:
    out = format_source('segment s { count(event # which\n "x" within 1d) > 1 }')
    assert out == 'segment s {\n  count(\n    event # which\n      "x" within 1d\n  ) > 1\n}\n'


def test_comments_only_and_empty_files() -> None:
    assert format_source("") == ""
    assert format_source("  \n\n") == ""
    assert format_source("# a   \n\n\n# b\n# c") == "# a\n\n# b\n# c\n"


def test_crlf_and_tabs() -> None:
    assert format_source("field a:\ttext\r\n# c\r\nfield b: text\r\n") == (
        "field a: text\n# c\nfield b: text\n"
    )


def test_hash_inside_a_string_is_not_a_comment() -> None:
    out = format_source('segment s { name = "#x" # real\n }')
    assert out == 'segment s {\n  name = "#x" # real\n}\n'


# ---- errors ---------------------------------------------------------------------------------


def test_text_that_does_not_parse_raises_with_the_diagnostics() -> None:
    with pytest.raises(FormatError) as caught:
        format_source("segment s { tag }", "bad.rules")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E100"
    assert diagnostic.span.file == "bad.rules"
    assert "bad.rules:1:" in str(caught.value)


def test_type_errors_are_formatted_anyway() -> None:
    # fmt is syntax only: `rulec fmt` works on files that do not check.
    assert fmt("segment s { fields.nope = 1 and stage >= 5 }") == (
        "segment s {\n  fields.nope = 1 and stage >= 5\n}\n"
    )


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    deep = "segment s { " + "not (" * 400 + "true" + ")" * 400 + " }"
    try:
        out = format_source(deep)
    except FormatError as error:
        assert error.diagnostics[0].code == "E100"
    else:
        # (format_source compared the trees itself; `==` would recurse too deep here.)
        assert out.count("not (") == 0 and out.count("not ") == 400


# ---- the AST equality the properties rely on --------------------------------------------------


def test_ast_equality_ignores_spans_and_number_spelling() -> None:
    one = tree('segment s { fields.n = 1.50 and tag "x" }')
    other = tree('segment s {\n\n  fields.n=\n  1.5\n  and tag "x" # c\n}')
    assert one == other
    first, second = (f.declarations[0] for f in (one, other))
    assert first.span != second.span
    assert isinstance(first, ast.SegmentDecl) and isinstance(second, ast.SegmentDecl)
    compare = first.body.items[0]  # type: ignore[attr-defined]
    assert compare.right == ast.NumberLiteral(Decimal("1.5"), "1.5")
    assert dataclasses.fields(ast.NumberLiteral)[-1].compare is False
    assert one.comments != other.comments  # comments are compared separately


def test_ast_equality_is_not_vacuous() -> None:
    assert tree('segment s { tag "a" or (tag "b" or tag "c") }') != tree(
        'segment s { tag "a" or tag "b" or tag "c" }'
    )
    assert tree("segment s { fields.n = 1 }") != tree("segment s { fields.n = 2 }")
    assert tree("segment s { now - 30d > at }") != tree("segment s { now - 3d > at }")
    assert tree('segment s { name = "a" }') != tree('segment s { name = "b" }')
    assert tree("score e { +1 when true }") != tree("score e { -1 when true }")


# ---- properties -------------------------------------------------------------------------------


def _check_formatted(rule_set: RuleSet) -> str:
    source = rule_set.source
    out = format_source(source, rule_set.path)
    assert tree(out) == tree(source)
    assert comments(out) == comments(source) == list(rule_set.comments)
    assert format_source(out, rule_set.path) == out
    assert out == "" or out.endswith("\n")
    lines = out.split("\n")
    assert all(line == line.rstrip() for line in lines)
    assert "\n\n\n" not in out and not out.startswith("\n")
    return out


@given(rule_sets(layout="messy"))
def test_property_messy_rule_sets(rule_set: RuleSet) -> None:
    _check_formatted(rule_set)


@given(rule_sets_with_comments())
def test_property_rule_sets_with_comments(rule_set: RuleSet) -> None:
    _check_formatted(rule_set)


# Most mutants do not parse and are thrown away: that is expected here.
@settings(
    suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.filter_too_much]
)
@given(rule_sets_with_comments().flatmap(lambda rule_set: mutated(rule_set.source)))
def test_property_any_text_that_parses(source: str) -> None:
    # Mutants of generated files that still parse: odd shapes the generator
    # never writes (comments between any two tokens, odd nesting...).
    assume(parse(source).file is not None)
    out = format_source(source)
    assert tree(out) == tree(source)
    assert comments(out) == comments(source)
    assert format_source(out) == out


CONFORMANCE = [case for case in load_cases() if parse(case.rules).file is not None]


@pytest.mark.parametrize("case", CONFORMANCE, ids=[c.id for c in CONFORMANCE])
def test_conformance_rules_format_safely(case: object) -> None:
    rules = case.rules  # type: ignore[attr-defined]
    out = format_source(rules)
    assert tree(out) == tree(rules)
    assert comments(out) == comments(rules)
    assert format_source(out) == out
