"""Canonical formatting of rule files: ``rulec fmt`` (spec §13).

``format_source(text)`` returns the one canonical layout of a rule file. It is
idempotent, keeps every comment (in order, none duplicated), and never changes
meaning: ``parse(format_source(x))`` equals ``parse(x)`` (AST equality ignores
spans), which ``format_source`` verifies before returning.

The layout
==========

Declarations
    One blank line between declarations. Consecutive ``field`` declarations
    form a group without blank lines, except where the source separated them
    by a blank line (one blank line is kept, so fields can be grouped).
    ``field NAME: TYPE``; ``segment NAME "Title" {`` with the body on the
    following lines, indented by 2 spaces, and ``}`` alone on the last line.
    ``score NAME {`` with one rule per line and ``clamp LO..HI`` last;
    ``lifecycle {`` with one stage per line, names padded so that every
    ``when`` of the block lines up. An empty score or lifecycle block is ``{}``.

Conditions
    A condition is written on one line when it fits within 100 columns;
    otherwise its top-level ``and``/``or`` chain is broken one operand per line
    with the operator leading (``and tag "premium"``). In a segment body the
    broken operands line up with the first; after ``when`` (score and stage
    rules) they are indented by 2 more than the rule. An ``and`` chain inside a
    broken ``or`` chain continues 2 spaces deeper. Brackets that do not fit are
    broken "black style": the opening bracket ends the line, the content is
    indented by 2, the closing bracket starts its own line (``(...)``,
    ``where (...)``, ``count(...)``, ``[...]``; lists then have one item per
    line).

Parentheses
    The AST has no node for them, so they are written exactly where the tree
    needs them and nowhere else: around an ``and``/``or`` under ``not``, an
    ``or`` inside an ``and``, and a chain nested in a chain of the same
    operator (``a or (b or c)`` is a different tree from ``a or b or c``).
    ``a or (b and c)`` is written ``a or b and c``.

Tokens
    One space around comparison operators and keywords, none inside
    ``fields.a.b``, ``count(``, ``[a, b]`` (a space after each comma) or
    ``0..100``. Points carry an explicit sign (``+10 per ...``, ``-5 when ...``).
    Strings are re-escaped canonically: JSON escapes (``\\"``, ``\\\\``,
    ``\\n``, ``\\u001f`` ...), every other character, non-ASCII included, as
    itself. Path keys are bare when they can be (``fields.prefs.count``) and
    quoted otherwise (``fields.prefs."first-name"``). Numbers keep their value
    in the canonical decimal form of §13: no leading zeros, no trailing zeros
    after the point, no trailing point, ``0`` never ``-0`` (``007.50`` is
    ``7.5``). Durations are written as the user wrote them, without leading
    zeros (``90d`` stays ``90d``); time offsets as ``now - 30d``.

Comments
    A comment that follows code on its line (trailing) stays at the end of the
    line of the token it followed. A comment on its own line stays on its own
    line before the token that followed it, at that token's indentation; one
    before a closing ``}``, ``)`` or ``]`` stays inside the block, at the
    block's indentation. Comments never separate an opening ``{``, ``(`` or
    ``[`` from what precedes it: one written just before it moves just after
    it (``segment s { # note``). A comment always ends its line: a condition
    holding a comment is broken one operand per line, and code that must
    follow a comment where the layout has no line break (``count(event # x``)
    continues on the next line, 2 spaces deeper than the line it continues (a
    closing bracket goes back to its block's indentation). Between
    declarations and at the end of the file, a blank line around comments is
    kept (at most one); elsewhere blank lines are dropped. Trailing whitespace
    is removed and the file ends with exactly one newline (an empty file
    stays empty).

``rulec fmt PATH... [--check]`` (spec §13) rewrites each file that is not in
this layout; with ``--check`` it rewrites nothing and exits 1 when a file
would change. A file that does not parse raises ``FormatError`` here.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeAlias

from nudgel.dsl import ast
from nudgel.dsl.diagnostics import SYNTAX, Diagnostic, InternalError
from nudgel.dsl.parser import parse
from nudgel.dsl.span import Span

WIDTH = 100
INDENT = 2

__all__ = ["WIDTH", "FormatError", "format_source"]


class FormatError(Exception):
    """The text does not parse; ``diagnostics`` says why (E100)."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        self.diagnostics = diagnostics
        if diagnostics:
            first = diagnostics[0]
            where = f"{first.span.file}:{first.span.line}:{first.span.column}"
            super().__init__(f"{where}: {first.message}")
        else:  # pragma: no cover - parse never fails without a diagnostic
            super().__init__("the text does not parse")


