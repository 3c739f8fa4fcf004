"""Checked AST to parameterised PostgreSQL (the SQL backend).

One visitor (``_Visitor``, a ``visit_<NodeClass>`` method per node class)
turns checked trees into sqlglot expression trees, rendered with the postgres
dialect. Every value, from the rule file or our own (``''``, JSON type names,
``'UTC'``, fold tables, zero), is a bound parameter ``%(pN)s``: the SQL text
holds only syntax, column and function names. ``now``, the workspace and the
contact are bound at run time by ``CompiledQuery.bind``.

Semantics follow the in-memory backend exactly (spec §4-§10):

- Two-valued logic. Each condition is compiled together with whether it can
  be NULL. Where NULL and false mean the same (a WHERE clause, CASE WHEN,
  under AND/OR, which are monotone), a nullable condition is left as it is so
  the planner sees plain, indexable comparisons; where they differ (under NOT,
  as an output column) it becomes ``(...) IS TRUE``. So no SQL NULL ever
  reaches a result.
- Text: missing is NULL or ``''`` (``NULLIF`` where ``''`` could change the
  answer); ``=``/ordering use ``COLLATE "C"`` (code points); ``contains`` &
  co. fold both sides with ``nudgel_fold`` and use ``strpos``/``left``/
  ``right``, never LIKE.
- Custom fields and event properties are read from jsonb so that no stored
  value can raise: every cast sits behind ``CASE WHEN jsonb_typeof(...)``.
- Time: timestamps are ``timestamptz`` throughout; dates become their
  midnight UTC at read time; shifts add a pure time interval (no day part), so
  nothing depends on the session TimeZone.
- Numbers: ``numeric``, except counts and whole-number scores small enough
  to stay exact in ``bigint`` (``integral_score``); ``avg`` is rounded by
  integer division.

Query shapes. Segment queries (``segment_members``, ``segment_contains``)
keep each part of the condition a separate qual so that PostgreSQL orders
them by cost: a top-level ``tag``/``event`` test becomes a semi-join driven by
its index, and counts, sums and scores are correlated subqueries probing
``events(contact_pk, name, at)`` only for the contacts that passed the cheap
filters. Batch queries (``score_values``, ``stages``, ``everything``) compute a
value for every contact of the workspace. They read each contact's events in
one ``CROSS JOIN LATERAL`` aggregate (every aggregate a ``FILTER`` column): one
range scan of ``events(contact_pk, name, at)`` (or ``(contact_pk, at)``) per
contact, restricted to the event names the rules read (``e.name IN (...)``)
unless some rule reads ``event *``, index-only when no aggregate reads
``props`` and the table is vacuumed. (When an aggregate reads ``props``, the
jsonb work per event makes one parallel grouped pass over all events faster:
see ``events_read_props``.) At 1,000,000 contacts and 20,000,000
events this beats one grouped pass over all events (a hash aggregate over
every event of the database, then a sort or a spill: about 1.4x slower), and
it reads only the workspace's contacts in a shared database. Tags and
subscriptions, a few rows per contact, are still read in one grouped pass
each, joined on ``contact_pk``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any

from nudgel.dsl import ast
from nudgel.dsl.ast import Type
from nudgel.dsl.checker import CheckedRules
from nudgel.dsl.diagnostics import InternalError
from nudgel.dsl.textfold import FOLD_MAP, POSTGRES_FOLD_FROM, POSTGRES_FOLD_TO, fold
from nudgel.dsl.timeparse import MICROS_PER_DAY, MICROS_PER_SECOND, civil_from_days
from sqlglot import exp

__all__ = [
    "POSTGRES_MAX_COLUMNS",
    "CompiledQuery",
    "QueryTooWide",
    "SqlCompiler",
    "pg_timestamptz_text",
]

NodeKey = tuple[str, str]

# Output column kinds of ``CompiledQuery.columns``.
ID = ("id", "")
STAGE = ("stage", "")
PK = ("pk", "")  # the contact's pk, in batch queries (``everything_chunks(batch=True)``)

_SQL_TYPES: dict[str, exp.DataType] = {
    name: exp.DataType.build(name, dialect="postgres")
    for name in (
        "text",
        "numeric",
        "bigint",
        "integer",
        "boolean",
        "jsonb",
        "timestamptz",
        "timestamp",
    )
}
_SQL_TYPES["float8"] = exp.DataType.build("double precision", dialect="postgres")
_SQL_TYPES["bigint[]"] = exp.DataType.build("bigint[]", dialect="postgres")

# PostgreSQL refuses a query whose select list (or a subquery's) has more
# entries than this (MaxTupleAttributeNumber).
POSTGRES_MAX_COLUMNS = 1664

_AVG_SCALE = 10**12
# Characters that some other character folds to: a pattern without any of
# them matches the folded text exactly where it matches the text itself.
_FOLD_TARGETS = frozenset(map(chr, FOLD_MAP.values()))
# Scores whose numbers are all whole and small add up in bigint (much faster
# than numeric): a count is below 2^40 (no table holds more rows), so with
# the points' magnitudes summing to at most 2^20 no sum can reach 2^63.
_BIGINT_SCORE_LIMIT = 2**20
_BIGINT_MAX = 2**63 - 1


def integral_score(decl: ast.ScoreDecl) -> bool:
    """Whether the score can be computed in bigint, exactly and without overflow."""
    numbers = [r.points for r in decl.rules]
    numbers += [r.cap for r in decl.rules if isinstance(r, ast.ScorePer) and r.cap is not None]
    if decl.clamp is not None:
        numbers += [decl.clamp.low, decl.clamp.high]
    whole = all(n == n.to_integral_value() for n in numbers)
    small = all(abs(n) <= _BIGINT_SCORE_LIMIT for n in numbers)
    return whole and small and sum(abs(r.points) for r in decl.rules) <= _BIGINT_SCORE_LIMIT


# ---- run-time parameters ---------------------------------------------------------


def pg_timestamptz_text(micros: int) -> str:
    """An instant as PostgreSQL ``timestamptz`` input that no session setting
    can reinterpret: ISO order with an explicit ``+00`` offset, any year
    PostgreSQL supports (``BC`` for year 0 and before)."""
    days, rest = divmod(micros, MICROS_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, fraction = divmod(rest, MICROS_PER_SECOND)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"
    if year >= 1:
        return f"{year:04d}-{month:02d}-{day:02d} {clock}+00"
    return f"{1 - year:04d}-{month:02d}-{day:02d} {clock}+00 BC"


@dataclass(frozen=True)
class CompiledQuery:
    """SQL text with psycopg named placeholders, and its parameters.

    ``params`` holds everything known at compile time; ``bind`` adds ``now``
    (and the instants derived from it, ``now - 30d`` ...), the workspace and,
    for single-contact queries, the contact. ``columns`` says what each output
    column is: ``("id", "")``, ``("segment", name)``, ``("score", name)`` or
    ``("stage", "")``.
    """

    sql: str
    params: Mapping[str, Any]
    columns: tuple[tuple[str, str], ...] = ()
    # derived parameter name -> offset from ``now`` in microseconds
    now_offsets: Mapping[str, int] = field(default_factory=dict)

    def bind(
        self,
        *,
        now: int,
        workspace_id: int,
        contact_pk: int | None = None,
        contact_pks: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """All parameters for one run; ``now`` in microseconds since the epoch."""
        bound = dict(self.params)
        bound["now"] = pg_timestamptz_text(now)
        for name, offset in self.now_offsets.items():
            bound[name] = pg_timestamptz_text(now + offset)
        bound["workspace_id"] = workspace_id
        if "%(contact_pk)s" in self.sql:
            if contact_pk is None:
                raise ValueError("this query tests one contact: pass contact_pk")
            bound["contact_pk"] = contact_pk
        if "%(contact_pks)s" in self.sql:
            if contact_pks is None:
                raise ValueError("this query evaluates a batch of contacts: pass contact_pks")
            bound["contact_pks"] = list(contact_pks)
        return bound


class _Params:
    """Bound parameters: compile-time constants deduplicated by type and value,
    and the run-time ones."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.now_offsets: dict[str, int] = {}
        self._names: dict[tuple[str, str, str], str] = {}

    def constant(self, value: Any, sql_type: str) -> exp.Expr:
        key = (sql_type, type(value).__name__, str(value))
        name = self._names.get(key)
        if name is None:
            name = f"p{len(self._names) + 1}"
            self._names[key] = name
            self.values[name] = value
        return _cast(_placeholder(name), sql_type)

    def runtime(self, name: str, sql_type: str) -> exp.Expr:
        return _cast(_placeholder(name), sql_type)

    def now(self, offset_micros: int = 0) -> exp.Expr:
        if offset_micros == 0:
            return self.runtime("now", "timestamptz")
        seconds, rest = divmod(abs(offset_micros), MICROS_PER_SECOND)
        name = ("now_plus_" if offset_micros > 0 else "now_minus_") + str(seconds)
        if rest:
            name += f"_{rest:06d}"
        self.now_offsets[name] = offset_micros
        return self.runtime(name, "timestamptz")


