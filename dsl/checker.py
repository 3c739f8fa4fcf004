"""Name resolution and type checking (spec §4-§11).

``check`` takes parsed files and returns a ``CheckedRules`` whose trees are
typed (every value has its ``type``; text literals in date, timestamp and stage
context are parsed; regexes are compiled) together with every diagnostic of the
rule set. A rule set with errors has no ``CheckedRules``: it is never
half-loaded.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal

from nudgel.dsl import ast
from nudgel.dsl import diagnostics as d
from nudgel.dsl.ast import Type
from nudgel.dsl.diagnostics import Diagnostic
from nudgel.dsl.parser import parse
from nudgel.dsl.regex import RegexError, compile_portable
from nudgel.dsl.span import Span
from nudgel.dsl.textfold import fold
from nudgel.dsl.timeparse import MICROS_PER_SECOND, parse_time_literal

ATTRIBUTE_TYPES: dict[str, Type] = {
    "id": Type.TEXT,
    "name": Type.TEXT,
    "phone": Type.TEXT,
    "whatsapp_id": Type.TEXT,
    "email": Type.EMAIL,
    "created_at": Type.TIMESTAMP,
    "updated_at": Type.TIMESTAMP,
}

# Durations and time offsets are bounded so that no timestamp arithmetic can
# leave the range both backends represent (PostgreSQL: 4713 BC to 294276 AD).
MAX_OFFSET_SECONDS = 100_000 * 86_400
# Deeper conditions are unreadable, and the generated Python would exceed the
# interpreter's own nesting limits.
MAX_NESTING = 64

ORDERING = frozenset({"<", "<=", ">", ">="})
EQUALITY = frozenset({"=", "!="})
FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}

Node = tuple[str, str]  # ("segment" | "score" | "lifecycle", name)


@dataclass(frozen=True, slots=True)
class CheckedRules:
    """A checked rule set: what both backends compile."""

    fields: Mapping[str, ast.FieldDecl]
    segments: Mapping[str, ast.SegmentDecl]
    scores: Mapping[str, ast.ScoreDecl]
    lifecycle: ast.LifecycleDecl | None
    # Every segment, score and the lifecycle, each after what it refers to.
    order: tuple[Node, ...]
    files: tuple[ast.RuleFile, ...] = ()

    def field_type(self, name: str) -> Type:
        return ast.FIELD_TYPES[self.fields[name].type_name]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.lifecycle.stages) if self.lifecycle else ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    rules: CheckedRules | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def has_errors(self) -> bool:
        return any(x.is_error for x in self.diagnostics)


def check_sources(sources: Mapping[str, str]) -> CheckResult:
    """Parse and check a rule set given as {path: text}, in path order."""
    files: list[ast.RuleFile] = []
    found: list[Diagnostic] = []
    for path in sorted(sources):
        parsed = parse(sources[path], path)
        found.extend(parsed.diagnostics)
        if parsed.file is not None:
            files.append(parsed.file)
    result = check(files)
    diagnostics = sorted([*found, *result.diagnostics], key=Diagnostic.sort_key)
    rules = result.rules if not any(x.is_error for x in found) else None
    return CheckResult(rules, tuple(diagnostics))


def check(files: Sequence[ast.RuleFile]) -> CheckResult:
    checker = _Checker(files)
    rules = checker.run()
    diagnostics = tuple(sorted(checker.diagnostics, key=Diagnostic.sort_key))
    has_errors = any(x.is_error for x in diagnostics)
    return CheckResult(None if has_errors else rules, diagnostics)


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


@dataclass(slots=True)
class _Context:
    """Where an expression sits: which declaration it belongs to (for the
    reference graph) and whether it is inside an event ``where``."""

    owner: Node
    in_where: bool = False


@dataclass(slots=True)
class _Checker:
    files: Sequence[ast.RuleFile]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    fields: dict[str, ast.FieldDecl] = field(default_factory=dict)
    segments: dict[str, ast.SegmentDecl] = field(default_factory=dict)
    scores: dict[str, ast.ScoreDecl] = field(default_factory=dict)
    lifecycle: ast.LifecycleDecl | None = None
    stage_ranks: dict[str, int] = field(default_factory=dict)
    used_fields: set[str] = field(default_factory=set)
    # owner -> [(referenced node, span of the reference)]
    edges: dict[Node, list[tuple[Node, Span]]] = field(default_factory=dict)
    depth: int = 0
    too_deep_reported: bool = False
    # Undeclared field -> the type its uses suggest (for E200's help), on demand.
    field_hints: dict[str, str] | None = None

    def report(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)

    # ---- declarations -----------------------------------------------------

    def run(self) -> CheckedRules:
        self.collect_names()
        segments = {
            name: replace(s, body=self.expr(s.body, _Context(("segment", name))))
            for name, s in self.segments.items()
        }
        scores = {name: self.score(s) for name, s in self.scores.items()}
        lifecycle = self.lifecycle_block(self.lifecycle) if self.lifecycle else None
        for name, decl in self.fields.items():
            if name not in self.used_fields:
                self.report(d.UNUSED_FIELD(decl.name_span, name=name))
        order = self.evaluation_order()
        return CheckedRules(self.fields, segments, scores, lifecycle, order, tuple(self.files))

    def collect_names(self) -> None:
        for file in self.files:
            for decl in file.declarations:
                if isinstance(decl, ast.FieldDecl):
                    self.declare(self.fields, decl.name, decl, "field", decl.name_span)
                    if decl.type_name not in ast.FIELD_TYPES:
                        guess = suggest(decl.type_name, ast.FIELD_TYPES)
                        self.report(
                            d.SYNTAX(
                                decl.type_span,
                                message=f"unknown field type `{decl.type_name}`",
                                help=(f'did you mean "{guess}"? ' if guess else "")
                                + "types are: "
                                + ", ".join(ast.FIELD_TYPES),
                            )
                        )
                elif isinstance(decl, ast.SegmentDecl):
                    self.declare(self.segments, decl.name, decl, "segment", decl.name_span)
                elif isinstance(decl, ast.ScoreDecl):
                    self.declare(self.scores, decl.name, decl, "score", decl.name_span)
                elif isinstance(decl, ast.LifecycleDecl):
                    if self.lifecycle is not None:
                        self.report(
                            d.DUPLICATE_NAME(
                                Span(
                                    decl.span.file,
                                    decl.span.line,
                                    decl.span.column,
                                    decl.span.line,
                                    decl.span.column + len("lifecycle"),
                                ),
                                kind="lifecycle block",
                                name="lifecycle",
                                help="a rule set has at most one lifecycle block",
                            )
                        )
                        continue
                    self.lifecycle = decl
                    for stage in decl.stages:
                        if stage.name in self.stage_ranks:
                            self.report(
                                d.DUPLICATE_NAME(stage.name_span, kind="stage", name=stage.name)
                            )
                        else:
                            self.stage_ranks[stage.name] = len(self.stage_ranks)

    def declare(
        self,
        table: Mapping[str, ast.Declaration],
        name: str,
        decl: ast.Declaration,
        kind: str,
        span: Span,
    ) -> None:
        if name in table:
            first = table[name].span
            self.report(
                d.DUPLICATE_NAME(
                    span,
                    kind=kind,
                    name=name,
                    help=f"`{name}` is first declared at {first.file}:{first.line}",
                )
            )
        else:
            table[name] = decl  # type: ignore[index]  # each table holds its own kind

    def score(self, decl: ast.ScoreDecl) -> ast.ScoreDecl:
        context = _Context(("score", decl.name))
        rules: list[ast.ScoreRule] = []
        for rule in decl.rules:
            if isinstance(rule, ast.ScorePer):
                if rule.cap is not None and rule.cap <= 0:
                    self.report(
                        d.BAD_SCORE_NUMBER(
                            rule.span,
                            message=f"`max {rule.cap}` must be greater than 0",
                            help="the cap limits the absolute value of the contribution",
                        )
                    )
                rules.append(replace(rule, event=self.event(rule.event, context)))
            else:
                rules.append(replace(rule, condition=self.expr(rule.condition, context)))
        if decl.clamp is not None and decl.clamp.low > decl.clamp.high:
            self.report(
                d.BAD_SCORE_NUMBER(
                    decl.clamp.span,
                    message=f"`clamp {decl.clamp.low}..{decl.clamp.high}`: the low end is above the high end",
                )
            )
        return replace(decl, rules=tuple(rules))

    def lifecycle_block(self, decl: ast.LifecycleDecl) -> ast.LifecycleDecl:
        context = _Context(("lifecycle", ""))
        stages = tuple(replace(s, condition=self.expr(s.condition, context)) for s in decl.stages)
        return replace(decl, stages=stages)

    # ---- reference graph ----------------------------------------------------

    def refer(self, context: _Context, target: Node, span: Span) -> None:
        self.edges.setdefault(context.owner, []).append((target, span))

    def evaluation_order(self) -> tuple[Node, ...]:
        nodes: list[Node] = [("score", n) for n in self.scores]
        if self.lifecycle is not None:
            nodes.append(("lifecycle", ""))
        nodes += [("segment", n) for n in self.segments]
        order: list[Node] = []
        state: dict[Node, int] = {}  # 1 visiting, 2 done
        reported: set[frozenset[Node]] = set()

        def visit(node: Node, path: list[tuple[Node, Span | None]]) -> None:
            state[node] = 1
            for target, span in self.edges.get(node, []):
                if state.get(target) == 1:
                    start = next(i for i, (n, _) in enumerate(path) if n == target)
                    cycle = [n for n, _ in path[start:]] + [target]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        first_span = path[start + 1][1] if start + 1 < len(path) else span
                        self.report(
                            d.CYCLE(
                                first_span or span,
                                cycle=" -> ".join(_describe_node(n) for n in cycle),
                                help="a segment, score or stage cannot depend on itself",
                            )
                        )
                elif target not in state and self.known(target):
                    visit(target, [*path, (target, span)])
            state[node] = 2
            order.append(node)

        for node in nodes:
            if node not in state:
                visit(node, [(node, None)])
        return tuple(order)

    def known(self, node: Node) -> bool:
        kind, name = node
        if kind == "segment":
            return name in self.segments
        if kind == "score":
            return name in self.scores
        return self.lifecycle is not None

    # ---- conditions ------------------------------------------------------------

    def expr(self, node: ast.Expr, ctx: _Context) -> ast.Expr:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                if not self.too_deep_reported:
                    self.too_deep_reported = True
                    self.report(
                        d.SYNTAX(
                            node.span,
                            message=f"conditions nested more than {MAX_NESTING} levels deep",
                            help="split the condition into segments and use `in segment`",
                        )
                    )
                return node
            return self.expr_node(node, ctx)
        finally:
            self.depth -= 1

    def expr_node(self, node: ast.Expr, ctx: _Context) -> ast.Expr:
        if isinstance(node, ast.OrExpr):
            return replace(node, items=tuple(self.expr(x, ctx) for x in node.items))
        if isinstance(node, ast.AndExpr):
            return replace(node, items=tuple(self.expr(x, ctx) for x in node.items))
        if isinstance(node, ast.NotOp):
            return replace(node, operand=self.expr(node.operand, ctx))
        if isinstance(node, ast.Truthy):
            return self.truthy(node, ctx)
        if isinstance(node, ast.TagTest):
            self.not_in_where(node, ctx, f'tag "{node.tag}"')
            return node
        if isinstance(node, ast.SubscribedTest):
            self.not_in_where(node, ctx, f'subscribed "{node.list}"')
            return node
        if isinstance(node, ast.SegmentTest):
            if self.not_in_where(node, ctx, f"in segment {node.segment}"):
                if node.segment not in self.segments:
                    self.unknown(node.span, "segment", node.segment, self.segments)
                else:
                    self.refer(ctx, ("segment", node.segment), node.span)
            return node
        if isinstance(node, ast.EventTest):
            if self.not_in_where(node, ctx, "an event condition"):
                return replace(node, event=self.event(node.event, ctx))
            return node
        if isinstance(node, ast.Compare):
            return self.compare(node, ctx)
        if isinstance(node, ast.InList):
            return self.in_list(node, ctx)
        if isinstance(node, ast.Between):
            return self.between(node, ctx)
        if isinstance(node, ast.TextMatch):
            return self.text_match(node, ctx)
        if isinstance(node, ast.Matches):
            return self.matches(node, ctx)
        if isinstance(node, ast.Has):
            return self.has(node, ctx)
        if isinstance(node, ast.IsSet):
            return self.is_set(node, ctx)
        raise d.InternalError(f"checker has no rule for {type(node).__name__}")

    def not_in_where(self, node: ast.Node, ctx: _Context, what: str) -> bool:
        if ctx.in_where:
            self.report(
                d.CONTACT_IN_EVENT_FILTER(
                    node.span,
                    what=f"`{what}`" if not what.startswith("an ") else what,
                    help="only `props`, `at` and `now` can be used inside `where (...)`",
                )
            )
            return False
        return True

    def unknown(
        self, span: Span, kind: str, name: str, candidates: Iterable[str], help: str | None = None
    ) -> None:
        guess = suggest(name, candidates)
        if guess is not None:
            help = f'did you mean "{guess}"?'
        self.report(d.UNKNOWN_NAME(span, kind=kind, name=name, help=help))

    def mismatch(self, span: Span, message: str, help: str | None = None) -> None:
        self.report(d.TYPE_MISMATCH(span, message=message, help=help))

    def never(self, span: Span, message: str) -> None:
        self.report(d.NEVER_OR_ALWAYS(span, message=message))

    def truthy(self, node: ast.Truthy, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        if value.type not in (Type.BOOL, Type.JSON, Type.UNKNOWN):
            self.mismatch(
                node.span,
                f"{_describe_value(value)} is {_article(value.type)}, not a condition",
                help=f"compare it, e.g. `{_source_hint(value)} is set`",
            )
        return replace(node, value=value)

    def compare(self, node: ast.Compare, ctx: _Context) -> ast.Expr:
        left = self.value(node.left, ctx)
        right = self.value(node.right, ctx)
        left, right = self.coerce_pair(left, right)
        if self.comparable(node.op, left, right, node.span):
            self.warn_email_capitals(left, right, node.span)
            self.warn_constant_compare(node.op, left, right, node.span)
        return replace(node, left=left, right=right)

    def coerce_pair(self, left: ast.Value, right: ast.Value) -> tuple[ast.Value, ast.Value]:
        """Give a text literal the type its other operand needs (date,
        timestamp or stage), parsing it now."""
        if isinstance(left, ast.TextLiteral) and (right.type.is_time or right.type is Type.STAGE):
            left = self.coerce_literal(left, right.type)
        elif isinstance(right, ast.TextLiteral) and (left.type.is_time or left.type is Type.STAGE):
            right = self.coerce_literal(right, left.type)
        return left, right

    def coerce_literal(self, literal: ast.Value, target: Type) -> ast.Value:
        if not isinstance(literal, ast.TextLiteral):
            return literal
        if target is Type.STAGE:
            if literal.value not in self.stage_ranks:
                self.unknown(literal.span, "stage", literal.value, self.stage_ranks)
                return replace(literal, type=Type.UNKNOWN)
            return ast.StageLiteral(
                literal.value, self.stage_ranks[literal.value], type=Type.STAGE, span=literal.span
            )
        if target.is_time:
            micros = parse_time_literal(literal.value, target is Type.TIMESTAMP)
            if micros is None:
                self.report(
                    d.BAD_TIME_LITERAL(
                        literal.span,
                        message=f'"{literal.value}" is not a valid {target.value}',
                        help=(
                            "timestamps are RFC 3339 with an offset, e.g. "
                            '"2026-06-01T12:00:00Z", or a date "2026-06-01" (midnight UTC)'
                            if target is Type.TIMESTAMP
                            else 'dates are written "YYYY-MM-DD", e.g. "2026-06-01"'
                        ),
                    )
                )
                return replace(literal, type=Type.UNKNOWN)
            return ast.TimeLiteral(micros, literal.value, type=target, span=literal.span)
        return literal

    def comparable(self, op: str, left: ast.Value, right: ast.Value, span: Span) -> bool:
        for side in (left, right):
            if isinstance(side, ast.ListLiteral):
                self.mismatch(side.span, "a list can only follow `in` or `not in`")
                return False
        lt, rt = left.type, right.type
        if Type.UNKNOWN in (lt, rt):
            return False
        if lt is Type.JSON or rt is Type.JSON:
            other = rt if lt is Type.JSON else lt
            if other.is_time or other is Type.STAGE:
                self.mismatch(
                    span,
                    f"cannot compare json with {other.value}: JSON has no {other.value} values",
                )
                return False
            if other is Type.BOOL and op in ORDERING:
                self.mismatch(span, f"`{op}` does not order booleans; use `=` or `!=`")
                return False
            return True
        if (lt.is_text_like and rt.is_text_like) or (lt.is_time and rt.is_time) or lt == rt:
            if lt is Type.BOOL and op in ORDERING:
                self.mismatch(span, f"`{op}` does not order booleans; use `=` or `!=`")
                return False
            return True
        self.mismatch(
            span,
            f"cannot compare {lt.value} with {rt.value}",
            help=_mismatch_help(left, right),
        )
        return False

    def warn_email_capitals(self, left: ast.Value, right: ast.Value, span: Span) -> None:
        for value, literal in ((left, right), (right, left)):
            if (
                value.type is Type.EMAIL
                and isinstance(literal, ast.TextLiteral)
                and fold(literal.value) != literal.value
            ):
                self.report(
                    d.EMAIL_CAPITALS(
                        literal.span,
                        literal=f'"{literal.value}"',
                        help=f'write it in lower case: "{fold(literal.value)}"',
                    )
                )

    def warn_constant_compare(self, op: str, left: ast.Value, right: ast.Value, span: Span) -> None:
        for value, literal, operator in ((left, right, op), (right, left, FLIPPED[op])):
            if (
                isinstance(literal, ast.TextLiteral)
                and literal.value == ""
                and value.type is not Type.UNKNOWN
            ):
                holds = "always holds" if operator == "!=" else "never holds"
                self.never(
                    span,
                    f'"" is a missing value, so this comparison {holds} (use `is set` / `is not set`)',
                )
                return
            if isinstance(value, ast.CountAgg) and isinstance(literal, ast.NumberLiteral):
                verdict = _count_verdict(operator, literal.value)
                if verdict is not None:
                    self.never(
                        span,
                        f"a count is a whole number of at least 0, so this comparison {verdict}",
                    )
                return

    def in_list(self, node: ast.InList, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        items = tuple(self.value(x, ctx) for x in node.items.items)
        if value.type.is_time or value.type is Type.STAGE:
            items = tuple(self.coerce_literal(x, value.type) for x in items)
        element_type = self.list_type(items, node.items.span)
        typed_list = replace(node.items, items=items, type=element_type)
        if not items:
            self.never(
                node.span,
                "an empty list: `in []` never holds"
                if not node.negated
                else "an empty list: `not in []` always holds",
            )
        elif element_type is not Type.UNKNOWN and value.type is not Type.UNKNOWN:
            if value.type is Type.JSON and element_type in (Type.DATE, Type.TIMESTAMP, Type.STAGE):
                self.mismatch(node.span, f"cannot compare json with {element_type.value}")
            elif value.type is not Type.JSON and not self.comparable(
                "=", value, items[0], node.span
            ):
                pass
            else:
                for item in items:
                    self.warn_email_capitals(value, item, node.span)
        return replace(node, value=value, items=typed_list)

    def list_type(self, items: Sequence[ast.Value], span: Span) -> Type:
        types = {x.type for x in items}
        if Type.UNKNOWN in types:
            return Type.UNKNOWN
        for item in items:
            if isinstance(item, ast.ListLiteral):
                self.mismatch(item.span, "lists cannot be nested")
                return Type.UNKNOWN
            if not isinstance(
                item,
                (
                    ast.TextLiteral,
                    ast.NumberLiteral,
                    ast.BoolLiteral,
                    ast.TimeLiteral,
                    ast.StageLiteral,
                ),
            ):
                self.mismatch(item.span, "list elements must be literals")
                return Type.UNKNOWN
        if not types:
            return Type.UNKNOWN
        if len(types) > 1:
            self.mismatch(
                span,
                "a list has one element type; this one mixes "
                + " and ".join(sorted(t.value for t in types)),
            )
            return Type.UNKNOWN
        return types.pop()

    def between(self, node: ast.Between, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        low = self.value(node.low, ctx)
        high = self.value(node.high, ctx)
        value, low = self.coerce_pair(value, low)
        value, high = self.coerce_pair(value, high)
        well_typed = self.comparable(">=", value, low, node.span) and self.comparable(
            "<=", value, high, node.span
        )
        if (
            well_typed
            and isinstance(low, ast.NumberLiteral)
            and isinstance(high, ast.NumberLiteral)
            and low.value > high.value
        ):
            self.never(
                node.span,
                f"`between {low.value} and {high.value}` is empty: the low end is above the high end",
            )
        return replace(node, value=value, low=low, high=high)

    def text_match(self, node: ast.TextMatch, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        pattern = self.value(node.pattern, ctx)
        for side in (value, pattern):
            if side.type is not Type.UNKNOWN and not (
                side.type.is_text_like or side.type is Type.JSON
            ):
                self.mismatch(
                    side.span,
                    f"`{node.op}` works on text; {_describe_value(side)} is {_article(side.type)}",
                )
        if isinstance(pattern, ast.TextLiteral) and pattern.value == "":
            self.never(node.span, f'`{node.op} ""` never holds: "" is a missing value')
        return replace(node, value=value, pattern=pattern)

    def matches(self, node: ast.Matches, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        if value.type is not Type.UNKNOWN and not (
            value.type.is_text_like or value.type is Type.JSON
        ):
            self.mismatch(
                value.span,
                f"`matches` works on text; {_describe_value(value)} is {_article(value.type)}",
            )
        try:
            regex = compile_portable(node.pattern)
        except RegexError as error:
            self.report(
                d.BAD_REGEX(
                    self.regex_span(node, error.position),
                    message=error.message,
                    help="see the portable subset in the language reference (§7)",
                )
            )
            return replace(node, value=value)
        return replace(node, value=value, regex=regex)

    def regex_span(self, node: ast.Matches, position: int) -> Span:
        """The column of the ``position``-th decoded character of the pattern,
        found by walking the string literal's escapes."""
        span = node.pattern_span or node.span
        raw = node.pattern_token[1:-1]
        index = column = 0
        while index < position and column < len(raw):
            if raw[column] == "\\":
                step = 6 if raw[column + 1 : column + 2] == "u" else 2
                if step == 6 and 0xD800 <= int(raw[column + 2 : column + 6], 16) <= 0xDBFF:
                    step = 12
                column += step
            else:
                column += 1
            index += 1
        start = span.column + 1 + column
        return Span(span.file, span.line, start, span.line, start + 1)

    def has(self, node: ast.Has, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        element = self.value(node.element, ctx)
        if value.type not in (Type.JSON, Type.UNKNOWN):
            self.mismatch(
                value.span,
                f"`has` looks inside JSON arrays; {_describe_value(value)} is {_article(value.type)}",
            )
        if element.type is not Type.UNKNOWN and not (
            element.type.is_text_like or element.type in (Type.NUMBER, Type.BOOL, Type.JSON)
        ):
            self.mismatch(element.span, f"a JSON array cannot hold {_article(element.type)}")
        return replace(node, value=value, element=element)

    def is_set(self, node: ast.IsSet, ctx: _Context) -> ast.Expr:
        value = self.value(node.value, ctx)
        if isinstance(value, ast.ListLiteral):
            self.mismatch(value.span, "a list is not a value that can be set")
        elif isinstance(value, ast.CountAgg) or (
            isinstance(value, ast.ValueAgg) and value.fn == "sum"
        ):
            verdict = "always holds" if not node.negated else "never holds"
            self.never(node.span, f"`{_source_hint(value)}` is never missing, so this {verdict}")
        return replace(node, value=value)

    # ---- values ---------------------------------------------------------------------

    def value(self, node: ast.Value, ctx: _Context) -> ast.Value:
        if isinstance(node, ast.Attribute):
            return self.attribute(node, ctx)
        if isinstance(node, ast.FieldRef):
            return self.field_ref(node, ctx)
        if isinstance(node, ast.PropsRef):
            if not ctx.in_where:
                self.report(
                    d.UNKNOWN_NAME(
                        node.span,
                        kind="name",
                        name="props",
                        help="`props` reads an event's properties and only exists inside `where (...)`",
                    )
                )
                return node
            return replace(node, type=Type.JSON)
        if isinstance(node, ast.ScoreRef):
            if not self.not_in_where(node, ctx, f"score.{node.name}"):
                return node
            if node.name not in self.scores:
                self.unknown(node.span, "score", node.name, self.scores)
                return node
            self.refer(ctx, ("score", node.name), node.span)
            return replace(node, type=Type.NUMBER)
        if isinstance(node, ast.Now):
            return replace(node, type=Type.TIMESTAMP)
        if isinstance(node, ast.TimeShift):
            return self.time_shift(node, ctx)
        if isinstance(node, ast.CountAgg):
            if not self.not_in_where(node, ctx, "count(...)"):
                return node
            return replace(node, event=self.event(node.event, ctx), type=Type.NUMBER)
        if isinstance(node, ast.ValueAgg):
            if not self.not_in_where(node, ctx, f"{node.fn}(...)"):
                return node
            prop = replace(node.prop, type=Type.JSON)
            return replace(node, event=self.event(node.event, ctx), prop=prop, type=Type.NUMBER)
        if isinstance(node, ast.TimeAgg):
            if not self.not_in_where(node, ctx, f"{node.fn}(...)"):
                return node
            return replace(node, event=self.event(node.event, ctx), type=Type.TIMESTAMP)
        if isinstance(node, ast.TextLiteral):
            return replace(node, type=Type.TEXT)
        if isinstance(node, ast.NumberLiteral):
            return replace(node, type=Type.NUMBER)
        if isinstance(node, ast.BoolLiteral):
            return replace(node, type=Type.BOOL)
        if isinstance(node, ast.ListLiteral):
            items = tuple(self.value(x, ctx) for x in node.items)
            return replace(node, items=items)
        raise d.InternalError(f"checker has no rule for {type(node).__name__}")

    def attribute(self, node: ast.Attribute, ctx: _Context) -> ast.Value:
        name = node.name
        if name == "at":
            if ctx.in_where:
                return replace(node, type=Type.TIMESTAMP)
            self.report(
                d.UNKNOWN_NAME(
                    node.span,
                    kind="attribute",
                    name="at",
                    help="`at` is the time of an event and only exists inside `where (...)`",
                )
            )
            return node
        if name == "stage":
            if not self.not_in_where(node, ctx, "stage"):
                return node
            if self.lifecycle is None:
                self.report(
                    d.UNKNOWN_NAME(
                        node.span,
                        kind="attribute",
                        name="stage",
                        help="stages come from a `lifecycle { ... }` block, and this rule set has none",
                    )
                )
                return node
            self.refer(ctx, ("lifecycle", ""), node.span)
            return replace(node, type=Type.STAGE)
        if name in ATTRIBUTE_TYPES:
            if not self.not_in_where(node, ctx, name):
                return node
            return replace(node, type=ATTRIBUTE_TYPES[name])
        help = None
        if name in self.fields:
            help = f"custom fields are read as `fields.{name}`"
        elif ctx.in_where:
            help = f"inside `where (...)`, event properties are read as `props.{name}`"
        self.unknown(node.span, "attribute", name, [*ATTRIBUTE_TYPES, "stage"], help)
        return node

    def field_ref(self, node: ast.FieldRef, ctx: _Context) -> ast.Value:
        if not self.not_in_where(node, ctx, f"fields.{node.name}"):
            return node
        decl = self.fields.get(node.name)
        if decl is None:
            if self.field_hints is None:
                self.field_hints = usage_types(self.files)
            hint = self.field_hints.get(node.name, "text")
            self.unknown(
                node.span,
                "field",
                node.name,
                self.fields,
                help=f"declare it: `field {node.name}: {hint}`",
            )
            return node
        self.used_fields.add(node.name)
        declared = ast.FIELD_TYPES.get(decl.type_name, Type.UNKNOWN)
        if node.path:
            if declared not in (Type.JSON, Type.UNKNOWN):
                self.mismatch(
                    node.span,
                    f"`fields.{node.name}` is {_article(declared)}; only json fields have paths",
                )
                return node
            return replace(node, type=Type.JSON)
        return replace(node, type=declared)

    def time_shift(self, node: ast.TimeShift, ctx: _Context) -> ast.Value:
        base = self.value(node.value, ctx)
        if isinstance(base, ast.TextLiteral):
            base = self.coerce_literal(base, Type.TIMESTAMP)
        if base.type is not Type.UNKNOWN and not base.type.is_time:
            self.mismatch(
                node.span,
                f"only dates and timestamps take `{'+' if node.sign > 0 else '-'} {node.duration}`; "
                f"{_describe_value(base)} is {_article(base.type)}",
            )
            return replace(node, value=base)
        shifted = replace(
            node, value=base, type=Type.TIMESTAMP if base.type.is_time else Type.UNKNOWN
        )
        total = 0
        cursor: ast.Value = shifted
        while isinstance(cursor, ast.TimeShift):
            total += cursor.offset_seconds
            cursor = cursor.value
        if abs(total) > MAX_OFFSET_SECONDS or node.duration.seconds > MAX_OFFSET_SECONDS:
            self.report(
                d.BAD_DURATION(
                    node.duration.span,
                    message="time offset too large: at most 100000 days in all",
                )
            )
        return shifted

    def event(self, spec: ast.EventSpec, ctx: _Context) -> ast.EventSpec:
        where = None
        if spec.where is not None:
            where = self.expr(spec.where, _Context(ctx.owner, in_where=True))
        if spec.within is not None:
            if spec.within.seconds > MAX_OFFSET_SECONDS:
                self.report(
                    d.BAD_DURATION(spec.within.span, message="`within` is at most 100000 days")
                )
            elif spec.within.amount == 0:
                self.never(
                    spec.within.span, "`within 0` is an empty window: no event is ever in it"
                )
        return replace(spec, where=where)


def _count_verdict(op: str, value: Decimal) -> str | None:
    """Whether ``count OP value`` holds for no count or for every count."""
    whole = value == value.to_integral_value()
    if op == "<":
        return "never holds" if value <= 0 else None
    if op == "<=":
        return "never holds" if value < 0 else None
    if op == ">":
        return "always holds" if value < 0 else None
    if op == ">=":
        return "always holds" if value <= 0 else None
    if op == "=":
        return "never holds" if value < 0 or not whole else None
    return "always holds" if value < 0 or not whole else None


def _describe_node(node: Node) -> str:
    kind, name = node
    return "lifecycle" if kind == "lifecycle" else f"{kind} `{name}`"


def _article(t: Type) -> str:
    return ("an " if t.value[0] in "aeiou" else "a ") + t.value


def _describe_value(value: ast.Value) -> str:
    return f"`{_source_hint(value)}`"


def _source_hint(value: ast.Value) -> str:
    if isinstance(value, ast.Attribute):
        return value.name
    if isinstance(value, ast.FieldRef):
        return ".".join(("fields", value.name, *value.path))
    if isinstance(value, ast.ScoreRef):
        return f"score.{value.name}"
    if isinstance(value, ast.PropsRef):
        return ".".join(("props", *value.path))
    if isinstance(value, ast.CountAgg):
        return "count(...)"
    if isinstance(value, (ast.ValueAgg, ast.TimeAgg)):
        return f"{value.fn}(...)"
    if isinstance(value, ast.Now):
        return "now"
    if isinstance(value, ast.TextLiteral):
        return f'"{value.value}"'
    if isinstance(value, ast.NumberLiteral):
        return str(value.value)
    return "the value"


def _mismatch_help(left: ast.Value, right: ast.Value) -> str | None:
    for value, literal in ((left, right), (right, left)):
        if value.type is Type.NUMBER and isinstance(literal, ast.TextLiteral):
            if _NUMBER.fullmatch(literal.value.strip()):
                return f"write the number without quotes: {literal.value.strip()}"
            return f"{_describe_value(value)} is a number: compare it with a number, e.g. 5000"
        if value.type.is_text_like and isinstance(literal, ast.NumberLiteral):
            return f'write the text in quotes: "{literal.value}"'
    return None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _literal_type(value: ast.Value) -> str | None:
    if isinstance(value, ast.NumberLiteral):
        return "number"
    if isinstance(value, ast.BoolLiteral):
        return "bool"
    if isinstance(value, ast.TimeLiteral | ast.Now | ast.TimeShift):
        return "timestamp"
    if isinstance(value, ast.TextLiteral):
        return "text"
    if isinstance(value, ast.ListLiteral) and value.items:
        return _literal_type(value.items[0])
    return None


def _walk(node: object) -> Iterator[object]:
    yield node
    if isinstance(node, tuple):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        for f in fields(node):
            if f.name != "span":
                yield from _walk(getattr(node, f.name))


def fields_read(files: Sequence[ast.RuleFile]) -> set[str]:
    """The names of every field the rules in ``files`` read (``fields.NAME``)."""
    return {node.name for node in _walk(tuple(files)) if isinstance(node, ast.FieldRef)}


def usage_types(files: Sequence[ast.RuleFile]) -> dict[str, str]:
    """For each field read in ``files``, the type its uses suggest: what it is
    compared with (``fields.ltv > 5000``: number), json when a path reads into
    it, bool when it stands alone as a condition, text otherwise."""
    hints: dict[str, str] = {}
    for node in _walk(tuple(files)):
        operands: tuple[object, ...] = ()
        if isinstance(node, ast.Compare):
            operands = (node.left, node.right)
        elif isinstance(node, ast.InList):
            operands = (node.value, node.items)
        elif isinstance(node, ast.Between):
            operands = (node.value, node.low, node.high)
        elif isinstance(node, ast.TextMatch | ast.Matches):
            operands = (node.value,)
        elif isinstance(node, ast.Truthy) and isinstance(node.value, ast.FieldRef):
            hints.setdefault(node.value.name, "bool")
        elif isinstance(node, ast.FieldRef) and node.path:
            hints[node.name] = "json"
        for operand in operands:
            if isinstance(operand, ast.FieldRef) and not operand.path:
                others = [o for o in operands if o is not operand and isinstance(o, ast.Value)]
                found = next((t for o in others if (t := _literal_type(o)) is not None), None)
                if found is not None or isinstance(node, ast.TextMatch | ast.Matches):
                    hints.setdefault(operand.name, found or "text")
    return hints


def iter_values(expr: ast.Expr) -> Iterator[ast.Value]:
    """Every value directly compared in a condition tree (not inside events)."""
    if isinstance(expr, (ast.OrExpr, ast.AndExpr)):
        for item in expr.items:
            yield from iter_values(item)
    elif isinstance(expr, ast.NotOp):
        yield from iter_values(expr.operand)
    elif isinstance(expr, ast.Compare):
        yield expr.left
        yield expr.right
    elif isinstance(expr, (ast.InList, ast.IsSet, ast.Matches, ast.Truthy)):
        yield expr.value
    elif isinstance(expr, ast.Between):
        yield from (expr.value, expr.low, expr.high)
    elif isinstance(expr, ast.TextMatch):
        yield from (expr.value, expr.pattern)
    elif isinstance(expr, ast.Has):
        yield from (expr.value, expr.element)


# Used as the micro unit by backends that turn durations into microseconds.
MICROS = MICROS_PER_SECOND
