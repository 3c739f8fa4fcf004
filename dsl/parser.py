"""Text to AST. The only module that touches Lark: every Lark error becomes an
E100 diagnostic here, and nothing from Lark escapes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)
from lark.tree import Meta
from nudgel.dsl import ast
from nudgel.dsl.diagnostics import SYNTAX, Diagnostic, InternalError
from nudgel.dsl.span import Span

# Text that PostgreSQL cannot store and UTF-8 cannot encode.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

KEYWORDS = frozenset(
    [
        "segment",
        "score",
        "field",
        "lifecycle",
        "when",
        "per",
        "max",
        "clamp",
        "and",
        "or",
        "not",
        "in",
        "is",
        "set",
        "event",
        "where",
        "within",
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "first",
        "last",
        "tag",
        "subscribed",
        "true",
        "false",
        "now",
        "contains",
        "starts_with",
        "ends_with",
        "matches",
        "has",
        "between",
    ]
)


@cache
def _lark() -> Lark:
    text = resources.files("nudgel.grammar").joinpath("rules.lark").read_text("utf-8")
    # cache=True keeps the LALR tables in the temp folder (keyed by the
    # grammar's hash): a new `rulec` process skips rebuilding them.
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True)


@dataclass(frozen=True, slots=True)
class ParseResult:
    file: ast.RuleFile | None
    diagnostics: tuple[Diagnostic, ...]


def parse(source: str, path: str = "<input>") -> ParseResult:
    """Parse one rule file. On a syntax error the file is None and the
    diagnostics say where and what was expected."""
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as error:
        return ParseResult(None, (_syntax_diagnostic(error, source, path),))
    except RecursionError:
        return ParseResult(None, (_too_deep(path),))
    try:
        declarations = _AstBuilder(path).build(tree)
    except _BadToken as error:
        return ParseResult(None, (error.diagnostic,))
    except RecursionError:
        return ParseResult(None, (_too_deep(path),))
    return ParseResult(
        ast.RuleFile(
            path,
            tuple(declarations),
            comments=tuple(scan_comments(source)),
            span=Span(path, 1, 1, max(1, source.count("\n") + 1), 1),
        ),
        (),
    )


def scan_comments(source: str) -> list[ast.Comment]:
    """Comments with their positions. Strings cannot span lines, so a per-line
    scan that skips string literals finds every ``#`` that starts a comment."""
    comments = []
    for number, line in enumerate(source.split("\n"), start=1):
        if "#" not in line:
            continue
        in_string = escaped = False
        for column, char in enumerate(line, start=1):
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "#":
                comments.append(ast.Comment(number, column, line[column - 1 :].rstrip()))
                break
    return comments


# ---- syntax errors -----------------------------------------------------------


def _too_deep(path: str) -> Diagnostic:
    return SYNTAX(Span.point(path, 1, 1), message="the rules are nested too deeply to read")


_TERMINAL_NAMES = {
    "NAME": "a name",
    "KEY": "a key",
    "STRING": "a string",
    "NUMBER": "a number",
    "DURATION": "a duration such as `30d`",
    "OFFSET": "`+` or `-` and a duration",
    "$END": "the end of the file",
    "ANY_EVENT": "`*`",
    "STAGE_NAME": "the next stage",
}

# Terminals that can start a condition: when most of them are expected, the
# message says "a condition" rather than listing twenty tokens.
_CONDITION_STARTERS = {"NOT", "LPAR", "TAG", "SUBSCRIBED", "IN", "EVENT", "NAME", "FIELDS", "NOW"}
_VALUE_STARTERS = {"NAME", "FIELDS", "SCORE", "NOW", "STRING", "NUMBER", "COUNT", "LSQB"}


# After a complete condition every comparison operator is possible too; the
# reader wants to hear about the connectives and the closing bracket.
_AFTER_CONDITION = {"AND", "OR", "RBRACE", "RPAR", "RSQB", "COMMA", "NAME", "CLAMP", "$END"}


