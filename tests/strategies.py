"""Hypothesis strategies shared by the test suites: well-typed rule sets as
source text, contact records that hit the rules' edge cases, and instants to
evaluate at.

- ``rule_sets(comments=False, layout=None)`` -> ``RuleSet``: random rule sets
  that check without errors (warnings are allowed) and use every construct of
  the language. ``layout="tidy"`` writes single spaces; ``"messy"`` puts random
  whitespace, newlines, redundant parentheses, unsigned points, ``- 5``,
  ``007``, ``1.50``, ``\\u`` escapes and needlessly quoted keys where the
  grammar allows them (what ``rulec fmt`` must clean up); ``None`` draws one.
  ``comments=True`` (or ``rule_sets_with_comments()``) also sprinkles
  full-line and trailing comments wherever whitespace may go.
- ``contacts(field_types, stage_names, now=..., durations=...)`` -> a list of
  spec §12 contact dicts (unique ids; numbers as ``int``/``Decimal``, never
  ``float``) that the loader accepts, built to hit edge cases: missing keys,
  ``null``, ``""``, non-ASCII and case-folding traps, emails needing trimming
  and lower-casing, big integers, JSON values of every type, events exactly on
  the window boundaries of ``now``, at ``now`` and in the future.
  ``contact(...)`` draws one record.
- ``now_instants()`` -> RFC 3339 text of a few fixed instants.
- ``mutated(source)`` -> ``source`` after a few random character or token
  edits (deletions, insertions of language tokens and near-misses,
  duplications, swaps, truncation): mostly broken rule files.

Names come from a small fixed vocabulary (``EVENT_NAMES``, ``TAGS``,
``LISTS``, ``FIELD_NAMES``, ``STAGE_NAMES``, ``PROPS_KEYS``...) so that
generated contacts actually meet generated rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, Literal, TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy
from nudgel.dsl.ast import DURATION_SECONDS, Type
from nudgel.dsl.parser import scan_comments
from nudgel.dsl.timeparse import (
    MICROS_PER_DAY,
    MICROS_PER_SECOND,
    civil_from_days,
    parse_time_literal,
    parse_timestamp,
)

T = TypeVar("T")

# ---- vocabulary -------------------------------------------------------------------

EVENT_NAMES = ("purchase", "email_open", "visit")
TAGS = ("premium", "KE", "vip")
LISTS = ("newsletter", "offers")
SUBSCRIPTION_STATUSES = ("subscribed", "pending", "unsubscribed", "bounced")
STAGE_NAMES = ("subscriber", "lead", "opportunity", "customer")
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("plan", "city"),
    "number": ("ltv", "visits"),
    "bool": ("beta",),
    "date": ("birthday",),
    "timestamp": ("trial_ends",),
    "email": ("work_email",),
    "url": ("homepage",),
    "json": ("prefs", "meta"),
}
SEGMENT_NAMES = ("hot_leads", "lapsed", "big_spenders", "vips", "ke_only")
SCORE_NAMES = ("engagement", "value", "risk")
# Durations the rules use (``within``, ``now - D``); contacts put events on
# their boundaries.
DURATIONS = ("45s", "15m", "12h", "1d", "3d", "7d", "30d", "90d", "2w")
# Keys of JSON fields and of event properties. `count` and `max` are keywords
# (bare keys may be keywords); `first-name` has to be quoted.
JSON_KEYS = ("theme", "count", "max", "first-name", "langs", "n", "flag")
PROPS_KEYS = ("amount", "currency", "item", "tags")
REGEXES = ("^a", "(?i)b$", "[0-9]+", "a|b", "^\\+254", "\\.com$", "(?i)^é")
TEXTS = (
    "pro",
    "enterprise",
    "free",
    "a",
    "B",
    "Zoë",
    "ÉCOLE",
    "straße",
    "STRASSE",
    "İstanbul",
    "\u212a",  # KELVIN SIGN, lower-cases to "k"
    "k",
    "😀",
    "Σίσυφος",
    "ΣΊΣΥΦΟΣ",
    'say "hi"',
    "tab\there",
    "back\\slash",
    "100%_off",
    "@acme.com",
    "+254",
    "ada@example.co.ke",
    " pro ",
)
EMAILS = (
    "ada@example.co.ke",
    "  Ada@Example.CO.KE ",
    "BOB@ACME.COM",
    "zoë@exämple.com",
    "STRASSE@x.de",
    "\u212aelvin@x.io",
    " ",
    "",
)
TIMESTAMP_LITERALS = (
    "2026-05-01T00:00:00Z",
    "2026-05-01T12:00:00+03:00",
    "2026-06-01T12:00:00Z",
    "2026-05-31t12:00:00.5z",
    "2025-12-31T23:59:59.999999-05:30",
    "2026-05-01",
)
DATE_LITERALS = ("2026-05-01", "1990-04-02", "2024-02-29", "2026-06-01")
NOW_INSTANTS = (
    "2026-06-01T12:00:00Z",
    "2026-01-01T00:00:00Z",
    "2024-02-29T23:59:59.999999Z",
    "2026-06-01T15:00:00+03:00",
)

# Grammar-level whitespace; comments go only where whitespace may.
_SPACES = (" ", " ", " ", "\n", "  ", "\n    ", "\t", " \n\n ", "\r\n")
_COMMENT_TEXTS = ("note", "TODO: check", 'quote "x"', "hash # inside", "Zoë ß 😀", "", "  spaced  ")


# ---- rule sets -------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """A generated rule file and what it declares."""

    source: str
    # Declared fields: name -> type name as written (``text``, ``json``...).
    fields: Mapping[str, str]
    segments: tuple[str, ...]
    scores: tuple[str, ...]
    # Stage names in order; None when there is no lifecycle block.
    stages: tuple[str, ...] | None
    # Durations the rules use, for boundary events.
    durations: tuple[str, ...]
    # Texts of the comments sprinkled in, in order (``#`` included).
    comments: tuple[str, ...] = ()
    path: str = "generated.rules"

    @property
    def field_types(self) -> dict[str, Type]:
        return {name: Type(type_name) for name, type_name in self.fields.items()}

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.stages or ()

    @property
    def sources(self) -> dict[str, str]:
        return {self.path: self.source}


@dataclass
class _Scope:
    """What a condition may refer to where it is written."""

    fields: dict[str, str]
    segments: list[str]
    scores: list[str]
    # None: `stage` may not be used (no lifecycle yet, or inside it).
    stages: tuple[str, ...] | None
    in_where: bool = False

    def where(self) -> _Scope:
        return _Scope(self.fields, self.segments, self.scores, self.stages, in_where=True)

    def fields_of(self, *types: str) -> list[str]:
        return [name for name, t in self.fields.items() if t in types]


@dataclass
class _Writer:
    """Writes rule text token by token; ``sp()``/``gap()`` are the places
    where whitespace (and comments) may go."""

    draw: DrawFn
    messy: bool
    with_comments: bool
    comments: list[str] = field(default_factory=list)
    durations: set[str] = field(default_factory=set)

    # -- primitives

    def pick(self, options: Sequence[T]) -> T:
        return options[self.draw(_ints(0, len(options) - 1))]

    def chance(self, p: float = 0.5) -> bool:
        # Integers shrink towards the first option; weighted by p.
        return self.draw(_ints(0, 99)) < int(p * 100)

    def comment(self) -> str:
        text = ("# " + self.pick(_COMMENT_TEXTS) + f" c{len(self.comments)}").rstrip()
        self.comments.append(text)
        return text

    def sp(self) -> str:
        """Whitespace required between two tokens."""
        if self.with_comments and self.chance(0.08):
            if self.chance():
                return " " + self.comment() + "\n"
            return "\n" + self.comment() + "\n"
        return self.pick(_SPACES) if self.messy else " "

    def gap(self, tidy: str = "") -> str:
        """Whitespace allowed, not required (next to punctuation); ``tidy``
        in the tidy layout."""
        if self.messy or self.with_comments:
            if self.chance(0.6):
                return "" if self.messy else tidy
            return self.sp()
        return tidy

    def string(self, value: str) -> str:
        text = json.dumps(value, ensure_ascii=False)
        if self.messy and self.chance(0.2):
            # Needless escapes: `\u00e9`, `\/`; fmt writes them canonically.
            text = json.dumps(value, ensure_ascii=True).replace("/", "\\/")
        return text

    def number(self, value: Decimal) -> str:
        """A non-negative number as written: maybe `007` or `1.50`."""
        text = _plain(value)
        if self.messy and self.chance(0.2):
            text = "00" + text
        if self.messy and self.chance(0.2):
            text = text + ("0" if "." in text else ".0")
        return text

    def signed_number(self, value: Decimal) -> str:
        if value < 0:
            return "-" + self.gap() + self.number(-value)
        return self.number(value)

    def duration(self) -> str:
        text = self.pick(DURATIONS)
        self.durations.add(text)
        return text

    def parens(self, text: str) -> str:
        return "(" + self.gap() + text + self.gap() + ")"

    # -- literals

    def number_literal(self) -> str:
        value = self.draw(_LITERAL_INTS)
        scale = self.pick([0, 0, 1, 2])
        return self.signed_number(Decimal(value).scaleb(-scale))

    def text_literal(self) -> str:
        return self.string(self.pick(TEXTS))

    def list_of(self, item: Callable[[], str], max_size: int = 3) -> str:
        size = self.draw(_ints(0, max_size))
        items = [item() for _ in range(size)]
        inner = ("," + self.gap(" ")).join(x + self.gap() for x in items)
        return "[" + self.gap() + inner + "]"

    # -- values by type

    def json_path(self, scope: _Scope) -> str:
        if scope.in_where:
            head = "props" + self.gap() + "." + self.gap() + self.key((*PROPS_KEYS, "count"))
            if self.chance(0.2):
                head += self.gap() + "." + self.gap() + self.key(("sku", "first-name"))
            return head
        name = self.pick(scope.fields_of("json"))
        path = "fields" + self.gap() + "." + self.gap() + name
        for _ in range(self.draw(_ints(0, 2))):
            path += self.gap() + "." + self.gap() + self.key(JSON_KEYS)
        return path

    def key(self, keys: Sequence[str]) -> str:
        key = self.pick(keys)
        if not key.replace("_", "a").isalnum() or (self.messy and self.chance(0.2)):
            return self.string(key)
        return key

    def event(self, scope: _Scope) -> str:
        text = "event" + self.sp()
        text += "*" if self.chance(0.2) else self.string(self.pick(EVENT_NAMES))
        if self.chance(0.4):
            condition = self.condition(scope.where(), depth=2)
            text += self.sp() + "where" + self.gap(" ") + self.parens(condition)
        if self.chance(0.5):
            text += self.sp() + "within" + self.sp() + self.duration()
        return text

    def aggregate_number(self, scope: _Scope) -> str:
        fn = self.pick(["count", "sum", "min", "max", "avg"])
        inner = self.event(scope)
        if fn != "count":
            prop = "props" + self.gap() + "." + self.gap() + self.key(("amount", "count", "n"))
            inner += self.gap() + "," + self.gap(" ") + prop
        return fn + self.gap() + "(" + self.gap() + inner + self.gap() + ")"

    def shift(self) -> str:
        sign = self.pick(["-", "+"])
        spacing = self.pick([" ", "", "  "]) if self.messy else " "
        return self.sp() + sign + spacing + self.duration()

    def value(self, kind: str, scope: _Scope) -> str:
        """A non-literal value of ``kind`` (``text``, ``number``, ``bool``,
        ``date``, ``timestamp``, ``json``, ``stage``) valid in ``scope``."""
        options: list[Callable[[], str]] = []
        if kind == "text":
            if not scope.in_where:
                options.append(lambda: self.pick(["id", "name", "phone", "whatsapp_id", "email"]))
                for name in scope.fields_of("text", "email", "url"):
                    options.append(
                        lambda name=name: "fields" + self.gap() + "." + self.gap() + name
                    )
        elif kind == "number":
            if not scope.in_where:
                options.append(lambda: self.aggregate_number(scope))
                for name in scope.fields_of("number"):
                    options.append(
                        lambda name=name: "fields" + self.gap() + "." + self.gap() + name
                    )
                for name in scope.scores:
                    options.append(lambda name=name: "score" + self.gap() + "." + self.gap() + name)
        elif kind == "bool":
            for name in [] if scope.in_where else scope.fields_of("bool"):
                options.append(lambda name=name: "fields" + self.gap() + "." + self.gap() + name)
        elif kind == "date":
            for name in [] if scope.in_where else scope.fields_of("date"):
                options.append(lambda name=name: "fields" + self.gap() + "." + self.gap() + name)
        elif kind == "timestamp":
            options.append(lambda: "now")
            options.append(lambda: "now" + self.shift())
            if scope.in_where:
                options.append(lambda: "at")
                options.append(lambda: "at" + self.shift())
            else:
                options.append(lambda: self.pick(["created_at", "updated_at"]))
                for name in scope.fields_of("timestamp"):
                    ref = "fields" + self.gap() + "." + self.gap() + name
                    options.append(lambda ref=ref: ref)
                    options.append(lambda ref=ref: ref + self.shift())
                options.append(
                    lambda: (
                        self.pick(["first", "last"])
                        + self.gap()
                        + "("
                        + self.gap()
                        + self.event(scope)
                        + self.gap()
                        + ")"
                    )
                )
        elif kind == "json":
            if scope.in_where or scope.fields_of("json"):
                options.append(lambda: self.json_path(scope))
        elif kind == "stage" and scope.stages is not None and not scope.in_where:
            options.append(lambda: "stage")
        if not options:
            raise _Unavailable(kind)
        return self.pick(options)()

    def literal(self, kind: str, scope: _Scope) -> str:
        if kind == "text":
            return self.text_literal()
        if kind == "number":
            return self.number_literal()
        if kind == "bool":
            return self.pick(["true", "false"])
        if kind == "date":
            return self.string(self.pick(DATE_LITERALS))
        if kind == "timestamp":
            return self.string(self.pick(TIMESTAMP_LITERALS))
        if kind == "stage":
            assert scope.stages
            return self.string(self.pick(scope.stages))
        raise _Unavailable(kind)

    def operand(self, kind: str, scope: _Scope) -> str:
        """The right-hand side of a comparison with a ``kind`` value."""
        if kind == "json":
            if self.chance(0.2):
                return self.json_path(scope)
            return self.literal(self.pick(["text", "number", "bool"]), scope)
        if kind != "stage" and self.chance(0.3):
            # Dates and timestamps compare with each other.
            other = self.pick(["date", "timestamp"]) if kind in ("date", "timestamp") else kind
            try:
                return self.value(other, scope)
            except _Unavailable:
                pass
        # A literal takes the type of the other side: only a timestamp takes a
        # plain date too.
        if kind == "timestamp":
            return self.literal(self.pick(["date", "timestamp"]), scope)
        return self.literal(kind, scope)

    # -- conditions

    def available_kinds(self, scope: _Scope) -> list[str]:
        if scope.in_where:
            return ["json", "json", "timestamp"]
        kinds = ["text", "number", "timestamp"]
        if scope.fields_of("bool"):
            kinds.append("bool")
        if scope.fields_of("date"):
            kinds.append("date")
        if scope.fields_of("json"):
            kinds.append("json")
        if scope.stages:
            kinds += ["stage", "stage"]
        return kinds

    def comparison(self, scope: _Scope) -> str:
        kind = self.pick(self.available_kinds(scope))
        left = self.value(kind, scope)
        ops = ["compare", "in", "between", "is_set"]
        if kind in ("text", "json"):
            ops += ["text_match", "matches"]
        if kind == "json":
            ops += ["has", "has"]
        if kind == "bool":
            ops.remove("between")
        op = self.pick(ops)
        negate = self.chance(0.3)
        not_ = "not" + self.sp() if negate else ""
        if op == "compare":
            symbols = ["=", "!=", "<", "<=", ">", ">="]
            right = self.operand(kind, scope)
            if kind == "bool" or (kind == "json" and right in ("true", "false")):
                symbols = ["=", "!="]
            return left + self.gap(" ") + self.pick(symbols) + self.gap(" ") + right
        if op == "in":
            item_kind = self.pick(["text", "number", "bool"]) if kind == "json" else kind
            items = self.list_of(lambda: self.literal(item_kind, scope))
            return left + self.sp() + not_ + "in" + self.gap(" ") + items
        if op == "between":
            if kind == "json":
                bound_kind = self.pick(["number", "text"])
                low, high = self.literal(bound_kind, scope), self.literal(bound_kind, scope)
            else:
                low, high = self.operand(kind, scope), self.operand(kind, scope)
            return (left + self.sp() + not_ + "between" + self.sp() + low + self.sp() + "and") + (
                self.sp() + high
            )
        if op == "text_match":
            verb = self.pick(["contains", "starts_with", "ends_with"])
            pattern = self.text_literal()
            if not scope.in_where and self.chance(0.2):
                pattern = self.value("text", scope)
            return left + self.sp() + not_ + verb + self.sp() + pattern
        if op == "matches":
            return left + self.sp() + not_ + "matches" + self.sp() + self.string(self.pick(REGEXES))
        if op == "has":
            element = self.literal(self.pick(["text", "number", "bool"]), scope)
            return left + self.sp() + not_ + "has" + self.sp() + element
        # is set / is not set
        return left + self.sp() + "is" + self.sp() + not_ + "set"

    def atom(self, scope: _Scope) -> str:
        options: list[Callable[[], str]] = [lambda: self.comparison(scope)] * 4
        options.append(lambda: self.pick(["true", "false"]))
        if scope.in_where or scope.fields_of("json"):
            options.append(lambda: self.json_path(scope))
        if not scope.in_where:
            options.append(lambda: "tag" + self.sp() + self.string(self.pick(TAGS)))
            options.append(lambda: "subscribed" + self.sp() + self.string(self.pick(LISTS)))
            options.append(lambda: self.event(scope))
            options.append(lambda: self.event(scope))
            if scope.fields_of("bool"):
                options.append(lambda: "fields" + self.gap() + "." + self.gap() + "beta")
            if scope.segments:
                options.append(
                    lambda: "in" + self.sp() + "segment" + self.sp() + self.pick(scope.segments)
                )
        return self.pick(options)()

    def condition(self, scope: _Scope, depth: int = 3) -> str:
        return self.compound(scope, depth)[0]

    def compound(self, scope: _Scope, depth: int) -> tuple[str, str]:
        """A condition and its kind: ``or``, ``and``, ``not`` or ``atom``."""
        if depth <= 0 or self.chance(0.45):
            text = self.atom(scope)
            if self.messy and self.chance(0.1):
                text = self.parens(text)
            return text, "atom"
        kind = self.pick(["and", "or", "not"])
        if kind == "not":
            operand, operand_kind = self.compound(scope, depth - 1)
            if operand_kind in ("and", "or") or self.chance(0.2):
                operand = self.parens(operand)
            return "not" + self.sp() + operand, "not"
        items = []
        for _ in range(self.draw(_ints(2, 4))):
            text, item_kind = self.compound(scope, depth - 1)
            # Parentheses the tree needs; sometimes ones it does not.
            needed = item_kind == "or" or (item_kind == "and" and kind == "and")
            if needed or self.chance(0.15):
                text = self.parens(text)
            items.append(text)
        text = items[0]
        for item in items[1:]:
            text += self.sp() + kind + self.sp() + item
        return text, kind

    # -- declarations

    def points(self) -> str:
        value = Decimal(self.draw(_ints(0, 50))).scaleb(-self.pick([0, 0, 1, 2]))
        sign = self.pick(["+", "-", "+", ""])
        if sign == "" and not self.messy:
            sign = "+"
        return sign + (self.gap() if sign else "") + self.number(value)

    def score(self, name: str, scope: _Scope) -> str:
        rules = []
        for _ in range(self.draw(_ints(0, 4))):
            if self.chance():
                rule = self.points() + self.sp() + "per" + self.sp() + self.event(scope)
                if self.chance(0.4):
                    cap = Decimal(self.draw(_ints(1, 100))).scaleb(-self.pick([0, 1]))
                    rule += self.sp() + "max" + self.sp() + self.number(cap)
            else:
                rule = self.points() + self.sp() + "when" + self.sp() + self.condition(scope)
            rules.append(rule)
        if self.chance(0.4):
            low = self.draw(_ints(-100, 100))
            high = low + self.draw(_ints(0, 200))
            low_text = self.signed_number(Decimal(low))
            high_text = self.signed_number(Decimal(high))
            rules.append(
                "clamp" + self.sp() + low_text + self.gap() + ".." + self.gap() + high_text
            )
        body = "".join(self.sp() + rule for rule in rules)
        return "score" + self.sp() + name + self.sp() + "{" + body + self.sp() + "}"

    def segment(self, name: str, scope: _Scope) -> str:
        title = ""
        if self.chance(0.5):
            title = self.sp() + self.string(self.pick(["Hot leads", 'Zoë\'s "VIPs"', "ß/Σ 😀"]))
        body = self.condition(scope)
        return (
            "segment"
            + self.sp()
            + name
            + title
            + self.sp()
            + "{"
            + self.sp()
            + body
            + self.sp()
            + "}"
        )

    def lifecycle(self, stages: tuple[str, ...], scope: _Scope) -> str:
        lines = [
            self.sp() + stage + self.sp() + "when" + self.sp() + self.condition(scope)
            for stage in stages
        ]
        return "lifecycle" + self.sp() + "{" + "".join(lines) + self.sp() + "}"


@cache
def _ints(low: int, high: int) -> SearchStrategy[int]:
    # Built once per range: building strategies on every draw is slow.
    return st.integers(low, high)


_LITERAL_INTS = st.one_of(
    st.sampled_from([0, 1, 2, 5, 10, 50, 100, 100000, 2**53 + 1, -1, -5]),
    st.integers(-1000, 1000),
)
_STAGE_SUBSETS = st.lists(st.sampled_from(STAGE_NAMES), unique=True, max_size=4)


class _Unavailable(Exception):
    """No value of that type can be written in this scope."""


def _plain(value: Decimal) -> str:
    return format(value, "f")


@st.composite
def rule_sets(
    draw: DrawFn,
    comments: bool = False,
    layout: Literal["tidy", "messy"] | None = None,
) -> RuleSet:
    """A random well-typed rule set (no errors; warnings allowed)."""
    messy = draw(st.booleans()) if layout is None else layout == "messy"
    writer = _Writer(draw, messy=messy, with_comments=comments)
    declared: dict[str, str] = {}
    for type_name, names in FIELD_NAMES.items():
        for name in names:
            if writer.chance(0.6):
                declared[name] = type_name
    # Segments and scores only refer to earlier ones, so there is no cycle;
    # those after the lifecycle block may use `stage`, the block itself not.
    n_segments = draw(_ints(1, 4))
    n_scores = draw(_ints(0, 2))
    kinds = ["segment"] * n_segments + ["score"] * n_scores
    order = draw(st.permutations(kinds))
    with_lifecycle = writer.chance(0.6)
    lifecycle_at = draw(_ints(0, len(order))) if with_lifecycle else -1
    stages: tuple[str, ...] | None = None
    if with_lifecycle:
        chosen = draw(_STAGE_SUBSETS)
        stages = tuple(s for s in STAGE_NAMES if s in chosen)
    scope = _Scope(dict(declared), [], [], None)
    declarations: list[str] = []
    segments: list[str] = []
    scores: list[str] = []
    for index, kind in enumerate([*order, "end"]):
        if index == lifecycle_at:
            assert stages is not None
            declarations.append(writer.lifecycle(stages, scope))
            scope.stages = stages
        if kind == "segment":
            name = f"{SEGMENT_NAMES[len(segments) % len(SEGMENT_NAMES)]}_{len(segments)}"
            declarations.append(writer.segment(name, scope))
            segments.append(name)
            scope.segments.append(name)
        elif kind == "score":
            name = f"{SCORE_NAMES[len(scores) % len(SCORE_NAMES)]}_{len(scores)}"
            declarations.append(writer.score(name, scope))
            scores.append(name)
            scope.scores.append(name)
    # Field declarations anywhere: names are global to the rule set.
    for name, type_name in declared.items():
        position = draw(_ints(0, len(declarations))) if messy else 0
        text = "field" + writer.sp() + name + writer.gap() + ":" + writer.gap(" ") + type_name
        declarations.insert(position, text)
    separator = "\n\n" if not messy else ""
    source = ""
    for text in declarations:
        source += (writer.sp() if messy or comments else "") + text + separator
    if comments and writer.chance():
        source = writer.comment() + "\n" + source
    if comments and writer.chance():
        source = source + "\n" + writer.comment()
    if not source.endswith("\n") and writer.chance():
        source += "\n"
    return RuleSet(
        source=source,
        fields=declared,
        segments=tuple(segments),
        scores=tuple(scores),
        stages=stages,
        durations=tuple(sorted(writer.durations)),
        # As they appear: fields were inserted after the rest was written.
        comments=tuple(c.text for c in scan_comments(source)),
    )


def rule_sets_with_comments(
    layout: Literal["tidy", "messy"] | None = None,
) -> SearchStrategy[RuleSet]:
    return rule_sets(comments=True, layout=layout)


# ---- broken rule files ---------------------------------------------------------------

# Tokens of the language and near-misses, for ``mutated``'s insertions.
_WORDS = (
    "segment score field lifecycle when per max clamp and or not in is set event where "
    "within count sum min max avg first last tag subscribed true false now contains "
    "starts_with ends_with matches has between fields props stage at text number bool date "
    "timestamp email url json"
)
TOKENS = (
    *_WORDS.split(),
    "{", "}", "(", ")", "[", "]", ",", ".", "..", ":", "=", "!=", "<", "<=", ">", ">=",
    "+", "-", "*", '"', "\\", "#", "\n", " ", "\t", "\r",
    "0", "-1", "1.5", "1e5", "007", "99999999999999999999999", "30d", "0d", "99999999999w",
    "- 30d", '""', '"x"', '"\\u0000"', '"\\ud800"', '"\\uDFFF"', '"\\q"', '"2026-02-30"',
    '"2026-06-01T12:00:00"', '"(?<=a)b"', '"\\\\b"', '"["', '"{,3}"', "Plan", "É", "😀",
    "\x00", "\ufeff", "\u2028", "\x0b",
)  # fmt: skip

_LEXEMES = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+[a-z]?|\s+|.', re.DOTALL)


_EDITS = st.sampled_from(["delete", "insert", "duplicate", "swap", "truncate"])
_INSERTIONS = st.sampled_from(TOKENS) | st.characters()


@st.composite
def mutated(draw: DrawFn, source: str) -> str:
    """``source`` broken by a few character or token edits."""
    for _ in range(draw(_ints(1, 4))):
        by_token = draw(st.booleans())
        pieces = (_LEXEMES.findall(source) if by_token else list(source)) or [""]
        index = draw(_ints(0, len(pieces) - 1))
        edit = draw(_EDITS)
        if edit == "delete":
            del pieces[index]
        elif edit == "insert":
            pieces.insert(index, draw(_INSERTIONS))
        elif edit == "duplicate":
            pieces.insert(index, pieces[index])
        elif edit == "swap":
            other = draw(_ints(0, len(pieces) - 1))
            pieces[index], pieces[other] = pieces[other], pieces[index]
        else:
            pieces = pieces[:index]
        source = "".join(pieces)
    return source


# ---- instants ------------------------------------------------------------------------


def now_instants() -> SearchStrategy[str]:
    """A few fixed evaluation instants (RFC 3339), one with an offset."""
    return st.sampled_from(NOW_INSTANTS)


def micros(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 instant."""
    value = parse_timestamp(text)
    assert value is not None, text
    return value