# ---- sqlglot helpers ----------------------------------------------------------------

# Binding strength of PostgreSQL's operators, loosest first. sqlglot prints
# trees as built, without regard to precedence, so operands are parenthesised
# here when they bind no tighter than their operator.
_LEVELS: tuple[tuple[tuple[type[exp.Expr], ...], int], ...] = (
    ((exp.Or,), 0),
    ((exp.And,), 1),
    ((exp.Not,), 2),
    ((exp.Is,), 3),
    ((exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE), 4),
    ((exp.In,), 5),
    ((exp.JSONExtract, exp.JSONExtractScalar, exp.RegexpLike, exp.ArrayContainsAll), 6),
    ((exp.Add, exp.Sub), 7),
    ((exp.Mul, exp.Div), 8),
    ((exp.Collate, exp.AtTimeZone), 9),
)
_ATOMIC_LEVEL = 10
# Nodes that render as one unit (a name, a call, a parenthesised form).
_ATOMIC = (
    exp.Paren,
    exp.Column,
    exp.Placeholder,
    exp.Cast,
    exp.Subquery,
    exp.Exists,
    exp.Case,
    exp.Anonymous,
    exp.AggFunc,
    exp.Coalesce,
    exp.Nullif,
    exp.Greatest,
    exp.Least,
)
# Left-associative operators whose left operand may be the same operator.
_LEFT_CHAINS = (exp.And, exp.Or, exp.Add, exp.Mul, exp.JSONExtract)


def _level(expression: exp.Expr) -> int:
    # Checked before the atomic forms: sqlglot makes AND, OR, -> and ~
    # functions too.
    for kinds, level in _LEVELS:
        if isinstance(expression, kinds):
            return level
    if isinstance(expression, _ATOMIC):
        return _ATOMIC_LEVEL
    return -1  # unknown: always parenthesised


def _wrap(expression: exp.Expr, parent: int = _ATOMIC_LEVEL - 1) -> exp.Expr:
    """``expression`` as an operand of an operator of strength ``parent``."""
    return expression if _level(expression) > parent else exp.Paren(this=expression)


def _placeholder(name: str) -> exp.Placeholder:
    return exp.Placeholder(this=exp.to_identifier(name))


def _cast(expression: exp.Expr, sql_type: str) -> exp.Cast:
    return exp.Cast(this=expression, to=_SQL_TYPES[sql_type].copy())


def _col(table: str, name: str) -> exp.Column:
    return exp.column(name, table=table)


def _fn(name: str, *args: exp.Expr) -> exp.Anonymous:
    return exp.Anonymous(this=name, expressions=list(args))


def _binary(kind: type[exp.Binary], left: exp.Expr, right: exp.Expr) -> exp.Expr:
    node = kind(this=left, expression=right)
    level = _level(node)
    chained = isinstance(left, kind) and issubclass(kind, _LEFT_CHAINS)
    node.set("this", _wrap(left, level - 1 if chained else level))
    node.set("expression", _wrap(right, level))
    return node


_COMPARE: dict[str, type[exp.Binary]] = {
    "=": exp.EQ,
    "<": exp.LT,
    "<=": exp.LTE,
    ">": exp.GT,
    ">=": exp.GTE,
}


def _and(items: Iterable[exp.Expr]) -> exp.Expr:
    parts = list(items)
    result = parts[0]
    for part in parts[1:]:
        result = _binary(exp.And, result, part)
    return result


def _or(items: Iterable[exp.Expr]) -> exp.Expr:
    parts = list(items)
    result = parts[0]
    for part in parts[1:]:
        result = _binary(exp.Or, result, part)
    return result


def _not(expression: exp.Expr) -> exp.Expr:
    return exp.Not(this=_wrap(expression))


def _is_true(expression: exp.Expr) -> exp.Expr:
    # `x IS TRUE` is the SQL truth test (never NULL), not a constant.
    return exp.Is(this=_wrap(expression), expression=exp.true())


def _is_not_null(expression: exp.Expr) -> exp.Expr:
    return exp.Not(this=exp.Is(this=_wrap(expression), expression=exp.Null()))


def _collate_c(expression: exp.Expr) -> exp.Expr:
    return exp.Collate(this=_wrap(expression, 9), expression=exp.to_identifier("C", quoted=True))


def _case(whens: Iterable[tuple[exp.Expr, exp.Expr]], default: exp.Expr | None = None) -> exp.Case:
    return exp.Case(ifs=[exp.If(this=c, true=v) for c, v in whens], default=default)


def _json_arrow(base: exp.Expr, key: exp.Expr) -> exp.Expr:
    return _binary(exp.JSONExtract, base, key)


def _json_text_arrow(base: exp.Expr, key: exp.Expr) -> exp.Expr:
    # `a -> k ->> k2` reads left to right.
    node = exp.JSONExtractScalar(this=base, expression=key)
    node.set("this", _wrap(base, _level(node) - 1))
    return node


def _subquery(select: exp.Select) -> exp.Subquery:
    return exp.Subquery(this=select)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def render(expression: exp.Expr) -> str:
    sql = expression.sql(dialect="postgres", pretty=True)
    # psycopg reads every `%` as the start of a placeholder; the compiler
    # never writes one otherwise (no LIKE patterns, no modulo).
    if "%" in sql.replace("%(", ""):
        raise InternalError("compiled SQL holds a bare `%`")
    return sql


# ---- compiled values and conditions ----------------------------------------------------


class Kind(Enum):
    TEXT = "text"
    NUMBER = "number"
    BOOL = "bool"
    TIME = "time"
    STAGE = "stage"
    JSON = "json"


_KIND_OF_TYPE = {
    Type.TEXT: Kind.TEXT,
    Type.EMAIL: Kind.TEXT,
    Type.URL: Kind.TEXT,
    Type.NUMBER: Kind.NUMBER,
    Type.BOOL: Kind.BOOL,
    Type.DATE: Kind.TIME,
    Type.TIMESTAMP: Kind.TIME,
    Type.STAGE: Kind.STAGE,
    Type.JSON: Kind.JSON,
}

_NO_LITERAL = object()


@dataclass(frozen=True)
class Val:
    """A compiled value.

    ``expr`` is NULL when the value is missing (and for text also ``''`` when
    ``empty`` says it can be). ``literal`` is the Python value of a literal;
    ``missing`` marks the literal ``""``. For JSON, ``json_text`` reads the
    same path with ``->>``. ``source_json`` is set on a typed value read from
    JSON: equality with a literal is then plain jsonb equality, which is typed
    and exact. ``costly`` marks values that run a subquery."""

    kind: Kind
    expr: exp.Expr
    nullable: bool = True
    empty: bool = False
    literal: Any = _NO_LITERAL
    missing: bool = False
    json_text: exp.Expr | None = None
    source_json: exp.Expr | None = None
    costly: bool = False
    # The SQL value is a bigint (a count, a whole-number score), so integral
    # literals compared with it are bound as bigint too: no numeric casts.
    integer: bool = False

    @property
    def is_literal(self) -> bool:
        return self.literal is not _NO_LITERAL


@dataclass(frozen=True)
class Cond:
    """A compiled condition; ``nullable`` when it can be NULL (meaning false)."""

    expr: exp.Expr
    nullable: bool


# ---- the visitor ------------------------------------------------------------------------