def format_source(source: str, path: str = "<input>") -> str:
    """The canonical layout of one rule file, or ``FormatError`` when it does
    not parse."""
    parsed = parse(source, path)
    if parsed.file is None:
        raise FormatError(parsed.diagnostics)
    try:
        text = _format(source, parsed.file)
    except RecursionError:
        # The parser copes with deeper nesting than the formatter's recursion.
        raise FormatError(
            (SYNTAX(Span.point(path, 1, 1), message="the rules are nested too deeply to format"),)
        ) from None
    # Like black's safe mode: a formatter bug must never rewrite a user's file
    # into something that means another thing (or loses a comment).
    again = parse(text, path)
    if again.file is None or not _same_tree(again.file, parsed.file):
        raise InternalError(f"rulec fmt would change the meaning of {path}; please report this")
    if [c.text for c in again.file.comments] != [c.text for c in parsed.file.comments]:
        raise InternalError(
            f"rulec fmt would lose or reorder comments of {path}; please report this"
        )
    return text


def _same_tree(one: object, other: object) -> bool:
    """``one == other`` for AST nodes (spans and other ``compare=False``
    fields ignored), without recursion: deep trees must not overflow."""
    stack = [(one, other)]
    while stack:
        left, right = stack.pop()
        if type(left) is not type(right):
            return False
        if isinstance(left, ast.Node):
            for item in dataclasses.fields(left):
                if item.compare:
                    stack.append((getattr(left, item.name), getattr(right, item.name)))
        elif isinstance(left, tuple):
            assert isinstance(right, tuple)
            if len(left) != len(right):
                return False
            stack.extend(zip(left, right, strict=True))
        elif left != right:
            return False
    return True


# ---- source tokens ---------------------------------------------------------------
#
# The AST knows where its nodes are but not where the keywords, brackets and
# comments between them are. Comments are anchored to tokens, so the source is
# re-tokenised here. Only token boundaries matter (the text parsed already), so
# this lexer is far simpler than the grammar's; where they split differently
# (`- 30d` is one OFFSET token for Lark, two here) a node's span covers both.

_LEXEME = re.compile(
    r"""
    (?P<space>[ \t\f\r\n]+)
    | (?P<comment>\#[^\n]*)
    | (?P<token>
        "(?:[^"\\\n]|\\.)*"
        | [0-9]+(?:\.[0-9]+)?[smhdw]?
        | [A-Za-z_][A-Za-z0-9_]*
        | \.\. | != | <= | >=
        | .
      )
    """,
    re.VERBOSE | re.DOTALL,
)

_PARENS = ("(", ")")
_OPENERS = frozenset({"(", "[", "{"})
_CLOSERS = frozenset({")", "]", "}"})
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class _SourceToken:
    text: str
    start: int


@dataclass(frozen=True, slots=True)
class _SourceComment:
    text: str
    start: int
    # Index of the last token before the comment (-1: none).
    after_token: int
    # Code precedes the comment on its line.
    trailing: bool
    # A blank line separates the comment from what precedes it.
    blank_before: bool


def _blank_before(source: str, offset: int) -> bool:
    """Whether a blank line lies between ``offset`` and the text before it."""
    newlines = 0
    index = offset - 1
    while index >= 0 and source[index] in " \t\f\r\n":
        newlines += source[index] == "\n"
        index -= 1
    return index >= 0 and newlines >= 2


def _lex(source: str) -> tuple[list[_SourceToken], list[_SourceComment]]:
    tokens: list[_SourceToken] = []
    comments: list[_SourceComment] = []
    last_token_end = -1
    for match in _LEXEME.finditer(source):
        kind = match.lastgroup
        if kind == "token":
            tokens.append(_SourceToken(match.group(), match.start()))
            last_token_end = match.end()
        elif kind == "comment":
            line_start = source.rfind("\n", 0, match.start()) + 1
            comments.append(
                _SourceComment(
                    # As the parser reports it: trailing whitespace is not part of it.
                    match.group().rstrip(),
                    match.start(),
                    len(tokens) - 1,
                    last_token_end > line_start,
                    _blank_before(source, match.start()),
                )
            )
    return tokens, comments


