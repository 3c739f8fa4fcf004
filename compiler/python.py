"""Checked AST to Python source for the in-memory predicate.

Like Jinja2's compiler: one visitor writes the source of a module, constants
go into its namespace (never into the text), and the module is compiled once.
It has ``only_<node>(c, now)`` for each segment, score and the lifecycle,
which computes that node alone (a reference to another node is a call, made
only if the short-circuiting logic gets there), and ``evaluate(c, now)``,
which computes every node in dependency order in one function body, each
node's value a local the later ones read (``segment_x_``, ``score_x_``,
``lifecycle_``).

Values compile to expressions that give the normalised value or ``None`` when
missing; conditions compile to expressions that are always ``True``/``False``.

Within one function, what several tests read is computed once: a field's
value (``_v``), the contact's events of one name (``_g``: events and their
times), how many of them are at or before ``now`` (``_n``), a window's start
(``_w``) and first event (``_l``), counts (``_c``), event loops and their
results (``_a``, loops in helper functions ``_f``) and, in ``only_`` functions,
other nodes (``_r``). A value needed whatever the conditions decide is
computed by a statement before the one that reads it; one needed only behind
a short-circuit is bound where it is first reached (``(_c1 := ...)``) and
reused only where that place is sure to have run. Conditions have no side
effects and cannot fail, so computing earlier never changes a result.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from nudgel.dsl import ast
from nudgel.dsl.ast import Type
from nudgel.dsl.checker import CheckedRules
from nudgel.dsl.diagnostics import InternalError
from nudgel.dsl.regex import matcher as regex_matcher
from nudgel.dsl.textfold import fold
from nudgel.dsl.timeparse import MICROS_PER_SECOND
from nudgel.runtime import memory_helpers

NodeKey = tuple[str, str]

_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_GENERATED = re.compile(r"_f[0-9]+|only_[a-z0-9_]+")
# Locals of shared values (see the module docstring) and where one is bound inline.
_SHARED_LOCAL = re.compile(r"\b_[gnwlcavr][0-9]+\b")
_INLINE_BINDING = re.compile(r"\((_[gnwlcavr][0-9]+) := ")

PY_OPS = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
NEGATE_OP = {"=": "!=", "!=": "="}


def function_name(node: NodeKey) -> str:
    kind, name = node
    return "lifecycle" if kind == "lifecycle" else f"{kind}_{name}"


@dataclass(slots=True)
class GeneratedModule:
    source: str
    namespace: dict[str, Any]
    # node -> the nodes it reads directly
    parameters: dict[NodeKey, tuple[NodeKey, ...]]


@dataclass(slots=True)
class Scope:
    """The function being written: its shared values and which of their locals
    are surely assigned at the point being written."""

    names: dict[Hashable, str] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)
    # > 0 inside a part of an expression that may not run (after `and`/`or`).
    depth: int = 1
    # Statements to write before the one being written (None: bind inline).
    prelude: list[str] | None = None


@dataclass(slots=True)
class PythonCompiler:
    rules: CheckedRules
    lines: list[str] = field(default_factory=list)
    namespace: dict[str, Any] = field(default_factory=dict)
    _constants: dict[tuple[type, Any], str] = field(default_factory=dict)
    _helpers: dict[tuple[str, ...], str] = field(default_factory=dict)
    _counter: int = 0
    _references: list[NodeKey] = field(default_factory=list)
    _event_var: str | None = None
    _scope: Scope = field(default_factory=Scope)
    # The code of the ``only_`` segment function being written that always
    # runs (its statements and the first operand of its condition).
    _always_runs: list[str] | None = None
    # Eager (``evaluate``): a reference to another node reads the local holding
    # its value, computed earlier in the same function. Lazy (``only_<node>``):
    # it is a call, made only if the short-circuiting logic gets there.
    _lazy: bool = False

    # ---- module ----------------------------------------------------------------

    def compile(self) -> GeneratedModule:
        self.namespace.update(
            {
                "_h": memory_helpers,
                "_fold": fold,
                "_bisect": bisect_right,
                "_NO_EVENTS": memory_helpers.NO_EVENTS,
                "_Decimal": Decimal,
                "_jpath": memory_helpers.jpath,
                "_jstr": memory_helpers.jstr,
                "_jnum": memory_helpers.jnum,
                "_jbool": memory_helpers.jbool,
                "_jset": memory_helpers.jset,
                "_add": memory_helpers.add,
                "_average": memory_helpers.average,
                "_per_event": memory_helpers.per_event,
                "_ZERO": memory_helpers.ZERO,
            }
        )
        parameters: dict[NodeKey, tuple[NodeKey, ...]] = {}
        self._lazy = True
        for node in self.rules.order:
            parameters[node] = self.only_function(node)
        self._lazy = False
        self.evaluate_function()
        return GeneratedModule("\n".join(self.lines) + "\n", self.namespace, parameters)

    def only_function(self, node: NodeKey) -> tuple[NodeKey, ...]:
        """``only_<node>(c, now)``: the node alone; returns the nodes it reads."""
        self._references = []
        kind, name = node
        chained = kind == "segment" and isinstance(
            self.rules.segments[name].body, (ast.AndExpr, ast.OrExpr)
        )
        self._always_runs = [] if chained else None
        with self.function_scope():
            body = self.node_lines(node, None)
        self.define(f"only_{function_name(node)}", ["c", "now"], body, self._always_runs)
        self._always_runs = None
        return tuple(dict.fromkeys(self._references))

    def evaluate_function(self) -> None:
        """``evaluate(c, now)``: every node in dependency order, in one body."""
        body: list[str] = []
        with self.function_scope():
            for node in self.rules.order:
                kind, name = node
                body.append(f"    # {kind} {name}".rstrip())
                body += self.node_lines(node, function_name(node) + "_")
        segments = [n for n in self.rules.order if n[0] == "segment"]
        scores = [n for n in self.rules.order if n[0] == "score"]
        stage = "lifecycle_" if self.rules.lifecycle is not None else "None"
        body.append(
            "    return (({}), ({}), {})".format(
                "".join(f"{function_name(n)}_, " for n in segments),
                "".join(f"{function_name(n)}_, " for n in scores),
                stage,
            )
        )
        self.define("evaluate", ["c", "now"], body)

    def node_lines(self, node: NodeKey, target: str | None) -> list[str]:
        """Statements computing ``node`` into the local ``target``, or
        returning it when ``target`` is None."""
        kind, name = node
        if kind == "segment":
            assign = "return " if target is None else f"{target} = "
            body = self.rules.segments[name].body
            prelude, code = self.statement(lambda: self.top_condition(body))
            if self._always_runs is not None:
                self._always_runs += prelude
            return [*prelude, f"    {assign}{code}"]
        variable = target or ("total" if kind == "score" else "rank")
        if kind == "score":
            lines = self.score_lines(self.rules.scores[name], variable)
        else:
            lines = self.lifecycle_lines(variable)
        return lines if target is not None else [*lines, f"    return {variable}"]

    def define(
        self, name: str, parameters: list[str], body: list[str], hot: list[str] | None = None
    ) -> None:
        """Write a function whose constants and helpers are parameter defaults:
        read from the namespace once, when the module runs, then fast locals on
        every call (positional defaults cost less per call than keyword-only).
        With ``hot`` (the code that always runs), only the names it reads are
        defaults: each default costs every call a little, and a name read only
        behind a short-circuit is read from the module when reached."""
        used = dict.fromkeys(
            word
            for line in (body if hot is None else hot)
            for word in _WORD.findall(line)
            if word not in parameters and (word in self.namespace or _GENERATED.fullmatch(word))
        )
        bound = "".join(f", {word}={word}" for word in used)
        self.lines.append(f"def {name}({', '.join(parameters)}{bound}):")
        self.lines.extend(without_unread_bindings(body))
        self.lines.append("")

    # ---- helpers -----------------------------------------------------------------

    def const(self, value: Any) -> str:
        """The name of a constant in the module namespace (equal hashable
        constants of one type share a name). Text is interned: a set or dict
        lookup of a string finds an interned key by identity, without
        comparing characters (Python interns the identifiers and literals of
        its own code, so data keyed with those is interned too)."""
        value = interned(value)
        try:
            key: tuple[type, Any] | None = (type(value), value)
            existing = self._constants.get(key)  # type: ignore[arg-type]
        except TypeError:  # unhashable (a dict): never shared
            key, existing = None, None
        if existing is not None:
            return existing
        name = f"K{len(self.namespace)}"
        self.namespace[name] = value
        if key is not None:
            self._constants[key] = name
        return name

    def temp(self) -> str:
        self._counter += 1
        return f"_t{self._counter}"

    def helper_function(self, parameters: list[str], body: list[str]) -> str:
        """A module-level function; an identical one is reused."""
        key = (*parameters, *body)
        existing = self._helpers.get(key)
        if existing is not None:
            return existing
        self._counter += 1
        name = f"_f{self._counter}"
        self.define(name, parameters, body)
        self._helpers[key] = name
        return name

    # ---- shared values ------------------------------------------------------------

    @contextmanager
    def function_scope(self) -> Iterator[Scope]:
        saved, saved_event = self._scope, self._event_var
        self._scope, self._event_var = Scope(depth=0), None
        try:
            yield self._scope
        finally:
            self._scope, self._event_var = saved, saved_event

    @contextmanager
    def conditional(self) -> Iterator[None]:
        """Code written inside may not run: what it binds is not bound after."""
        scope = self._scope
        saved = set(scope.bound)
        scope.depth += 1
        try:
            yield
        finally:
            scope.depth -= 1
            scope.bound = saved

    def statement(self, make: Callable[[], str]) -> tuple[list[str], str]:
        """The code ``make`` writes for one statement, and the statements that
        must run before it (shared values it always needs)."""
        scope = self._scope
        scope.prelude = []
        try:
            code = make()
            return scope.prelude, code
        finally:
            scope.prelude = None

    def shared(self, key: Hashable, prefix: str, make: Callable[[], str]) -> str:
        """A value computed once per function call: its local if surely
        assigned here, else the code assigning it (``make`` writes the value's
        code, only when needed, so that what it binds is bound in order)."""
        scope = self._scope
        name = scope.names.get(key)
        if name is not None and name in scope.bound:
            return name
        if name is None:
            self._counter += 1
            name = scope.names[key] = f"{prefix}{self._counter}"
        code = make()
        scope.bound.add(name)
        if scope.depth == 0 and scope.prelude is not None:
            scope.prelude.append(f"    {name} = {code}")
            return name
        return f"({name} := {code})"

    # ---- declarations ----------------------------------------------------------------

    def score_lines(self, decl: ast.ScoreDecl, total: str) -> list[str]:
        """Whole-number models add ints (exact and fast); any fraction makes the
        whole model use exact decimal arithmetic."""
        numbers = [r.points for r in decl.rules]
        numbers += [r.cap for r in decl.rules if isinstance(r, ast.ScorePer) and r.cap is not None]
        if decl.clamp is not None:
            numbers += [decl.clamp.low, decl.clamp.high]
        integral = all(isinstance(exact_number(n), int) for n in numbers)
        body = [f"    {total} = 0" if integral else f"    {total} = _ZERO"]
        for rule in decl.rules:
            points = self.const(exact_number(rule.points))
            if isinstance(rule, ast.ScorePer):
                prelude, count = self.statement(partial(self.count, rule.event))
                body += prelude
                if not integral:
                    cap = self.const(rule.cap) if rule.cap is not None else "None"
                    body.append(
                        f"    {total} = _add({total}, _per_event({points}, {count}, {cap}))"
                    )
                elif rule.cap is None:
                    body.append(f"    {total} += {points} * {count}")
                else:
                    # count >= 0, so the product has the sign of the points.
                    limit, bound = (
                        ("min", int(rule.cap)) if rule.points > 0 else ("max", -int(rule.cap))
                    )
                    body.append(f"    {total} += {limit}({points} * {count}, {self.const(bound)})")
            else:
                prelude, test = self.statement(partial(self.expr, rule.condition))
                body += prelude
                body.append(f"    if {test}:")
                body.append(
                    f"        {total} += {points}"
                    if integral
                    else f"        {total} = _add({total}, {points})"
                )
        if decl.clamp is not None:
            low = self.const(exact_number(decl.clamp.low))
            high = self.const(exact_number(decl.clamp.high))
            body.append(f"    if {total} < {low}:")
            body.append(f"        {total} = {low}")
            body.append(f"    elif {total} > {high}:")
            body.append(f"        {total} = {high}")
        return body

    def lifecycle_lines(self, rank: str) -> list[str]:
        lifecycle = self.rules.lifecycle
        assert lifecycle is not None
        ranks = self.const({s.name: i for i, s in enumerate(lifecycle.stages)})
        body = [f"    {rank} = None"]
        stages = list(reversed(range(len(lifecycle.stages))))
        if stages:
            # The first test always runs; each later one only if those before failed.
            first = lifecycle.stages[stages[0]].condition
            prelude, test = self.statement(partial(self.expr, first))
            body += [*prelude, f"    if {test}:", f"        {rank} = {stages[0]}"]
            with self.conditional():
                for index in stages[1:]:
                    body.append(f"    elif {self.expr(lifecycle.stages[index].condition)}:")
                    body.append(f"        {rank} = {index}")
        body += [
            f"    _prior = {ranks}.get(c.stage)",
            f"    if _prior is not None and ({rank} is None or {rank} < _prior):",
            f"        {rank} = _prior",
        ]
        return body

    # ---- conditions ----------------------------------------------------------------------

    def expr(self, node: ast.Expr) -> str:
        return self.visit("expr", node)

    def visit(self, kind: str, node: ast.Node) -> str:
        """Dispatch to ``<kind>_<NodeClass>``; a node without one fails loudly."""
        method = getattr(self, f"{kind}_{type(node).__name__}", None)
        if method is None:
            raise InternalError(f"the Python backend has no rule for {type(node).__name__}")
        result: str = method(node)
        return result

    def expr_OrExpr(self, node: ast.OrExpr) -> str:
        return self.chain("or", node.items)

    def expr_AndExpr(self, node: ast.AndExpr) -> str:
        return self.chain("and", node.items)

    def top_condition(self, node: ast.Expr) -> str:
        """A segment's condition: a top-level ``and``/``or`` one operand a line."""
        if isinstance(node, ast.AndExpr):
            return self.chain("and", node.items, indent="    ")
        if isinstance(node, ast.OrExpr):
            return self.chain("or", node.items, indent="    ")
        return self.expr(node)

    def chain(self, op: str, items: tuple[ast.Expr, ...], indent: str | None = None) -> str:
        """``a and b and c``: ``a`` always runs; each later operand runs only
        if those before it did (so it may use what they bound)."""
        ordered = self.cheapest_first(items)
        parts = [self.expr(ordered[0])]
        if indent is not None and self._always_runs is not None:
            self._always_runs.append(parts[0])
        with self.conditional():
            parts += [self.expr(item) for item in ordered[1:]]
        if indent is None:
            return "(" + f" {op} ".join(parts) + ")"
        inner = indent + "    "
        return "(\n" + inner + f"\n{inner}{op} ".join(parts) + f"\n{indent})"

    def cheapest_first(self, items: tuple[ast.Expr, ...]) -> list[ast.Expr]:
        # Conditions have no side effects and cannot fail, so `and`/`or`
        # operands may run in any order: cheap tests first short-circuit the
        # costly ones (event scans, scores, other segments).
        return sorted(items, key=lambda item: estimate_cost(self.rules, item, eager=not self._lazy))

    def expr_NotOp(self, node: ast.NotOp) -> str:
        return f"(not {self.expr(node.operand)})"

    def expr_Truthy(self, node: ast.Truthy) -> str:
        return f"({self.value(node.value)} is True)"

    def expr_TagTest(self, node: ast.TagTest) -> str:
        return f"({self.const(node.tag)} in c.tags)"

    def expr_SubscribedTest(self, node: ast.SubscribedTest) -> str:
        return f"(c.subscriptions.get({self.const(node.list)}) == 'subscribed')"

    def reference(self, key: NodeKey) -> str:
        self._references.append(key)
        if not self._lazy:
            return function_name(key) + "_"
        return self.shared(("node", key), "_r", lambda: f"only_{function_name(key)}(c, now)")

    def expr_SegmentTest(self, node: ast.SegmentTest) -> str:
        return self.reference(("segment", node.segment))

    def expr_EventTest(self, node: ast.EventTest) -> str:
        spec = node.event
        if spec.where is None:
            return f"({self.count(spec)} > 0)"
        return self.event_loop(spec, "any")

    def expr_Compare(self, node: ast.Compare) -> str:
        op = node.op
        if op == "!=":
            return f"(not {self.compare('=', node.left, node.right)})"
        return self.compare(op, node.left, node.right)

    def compare(self, op: str, left: ast.Value, right: ast.Value) -> str:
        # Decide everything that makes the result constant before writing any
        # operand: code written and then dropped could leave a shared value
        # counted as bound when it never is.
        if is_empty_text(left) or is_empty_text(right):
            return "False"  # "" is missing
        if left.type is Type.JSON and right.type is Type.JSON:
            return f"_h.jcompare({op!r}, {self.value(left)}, {self.value(right)})"
        if op == "=":
            # Only a string equals a (non-empty) string: no need to check the
            # JSON value's type first.
            if left.type is Type.JSON and isinstance(right, ast.TextLiteral):
                return f"({self.value(left)} == {self.const(right.value)})"
            if right.type is Type.JSON and isinstance(left, ast.TextLiteral):
                return f"({self.const(left.value)} == {self.value(right)})"
        python_op = PY_OPS[op]
        if op == "=" and (self.is_constant(left) or self.is_constant(right)):
            # a missing value (None) never equals a constant
            return f"({self.typed(left, right.type)} == {self.typed(right, left.type)})"
        checks = []
        a = self.typed(left, right.type)
        if not self.never_missing(left) and not self.is_constant(left):
            ta = self.temp()
            checks.append(f"({ta} := {a}) is not None")
            a = ta
        with self.conditional() if checks else _unconditional():
            b = self.typed(right, left.type)
            if not self.never_missing(right) and not self.is_constant(right):
                tb = self.temp()
                checks.append(f"({tb} := {b}) is not None")
                b = tb
        return "(" + " and ".join([*checks, f"{a} {python_op} {b}"]) + ")"

    def typed(self, value: ast.Value, other: Type) -> str:
        """The value as the type of the other operand needs it: a JSON value
        read against a typed operand matches only the same JSON type."""
        code = self.value(value)
        if value.type is Type.JSON and other is not Type.JSON:
            if other.is_text_like:
                return f"_jstr({code})"
            if other is Type.NUMBER:
                return f"_jnum({code})"
            if other is Type.BOOL:
                return f"_jbool({code})"
            raise InternalError(f"json compared with {other}")
        return code

    @staticmethod
    def never_missing(value: ast.Value) -> bool:
        """Values that always exist: scores, counts, sums and ``now``-based times."""
        if isinstance(value, ast.TimeShift):
            return isinstance(value.value, ast.Now)
        return isinstance(value, (ast.ScoreRef, ast.CountAgg, ast.Now)) or (
            isinstance(value, ast.ValueAgg) and value.fn == "sum"
        )

    @staticmethod
    def is_constant(value: ast.Value) -> bool:
        return isinstance(
            value,
            (
                ast.TextLiteral,
                ast.NumberLiteral,
                ast.BoolLiteral,
                ast.TimeLiteral,
                ast.StageLiteral,
            ),
        ) and not is_empty_text(value)

    def expr_InList(self, node: ast.InList) -> str:
        element_type = node.items.type
        members = frozenset(
            v for v in (self.literal_value(x) for x in node.items.items) if v is not None
        )
        # `x in []` (or only "", which is missing) is false whatever x is.
        test = (
            f"({self.typed(node.value, element_type)} in {self.const(members)})"
            if members
            else "False"
        )
        return f"(not {test})" if node.negated else test

    def expr_Between(self, node: ast.Between) -> str:
        low = self.compare(">=", node.value, node.low)
        with self.conditional():
            high = self.compare("<=", node.value, node.high)
        test = f"({low} and {high})"
        return f"(not {test})" if node.negated else test

    def expr_TextMatch(self, node: ast.TextMatch) -> str:
        method = {"contains": None, "starts_with": "startswith", "ends_with": "endswith"}[node.op]
        if is_empty_text(node.pattern):  # "" is missing
            return "True" if node.negated else "False"
        subject = self.text_of(node.value)
        ts = self.temp()
        checks = [f"({ts} := {subject}) is not None"]
        if isinstance(node.pattern, ast.TextLiteral):
            pattern = self.const(fold(node.pattern.value))
        else:
            tp = self.temp()
            with self.conditional():
                checks.append(f"({tp} := {self.text_of(node.pattern)}) is not None")
            pattern = f"_fold({tp})"
        test = f"{pattern} in _fold({ts})" if method is None else f"_fold({ts}).{method}({pattern})"
        result = "(" + " and ".join([*checks, test]) + ")"
        return f"(not {result})" if node.negated else result

    def text_of(self, value: ast.Value) -> str:
        code = self.value(value)
        return f"_jstr({code})" if value.type is Type.JSON else code

    def expr_Matches(self, node: ast.Matches) -> str:
        if node.regex is None:
            raise InternalError("matches without a compiled regex")
        # The linear-time matcher of the portable subset, never a backtracking
        # engine: a user's pattern must not be able to stall evaluation.
        subject = self.text_of(node.value)
        ts = self.temp()
        search = self.const(regex_matcher(node.regex))
        text = f"_fold({ts})" if node.regex.ignore_case else ts
        test = f"(({ts} := {subject}) is not None and {search}({text}))"
        return f"(not {test})" if node.negated else test

    def expr_Has(self, node: ast.Has) -> str:
        test = f"_h.has({self.value(node.value)}, {self.value(node.element)})"
        return f"(not {test})" if node.negated else test

    def expr_IsSet(self, node: ast.IsSet) -> str:
        code = self.value(node.value)
        test = f"_jset({code})" if node.value.type is Type.JSON else f"({code} is not None)"
        return f"(not {test})" if node.negated else test

    # ---- values ------------------------------------------------------------------------

    def value(self, node: ast.Value) -> str:
        return self.visit("value", node)

    def value_Attribute(self, node: ast.Attribute) -> str:
        if node.name == "at":
            assert self._event_var is not None
            return f"{self._event_var}.at"
        if node.name == "stage":
            return self.reference(("lifecycle", ""))
        return f"c.{node.name}"

    def value_FieldRef(self, node: ast.FieldRef) -> str:
        name = self.const(node.name)
        code = self.shared(("field", node.name), "_v", lambda: f"c.fields.get({name})")
        if node.path:
            return f"_jpath({code}, {self.const(node.path)})"
        return code

    def value_PropsRef(self, node: ast.PropsRef) -> str:
        assert self._event_var is not None
        # Event props are always a dict (the loaders make them one).
        if len(node.path) == 1:
            return f"{self._event_var}.props.get({self.const(node.path[0])})"
        return f"_jpath({self._event_var}.props, {self.const(node.path)})"

    def value_ScoreRef(self, node: ast.ScoreRef) -> str:
        return self.reference(("score", node.name))

    def value_Now(self, node: ast.Now) -> str:
        return "now"

    def value_TimeShift(self, node: ast.TimeShift) -> str:
        offset = self.const(node.offset_seconds * MICROS_PER_SECOND)
        if isinstance(node.value, ast.Now):
            return f"(now + {offset})"
        t = self.temp()
        return f"(None if ({t} := {self.value(node.value)}) is None else {t} + {offset})"

    def value_CountAgg(self, node: ast.CountAgg) -> str:
        return self.count(node.event)

    def value_ValueAgg(self, node: ast.ValueAgg) -> str:
        return self.event_loop(node.event, node.fn, node.prop)

    def value_TimeAgg(self, node: ast.TimeAgg) -> str:
        spec = node.event
        if spec.where is not None:
            return self.event_loop(spec, node.fn)

        def make() -> str:
            # Events are sorted by time: the first in the window, or the last
            # at or before now (when the window holds any).
            low = self.window_start(spec)
            high = self.high(spec.name)
            with self.conditional():  # the test ran: these are locals by now
                times = self.times(spec.name)
                end = self.high(spec.name)
                index = self.window_start(spec) if node.fn == "first" else f"{end} - 1"
            return f"({times}[{index}] if {low} < {high} else None)"

        return self.shared(("time", node.fn, spec.name, within(spec)), "_a", make)

    def value_TextLiteral(self, node: ast.TextLiteral) -> str:
        return self.const(node.value) if node.value != "" else "None"

    def value_NumberLiteral(self, node: ast.NumberLiteral) -> str:
        return self.const(exact_number(node.value))

    def value_BoolLiteral(self, node: ast.BoolLiteral) -> str:
        return "True" if node.value else "False"

    def value_TimeLiteral(self, node: ast.TimeLiteral) -> str:
        return self.const(node.micros)

    def value_StageLiteral(self, node: ast.StageLiteral) -> str:
        return self.const(node.rank)

    def value_ListLiteral(self, node: ast.ListLiteral) -> str:
        raise InternalError("a list is only valid after `in`")

    @staticmethod
    def literal_value(node: ast.Value) -> Any:
        if isinstance(node, ast.TextLiteral):
            return node.value if node.value != "" else None
        if isinstance(node, ast.NumberLiteral):
            return exact_number(node.value)
        if isinstance(node, ast.BoolLiteral):
            return node.value
        if isinstance(node, ast.TimeLiteral):
            return node.micros
        if isinstance(node, ast.StageLiteral):
            return node.rank
        raise InternalError(f"{type(node).__name__} is not a literal")

    # ---- events -----------------------------------------------------------------------
    #
    # A contact's events are sorted by time, and indexed by name with their
    # times (``c.by_name``), so the events in a window are a slice found by two
    # binary searches: those at or before ``now`` end at ``_n``; a window
    # ``within D`` starts after ``now - D``.

    def group(self, name: str) -> str:
        """(events, times) of the contact's events named ``name``."""
        key = self.const(name)
        return self.shared(("group", name), "_g", lambda: f"c.by_name.get({key}, _NO_EVENTS)")

    def times(self, name: str | None) -> str:
        return "c.all_times" if name is None else f"{self.group(name)}[1]"

    def events(self, name: str | None) -> str:
        return "c.events" if name is None else f"{self.group(name)}[0]"

    def high(self, name: str | None) -> str:
        """How many of the events named ``name`` are at or before ``now``
        (later events never count)."""
        return self.shared(("high", name), "_n", lambda: f"_bisect({self.times(name)}, now)")

    def window_start(self, spec: ast.EventSpec) -> str:
        """The index of the first event of ``spec``'s window (before ``_n``)."""
        seconds = within(spec)
        if seconds is None:
            return "0"
        offset = self.const(seconds * MICROS_PER_SECOND)
        return self.shared(
            ("low", spec.name, seconds),
            "_l",
            lambda: (
                f"_bisect({self.times(spec.name)}, "
                f"{self.shared(('after', seconds), '_w', lambda: f'now - {offset}')}, "
                f"0, {self.high(spec.name)})"
            ),
        )

    def count(self, spec: ast.EventSpec) -> str:
        if spec.where is not None:
            return self.event_loop(spec, "count")
        seconds = within(spec)
        if seconds is None:
            return self.high(spec.name)
        return self.shared(
            ("count", spec.name, seconds),
            "_c",
            lambda: f"{self.high(spec.name)} - {self.window_start(spec)}",
        )

    def window(self, spec: ast.EventSpec) -> str:
        """The list of the events in ``spec``'s window, oldest first."""
        events = self.events(spec.name)
        start = self.window_start(spec)
        end = self.high(spec.name)
        return f"{events}[{'' if start == '0' else start}:{end}]"

    def event_loop(self, spec: ast.EventSpec, fn: str, prop: ast.PropsRef | None = None) -> str:
        """``fn`` over the events of ``spec`` (its ``where`` and the property
        ``prop``): a call of a generated function that walks them once."""
        with self.function_scope():
            self._event_var = "e"
            condition = self.expr(spec.where) if spec.where is not None else None
            value = self.value(prop) if prop is not None else None
        body = loop_body(fn, condition, value)
        helper = self.helper_function(["events", "now"], body)
        return self.shared(
            ("loop", helper, spec.name, within(spec)),
            "_a",
            lambda: f"{helper}({self.window(spec)}, now)",
        )