def format_instant(value: int, offset_minutes: int = 0, style: str = "Z") -> str:
    """RFC 3339 text of an instant in microseconds, at a UTC offset.
    ``style``: ``Z``, ``z`` (lower-case ``t``/``z``), ``offset`` (``+hh:mm``
    even for UTC), ``nanos`` / ``nanosDDD`` (9 fraction digits, the last
    three ``DDD``, which the loader truncates)."""
    local = value + offset_minutes * 60 * MICROS_PER_SECOND
    days, rest = divmod(local, MICROS_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, fraction = divmod(rest, MICROS_PER_SECOND)
    hour, minute, second = seconds // 3600, seconds // 60 % 60, seconds % 60
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if style.startswith("nanos"):
        # Digits past the microsecond: the loader truncates them.
        text += f".{fraction:06d}{style[5:] or '000'}"
    elif fraction:
        text += f".{fraction:06d}".rstrip("0")
    if offset_minutes == 0 and (style == "Z" or style.startswith("nanos")):
        return text + "Z"
    if offset_minutes == 0 and style == "z":
        return text.replace("T", "t") + "z"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


# ---- contacts ------------------------------------------------------------------------
#
# Strategies are built once (module constants, or cached per `now`): building
# and validating them on every draw made generation many times slower.

_OFFSETS = (0, 0, 0, 180, -330, 60, 345, -720)
_BIG_INTS = (2**53, 2**53 + 1, -(2**53) - 1, 2**63, 10**30, -(10**25))
_STYLES = ("Z", "Z", "Z", "z", "offset", "nanos", "nanos999", "nanos500")

_NUMBERS: SearchStrategy[int | Decimal] = st.one_of(
    st.sampled_from([0, 1, 2, 5, 10, 49, 50, 51, 100, 100000, -1]),
    st.integers(-1000, 1000),
    st.sampled_from(_BIG_INTS),
    st.builds(
        lambda n, k: Decimal(n).scaleb(-k),
        st.integers(-(10**8), 10**8),
        st.sampled_from([1, 2, 3, 12]),
    ),
    st.sampled_from(
        [Decimal("0.1"), Decimal("0.2"), Decimal("0.30"), Decimal("12.50"), Decimal("-0.001")]
    ),
)
_TEXTS: SearchStrategy[str] = st.one_of(
    st.sampled_from(TEXTS),
    st.sampled_from(
        ("", " ", "É", "é", "ß", "İ", "i̇", "\u212a", "K", "😀", "Σ", "σ", "ς", "5", "true")
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
)


def _json_containers(inner: SearchStrategy[Any]) -> SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from((*JSON_KEYS, *PROPS_KEYS, "sku")), inner, max_size=4),
    )


