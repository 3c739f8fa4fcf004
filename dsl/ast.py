"""The typed AST of the rules language.

Nodes are frozen, slotted dataclasses named after the grammar rules. The parser
builds them with ``type`` left as ``Type.UNKNOWN``; the checker returns a copy
in which every value carries its type, text literals in date, timestamp and
stage context are replaced by ``TimeLiteral`` / ``StageLiteral``, and regexes
are compiled. Backends only ever see checked trees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, TypeAlias

from nudgel.dsl.span import NO_SPAN, Span

if TYPE_CHECKING:
    from nudgel.dsl.regex import PortableRegex


class Type(StrEnum):
    UNKNOWN = "unknown"
    TEXT = "text"
    EMAIL = "email"
    URL = "url"
    NUMBER = "number"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"
    JSON = "json"
    STAGE = "stage"

    @property
    def is_text_like(self) -> bool:
        return self in (Type.TEXT, Type.EMAIL, Type.URL)

    @property
    def is_time(self) -> bool:
        return self in (Type.DATE, Type.TIMESTAMP)


FIELD_TYPES: dict[str, Type] = {
    t.value: t
    for t in (
        Type.TEXT,
        Type.NUMBER,
        Type.BOOL,
        Type.DATE,
        Type.TIMESTAMP,
        Type.EMAIL,
        Type.URL,
        Type.JSON,
    )
}

DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class Node:
    span: Span = field(default=NO_SPAN, kw_only=True, compare=False, repr=False)


# ---- values -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value(Node):
    type: Type = field(default=Type.UNKNOWN, kw_only=True)


@dataclass(frozen=True, slots=True)
class Attribute(Value):
    """A profile attribute (``email``, ``created_at``, ``stage``...) or, inside
    an event ``where``, the event time ``at``."""

    name: str


@dataclass(frozen=True, slots=True)
class FieldRef(Value):
    name: str
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PropsRef(Value):
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScoreRef(Value):
    name: str


@dataclass(frozen=True, slots=True)
class Now(Value):
    pass


@dataclass(frozen=True, slots=True)
class Duration(Node):
    amount: int
    unit: str

    @property
    def seconds(self) -> int:
        return self.amount * DURATION_SECONDS[self.unit]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


@dataclass(frozen=True, slots=True)
class TimeShift(Value):
    """``value + 3d`` / ``value - 30d``."""

    value: Value
    sign: int
    duration: Duration

    @property
    def offset_seconds(self) -> int:
        return self.sign * self.duration.seconds


@dataclass(frozen=True, slots=True)
class EventSpec(Node):
    """``event "name" [where (...)] [within D]``; ``name`` None is ``event *``."""

    name: str | None
    where: Expr | None = None
    within: Duration | None = None


@dataclass(frozen=True, slots=True)
class CountAgg(Value):
    event: EventSpec


@dataclass(frozen=True, slots=True)
class ValueAgg(Value):
    """``sum``, ``min``, ``max`` or ``avg`` of a numeric event property."""

    fn: str
    event: EventSpec
    prop: PropsRef


@dataclass(frozen=True, slots=True)
class TimeAgg(Value):
    """``first`` or ``last``: the time of the earliest or latest matching event."""

    fn: str
    event: EventSpec


@dataclass(frozen=True, slots=True)
class TextLiteral(Value):
    value: str


@dataclass(frozen=True, slots=True)
class NumberLiteral(Value):
    value: Decimal
    text: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class BoolLiteral(Value):
    value: bool


@dataclass(frozen=True, slots=True)
class TimeLiteral(Value):
    """A text literal parsed in date or timestamp context: microseconds since the
    Unix epoch (a date is its midnight UTC). ``text`` keeps the source form."""

    micros: int
    text: str


@dataclass(frozen=True, slots=True)
class StageLiteral(Value):
    """A stage name; ``rank`` is its 0-based position in the lifecycle block."""

    name: str
    rank: int


@dataclass(frozen=True, slots=True)
class ListLiteral(Value):
    items: tuple[Value, ...]


# ---- conditions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expr(Node):
    pass


@dataclass(frozen=True, slots=True)
class OrExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class AndExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class NotOp(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class Truthy(Expr):
    """A value used alone as a condition: ``fields.beta``, ``true``."""

    value: Value


@dataclass(frozen=True, slots=True)
class TagTest(Expr):
    tag: str


@dataclass(frozen=True, slots=True)
class SubscribedTest(Expr):
    list: str


@dataclass(frozen=True, slots=True)
class SegmentTest(Expr):
    segment: str


@dataclass(frozen=True, slots=True)
class EventTest(Expr):
    event: EventSpec


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    op: str
    left: Value
    right: Value


@dataclass(frozen=True, slots=True)
class InList(Expr):
    value: Value
    items: ListLiteral
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Between(Expr):
    value: Value
    low: Value
    high: Value
    negated: bool = False


@dataclass(frozen=True, slots=True)
class TextMatch(Expr):
    """``contains``, ``starts_with`` or ``ends_with`` (case-insensitive)."""

    op: str
    value: Value
    pattern: Value
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Matches(Expr):
    value: Value
    pattern: str
    negated: bool = False
    regex: PortableRegex | None = field(default=None, compare=False)
    # The string literal as written, to map regex error offsets to columns.
    pattern_token: str = field(default="", kw_only=True, compare=False, repr=False)
    pattern_span: Span | None = field(default=None, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Has(Expr):
    value: Value
    element: Value
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsSet(Expr):
    value: Value
    negated: bool = False


# ---- declarations -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDecl(Node):
    name: str
    type_name: str
    name_span: Span = field(default=NO_SPAN, kw_only=True, compare=False, repr=False)
    type_span: Span = field(default=NO_SPAN, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SegmentDecl(Node):
    name: str
    title: str | None
    body: Expr
    name_span: Span = field(default=NO_SPAN, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ScorePer(Node):
    points: Decimal
    event: EventSpec
    cap: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ScoreWhen(Node):
    points: Decimal
    condition: Expr


ScoreRule: TypeAlias = ScorePer | ScoreWhen


@dataclass(frozen=True, slots=True)
class Clamp(Node):
    low: Decimal
    high: Decimal


@dataclass(frozen=True, slots=True)
class ScoreDecl(Node):
    name: str
    rules: tuple[ScoreRule, ...]
    clamp: Clamp | None = None
    name_span: Span = field(default=NO_SPAN, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StageDecl(Node):
    name: str
    condition: Expr
    name_span: Span = field(default=NO_SPAN, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LifecycleDecl(Node):
    stages: tuple[StageDecl, ...]


Declaration: TypeAlias = FieldDecl | SegmentDecl | ScoreDecl | LifecycleDecl


@dataclass(frozen=True, slots=True)
class Comment:
    line: int
    column: int
    text: str


@dataclass(frozen=True, slots=True)
class RuleFile(Node):
    path: str
    declarations: tuple[Declaration, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