# ---- the document ------------------------------------------------------------------
#
# A small Wadler/Prettier-style document: text, line breaks that a group takes
# flat (a space or nothing) or broken (a newline), nesting, and groups that
# break when they do not fit or hold a comment.


@dataclass(frozen=True, slots=True)
class _Attached:
    text: str
    trailing: bool
    blank_before: bool


@dataclass(eq=False, slots=True)
class _Tok:
    """A token of the output. ``first``/``last`` are the source tokens it
    stands for (None for text the formatter adds)."""

    text: str
    first: int | None
    last: int | None
    closer: bool = False
    # First token of a declaration / last token of the file: blank lines
    # around the comments there are kept.
    top: bool = False
    eof: bool = False
    blank_before: bool = False
    before: list[_Attached] = field(default_factory=list)
    after: list[_Attached] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Line:
    """``" "`` when flat (``""`` for a soft line); a newline when broken."""

    soft: bool = False
    hard: bool = False


@dataclass(eq=False, slots=True)
class _Group:
    parts: list[Doc]
    broken: bool = False


@dataclass(frozen=True, slots=True)
class _Nest:
    parts: list[Doc]


@dataclass(frozen=True, slots=True)
class _Sep:
    """Between two declarations: a newline, and a blank line when required or,
    between two fields, when the source had one."""

    next_decl: _Tok
    required: bool


# A plain ``str`` is spacing: dropped at the start of a line.
Doc: TypeAlias = "_Tok | str | _Line | _Group | _Nest | _Sep | list[Doc]"

LINE = _Line()
SOFT = _Line(soft=True)
HARD = _Line(hard=True)


# ---- AST to document -------------------------------------------------------------------