class _Hoisted:
    """Per-contact aggregates of a batch query over one table, computed
    together: for events a LATERAL aggregate over the contact's rows, for
    tags and subscriptions ``LEFT JOIN (SELECT contact_pk, <aggregates> FROM
    table WHERE ... GROUP BY contact_pk) AS alias``. Identical aggregates
    share a column."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.columns: dict[str, tuple[str, exp.Expr]] = {}
        # What the pass may skip: None in the set means "any row counts".
        self.keys: set[str | None] = set()
        self._added: list[str | None] = []  # keys in the order they came, for undo

    def add_key(self, key: str | None) -> None:
        if key not in self.keys:
            self.keys.add(key)
            self._added.append(key)

    def column(self, aggregate: exp.Expr) -> exp.Column:
        text = aggregate.sql(dialect="postgres")
        if text not in self.columns:
            self.columns[text] = (f"k{len(self.columns) + 1}", aggregate)
        return _col(self.alias, self.columns[text][0])

    def mark(self) -> tuple[int, int]:
        return len(self.columns), len(self._added)

    def undo(self, mark: tuple[int, int]) -> None:
        """Forget the columns and keys added since ``mark``."""
        columns, keys = mark
        for text in list(self.columns)[columns:]:
            del self.columns[text]
        for key in self._added[keys:]:
            self.keys.discard(key)
        del self._added[keys:]


class _Visitor:
    def __init__(self, rules: CheckedRules, params: _Params, *, batch: bool = False) -> None:
        self.rules = rules
        self.p = params
        # Nodes whose value a query has already computed into a column
        # (``everything``): references read the column instead of inlining.
        self.bound: dict[NodeKey, exp.Expr] = {}
        self._event: str | None = None  # alias of the event row inside where (...)
        # Batch queries (every contact of a workspace) compute all event
        # aggregates in one LATERAL per contact and read tags and
        # subscriptions in one grouped pass each; single-contact and segment
        # queries probe the indexes per aggregate, after the cheap filters.
        self.batch = batch
        self.events = _Hoisted("ev")
        self.tags = _Hoisted("tg")
        self.lists = _Hoisted("sb")
        self._whole = False  # inside a score computed in bigint
        # A batch query for some contacts only (``contact_pks``): the grouped
        # passes read only theirs.
        self.contacts: exp.Expr | None = None

    # ---- dispatch ---------------------------------------------------------------

    def visit(self, node: ast.Node) -> Any:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise InternalError(f"the SQL backend has no rule for {type(node).__name__}")
        return method(node)

    def cond(self, node: ast.Expr) -> Cond:
        result = self.visit(node)
        if not isinstance(result, Cond):
            raise InternalError(f"{type(node).__name__} is not a condition")
        return result

    def value(self, node: ast.Value) -> Val:
        result = self.visit(node)
        if not isinstance(result, Val):
            raise InternalError(f"{type(node).__name__} is not a value")
        return result

    def strict(self, cond: Cond) -> exp.Expr:
        """The condition as a never-NULL boolean."""
        return _is_true(cond.expr) if cond.nullable else cond.expr

    # ---- constants ----------------------------------------------------------------

    def text(self, value: str) -> exp.Expr:
        return self.p.constant(value, "text")

    def number(self, value: Decimal | int) -> exp.Expr:
        return self.p.constant(Decimal(value), "numeric")

    def integer(self, value: int) -> exp.Expr:
        return self.p.constant(value, "bigint")

    def boolean(self, value: bool) -> exp.Expr:
        return self.p.constant(value, "boolean")

    def jsonb(self, value: Any) -> exp.Expr:
        return self.p.constant(json_text(value), "jsonb")

    def false(self) -> Cond:
        return Cond(self.boolean(False), nullable=False)

    def json_type(self, name: str) -> exp.Expr:
        return self.text(name)

    def fold(self, expression: exp.Expr) -> exp.Expr:
        return _fn(
            "nudgel_fold", expression, self.text(POSTGRES_FOLD_FROM), self.text(POSTGRES_FOLD_TO)
        )

    def nullif_empty(self, value: Val) -> exp.Expr:
        return exp.Nullif(this=value.expr, expression=self.text("")) if value.empty else value.expr

    def typeof_is(self, json: exp.Expr, name: str) -> exp.Expr:
        return _binary(exp.EQ, _fn("jsonb_typeof", json), self.json_type(name))

    # ---- conditions ------------------------------------------------------------------

    def visit_OrExpr(self, node: ast.OrExpr) -> Cond:
        items = [self.cond(x) for x in node.items]
        return Cond(_or(c.expr for c in items), any(c.nullable for c in items))

    def visit_AndExpr(self, node: ast.AndExpr) -> Cond:
        items = [self.cond(x) for x in node.items]
        return Cond(_and(c.expr for c in items), any(c.nullable for c in items))

    def visit_NotOp(self, node: ast.NotOp) -> Cond:
        return self.negate(self.cond(node.operand))

    def negate(self, cond: Cond) -> Cond:
        return Cond(_not(self.strict(cond)), nullable=False)

    def visit_Truthy(self, node: ast.Truthy) -> Cond:
        value = self.value(node.value)
        if value.is_literal:
            return Cond(self.boolean(value.literal is True), nullable=False)
        if value.kind is Kind.JSON:
            return Cond(_binary(exp.EQ, value.expr, self.jsonb(True)), nullable=True)
        if value.kind is Kind.BOOL:
            if value.source_json is not None:
                return Cond(_binary(exp.EQ, value.source_json, self.jsonb(True)), nullable=True)
            return Cond(_is_true(value.expr), nullable=False)
        raise InternalError(f"{value.kind} used as a condition")

    def visit_TagTest(self, node: ast.TagTest) -> Cond:
        if self.batch:
            self.tags.add_key(node.tag)
            match = _binary(exp.EQ, _col("t", "tag"), self.text(node.tag))
            return Cond(self.tags.column(exp.LogicalOr(this=match)), nullable=True)
        select = (
            exp.select()
            .from_(exp.table_("contact_tags", alias="t"))
            .where(
                _and(
                    [
                        _binary(exp.EQ, _col("t", "contact_pk"), _col("c", "pk")),
                        _binary(exp.EQ, _col("t", "tag"), self.text(node.tag)),
                    ]
                )
            )
        )
        return Cond(exp.Exists(this=select), nullable=False)

    def visit_SubscribedTest(self, node: ast.SubscribedTest) -> Cond:
        if self.batch:
            self.lists.add_key(node.list)
            match = _binary(exp.EQ, _col("s", "list"), self.text(node.list))
            return Cond(self.lists.column(exp.LogicalOr(this=match)), nullable=True)
        select = (
            exp.select()
            .from_(exp.table_("subscriptions", alias="s"))
            .where(
                _and(
                    [
                        _binary(exp.EQ, _col("s", "contact_pk"), _col("c", "pk")),
                        _binary(exp.EQ, _col("s", "list"), self.text(node.list)),
                        _binary(exp.EQ, _col("s", "status"), self.text("subscribed")),
                    ]
                )
            )
        )
        return Cond(exp.Exists(this=select), nullable=False)

    def visit_SegmentTest(self, node: ast.SegmentTest) -> Cond:
        column = self.bound.get(("segment", node.segment))
        if column is not None:
            return Cond(column.copy(), nullable=False)
        return self.cond(self.rules.segments[node.segment].body)

    def visit_EventTest(self, node: ast.EventTest) -> Cond:
        if self.batch:
            count = self.hoisted_event(node.event, exp.Count(this=exp.Star()))
            return Cond(_binary(exp.GT, count, self.integer(0)), nullable=True)
        select = (
            exp.select()
            .from_(exp.table_("events", alias="e"))
            .where(self.visit_EventSpec(node.event))
        )
        return Cond(exp.Exists(this=select), nullable=False)

    def visit_Compare(self, node: ast.Compare) -> Cond:
        left, right = self.value(node.left), self.value(node.right)
        if node.op == "!=":
            return self.negate(self.compare("=", left, right))
        return self.compare(node.op, left, right)

    def visit_InList(self, node: ast.InList) -> Cond:
        test = self.in_list(self.value(node.value), [self.value(x) for x in node.items.items])
        return self.negate(test) if node.negated else test

    def visit_Between(self, node: ast.Between) -> Cond:
        value = self.value(node.value)
        low, high = self.value(node.low), self.value(node.high)

        def inclusive(v: Val) -> Cond:
            above, below = self.compare(">=", v, low), self.compare("<=", v, high)
            return Cond(_and([above.expr, below.expr]), above.nullable or below.nullable)

        test = self.once(value, inclusive)
        return self.negate(test) if node.negated else test

    def visit_TextMatch(self, node: ast.TextMatch) -> Cond:
        subject = self.as_kind(self.value(node.value), Kind.TEXT)
        pattern = self.as_kind(self.value(node.pattern), Kind.TEXT)
        test = self.text_match(node.op, subject, pattern)
        return self.negate(test) if node.negated else test

    def visit_Matches(self, node: ast.Matches) -> Cond:
        if node.regex is None:
            raise InternalError("matches without a compiled regex")
        subject = self.as_kind(self.value(node.value), Kind.TEXT)
        if subject.missing:
            test = self.false()
        else:
            # '' is missing but a pattern such as `^$` would match it.
            text = self.nullif_empty(subject)
            if node.regex.ignore_case:
                text = self.fold(text)
            test = Cond(
                exp.RegexpLike(this=_collate_c(text), expression=self.text(node.regex.postgres)),
                nullable=subject.nullable or subject.empty,
            )
        return self.negate(test) if node.negated else test

    def visit_Has(self, node: ast.Has) -> Cond:
        test = self.has(self.value(node.value), self.value(node.element))
        return self.negate(test) if node.negated else test

    def visit_IsSet(self, node: ast.IsSet) -> Cond:
        value = self.value(node.value)
        if value.is_literal:
            test = Cond(self.boolean(not value.missing), nullable=False)
        elif value.kind is Kind.JSON:
            missing = exp.In(
                this=_wrap(value.expr, 5), expressions=[self.jsonb(None), self.jsonb("")]
            )
            test = Cond(_and([_is_not_null(value.expr), _not(missing)]), nullable=False)
        elif not value.nullable and not value.empty:
            test = Cond(self.boolean(True), nullable=False)
        else:
            test = Cond(_is_not_null(self.nullif_empty(value)), nullable=False)
        return self.negate(test) if node.negated else test

    # ---- comparisons ------------------------------------------------------------------

    def compare(self, op: str, a: Val, b: Val) -> Cond:
        """``a op b`` for op in = < <= > >=: false when either side is missing."""
        if a.missing or b.missing:
            return self.false()
        if a.kind is Kind.JSON and b.kind is Kind.JSON:
            return self.json_compare(op, a, b)
        if op == "=":
            for value, literal in ((a, b), (b, a)):
                fast = self.json_equals_literal(value, literal)
                if fast is not None:
                    return fast
        if a.kind is Kind.JSON:
            a = self.as_kind(a, b.kind)
        if b.kind is Kind.JSON:
            b = self.as_kind(b, a.kind)
        if a.kind is not b.kind:
            raise InternalError(f"compare {a.kind} with {b.kind}")
        a, b = self.as_bigint(a, b), self.as_bigint(b, a)
        left, right = a.expr, b.expr
        if a.kind is Kind.TEXT:
            if op == "=":
                # One NULLIF is enough for equality: '' then equals nothing.
                if not (b.is_literal or a.is_literal):
                    left = self.nullif_empty(a)
            else:
                left = a.expr if a.is_literal else self.nullif_empty(a)
                right = b.expr if b.is_literal else self.nullif_empty(b)
            left, right = _collate_c(left), _collate_c(right)
        return Cond(
            _binary(_COMPARE[op], left, right), a.nullable or b.nullable or a.empty or b.empty
        )

    def as_bigint(self, literal: Val, other: Val) -> Val:
        """An integral number literal compared with a bigint value, bound as a
        bigint (numeric would cast the other side on every row)."""
        if not (other.integer and literal.is_literal and literal.kind is Kind.NUMBER):
            return literal
        value = literal.literal
        if value != value.to_integral_value() or abs(value) > _BIGINT_MAX:
            return literal
        bound = self.integer(int(value))
        return Val(Kind.NUMBER, bound, nullable=False, literal=value, integer=True)

    def json_equals_literal(self, value: Val, literal: Val) -> Cond | None:
        """JSON (or a typed value read from JSON) ``=`` a text, number or bool
        literal, as jsonb equality: typed, exact (strings byte for byte,
        numbers by value) and one lookup."""
        json = value.expr if value.kind is Kind.JSON else value.source_json
        if json is None or not literal.is_literal:
            return None
        if literal.kind not in (Kind.TEXT, Kind.NUMBER, Kind.BOOL):
            return None
        if value.kind is not Kind.JSON and value.kind is not literal.kind:
            return None
        return Cond(_binary(exp.EQ, json, self.jsonb(literal.literal)), nullable=True)

    def json_compare(self, op: str, a: Val, b: Val) -> Cond:
        """JSON with JSON: only two scalars of the same JSON type compare;
        booleans have no order; missing (null, absent, "") compares false."""
        type_a, type_b = _fn("jsonb_typeof", a.expr), _fn("jsonb_typeof", b.expr)
        if op == "=":
            scalar = exp.In(
                this=type_a.copy(),
                expressions=[
                    self.json_type("string"),
                    self.json_type("number"),
                    self.json_type("boolean"),
                ],
            )
            return Cond(
                _and(
                    [
                        _binary(exp.EQ, type_a, type_b),
                        scalar,
                        _binary(exp.NEQ, a.expr, self.jsonb("")),
                        _binary(exp.EQ, a.expr, b.expr),
                    ]
                ),
                nullable=True,
            )
        texts = self.compare(op, self.as_kind(a, Kind.TEXT), self.as_kind(b, Kind.TEXT))
        numbers = self.compare(op, self.as_kind(a, Kind.NUMBER), self.as_kind(b, Kind.NUMBER))
        # as_kind already yields NULL for other JSON types, so the two
        # comparisons never both apply; OR keeps it NULL-as-false.
        return Cond(_or([texts.expr, numbers.expr]), nullable=True)

    def in_list(self, value: Val, items: list[Val]) -> Cond:
        present = [x for x in items if not x.missing]
        if not present:
            return self.false()
        kind = present[0].kind
        json = value.expr if value.kind is Kind.JSON else value.source_json
        if json is not None and kind in (Kind.TEXT, Kind.NUMBER, Kind.BOOL):
            return Cond(
                exp.In(this=_wrap(json, 5), expressions=[self.jsonb(x.literal) for x in present]),
                nullable=True,
            )
        value = self.as_kind(value, kind)
        subject = value.expr
        if kind is Kind.TEXT:
            subject = _collate_c(subject)
        return Cond(
            exp.In(this=_wrap(subject, 5), expressions=[x.expr for x in present]),
            nullable=value.nullable,
        )

    def text_match(self, op: str, subject: Val, pattern: Val) -> Cond:
        if subject.missing or pattern.missing:
            return self.false()
        if pattern.is_literal:
            folded = fold(pattern.literal)
            if folded == "":
                return self.false()
            needle = self.text(folded)
            length = self.p.constant(len(folded), "integer")
        else:
            # '' is a missing pattern (it would be found in everything).
            needle = self.fold(self.nullif_empty(pattern))
            length = _fn("char_length", needle)
        # Folding the subject cannot change the answer when the pattern is a
        # literal none of whose characters is the fold of another character
        # ("+254"): each character then only matches itself.
        stable = pattern.is_literal and not (set(fold(pattern.literal)) & _FOLD_TARGETS)
        haystack = subject.expr if stable else self.fold(subject.expr)
        if op == "contains":
            test = _binary(exp.GT, _fn("strpos", haystack, needle), self.p.constant(0, "integer"))
        elif op == "starts_with":
            test = _binary(exp.EQ, _fn("left", haystack, length), needle.copy())
        elif op == "ends_with":
            test = _binary(exp.EQ, _fn("right", haystack, length), needle.copy())
        else:
            raise InternalError(f"unknown text match {op}")
        return Cond(test, nullable=subject.nullable or pattern.nullable or not pattern.is_literal)

    def has(self, value: Val, element: Val) -> Cond:
        if value.kind is not Kind.JSON:
            raise InternalError("has on a value that is not JSON")
        if element.missing:
            return self.false()
        guards = [self.typeof_is(value.expr, "array")]
        if element.is_literal:
            wanted = self.jsonb([element.literal])
        else:
            if element.kind is Kind.JSON:
                guards.append(
                    exp.In(
                        this=_fn("jsonb_typeof", element.expr),
                        expressions=[
                            self.json_type("string"),
                            self.json_type("number"),
                            self.json_type("boolean"),
                        ],
                    )
                )
                guards.append(_binary(exp.NEQ, element.expr, self.jsonb("")))
                item = element.expr
            else:
                item = self.nullif_empty(element)
                # An element that is missing must not match a JSON null.
                guards.append(_is_not_null(item))
            wanted = _fn("jsonb_build_array", item)
        # Containment of a one-element array of a scalar: an array element
        # equal to it (strings byte for byte, numbers by value).
        guards.append(_binary(exp.ArrayContainsAll, value.expr, wanted))
        return Cond(_and(guards), nullable=True)

    def once(self, value: Val, build: Any) -> Cond:
        """``build(value)`` where the value is computed once: PostgreSQL copies
        an expression used twice (BETWEEN too), and a subquery would run twice."""
        if not value.costly:
            result: Cond = build(value)
            return result
        column = _col("b", "v")
        inner = Val(value.kind, column, nullable=value.nullable, empty=value.empty)
        body: Cond = build(inner)
        fenced = (
            exp.select(exp.alias_(value.expr, "v"))
            # OFFSET keeps the planner from pulling the subquery up (and so
            # from copying the expression back into each use).
            .offset(self.p.constant(0, "bigint"))
        )
        select = exp.select(body.expr).from_(exp.alias_(_subquery(fenced), "b"))
        return Cond(_subquery(select), nullable=body.nullable)

    # ---- JSON to typed values ----------------------------------------------------------

    def as_kind(self, value: Val, kind: Kind) -> Val:
        """A JSON value read as ``kind``: only that JSON type counts, anything
        else is missing (no coercion, §5)."""
        if value.kind is not Kind.JSON or kind is Kind.JSON:
            return value
        json = value.expr
        if kind is Kind.TEXT:
            if value.json_text is None:
                raise InternalError("a JSON value without its ->> form")
            read = _case([(self.typeof_is(json, "string"), value.json_text)])
            return Val(Kind.TEXT, read, empty=True, source_json=json)
        if kind is Kind.NUMBER:
            read = _case([(self.typeof_is(json, "number"), _cast(json, "numeric"))])
            return Val(Kind.NUMBER, read, source_json=json)
        if kind is Kind.BOOL:
            read = _case([(self.typeof_is(json, "boolean"), _cast(json, "boolean"))])
            return Val(Kind.BOOL, read, source_json=json)
        raise InternalError(f"JSON cannot be read as {kind}")

    def json_path(self, base: exp.Expr, keys: tuple[str, ...]) -> Val:
        parent = base
        for key in keys[:-1]:
            parent = _json_arrow(parent, self.text(key))
        last = self.text(keys[-1])
        return Val(
            Kind.JSON,
            _json_arrow(parent, last),
            json_text=_json_text_arrow(parent.copy(), last.copy()),
        )

    # ---- values --------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> Val:
        name = node.name
        if name == "at":
            if self._event is None:
                raise InternalError("`at` outside an event filter")
            return Val(Kind.TIME, _col(self._event, "at"), nullable=False)
        if name == "stage":
            column = self.bound.get(("lifecycle", ""))
            if column is not None:
                return Val(Kind.STAGE, column.copy())
            return Val(Kind.STAGE, self.stage_rank(), costly=True)
        if name in ("created_at", "updated_at"):
            return Val(Kind.TIME, _col("c", name))
        if name in ("id", "name", "phone", "whatsapp_id", "email"):
            column = _col("c", name)
            return Val(Kind.TEXT, column, nullable=name != "id", empty=True)
        raise InternalError(f"unknown attribute {name}")

    def visit_FieldRef(self, node: ast.FieldRef) -> Val:
        json = self.json_path(_col("c", "fields"), (node.name, *node.path))
        if node.path:
            return json
        declared = self.rules.field_type(node.name)
        if declared is Type.JSON:
            return json
        if declared.is_text_like:
            return self.as_kind(json, Kind.TEXT)
        if declared is Type.NUMBER:
            return self.as_kind(json, Kind.NUMBER)
        if declared is Type.BOOL:
            return self.as_kind(json, Kind.BOOL)
        assert json.json_text is not None
        # The helpers return NULL for anything but the exact accepted forms
        # (a number or an object never looks like a date), so no type guard.
        if declared is Type.DATE:
            day = _fn("nudgel_try_date", json.json_text)
            # Midnight UTC, computed without the session TimeZone.
            midnight = exp.AtTimeZone(this=_cast(day, "timestamp"), zone=self.text("UTC"))
            return Val(Kind.TIME, exp.Paren(this=midnight))
        if declared is Type.TIMESTAMP:
            return Val(Kind.TIME, _fn("nudgel_try_timestamptz", json.json_text))
        raise InternalError(f"unknown field type {declared}")

    def visit_PropsRef(self, node: ast.PropsRef) -> Val:
        if self._event is None:
            raise InternalError("`props` outside an event filter")
        return self.json_path(_col(self._event, "props"), node.path)

    def visit_ScoreRef(self, node: ast.ScoreRef) -> Val:
        column = self.bound.get(("score", node.name))
        if column is not None:
            whole = integral_score(self.rules.scores[node.name])
            return Val(Kind.NUMBER, column.copy(), nullable=False, integer=whole)
        return self.score(node.name)

    def visit_Now(self, node: ast.Now) -> Val:
        return Val(Kind.TIME, self.p.now(), nullable=False)

    def visit_TimeShift(self, node: ast.TimeShift) -> Val:
        offset = 0
        base: ast.Value = node
        while isinstance(base, ast.TimeShift):
            offset += base.offset_seconds
            base = base.value
        micros = offset * MICROS_PER_SECOND
        # Shifts of `now` and of literals are folded into one instant.
        if isinstance(base, ast.Now):
            return Val(Kind.TIME, self.p.now(micros), nullable=False)
        if isinstance(base, ast.TimeLiteral):
            return self.instant(base.micros + micros)
        value = self.value(base)
        # A pure time interval (no day part): adding it never depends on the
        # session TimeZone. Offsets are whole seconds below 2^53 microseconds,
        # exact in make_interval's double precision argument.
        interval = _fn(
            "make_interval",
            exp.Kwarg(this=exp.var("secs"), expression=self.p.constant(offset, "float8")),
        )
        return Val(Kind.TIME, _binary(exp.Add, value.expr, interval), nullable=value.nullable)

    def instant(self, micros: int) -> Val:
        literal = self.p.constant(pg_timestamptz_text(micros), "timestamptz")
        return Val(Kind.TIME, literal, nullable=False, literal=micros)

    def visit_CountAgg(self, node: ast.CountAgg) -> Val:
        count = exp.Count(this=exp.Star())
        if self.batch:
            hoisted = self.hoisted_event(node.event, count)
            total = exp.Coalesce(this=hoisted, expressions=[self.integer(0)])
            return Val(Kind.NUMBER, total, nullable=False, integer=True)
        correlated = self.correlated(node.event, count)
        return Val(Kind.NUMBER, correlated, nullable=False, costly=True, integer=True)

    def visit_ValueAgg(self, node: ast.ValueAgg) -> Val:
        saved, self._event = self._event, "e"
        try:
            prop = self.as_kind(self.visit_PropsRef(node.prop), Kind.NUMBER).expr
        finally:
            self._event = saved
        aggregate: Any = self.hoisted_event if self.batch else self.correlated
        if node.fn == "avg":
            if self.batch:
                total = self.hoisted_event(node.event, exp.Sum(this=prop))
                count = self.hoisted_event(node.event, exp.Count(this=prop.copy()))
                return Val(Kind.NUMBER, self.average(total, count))
            mean = self.average(exp.Sum(this=prop), exp.Count(this=prop.copy()))
            return Val(Kind.NUMBER, self.correlated(node.event, mean), costly=True)
        if node.fn == "sum":
            # 0 over no (numeric) value.
            value = aggregate(node.event, exp.Sum(this=prop))
            total = exp.Coalesce(this=value, expressions=[self.number(0)])
            return Val(Kind.NUMBER, total, nullable=False, costly=not self.batch)
        if node.fn in ("min", "max"):
            extreme = exp.Min(this=prop) if node.fn == "min" else exp.Max(this=prop)
            return Val(Kind.NUMBER, aggregate(node.event, extreme), costly=not self.batch)
        raise InternalError(f"unknown aggregate {node.fn}")

    def average(self, total: exp.Expr, count: exp.Expr) -> exp.Expr:
        """sum / count rounded half away from zero to 12 places, by exact
        integer division: sign(s) * div(|s| * 2e12 + n, 2n) * 1e-12. Numeric
        division's own result scale would round (or truncate) on its own."""
        # NULL over no numeric value, and never a division by zero.
        count = exp.Nullif(this=count, expression=self.integer(0))
        numerator = _binary(
            exp.Add,
            _binary(exp.Mul, _fn("abs", total), self.number(2 * _AVG_SCALE)),
            count,
        )
        quotient = _fn("div", numerator, _binary(exp.Mul, self.number(2), count.copy()))
        scaled = _binary(exp.Mul, quotient, self.number(Decimal(1).scaleb(-12)))
        return _binary(exp.Mul, _fn("sign", total.copy()), scaled)

    def visit_TimeAgg(self, node: ast.TimeAgg) -> Val:
        at = _col("e", "at")
        extreme = exp.Min(this=at) if node.fn == "first" else exp.Max(this=at)
        if self.batch:
            return Val(Kind.TIME, self.hoisted_event(node.event, extreme))
        return Val(Kind.TIME, self.correlated(node.event, extreme), costly=True)

    def visit_TextLiteral(self, node: ast.TextLiteral) -> Val:
        if node.value == "":
            return Val(Kind.TEXT, self.text(""), literal="", missing=True)
        return Val(Kind.TEXT, self.text(node.value), nullable=False, literal=node.value)

    def visit_NumberLiteral(self, node: ast.NumberLiteral) -> Val:
        return Val(Kind.NUMBER, self.number(node.value), nullable=False, literal=node.value)

    def visit_BoolLiteral(self, node: ast.BoolLiteral) -> Val:
        return Val(Kind.BOOL, self.boolean(node.value), nullable=False, literal=node.value)

    def visit_TimeLiteral(self, node: ast.TimeLiteral) -> Val:
        return self.instant(node.micros)

    def visit_StageLiteral(self, node: ast.StageLiteral) -> Val:
        return Val(Kind.STAGE, self.integer(node.rank), nullable=False, literal=node.rank)

    def visit_ListLiteral(self, node: ast.ListLiteral) -> Val:
        raise InternalError("a list is only valid after `in`")

    # ---- events -------------------------------------------------------------------------

    def visit_EventSpec(self, spec: ast.EventSpec) -> exp.Expr:
        """The WHERE of a subquery over ``events e`` for one contact: the
        contact, the name and the time range are conditions on the index
        (contact_pk, name, at)."""
        parts = [_binary(exp.EQ, _col("e", "contact_pk"), _col("c", "pk"))]
        # Events after `now` never count.
        parts.append(_binary(exp.LTE, _col("e", "at"), self.p.now()))
        return _and([*parts, *self.event_filter(spec)])

    def event_filter(self, spec: ast.EventSpec) -> list[exp.Expr]:
        """Which of a contact's events up to ``now`` match ``spec``."""
        parts: list[exp.Expr] = []
        if spec.name is not None:
            parts.append(_binary(exp.EQ, _col("e", "name"), self.text(spec.name)))
        if spec.within is not None:
            after = self.p.now(-spec.within.seconds * MICROS_PER_SECOND)
            parts.append(_binary(exp.GT, _col("e", "at"), after))
        if spec.where is not None:
            saved, self._event = self._event, "e"
            try:
                # In a WHERE or FILTER, NULL means false: no IS TRUE needed.
                parts.append(self.cond(spec.where).expr)
            finally:
                self._event = saved
        return parts

    def correlated(self, spec: ast.EventSpec, aggregate: exp.Expr) -> exp.Expr:
        """``(SELECT aggregate FROM events e WHERE <this contact's matches>)``."""
        select = exp.select(aggregate).from_(exp.table_("events", alias="e"))
        return _subquery(select.where(self.visit_EventSpec(spec)))

    def hoisted_event(self, spec: ast.EventSpec, aggregate: exp.Expr) -> exp.Expr:
        """The aggregate over the contact's matching events, as a column of the
        batch query's LATERAL aggregate over the contact's events."""
        self.events.add_key(spec.name)
        parts = self.event_filter(spec)
        if parts:
            aggregate = exp.Filter(this=aggregate, expression=exp.Where(this=_and(parts)))
        return self.events.column(aggregate)

    def hoisted_joins(self, select: exp.Select) -> exp.Select:
        """Join the per-contact passes that the compiled expressions used: a
        LATERAL aggregate over each contact's events (a grouped pass when an
        aggregate reads ``props``), a grouped pass over the tags and one over
        the subscriptions."""
        passes: list[tuple[_Hoisted, str, str, list[exp.Expr]]] = []
        if self.events.columns and not self.events_read_props():
            select = self.events_lateral(select)
        elif self.events.columns:
            where: list[exp.Expr] = [_binary(exp.LTE, _col("e", "at"), self.p.now())]
            if None not in self.events.keys:
                names = [self.text(k) for k in sorted(k for k in self.events.keys if k is not None)]
                where.append(exp.In(this=_col("e", "name"), expressions=names))
            passes.append((self.events, "events", "e", where))
        if self.tags.columns:
            tags = sorted(k for k in self.tags.keys if k is not None)
            where = [exp.In(this=_col("t", "tag"), expressions=[self.text(t) for t in tags])]
            passes.append((self.tags, "contact_tags", "t", where))
        if self.lists.columns:
            lists = sorted(k for k in self.lists.keys if k is not None)
            where = [
                exp.In(this=_col("s", "list"), expressions=[self.text(x) for x in lists]),
                _binary(exp.EQ, _col("s", "status"), self.text("subscribed")),
            ]
            passes.append((self.lists, "subscriptions", "s", where))
        for hoisted, table, alias, where in passes:
            key = _col(alias, "contact_pk")
            if self.contacts is not None:
                where.append(_binary(exp.EQ, key.copy(), _fn("ANY", self.contacts.copy())))
            grouped = (
                exp.select(key, *(exp.alias_(a, n) for n, a in hoisted.columns.values()))
                .from_(exp.table_(table, alias=alias), copy=False)
                .where(_and(where), copy=False)
                .group_by(key.copy(), copy=False)
            )
            on = _binary(exp.EQ, _col(hoisted.alias, "contact_pk"), _col("c", "pk"))
            select = select.join(
                exp.alias_(_subquery(grouped), hoisted.alias, table=True),
                on=on,
                join_type="LEFT",
                copy=False,
            )
        return select

    def events_read_props(self) -> bool:
        """Whether an event aggregate reads ``props``: jsonb work on every
        matching event, which a (parallel) grouped pass over the events does
        faster than one LATERAL per contact (measured: ``everything`` of the
        spec rules, 1.5x slower as a LATERAL at 300,000 and 1,000,000
        contacts, while scores and stages over counts are 1.1-1.2x faster)."""
        return any(
            column.name == "props"
            for _, aggregate in self.events.columns.values()
            for column in aggregate.find_all(exp.Column)
        )

    def events_lateral(self, select: exp.Select) -> exp.Select:
        """``CROSS JOIN LATERAL (SELECT <aggregates> FROM events e WHERE
        e.contact_pk = c.pk AND e.at <= now [AND e.name IN (...)])``: one
        range of the index ``(contact_pk, name, at)`` per contact, index-only
        when the aggregates read no ``props``. An aggregate without GROUP BY
        yields exactly one row, so every contact is kept; its values over no
        event (count 0, sum/min/max/bool_or NULL) are what the expressions
        expect."""
        where = [
            _binary(exp.EQ, _col("e", "contact_pk"), _col("c", "pk")),
            _binary(exp.LTE, _col("e", "at"), self.p.now()),
        ]
        if None not in self.events.keys:
            names = [self.text(k) for k in sorted(k for k in self.events.keys if k is not None)]
            where.append(exp.In(this=_col("e", "name"), expressions=names))
        aggregates = (
            exp.select(*(exp.alias_(a, n) for n, a in self.events.columns.values()))
            .from_(exp.table_("events", alias="e"), copy=False)
            .where(_and(where), copy=False)
        )
        table = exp.TableAlias(this=exp.to_identifier(self.events.alias))
        return select.join(
            exp.Lateral(this=_subquery(aggregates), alias=table), join_type="CROSS", copy=False
        )

    # ---- declarations -----------------------------------------------------------------------

    def visit_SegmentDecl(self, decl: ast.SegmentDecl) -> Cond:
        return self.cond(decl.body)

    def visit_ScoreDecl(self, decl: ast.ScoreDecl) -> Val:
        """The exact sum of the contributions, then the clamp (§9)."""
        saved, self._whole = self._whole, integral_score(decl)
        try:
            terms = [self.visit(rule) for rule in decl.rules if rule.points != 0]
            total = terms[0] if terms else self.points(Decimal(0))
            for term in terms[1:]:
                total = _binary(exp.Add, total, term)
            if decl.clamp is not None:
                total = exp.Greatest(this=total, expressions=[self.points(decl.clamp.low)])
                total = exp.Least(this=total, expressions=[self.points(decl.clamp.high)])
            return Val(
                Kind.NUMBER, total, nullable=False, costly=not self.batch, integer=self._whole
            )
        finally:
            self._whole = saved

    def points(self, value: Decimal) -> exp.Expr:
        """A number of a score: bigint when the whole score is (``integral_score``)."""
        return self.integer(int(value)) if self._whole else self.number(value)

    def visit_ScorePer(self, rule: ast.ScorePer) -> exp.Expr:
        """N x count, its absolute value capped at M keeping the sign."""
        count = self.visit_CountAgg(ast.CountAgg(rule.event, span=rule.span)).expr
        term = _binary(exp.Mul, self.points(rule.points), count)
        if rule.cap is None:
            return term
        # count >= 0, so the product has the sign of the points.
        if rule.points > 0:
            return exp.Least(this=term, expressions=[self.points(rule.cap)])
        return exp.Greatest(this=term, expressions=[self.points(-rule.cap)])

    def visit_ScoreWhen(self, rule: ast.ScoreWhen) -> exp.Expr:
        condition = self.cond(rule.condition).expr  # in CASE WHEN, NULL is false
        return _case([(condition, self.points(rule.points))], self.points(Decimal(0)))

    def prior_rank(self) -> exp.Expr:
        names = self.rules.stage_names
        if not names:  # `lifecycle { }`: no stage, ever (a NULL parameter)
            return self.p.constant(None, "bigint")
        return exp.Case(
            this=_col("c", "stage"),
            ifs=[exp.If(this=self.text(n), true=self.integer(i)) for i, n in enumerate(names)],
        )

    def visit_LifecycleDecl(self, lifecycle: ast.LifecycleDecl) -> exp.Expr:
        """The rank of the latest stage whose condition holds, never earlier
        than the prior stage (§10), checked from the latest stage down: once
        the prior stage is at least the current level, no earlier condition
        can matter."""
        whens: list[tuple[exp.Expr, exp.Expr]] = []
        for rank in reversed(range(len(lifecycle.stages))):
            whens.append(
                (_binary(exp.GTE, self.prior_rank(), self.integer(rank)), self.prior_rank())
            )
            whens.append((self.visit(lifecycle.stages[rank]), self.integer(rank)))
        return _case(whens) if whens else self.prior_rank()

    def visit_StageDecl(self, stage: ast.StageDecl) -> exp.Expr:
        return self.cond(stage.condition).expr  # in CASE WHEN, NULL is false

    def segment(self, name: str) -> Cond:
        result: Cond = self.visit(self.rules.segments[name])
        return result

    def score(self, name: str) -> Val:
        result: Val = self.visit(self.rules.scores[name])
        return result

    def stage_rank(self) -> exp.Expr:
        if self.rules.lifecycle is None:
            raise InternalError("stage without a lifecycle")
        result: exp.Expr = self.visit(self.rules.lifecycle)
        return result

    def stage_name(self, rank: exp.Expr) -> exp.Expr:
        names = self.rules.stage_names
        if not names:
            return self.p.constant(None, "text")
        return exp.Case(
            this=_wrap(rank),
            ifs=[exp.If(this=self.integer(i), true=self.text(n)) for i, n in enumerate(names)],
        )