@contextmanager
def _unconditional() -> Iterator[None]:
    yield


def without_unread_bindings(body: list[str]) -> list[str]:
    """``(_c1 := x)`` as ``(x)`` where ``_c1`` is never read: a shared value
    needed once after all (easier to read, and one store less)."""
    text = "\n".join(body)
    uses = Counter(_SHARED_LOCAL.findall(text))
    text = _INLINE_BINDING.sub(lambda m: "(" if uses[m.group(1)] == 1 else m.group(0), text)
    return text.split("\n")


def interned(value: Any) -> Any:
    if type(value) is str:
        return sys.intern(value)
    if type(value) in (tuple, frozenset):
        return type(value)(interned(item) for item in value)
    return value


def is_empty_text(value: ast.Value) -> bool:
    """``""`` is a missing value (spec §6)."""
    return isinstance(value, ast.TextLiteral) and value.value == ""


def within(spec: ast.EventSpec) -> int | None:
    return spec.within.seconds if spec.within is not None else None


def loop_body(fn: str, condition: str | None, value: str | None) -> list[str]:
    """The body of a function of ``(events, now)`` that computes ``fn`` over the
    events (for which ``condition`` holds) in one pass."""
    pad = "        " if condition is None else "            "
    number = (
        [f"{pad}v = {value}", f"{pad}if type(v) is int or type(v) is _Decimal:"]
        if value is not None
        else []
    )
    start: list[str]
    each: list[str]
    end: list[str]
    if fn == "any":
        start, each, end = [], [f"{pad}return True"], ["    return False"]
    elif fn == "count":
        start, each, end = ["    found = 0"], [f"{pad}found += 1"], ["    return found"]
    elif fn in ("first", "last"):
        start, each, end = [], [f"{pad}return e.at"], ["    return None"]
    elif fn == "sum":
        # Whole numbers add as ints; decimals with exact decimal arithmetic.
        start = ["    whole = 0", "    exact = None"]
        each = [
            f"{pad}v = {value}",
            f"{pad}if type(v) is int:",
            f"{pad}    whole += v",
            f"{pad}elif type(v) is _Decimal:",
            f"{pad}    exact = v if exact is None else _add(exact, v)",
        ]
        end = ["    return whole if exact is None else _add(exact, whole)"]
    elif fn in ("min", "max"):
        better = "<" if fn == "min" else ">"
        start = ["    found = None"]
        each = [
            *number,
            f"{pad}    if found is None or v {better} found:",
            f"{pad}        found = v",
        ]
        end = ["    return found"]
    elif fn == "avg":
        start = ["    found = []"]
        each = [*number, f"{pad}    found.append(v)"]
        end = ["    return _average(found)"]
    else:
        raise InternalError(f"no event loop for {fn}")
    walk = "reversed(events)" if fn == "last" else "events"
    loop = [f"    for e in {walk}:"]
    if condition is not None:
        loop.append(f"        if {condition}:")
    return [*start, *loop, *each, *end]