def _describe_expected(expected: set[str]) -> str:
    if expected >= _CONDITION_STARTERS:
        return "a condition"
    if {"STRING", "NUMBER", "NAME", "FIELDS"} <= expected:
        return "a value"
    if {"AND", "OR"} <= expected:
        expected = {name for name in expected if name in _AFTER_CONDITION}
        if "NAME" in expected:
            expected = expected - {"NAME"} | {"STAGE_NAME"}
    names = []
    for name in sorted(expected):
        if name in _TERMINAL_NAMES:
            names.append(_TERMINAL_NAMES[name])
            continue
        pattern = _terminal_pattern(name)
        names.append(f"`{pattern}`" if pattern else name.lower())
    if len(names) > 8:
        names = [*names[:8], "..."]
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def _terminal_pattern(name: str) -> str | None:
    for terminal in _lark().terminals:
        if terminal.name == name and terminal.pattern.type == "str":
            value = terminal.pattern.value
            return value if isinstance(value, str) else None
    return None


def _expected(error: UnexpectedToken | UnexpectedEOF) -> set[str]:
    # The parser's full set, not only what the contextual lexer could match.
    accepts = getattr(error, "accepts", None) or error.expected or ()
    return {str(name) for name in accepts}


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    text = str(token)
    return f"`{text}`" if len(text) <= 30 else f"`{text[:27]}...`"


def _syntax_diagnostic(error: UnexpectedInput, source: str, path: str) -> Diagnostic:
    lines = source.split("\n")
    if isinstance(error, UnexpectedToken) and error.token.type != "$END":
        token = error.token
        line, column = token.line or 1, token.column or 1
        end_line = token.end_line or line
        end_column = token.end_column or column + 1
        expected = _expected(error)
        message = f"unexpected {_describe_token(token)}, expected {_describe_expected(expected)}"
        if token.type == "KEY" and "NAME" in expected:
            message = f"unexpected {_describe_token(token)}: names are lower case"
        span = Span(path, line, column, end_line, end_column)
    elif isinstance(error, (UnexpectedEOF, UnexpectedToken)):
        expected = _expected(error)
        line = len(lines)
        column = len(lines[-1]) + 1
        # Point at the end of the last line that has any text, where the reader looks.
        while line > 1 and not lines[line - 1].strip():
            line -= 1
        column = len(lines[line - 1].rstrip()) + 1
        message = "unexpected end of file" + (
            f", expected {_describe_expected(expected)}" if expected else ""
        )
        span = Span.point(path, line, column)
    elif isinstance(error, UnexpectedCharacters):
        line, column = error.line, error.column
        position = error.pos_in_stream or 0
        char = source[position] if position < len(source) else ""
        message = _describe_bad_character(char, source, position)
        span = Span.point(path, line, column)
    else:  # pragma: no cover - Lark raises only the three kinds above
        line, column = error.line, error.column
        message = str(error).splitlines()[0]
        span = Span.point(path, line, column)
    return SYNTAX(span, message=message, help=_syntax_help(source, span))