def json_text(value: Any) -> str:
    """JSON text for a value of the language: numbers exactly as written by
    Decimal (never through a float)."""
    if value is None or isinstance(value, (bool, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(x) for x in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json_text(str(k))}:{json_text(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---- queries -------------------------------------------------------------------------------


def _stored_membership(visitor: _Visitor, segment: str) -> exp.Expr:
    member = (
        exp.select(exp.Literal.number(1))
        .from_(exp.table_("segment_members", alias="sm"))
        .where(
            _and(
                [
                    _binary(exp.EQ, _col("sm", "workspace_id"), _col("c", "workspace_id")),
                    _binary(exp.EQ, _col("sm", "segment"), visitor.text(segment)),
                    _binary(exp.EQ, _col("sm", "contact_pk"), _col("c", "pk")),
                ]
            )
        )
    )
    return exp.Exists(this=member)


def _stored_score(visitor: _Visitor, score: str, whole: bool) -> exp.Expr:
    value = (
        exp.select(_col("cs", "value"))
        .from_(exp.table_("contact_scores", alias="cs"))
        .where(
            _and(
                [
                    _binary(exp.EQ, _col("cs", "contact_pk"), _col("c", "pk")),
                    _binary(exp.EQ, _col("cs", "score"), visitor.text(score)),
                ]
            )
        )
    )
    # A contact without a row has the score 0 (the service stores no zeros).
    stored = exp.Coalesce(this=_subquery(value), expressions=[exp.Literal.number(0)])
    return _cast(stored, "bigint") if whole else stored


def _contacts(*outputs: exp.Expr) -> exp.Select:
    return exp.select(*outputs).from_(exp.table_("contacts", alias="c"), copy=False)


def _in_workspace(params: _Params) -> exp.Expr:
    return _binary(exp.EQ, _col("c", "workspace_id"), params.runtime("workspace_id", "bigint"))


def _conjuncts(expression: exp.Expr) -> Iterator[exp.Expr]:
    """The operands of a top-level AND chain (as built by ``_and``)."""
    while isinstance(expression, exp.Paren) and isinstance(expression.this, exp.And):
        expression = expression.this
    if isinstance(expression, exp.And):
        yield from _conjuncts(expression.this)
        yield from _conjuncts(expression.expression)
    else:
        yield expression


class SqlCompiler:
    """Compiles a checked rule set into the queries of the PostgreSQL backend."""

    def __init__(self, rules: CheckedRules) -> None:
        self.rules = rules

    def _visitor(self, *, batch: bool = False) -> tuple[_Visitor, _Params]:
        params = _Params()
        return _Visitor(self.rules, params, batch=batch), params

    @staticmethod
    def _finish(
        select: exp.Expr, params: _Params, columns: tuple[tuple[str, str], ...] = ()
    ) -> CompiledQuery:
        sql = render(select)
        # Constants a rewrite made unused (a JSON type name replaced by jsonb
        # equality, say) are dropped, and the rest renumbered in order of
        # first use: the parameters list exactly what the SQL reads.
        names: dict[str, str] = {}
        for name in _PLACEHOLDER.findall(sql):
            if name in params.values and name not in names:
                names[name] = f"p{len(names) + 1}"
        sql = _PLACEHOLDER.sub(lambda m: f"%({names.get(m[1], m[1])})s", sql)
        used = {new: params.values[old] for old, new in names.items()}
        offsets = {name: v for name, v in params.now_offsets.items() if f"%({name})s" in sql}
        return CompiledQuery(sql, used, columns, offsets)

    def _need(self, kind: str, name: str) -> None:
        table: Mapping[str, Any] = self.rules.segments if kind == "segment" else self.rules.scores
        if name not in table:
            raise KeyError(f"no {kind} named {name!r}")

    def segment_members(self, name: str) -> CompiledQuery:
        """``SELECT c.id`` of every member of the segment in the workspace."""
        self._need("segment", name)
        visitor, params = self._visitor()
        condition = visitor.segment(name)
        # Top-level conjuncts stay separate quals: PostgreSQL orders them by
        # cost (subqueries last) and turns a top-level EXISTS into a semi-join.
        where = _and([_in_workspace(params), *_conjuncts(condition.expr)])
        select = _contacts(_col("c", "id")).where(where)
        return self._finish(select, params, (ID,))

    def segment_members_over_stored_state(self, name: str) -> CompiledQuery:
        """:meth:`segment_members` of ``name``, reading every other segment's
        membership, every score and the stage from the service's stored state
        (``segment_members``, ``contact_scores``, ``contacts.stage``) instead of
        computing them: what a ``where=`` filter over deployed rules means."""
        self._need("segment", name)
        visitor, params = self._visitor()
        for other in self.rules.segments:
            if other != name:
                visitor.bound[("segment", other)] = _stored_membership(visitor, other)
        for score in self.rules.scores:
            visitor.bound[("score", score)] = _stored_score(
                visitor, score, integral_score(self.rules.scores[score])
            )
        if self.rules.lifecycle is not None:
            visitor.bound[("lifecycle", "")] = visitor.prior_rank()
        condition = visitor.segment(name)
        where = _and([_in_workspace(params), *_conjuncts(condition.expr)])
        select = _contacts(_col("c", "id")).where(where)
        return self._finish(select, params, (ID,))

    def segment_contains(self, name: str) -> CompiledQuery:
        """One boolean: whether the contact ``contact_pk`` is a member."""
        self._need("segment", name)
        visitor, params = self._visitor()
        condition = visitor.segment(name)
        member = _contacts().where(
            _and(
                [
                    _binary(exp.EQ, _col("c", "pk"), params.runtime("contact_pk", "bigint")),
                    _in_workspace(params),
                    *_conjuncts(condition.expr),
                ]
            )
        )
        select = exp.select(exp.alias_(exp.Exists(this=member), "member"))
        return self._finish(select, params, (("segment", name),))

    def score_values(self, name: str) -> CompiledQuery:
        """``SELECT c.id, <score>`` for every contact of the workspace."""
        self._need("score", name)
        visitor, params = self._visitor(batch=True)
        score = _cast(visitor.score(name).expr, "numeric")
        select = _contacts(_col("c", "id"), exp.alias_(score, "score"))
        select = visitor.hoisted_joins(select)
        return self._finish(select.where(_in_workspace(params)), params, (ID, ("score", name)))

    def stages(self) -> CompiledQuery:
        """``SELECT c.id, <stage name or NULL>`` for every contact."""
        if self.rules.lifecycle is None:
            raise KeyError("the rule set has no lifecycle block")
        visitor, params = self._visitor(batch=True)
        stage = visitor.stage_name(visitor.stage_rank())
        select = visitor.hoisted_joins(_contacts(_col("c", "id"), exp.alias_(stage, "stage")))
        return self._finish(select.where(_in_workspace(params)), params, (ID, STAGE))

    def everything(self) -> CompiledQuery:
        """One row per contact: id, each segment's membership, each score, the
        stage. Each contact's events are read in one LATERAL aggregate, tags
        and subscriptions in one grouped pass each; a node that another one
        reads is computed once per contact in a LATERAL subquery (fenced with
        OFFSET so it is not inlined back)."""
        query = _Everything(self.rules, _referenced_nodes(self.rules))
        for index, node in enumerate(self.rules.order, start=1):
            query.add(node, index)
        return query.compile()

    def everything_chunks(self, max_columns: int, *, batch: bool = False) -> list[CompiledQuery]:
        """What ``everything`` computes, as queries whose select lists (theirs
        and their subqueries') have at most ``max_columns`` entries each, so
        that a rule set of any size fits PostgreSQL's limit
        (``POSTGRES_MAX_COLUMNS``). Nodes keep their order; each query's
        ``columns`` say which it computes. A node that reads one computed
        by another query computes it again (its value is the same). With
        ``batch`` the queries read only the contacts whose pks are bound as
        ``contact_pks`` (``bind(contact_pks=...)``) and start with ``c.pk``
        (column ``("pk", "")``).

        :class:`QueryTooWide` when one node alone needs more columns.
        """
        if not 3 <= max_columns <= POSTGRES_MAX_COLUMNS:
            raise ValueError(f"max_columns must be from 3 to {POSTGRES_MAX_COLUMNS}")
        referenced = _referenced_nodes(self.rules)
        queries: list[CompiledQuery] = []
        query = _Everything(self.rules, referenced, batch=batch)
        for index, node in enumerate(self.rules.order, start=1):
            mark = query.mark()
            query.add(node, index)
            if query.width() <= max_columns:
                continue
            if len(query.outputs) == 1:
                raise QueryTooWide(node, query.width(), max_columns)
            # Too wide with this node: the query ends before it, and the
            # node starts the next one.
            query.undo(mark)
            queries.append(query.compile())
            query = _Everything(self.rules, referenced, batch=batch)
            query.add(node, index)
            if query.width() > max_columns:
                raise QueryTooWide(node, query.width(), max_columns)
        if query.outputs or not queries:
            queries.append(query.compile())
        return queries


class QueryTooWide(ValueError):
    """One segment, score or lifecycle needs more values per contact in one
    query (its own, its aggregates over events, tags or lists) than allowed."""

    def __init__(self, node: NodeKey, width: int, max_columns: int) -> None:
        kind, name = node
        what = "the lifecycle" if kind == "lifecycle" else f"{kind} {name}"
        super().__init__(
            f"{what} needs {width} values per contact in one query; at most {max_columns}"
        )
        self.node = node
        self.width = width
        self.max_columns = max_columns


class _Everything:
    """An ``everything`` query under construction: nodes are added in
    ``rules.order`` (what a node reads comes before it), then the select is
    built once (sqlglot's builder methods copy the whole tree on each call)."""

    def __init__(
        self, rules: CheckedRules, referenced: set[NodeKey], *, batch: bool = False
    ) -> None:
        self.rules = rules
        self.params = _Params()
        self.visitor = _Visitor(rules, self.params, batch=True)
        self.referenced = referenced
        self.batch = batch
        if batch:
            self.visitor.contacts = self.params.runtime("contact_pks", "bigint[]")
        self.laterals: list[exp.Expr] = []
        self.outputs: dict[NodeKey, exp.Expr] = {}

    def add(self, node: NodeKey, index: int) -> None:
        visitor, (kind, name) = self.visitor, node
        expression: exp.Expr
        if kind == "segment":
            expression = visitor.strict(visitor.segment(name))
        elif kind == "score":
            expression = visitor.score(name).expr
        else:
            expression = visitor.stage_rank()
        if node in self.referenced:
            alias = f"n{index}"
            fenced = exp.select(exp.alias_(expression, "v"))
            fenced = fenced.offset(self.params.constant(0, "bigint"))
            table = exp.TableAlias(this=exp.to_identifier(alias))
            self.laterals.append(exp.Lateral(this=_subquery(fenced), alias=table))
            expression = _col(alias, "v")
            visitor.bound[node] = expression
        self.outputs[node] = expression

    def width(self) -> int:
        """Entries of the widest select list: the outputs (with the id, and
        the pk of a batch) or a grouped pass (with its contact_pk)."""
        visitor = self.visitor
        return max(
            len(self.outputs) + 1 + self.batch,
            len(visitor.events.columns) + 1,
            len(visitor.tags.columns) + 1,
            len(visitor.lists.columns) + 1,
        )

    def mark(self) -> tuple[Any, ...]:
        visitor = self.visitor
        return (
            visitor.events.mark(),
            visitor.tags.mark(),
            visitor.lists.mark(),
            len(self.laterals),
        )

    def undo(self, mark: tuple[Any, ...]) -> None:
        """Forget the last node added (after ``mark``)."""
        events, tags, lists, laterals = mark
        self.visitor.events.undo(events)
        self.visitor.tags.undo(tags)
        self.visitor.lists.undo(lists)
        del self.laterals[laterals:]
        node, _ = self.outputs.popitem()
        self.visitor.bound.pop(node, None)

    def compile(self) -> CompiledQuery:
        visitor, params = self.visitor, self.params
        selected: list[exp.Expr] = [_col("c", "id")]
        columns: list[tuple[str, str]] = [ID]
        if self.batch:
            selected.insert(0, _col("c", "pk"))
            columns.insert(0, PK)
        for node, expression in self.outputs.items():
            if node[0] == "segment":
                selected.append(exp.alias_(expression, f"segment_{len(columns)}"))
                columns.append(node)
        for node, expression in self.outputs.items():
            if node[0] == "score":
                score = _cast(expression, "numeric")
                selected.append(exp.alias_(score, f"score_{len(columns)}"))
                columns.append(node)
        lifecycle = self.outputs.get(("lifecycle", ""))
        if lifecycle is not None:
            selected.append(exp.alias_(visitor.stage_name(lifecycle), "stage"))
            columns.append(STAGE)
        select = _contacts(*selected)
        # The event aggregates and grouped passes first: the LATERAL
        # subqueries of the nodes read their columns.
        select = visitor.hoisted_joins(select)
        for lateral in self.laterals:
            select = select.join(lateral, join_type="CROSS", copy=False)
        where = _in_workspace(params)
        if visitor.contacts is not None:
            where = _and(
                [where, _binary(exp.EQ, _col("c", "pk"), _fn("ANY", visitor.contacts.copy()))]
            )
        return SqlCompiler._finish(select.where(where, copy=False), params, tuple(columns))


def _referenced_nodes(rules: CheckedRules) -> set[NodeKey]:
    """Segments, scores and the lifecycle that some other node reads."""
    found: set[NodeKey] = set()

    def walk(node: object) -> None:
        if isinstance(node, ast.SegmentTest):
            found.add(("segment", node.segment))
        elif isinstance(node, ast.ScoreRef):
            found.add(("score", node.name))
        elif isinstance(node, ast.Attribute) and node.name == "stage":
            found.add(("lifecycle", ""))
        if isinstance(node, tuple):
            for item in node:
                walk(item)
        elif isinstance(node, ast.Node):
            for name in node.__dataclass_fields__:
                if name not in ("span", "type", "regex"):
                    walk(getattr(node, name))

    for segment in rules.segments.values():
        walk(segment.body)
    for score in rules.scores.values():
        walk(score.rules)
    if rules.lifecycle is not None:
        walk(rules.lifecycle.stages)
    return found