_JSON_VALUES: SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        _NUMBERS,
        st.sampled_from(["5", "dark", "sw", "en", "", "true", "KES", "Zoë", "😀"]),
        _TEXTS,
    ),
    _json_containers,
    max_leaves=8,
)
_JSON_OBJECTS = st.fixed_dictionaries({}, optional=dict.fromkeys(JSON_KEYS, _JSON_VALUES))
_JSON_FIELD = st.one_of(_JSON_OBJECTS, _JSON_OBJECTS, _JSON_VALUES)
_PROPS: SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "amount": st.one_of(_NUMBERS, st.sampled_from(["5", None, True, ""])),
        "currency": st.sampled_from(["KES", "kes", "USD", "", None, 5]),
        "item": st.one_of(
            st.fixed_dictionaries({}, optional={"sku": st.sampled_from(["A1", "a1", "", 7])}),
            _JSON_VALUES,
        ),
        "tags": st.one_of(
            st.lists(st.sampled_from(["x", "sale", "5", 5, True]), max_size=3), _JSON_VALUES
        ),
        "count": _NUMBERS,
        "n": _JSON_VALUES,
    },
)
_MAYBE_PROPS = st.one_of(st.none(), _PROPS, _PROPS)
_EVENT_NAMES = st.sampled_from((*EVENT_NAMES, "Purchase", "signup"))
_EMAILS = st.sampled_from(EMAILS)
_PHONES = st.sampled_from(["+254712345678", "+254 712", "", "+1"])
_WHATSAPP_IDS = st.sampled_from(["254712345678", ""])
_TAG_LISTS = st.lists(st.sampled_from((*TAGS, "Premium", "ke", "İ")), unique=True, max_size=4)
_SUBSCRIPTIONS = st.dictionaries(
    st.sampled_from((*LISTS, "Newsletter")), st.sampled_from(SUBSCRIPTION_STATUSES), max_size=3
)
_IDS = st.one_of(
    st.integers(0, 99).map(lambda n: f"c{n}"),
    st.sampled_from(["C1", "É1", "c_é", "z", "Z", "😀", "ß"]),
)