class _Builder:
    """Builds the document in source order, pairing each output token with the
    source tokens it stands for."""

    def __init__(self, source: str, tokens: list[_SourceToken]) -> None:
        self.source = source
        self.tokens = tokens
        self.starts = [t.start for t in tokens]
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.cursor = 0
        self.toks: list[_Tok] = []

    # -- tokens

    def _add(self, tok: _Tok) -> _Tok:
        self.toks.append(tok)
        return tok

    def _offset(self, line: int, column: int) -> int:
        return self.line_starts[line - 1] + column - 1

    def leaf(self, span: Span, text: str) -> _Tok:
        """Output text standing for every source token inside ``span``."""
        if span.line > len(self.line_starts) or span.end_line > len(self.line_starts):
            return self._add(_Tok(text, None, None))
        start = self._offset(span.line, span.column)
        end = self._offset(span.end_line, span.end_column)
        first = bisect.bisect_left(self.starts, start)
        last = bisect.bisect_left(self.starts, end) - 1
        if first > last or first < self.cursor:
            return self._add(_Tok(text, None, None))
        self.cursor = last + 1
        return self._add(_Tok(text, first, last))

    def kw(self, text: str, *, top: bool = False) -> _Tok:
        """A keyword or bracket: the next source token with this text, past any
        parentheses the output drops; unpaired when the formatter adds it."""
        index = self.cursor
        while index < len(self.tokens):
            found = self.tokens[index].text
            if found == text:
                self.cursor = index + 1
                tok = _Tok(text, index, index, closer=text in _CLOSERS, top=top)
                if top:
                    tok.blank_before = _blank_before(self.source, self.tokens[index].start)
                return self._add(tok)
            if found not in _PARENS:
                break
            index += 1
        return self._add(_Tok(text, None, None, closer=text in _CLOSERS, top=top))

    def next_token(self, text: str, *, signed: bool = False) -> _Tok:
        """Output text for the next source token (a string or number written
        differently), with its sign token when ``signed``."""
        index = self.cursor
        while index < len(self.tokens) and self.tokens[index].text in _PARENS:
            index += 1
        if index >= len(self.tokens):
            return self._add(_Tok(text, None, None))
        last = index
        if signed and self.tokens[index].text in ("+", "-") and index + 1 < len(self.tokens):
            last = index + 1
        self.cursor = last + 1
        return self._add(_Tok(text, index, last))

    # -- declarations

    def file(self, rule_file: ast.RuleFile) -> list[Doc]:
        doc: list[Doc] = []
        previous: ast.Declaration | None = None
        for decl in rule_file.declarations:
            start = len(self.toks)
            part = self.declaration(decl)
            if previous is not None:
                both_fields = isinstance(previous, ast.FieldDecl) and isinstance(
                    decl, ast.FieldDecl
                )
                doc.append(_Sep(self.toks[start], required=not both_fields))
            doc.append(part)
            previous = decl
        if self.toks:
            self.toks[-1].eof = True
        return doc

    def declaration(self, decl: ast.Declaration) -> Doc:
        if isinstance(decl, ast.FieldDecl):
            return [
                self.kw("field", top=True),
                " ",
                self.kw(decl.name),
                self.kw(":"),
                " ",
                self.kw(decl.type_name),
            ]
        if isinstance(decl, ast.SegmentDecl):
            head: list[Doc] = [self.kw("segment", top=True), " ", self.kw(decl.name)]
            if decl.title is not None:
                head += [" ", self.next_token(_string(decl.title))]
            opening = self.kw("{")
            body = self.expr(decl.body)
            return [*head, " ", _Nest([opening, HARD, body]), HARD, self.kw("}")]
        if isinstance(decl, ast.ScoreDecl):
            head = [self.kw("score", top=True), " ", self.kw(decl.name), " "]
            opening = self.kw("{")
            lines: list[Doc] = []
            for rule in decl.rules:
                lines += [HARD, self.score_rule(rule)]
            if decl.clamp is not None:
                lines += [HARD, self.clamp(decl.clamp)]
            return [*head, _Nest([opening, *lines]), HARD if lines else "", self.kw("}")]
        if isinstance(decl, ast.LifecycleDecl):
            head = [self.kw("lifecycle", top=True), " "]
            opening = self.kw("{")
            width = max((len(s.name) for s in decl.stages), default=0)
            lines = []
            for stage in decl.stages:
                lines += [
                    HARD,
                    self.kw(stage.name),
                    " " * (width - len(stage.name) + 1),
                    self.kw("when"),
                    " ",
                    self.condition(stage.condition),
                ]
            return [*head, _Nest([opening, *lines]), HARD if lines else "", self.kw("}")]
        raise InternalError(f"fmt has no layout for {type(decl).__name__}")

    def score_rule(self, rule: ast.ScoreRule) -> Doc:
        points = self.next_token(_signed(rule.points), signed=True)
        if isinstance(rule, ast.ScorePer):
            parts: list[Doc] = [points, " ", self.kw("per"), " ", self.event(rule.event)]
            if rule.cap is not None:
                parts += [" ", self.kw("max"), " ", self.next_token(_number(rule.cap), signed=True)]
            return parts
        return [points, " ", self.kw("when"), " ", self.condition(rule.condition)]

    def condition(self, node: ast.Expr) -> Doc:
        """The condition after ``when``: a broken chain continues 2 spaces
        deeper than the rule; brackets close at the rule's indentation."""
        if isinstance(node, (ast.OrExpr, ast.AndExpr)):
            return _Nest([self.chain(node)])
        return self.expr(node)

    def clamp(self, clamp: ast.Clamp) -> Doc:
        return [
            self.kw("clamp"),
            " ",
            self.next_token(_number(clamp.low), signed=True),
            self.kw(".."),
            self.next_token(_number(clamp.high), signed=True),
        ]

    # -- conditions

    def expr(self, node: ast.Expr) -> Doc:
        """A condition where any condition may stand without parentheses."""
        if isinstance(node, (ast.OrExpr, ast.AndExpr)):
            return self.chain(node)
        if isinstance(node, ast.NotOp):
            operand = node.operand
            not_kw = self.kw("not")
            if isinstance(operand, (ast.OrExpr, ast.AndExpr)):
                return [not_kw, " ", self.parens(operand)]
            return [not_kw, " ", self.expr(operand)]
        if isinstance(node, ast.Truthy):
            return self.value(node.value)
        if isinstance(node, ast.TagTest):
            return self.leaf(node.span, f"tag {_string(node.tag)}")
        if isinstance(node, ast.SubscribedTest):
            return self.leaf(node.span, f"subscribed {_string(node.list)}")
        if isinstance(node, ast.SegmentTest):
            return self.leaf(node.span, f"in segment {node.segment}")
        if isinstance(node, ast.EventTest):
            return self.event(node.event)
        if isinstance(node, ast.Compare):
            return [self.value(node.left), " ", self.kw(node.op), " ", self.value(node.right)]
        if isinstance(node, ast.InList):
            return [
                self.value(node.value),
                " ",
                *self.negation(node.negated),
                self.kw("in"),
                " ",
                self.list_literal(node.items),
            ]
        if isinstance(node, ast.Between):
            return [
                self.value(node.value),
                " ",
                *self.negation(node.negated),
                self.kw("between"),
                " ",
                self.value(node.low),
                " ",
                self.kw("and"),
                " ",
                self.value(node.high),
            ]
        if isinstance(node, ast.TextMatch):
            return [
                self.value(node.value),
                " ",
                *self.negation(node.negated),
                self.kw(node.op),
                " ",
                self.value(node.pattern),
            ]
        if isinstance(node, ast.Matches):
            return [
                self.value(node.value),
                " ",
                *self.negation(node.negated),
                self.kw("matches"),
                " ",
                self.next_token(_string(node.pattern)),
            ]
        if isinstance(node, ast.Has):
            return [
                self.value(node.value),
                " ",
                *self.negation(node.negated),
                self.kw("has"),
                " ",
                self.value(node.element),
            ]
        if isinstance(node, ast.IsSet):
            value = self.value(node.value)
            is_kw = self.kw("is")
            return [value, " ", is_kw, " ", *self.negation(node.negated), self.kw("set")]
        raise InternalError(f"fmt has no layout for {type(node).__name__}")

    def negation(self, negated: bool) -> list[Doc]:
        return [self.kw("not"), " "] if negated else []

    def chain(self, node: ast.OrExpr | ast.AndExpr) -> Doc:
        op = "or" if isinstance(node, ast.OrExpr) else "and"
        parts: list[Doc] = [self.operand(node.items[0], op)]
        for item in node.items[1:]:
            keyword = self.kw(op)
            parts += [LINE, keyword, " ", self.operand(item, op)]
        return _Group(parts)

    def operand(self, item: ast.Expr, op: str) -> Doc:
        """An operand of an ``op`` chain, in parentheses when the tree needs them."""
        if isinstance(item, ast.OrExpr) or (isinstance(item, ast.AndExpr) and op == "and"):
            return self.parens(item)
        if isinstance(item, ast.AndExpr):
            # `a or b and c`: when broken, the `and` operands go deeper than the `or` ones.
            return _Nest([self.chain(item)])
        return self.expr(item)

    def parens(self, inner: ast.Expr) -> Doc:
        # The opening token first: the builder must meet tokens in source order.
        opening = self.kw("(")
        return self.bracket(opening, self.expr(inner), ")")

    def bracket(self, opening: Doc, inner: Doc, closing: str) -> Doc:
        # The opening token sits inside the nest so that comments after it
        # are indented like the content.
        return _Group([_Nest([opening, SOFT, inner]), SOFT, self.kw(closing)])

    # -- events and values

    def event(self, spec: ast.EventSpec) -> Doc:
        parts: list[Doc] = [self.kw("event"), " "]
        parts.append(self.next_token("*" if spec.name is None else _string(spec.name)))
        if spec.where is not None:
            where = self.kw("where")
            parts += [" ", where, " ", self.parens(spec.where)]
        if spec.within is not None:
            within = self.kw("within")
            parts += [" ", within, " ", self.leaf(spec.within.span, str(spec.within))]
        return parts

    def value(self, node: ast.Value) -> Doc:
        if isinstance(node, ast.Attribute):
            return self.leaf(node.span, node.name)
        if isinstance(node, ast.FieldRef):
            return self.leaf(node.span, ".".join(["fields", node.name, *map(_key, node.path)]))
        if isinstance(node, ast.PropsRef):
            return self.leaf(node.span, ".".join(["props", *map(_key, node.path)]))
        if isinstance(node, ast.ScoreRef):
            return self.leaf(node.span, f"score.{node.name}")
        if isinstance(node, ast.Now):
            return self.leaf(node.span, "now")
        if isinstance(node, ast.TimeShift):
            base = self.value(node.value)
            sign = "+" if node.sign > 0 else "-"
            return [base, " ", self.leaf(node.duration.span, f"{sign} {node.duration}")]
        if isinstance(node, ast.CountAgg):
            return self.bracket([self.kw("count"), self.kw("(")], self.event(node.event), ")")
        if isinstance(node, ast.TimeAgg):
            return self.bracket([self.kw(node.fn), self.kw("(")], self.event(node.event), ")")
        if isinstance(node, ast.ValueAgg):
            opening: list[Doc] = [self.kw(node.fn), self.kw("(")]
            event = self.event(node.event)
            comma = self.kw(",")
            return self.bracket(opening, [event, comma, LINE, self.value(node.prop)], ")")
        if isinstance(node, ast.TextLiteral):
            return self.leaf(node.span, _string(node.value))
        if isinstance(node, ast.NumberLiteral):
            return self.leaf(node.span, _number(node.value))
        if isinstance(node, ast.BoolLiteral):
            return self.leaf(node.span, "true" if node.value else "false")
        if isinstance(node, ast.ListLiteral):
            return self.list_literal(node)
        # Checked trees only (the parser never builds these), for completeness.
        if isinstance(node, ast.TimeLiteral):
            return self.leaf(node.span, _string(node.text))
        if isinstance(node, ast.StageLiteral):
            return self.leaf(node.span, _string(node.name))
        raise InternalError(f"fmt has no layout for {type(node).__name__}")

    def list_literal(self, node: ast.ListLiteral) -> Doc:
        opening = self.kw("[")
        if not node.items:
            return [opening, self.kw("]")]
        items: list[Doc] = [self.value(node.items[0])]
        for item in node.items[1:]:
            comma = self.kw(",")
            items += [comma, LINE, self.value(item)]
        return self.bracket(opening, items, "]")


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _number(value: Decimal) -> str:
    """Canonical decimal (spec §13): no exponent, no trailing zeros after the
    point, no trailing point, ``0`` never ``-0``."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _signed(value: Decimal) -> str:
    return ("-" if value < 0 else "+") + _number(abs(value))


# ---- comments --------------------------------------------------------------------


def _attach(builder: _Builder, comments: list[_SourceComment]) -> None:
    """Give each comment to an output token.

    A comment lies between two source tokens; its slot is between the output
    token that stands for the earlier one and the next output token. In a
    slot, a first trailing comment stays on the line of the token before it;
    the others go on their own lines before the next token, or, when that
    closes a block (or there is none), after the token before, so that they
    stay inside the block.
    """
    toks = builder.toks
    paired: list[int] = []
    firsts: list[int] = []
    for k, tok in enumerate(toks):
        if tok.first is not None:
            paired.append(k)
            firsts.append(tok.first)
    slots: dict[int, list[_SourceComment]] = {}
    for comment in comments:
        found = bisect.bisect_right(firsts, comment.after_token) - 1
        slot = paired[found] + 1 if found >= 0 else 0
        # An opening bracket stays on the line of what it opens: a comment
        # before it goes after it, into the block.
        while slot < len(toks) and toks[slot].text in _OPENERS:
            slot += 1
        slots.setdefault(slot, []).append(comment)
    for slot, group in slots.items():
        rest = group
        if group[0].trailing and slot > 0:
            toks[slot - 1].after.append(_Attached(group[0].text, True, False))
            rest = group[1:]
        if not rest:
            continue
        attached = [_Attached(c.text, False, c.blank_before) for c in rest]
        if slot < len(toks) and not toks[slot].closer:
            toks[slot].before.extend(attached)
        else:
            toks[slot - 1].after.extend(attached)


def _propagate_breaks(doc: Doc) -> bool:
    """Mark every group that holds a comment or a hard line as broken;
    whether ``doc`` holds one. Iterative: deep conditions must not overflow."""
    # Post-order walk with an explicit stack of (node, children done).
    result: dict[int, bool] = {}
    stack: list[tuple[Doc, bool]] = [(doc, False)]
    while stack:
        node, done = stack.pop()
        children = _children(node)
        if not done:
            stack.append((node, True))
            stack.extend((child, False) for child in children)
            continue
        if isinstance(node, _Tok):
            hard = bool(node.before or node.after)
        elif isinstance(node, _Line):
            hard = node.hard
        elif isinstance(node, _Sep):
            hard = True
        else:
            hard = any(result[id(child)] for child in children)
            if isinstance(node, _Group):
                node.broken = hard
        result[id(node)] = hard
    return result[id(doc)]


def _children(node: Doc) -> list[Doc]:
    if isinstance(node, list):
        return node
    if isinstance(node, (_Group, _Nest)):
        return node.parts
    return []


# ---- printing -------------------------------------------------------------------------


class _Printer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line = ""
        self.indent = 0
        # A comment ends the current line: what follows starts a new one.
        self.pending = False
        # Indentation of the line that holds the last token written.
        self.code_indent = 0

    def newline(self, indent: int) -> None:
        if self.line:
            self.lines.append((" " * self.indent + self.line).rstrip())
            self.line = ""
        self.indent = indent
        self.pending = False

    def blank(self) -> None:
        self.newline(self.indent)
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def own_line_comment(self, text: str, indent: int) -> None:
        if self.line:
            self.newline(indent)
        self.line = text
        self.pending = True

    def column(self) -> int:
        return self.indent if self.pending else self.indent + len(self.line)

    def token(self, tok: _Tok, indent: int) -> None:
        if self.line and (self.pending or tok.before):
            # A comment pushes the token off the line the layout gave it: it
            # continues the line above, one step deeper, or closes its block.
            self.newline(indent if tok.closer else max(indent, self.code_indent + INDENT))
        for index, comment in enumerate(tok.before):
            if tok.top and index > 0 and comment.blank_before:
                self.blank()
            self.own_line_comment(comment.text, self.indent)
        if tok.top and tok.before and tok.blank_before:
            self.blank()
        if self.pending:
            self.newline(self.indent)
        if not self.line:
            self.code_indent = self.indent
        self.line += tok.text
        for index, comment in enumerate(tok.after):
            if index == 0 and comment.trailing:
                self.line += " " + comment.text
                self.pending = True
                continue
            if tok.eof and comment.blank_before:
                self.blank()
            self.own_line_comment(comment.text, indent)

    def print(self, doc: Doc) -> str:
        # (indent, flat, doc), popped from the end.
        stack: list[tuple[int, bool, Doc]] = [(0, False, doc)]
        while stack:
            indent, flat, node = stack.pop()
            if isinstance(node, list):
                stack.extend((indent, flat, part) for part in reversed(node))
            elif isinstance(node, str):
                if self.line and not self.pending:
                    self.line += node
            elif isinstance(node, _Tok):
                self.token(node, indent)
            elif isinstance(node, _Line):
                if node.hard or not flat or self.pending:
                    self.newline(indent)
                elif not node.soft and self.line:
                    self.line += " "
            elif isinstance(node, _Sep):
                self.newline(0)
                first = node.next_decl
                blank = first.before[0].blank_before if first.before else first.blank_before
                if node.required or blank:
                    self.blank()
            elif isinstance(node, _Group):
                fits = flat or (not node.broken and _fits(node.parts, stack, WIDTH - self.column()))
                stack.append((indent, fits, node.parts))
            else:
                stack.append((indent + INDENT, flat, node.parts))
        self.newline(0)
        return "".join(line + "\n" for line in self.lines)


def _fits(parts: list[Doc], rest: list[tuple[int, bool, Doc]], width: int) -> bool:
    """Whether ``parts`` laid flat, and what follows up to the next line
    break, fit in ``width`` columns."""
    todo: list[tuple[bool, Doc]] = [(True, parts)]
    following = _reversed_rest(rest)
    while width >= 0:
        if not todo:
            entry = next(following, None)
            if entry is None:
                return True
            todo.append(entry)
            continue
        flat, node = todo.pop()
        if isinstance(node, list):
            todo.extend((flat, part) for part in reversed(node))
        elif isinstance(node, str):
            width -= len(node)
        elif isinstance(node, _Tok):
            if node.before:
                return True
            width -= len(node.text)
            if node.after:
                return width >= 0
        elif isinstance(node, _Line):
            if node.hard or not flat:
                return True
            width -= 0 if node.soft else 1
        elif isinstance(node, _Sep):
            return True
        elif isinstance(node, _Group):
            todo.append((flat and not node.broken, node.parts))
        else:
            todo.append((flat, node.parts))
    return False


def _reversed_rest(rest: list[tuple[int, bool, Doc]]) -> Iterator[tuple[bool, Doc]]:
    for _, flat, node in reversed(rest):
        yield flat, node


def _format(source: str, rule_file: ast.RuleFile) -> str:
    tokens, comments = _lex(source)
    builder = _Builder(source, tokens)
    doc = builder.file(rule_file)
    if not builder.toks:
        # Only comments (or nothing): keep them, and the blank lines between them.
        lines: list[str] = []
        for comment in comments:
            if comment.blank_before and lines:
                lines.append("")
            lines.append(comment.text)
        return "".join(line + "\n" for line in lines)
    _attach(builder, comments)
    _propagate_breaks(doc)
    return _Printer().print(doc)