def estimate_cost(
    rules: CheckedRules,
    node: object,
    seen: frozenset[NodeKey] = frozenset(),
    *,
    eager: bool = False,
) -> int:
    """A rough relative cost of evaluating ``node`` for one contact. With
    ``eager``, other nodes' values are locals already computed: free.

    The unit is about one attribute or tag test. Reading events costs more
    than a text test on an attribute (profiled: the index, two binary
    searches and the int objects they compare are several memory reads that
    miss the cache over many contacts); a loop over events more again; a
    regex runs its automaton in Python, a character at a time."""
    if isinstance(node, ast.EventSpec):
        return 10 + (20 if node.where is not None else 0)
    if isinstance(node, (ast.ValueAgg, ast.TimeAgg)):
        return 20 + estimate_cost(rules, node.event, seen, eager=eager)
    if isinstance(node, ast.Matches):
        return 25 + estimate_cost(rules, node.value, seen, eager=eager)
    if isinstance(node, ast.TextMatch):
        return (
            3
            + estimate_cost(rules, node.value, seen, eager=eager)
            + estimate_cost(rules, node.pattern, seen, eager=eager)
        )
    target: NodeKey | None = None
    if isinstance(node, ast.SegmentTest):
        target = ("segment", node.segment)
    elif isinstance(node, ast.ScoreRef):
        target = ("score", node.name)
    elif isinstance(node, ast.Attribute) and node.name == "stage":
        target = ("lifecycle", "")
    if target is not None:
        if eager:
            return 0
        if target in seen:
            return 1
        return 2 + sum(
            estimate_cost(rules, item, seen | {target}) for item in _node_parts(rules, target)
        )
    cost = 1
    if hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            if name in ("span", "type", "regex"):
                continue
            child = getattr(node, name)
            children = child if isinstance(child, tuple) else (child,)
            cost += sum(
                estimate_cost(rules, c, seen, eager=eager)
                for c in children
                if isinstance(c, (ast.Node, tuple))
            )
    return cost


def _node_parts(rules: CheckedRules, node: NodeKey) -> list[object]:
    kind, name = node
    if kind == "segment":
        return [rules.segments[name].body]
    if kind == "score":
        return [
            r.event if isinstance(r, ast.ScorePer) else r.condition
            for r in rules.scores[name].rules
        ]
    return [s.condition for s in rules.lifecycle.stages] if rules.lifecycle else []


def exact_number(value: Decimal) -> int | Decimal:
    """Whole numbers as ``int``: they compare exactly with ``Decimal`` and
    ``int`` values alike, and int arithmetic and comparison are much faster."""
    return int(value) if value == value.to_integral_value() else value