# The instants the rules' literals name, and one microsecond either side.
_ON_LITERALS = st.builds(
    lambda instant, nudge: instant + nudge,
    st.sampled_from(
        [parse_time_literal(text, True) for text in TIMESTAMP_LITERALS + DATE_LITERALS]
    ),
    st.sampled_from([0, 0, 1, -1]),
)


@lru_cache(maxsize=64)
def _instants(now: int, durations: tuple[str, ...]) -> SearchStrategy[str]:
    """Instants on and around the windows' edges: now - D, one microsecond
    either side, now itself, the near future, the literals' instants, and
    anywhere."""
    windows = [int(d[:-1]) * DURATION_SECONDS[d[-1]] * MICROS_PER_SECOND for d in durations]
    edges = st.builds(
        lambda width, nudge: now - width + nudge,
        st.sampled_from(windows or [0]),
        st.sampled_from([0, 0, 1, -1, 1000]),
    )
    around_now = st.sampled_from([now, now - 1, now + 1, now + MICROS_PER_DAY])
    anywhere = st.integers(now - 400 * MICROS_PER_DAY, now + 30 * MICROS_PER_DAY)
    return st.builds(
        format_instant,
        st.one_of(edges, edges, around_now, anywhere, _ON_LITERALS),
        st.sampled_from(_OFFSETS),
        st.sampled_from(_STYLES),
    )