_BAD_DURATION = re.compile(r"(\d+)([A-Za-z]+)")
_UNIT_NAMES = {
    **dict.fromkeys(("sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("day", "days"), "d"),
    **dict.fromkeys(("wk", "wks", "week", "weeks"), "w"),
}
_UNIT_ADVICE = {
    "mo": ("months", 30),
    "mon": ("months", 30),
    "month": ("months", 30),
    "months": ("months", 30),
    "y": ("years", 365),
    "yr": ("years", 365),
    "yrs": ("years", 365),
    "year": ("years", 365),
    "years": ("years", 365),
}


def _describe_bad_duration(source: str, pos: int) -> str | None:
    match = _BAD_DURATION.match(source, pos)
    if match is None:
        return None
    amount, unit = int(match.group(1)), match.group(2)
    short = _UNIT_NAMES.get(unit.lower())
    if short is not None:
        return f"`{match.group(0)}` is not a duration: write {amount}{short}"
    advice = _UNIT_ADVICE.get(unit.lower())
    if advice is not None:
        what, days = advice
        return f"{what} are not a unit; use days: {amount * days}d"
    return (
        f"`{match.group(0)}` is not a duration: write a whole number and one of the units"
        " s, m, h, d, w (e.g. 30d)"
    )


def _describe_bad_character(char: str, source: str, pos: int) -> str:
    if char.isdigit() and (duration := _describe_bad_duration(source, pos)) is not None:
        return duration
    if char == '"':
        return "unterminated or invalid string (strings end on the same line; escapes as in JSON)"
    if char.isupper():
        word = char
        end = pos + 1
        while end < len(source) and (source[end].isalnum() or source[end] == "_"):
            word += source[end]
            end += 1
        return f"unexpected `{word}`: names are lower case"
    if char == "\x00" or not char.isprintable():
        return f"unexpected character U+{ord(char):04X}" if char else "unexpected character"
    return f"unexpected character `{char}`"


def _syntax_help(source: str, span: Span) -> str | None:
    lines = source.split("\n") if source else [""]
    line = lines[span.line - 1] if span.line <= len(lines) else ""
    # What precedes the error, across lines (`and` may end the line before `}`).
    before = "\n".join([*lines[: span.line - 1], line[: span.column - 1]]).rstrip()
    if re.search(r"\b(and|or|not)$", before) and line[span.column - 1 :].startswith("}"):
        return "a condition must follow `and`, `or` and `not`"
    return None


# ---- tree to AST -----------------------------------------------------------------


class _BadToken(Exception):
    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _AstBuilder:
    """Builds AST nodes bottom-up from Lark's tree: one method per grammar
    rule, called with the built children and the rule's span. (A plain walk:
    Lark's Transformer wraps every callback on every call, which doubled the
    cost of checking.)"""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handlers: dict[str, Callable[[list[Any], Span], Any]] = {}

    def build(self, tree: Tree[Token]) -> Any:
        children = [self.build(c) if isinstance(c, Tree) else c for c in tree.children]
        handler = self.handlers.get(tree.data)
        if handler is None:
            handler = getattr(self, str(tree.data), None)
            if handler is None:
                raise InternalError(f"the parser has no rule for grammar rule `{tree.data}`")
            self.handlers[tree.data] = handler
        return handler(children, self.span(tree.meta))

    def span(self, meta: Meta) -> Span:
        if getattr(meta, "empty", True):
            return Span.point(self.path, 1, 1)
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def token_span(self, token: Token) -> Span:
        return Span(
            self.path,
            token.line or 1,
            token.column or 1,
            token.end_line or token.line or 1,
            token.end_column or (token.column or 1) + len(token),
        )

    def name(self, token: Token) -> str:
        text = str(token)
        if text in KEYWORDS:
            raise _BadToken(
                SYNTAX(
                    self.token_span(token),
                    message=f"`{text}` is a keyword and cannot be used as a name",
                    help=f"choose another name, e.g. `{text}_`",
                )
            )
        return text

    def string(self, token: Token) -> str:
        text = str(token)
        # Without escapes (the common case) the text is the value.
        value = text[1:-1] if "\\" not in text else json.loads(text)
        assert isinstance(value, str)
        bad = _UNSTORABLE.search(value)
        if bad is not None:
            raise _BadToken(
                SYNTAX(
                    self.token_span(token),
                    message=f"string contains U+{ord(bad.group()):04X}, which text cannot hold",
                )
            )
        return value

    # declarations
    def start(self, children: list[ast.Declaration], span: Span) -> list[ast.Declaration]:
        return children

    def field_decl(self, c: list[Token], span: Span) -> ast.FieldDecl:
        return ast.FieldDecl(
            self.name(c[0]),
            str(c[1]),
            span=span,
            name_span=self.token_span(c[0]),
            type_span=self.token_span(c[1]),
        )

    def segment_decl(self, c: list[Any], span: Span) -> ast.SegmentDecl:
        title = self.string(c[1]) if c[1] is not None else None
        return ast.SegmentDecl(
            self.name(c[0]), title, c[2], span=span, name_span=self.token_span(c[0])
        )

    def score_decl(self, c: list[Any], span: Span) -> ast.ScoreDecl:
        rules = tuple(x for x in c[1:-1])
        return ast.ScoreDecl(
            self.name(c[0]), rules, c[-1], span=span, name_span=self.token_span(c[0])
        )

    def score_per(self, c: list[Any], span: Span) -> ast.ScorePer:
        return ast.ScorePer(c[0], c[1], c[2], span=span)

    def score_when(self, c: list[Any], span: Span) -> ast.ScoreWhen:
        return ast.ScoreWhen(c[0], c[1], span=span)

    def score_cap(self, c: list[Any], span: Span) -> Decimal:
        value: Decimal = c[0].value
        return value

    def points(self, c: list[Any], span: Span) -> Decimal:
        value = Decimal(str(c[1]))
        return -value if c[0] == "-" else value

    def sign(self, c: list[Token], span: Span) -> str:
        return str(c[0])

    def clamp(self, c: list[ast.NumberLiteral], span: Span) -> ast.Clamp:
        return ast.Clamp(c[0].value, c[1].value, span=span)

    def lifecycle_decl(self, c: list[ast.StageDecl], span: Span) -> ast.LifecycleDecl:
        return ast.LifecycleDecl(tuple(c), span=span)

    def stage_decl(self, c: list[Any], span: Span) -> ast.StageDecl:
        return ast.StageDecl(self.name(c[0]), c[1], span=span, name_span=self.token_span(c[0]))

    # conditions
    def or_expr(self, c: list[ast.Expr], span: Span) -> ast.OrExpr:
        return ast.OrExpr(tuple(c), span=span)

    def and_expr(self, c: list[ast.Expr], span: Span) -> ast.AndExpr:
        return ast.AndExpr(tuple(c), span=span)

    def not_op(self, c: list[Any], span: Span) -> ast.NotOp:
        return ast.NotOp(c[-1], span=span)

    def truthy(self, c: list[ast.Value], span: Span) -> ast.Truthy:
        return ast.Truthy(c[0], span=span)

    def tag_test(self, c: list[Token], span: Span) -> ast.TagTest:
        return ast.TagTest(self.string(c[0]), span=span)

    def subscribed_test(self, c: list[Token], span: Span) -> ast.SubscribedTest:
        return ast.SubscribedTest(self.string(c[0]), span=span)

    def segment_test(self, c: list[Token], span: Span) -> ast.SegmentTest:
        return ast.SegmentTest(self.name(c[0]), span=span)

    def event_test(self, c: list[ast.EventSpec], span: Span) -> ast.EventTest:
        return ast.EventTest(c[0], span=span)

    def compare(self, c: list[Any], span: Span) -> ast.Compare:
        return ast.Compare(c[1], c[0], c[2], span=span)

    def in_list(self, c: list[Any], span: Span) -> ast.InList:
        return ast.InList(c[0], c[2], c[1] is not None, span=span)

    def between(self, c: list[Any], span: Span) -> ast.Between:
        return ast.Between(c[0], c[2], c[3], c[1] is not None, span=span)

    def text_match(self, c: list[Any], span: Span) -> ast.TextMatch:
        return ast.TextMatch(c[2], c[0], c[3], c[1] is not None, span=span)

    def matches(self, c: list[Any], span: Span) -> ast.Matches:
        token: Token = c[2]
        return ast.Matches(
            c[0],
            self.string(token),
            c[1] is not None,
            span=span,
            pattern_token=str(token),
            pattern_span=self.token_span(token),
        )

    def has(self, c: list[Any], span: Span) -> ast.Has:
        return ast.Has(c[0], c[2], c[1] is not None, span=span)

    def is_set(self, c: list[Any], span: Span) -> ast.IsSet:
        return ast.IsSet(c[0], c[1] is not None, span=span)

    def negation(self, c: list[Token], span: Span) -> str:
        return "not"

    def cmp_op(self, c: list[Token], span: Span) -> str:
        return str(c[0])

    def text_op(self, c: list[Token], span: Span) -> str:
        return str(c[0])

    def value_fn(self, c: list[Token], span: Span) -> str:
        return str(c[0])

    def time_fn(self, c: list[Token], span: Span) -> str:
        return str(c[0])

    # values
    def time_shift(self, c: list[Any], span: Span) -> ast.TimeShift:
        token: Token = c[1]
        text = "".join(str(token).split())
        amount, unit = int(text[1:-1]), text[-1]
        duration_span = self.token_span(token)
        return ast.TimeShift(
            c[0],
            -1 if text[0] == "-" else 1,
            ast.Duration(amount, unit, span=duration_span),
            span=span,
        )

    def attribute(self, c: list[Token], span: Span) -> ast.Attribute:
        return ast.Attribute(self.name(c[0]), span=span)

    def field_ref(self, c: list[Any], span: Span) -> ast.FieldRef:
        return ast.FieldRef(self.name(c[0]), tuple(c[1:]), span=span)

    def props_ref(self, c: list[str], span: Span) -> ast.PropsRef:
        return ast.PropsRef(tuple(c), span=span)

    def path_key(self, c: list[Token], span: Span) -> str:
        token = c[0]
        return self.string(token) if token.type == "STRING" else str(token)

    def score_ref(self, c: list[Token], span: Span) -> ast.ScoreRef:
        return ast.ScoreRef(self.name(c[0]), span=span)

    def now(self, c: list[Any], span: Span) -> ast.Now:
        return ast.Now(span=span)

    def count_agg(self, c: list[Any], span: Span) -> ast.CountAgg:
        return ast.CountAgg(c[0], span=span)

    def value_agg(self, c: list[Any], span: Span) -> ast.ValueAgg:
        return ast.ValueAgg(c[0], c[1], c[2], span=span)

    def time_agg(self, c: list[Any], span: Span) -> ast.TimeAgg:
        return ast.TimeAgg(c[0], c[1], span=span)

    def event_spec(self, c: list[Any], span: Span) -> ast.EventSpec:
        name_token: Token = c[0]
        name = None if name_token.type == "ANY_EVENT" else self.string(name_token)
        return ast.EventSpec(name, c[1], c[2], span=span)

    def event_where(self, c: list[ast.Expr], span: Span) -> ast.Expr:
        return c[0]

    def event_within(self, c: list[Token], span: Span) -> ast.Duration:
        text = str(c[0])
        return ast.Duration(int(text[:-1]), text[-1], span=self.token_span(c[0]))

    def text_literal(self, c: list[Token], span: Span) -> ast.TextLiteral:
        return ast.TextLiteral(self.string(c[0]), span=span)

    def number(self, c: list[Any], span: Span) -> ast.NumberLiteral:
        text = ("-" if c[0] is not None else "") + str(c[1])
        return ast.NumberLiteral(Decimal(text), text, span=span)

    def minus(self, c: list[Token], span: Span) -> str:
        return "-"

    def true_literal(self, c: list[Any], span: Span) -> ast.BoolLiteral:
        return ast.BoolLiteral(True, span=span)

    def false_literal(self, c: list[Any], span: Span) -> ast.BoolLiteral:
        return ast.BoolLiteral(False, span=span)

    def list_literal(self, c: list[Any], span: Span) -> ast.ListLiteral:
        items = tuple(x for x in c if x is not None)
        return ast.ListLiteral(items, span=span)