@lru_cache(maxsize=256)
def _field_value(kind: Type, now: int) -> SearchStrategy[Any]:
    if kind in (Type.TEXT, Type.URL):
        return _TEXTS
    if kind is Type.EMAIL:
        return st.one_of(_EMAILS, _TEXTS)
    if kind is Type.NUMBER:
        return _NUMBERS
    if kind is Type.BOOL:
        return st.booleans()
    if kind is Type.DATE:
        today = now // MICROS_PER_DAY * MICROS_PER_DAY
        near_now = st.integers(-3, 3).map(lambda d: _date(today + d * MICROS_PER_DAY))
        return st.one_of(st.sampled_from(DATE_LITERALS), near_now)
    if kind is Type.TIMESTAMP:
        return _instants(now, DURATIONS)
    if kind is Type.JSON:
        return _JSON_FIELD
    raise AssertionError(kind)


def _date(value: int) -> str:
    year, month, day = civil_from_days(value // MICROS_PER_DAY)
    return f"{year:04d}-{month:02d}-{day:02d}"


@st.composite
def _events(draw: DrawFn, now: int, durations: tuple[str, ...]) -> list[dict[str, Any]]:
    events = []
    instants = _instants(now, durations)
    for _ in range(draw(_ints(0, 6))):
        event: dict[str, Any] = {"name": draw(_EVENT_NAMES), "at": draw(instants)}
        props = draw(_MAYBE_PROPS)
        if props is not None or draw(st.booleans()):
            event["props"] = props
        events.append(event)
    return events


@st.composite
def contact(
    draw: DrawFn,
    field_types: Mapping[str, Type | str],
    stage_names: Sequence[str] = (),
    *,
    contact_id: str = "c1",
    now: str | None = None,
    durations: Sequence[str] = DURATIONS,
) -> dict[str, Any]:
    """One contact record (spec §12) that the loader accepts."""
    instant = micros(now if now is not None else draw(now_instants()))
    windows = tuple(durations)
    record: dict[str, Any] = {"id": contact_id}

    def maybe(key: str, strategy: SearchStrategy[Any]) -> None:
        # Absent, null or a value.
        choice = draw(_ints(0, 5))
        if choice == 0:
            return
        record[key] = None if choice == 1 else draw(strategy)

    maybe("email", _EMAILS)
    maybe("name", _TEXTS)
    maybe("phone", _PHONES)
    maybe("whatsapp_id", _WHATSAPP_IDS)
    maybe("created_at", _instants(instant, windows))
    maybe("updated_at", _instants(instant, windows))
    if stage_names:
        maybe("stage", st.sampled_from(tuple(stage_names)))
    maybe("tags", _TAG_LISTS)
    maybe("subscriptions", _SUBSCRIPTIONS)
    types = {name: Type(t) for name, t in field_types.items()}
    if types and draw(_ints(0, 5)) > 0:
        values: dict[str, Any] = {}
        for name, kind in types.items():
            choice = draw(_ints(0, 4))
            if choice == 0:
                continue
            values[name] = None if choice == 1 else draw(_field_value(kind, instant))
        record["fields"] = values
    maybe("events", _events(instant, windows))
    return record


@st.composite
def contacts(
    draw: DrawFn,
    field_types: Mapping[str, Type | str],
    stage_names: Sequence[str] = (),
    *,
    now: str | None = None,
    durations: Sequence[str] = DURATIONS,
    min_size: int = 0,
    max_size: int = 8,
) -> list[dict[str, Any]]:
    """Contact records with unique ids (some non-ASCII, to test id order)."""
    size = draw(_ints(min_size, max_size))
    ids = draw(st.lists(_IDS, min_size=size, max_size=size, unique=True))
    return [
        draw(contact(field_types, stage_names, contact_id=contact_id, now=now, durations=durations))
        for contact_id in ids
    ]
