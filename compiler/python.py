"""Checked AST to Python source for the in-memory predicate.

Like Jinja2's compiler: one visitor writes the source of a module, constants
go into its namespace (never into the text), and the module is compiled once.
Per segment, score and the lifecycle it writes a function of the contact,
``now`` (microseconds) and the values of what the node refers to; ``evaluate``
runs them all in dependency order, and ``only_<node>`` runs one node with just
what it needs.

Values compile to expressions that give the normalised value or ``None`` when
missing; conditions compile to expressions that are always ``True``/``False``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nudgel.dsl import ast
from nudgel.dsl.ast import Type
from nudgel.dsl.checker import CheckedRules
from nudgel.dsl.diagnostics import InternalError
from nudgel.dsl.regex import search as regex_search
from nudgel.dsl.textfold import fold
from nudgel.dsl.timeparse import MICROS_PER_SECOND
from nudgel.runtime import memory_helpers

NodeKey = tuple[str, str]

_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_GENERATED = re.compile(r"_f[0-9]+|only_[a-z0-9_]+")

PY_OPS = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
NEGATE_OP = {"=": "!=", "!=": "="}


def function_name(node: NodeKey) -> str:
    kind, name = node
    return "lifecycle" if kind == "lifecycle" else f"{kind}_{name}"


@dataclass(slots=True)
class GeneratedModule:
    source: str
    namespace: dict[str, Any]
    # node -> the nodes it reads directly, in the order of its parameters
    parameters: dict[NodeKey, tuple[NodeKey, ...]]


@dataclass(slots=True)
class PythonCompiler:
    rules: CheckedRules
    lines: list[str] = field(default_factory=list)
    namespace: dict[str, Any] = field(default_factory=dict)
    _constants: dict[tuple[type, Any], str] = field(default_factory=dict)
    _counter: int = 0
    _references: list[NodeKey] = field(default_factory=list)
    _event_var: str | None = None
    # Eager: a reference to another node is a parameter holding its value
    # (``evaluate`` computes every node once, in order). Lazy: it is a call,
    # made only if the short-circuiting logic gets there (``only_<node>``).
    _lazy: bool = False

    # ---- module ----------------------------------------------------------------

    def compile(self) -> GeneratedModule:
        self.namespace.update(
            {
                "_h": memory_helpers,
                "_fold": fold,
                "_regex_search": regex_search,
                "_jpath": memory_helpers.jpath,
                "_jstr": memory_helpers.jstr,
                "_jnum": memory_helpers.jnum,
                "_jbool": memory_helpers.jbool,
                "_jset": memory_helpers.jset,
                "_count": memory_helpers.count,
                "_window": memory_helpers.window,
                "_add": memory_helpers.add,
                "_per_event": memory_helpers.per_event,
                "_ZERO": memory_helpers.ZERO,
            }
        )
        parameters: dict[NodeKey, tuple[NodeKey, ...]] = {}
        for node in self.rules.order:
            parameters[node] = self.node_function(node)
        self._lazy = True
        for node in self.rules.order:
            self.node_function(node)
        self.entry_points(parameters)
        return GeneratedModule("\n".join(self.lines) + "\n", self.namespace, parameters)

    def node_function(self, node: NodeKey) -> tuple[NodeKey, ...]:
        kind, name = node
        self._references = []
        body: list[str]
        if kind == "segment":
            condition = self.expr(self.rules.segments[name].body)
            body = [f"    return {condition}"]
        elif kind == "score":
            body = self.score_body(self.rules.scores[name])
        else:
            body = self.lifecycle_body()
        dependencies = tuple(dict.fromkeys(self._references))
        if self._lazy:
            self.define(f"only_{function_name(node)}", ["c", "now"], body)
        else:
            self.define(
                function_name(node), ["c", "now", *(function_name(d) for d in dependencies)], body
            )
        return dependencies

    def define(self, name: str, parameters: list[str], body: list[str]) -> None:
        """Write a function whose constants and helpers are parameter defaults:
        read from the namespace once, when the module runs, then fast locals on
        every call (positional defaults cost less per call than keyword-only)."""
        used = dict.fromkeys(
            word
            for line in body
            for word in _WORD.findall(line)
            if word not in parameters and (word in self.namespace or _GENERATED.fullmatch(word))
        )
        bound = "".join(f", {word}={word}" for word in used)
        self.lines.append(f"def {name}({', '.join(parameters)}{bound}):")
        self.lines.extend(body)
        self.lines.append("")

    def entry_points(self, parameters: dict[NodeKey, tuple[NodeKey, ...]]) -> None:
        """``only_<node>`` for each node and ``evaluate`` for all; each result
        is held in a local named after its function plus ``_``."""

        def emit(name: str, nodes: list[NodeKey], result: str) -> None:
            self.lines.append(f"def {name}(c, now):")
            for node in nodes:
                arguments = ", ".join(
                    ["c", "now", *(function_name(d) + "_" for d in parameters[node])]
                )
                self.lines.append(
                    f"    {function_name(node)}_ = {function_name(node)}({arguments})"
                )
            self.lines.append(f"    return {result}")
            self.lines.append("")

        segments = [n for n in self.rules.order if n[0] == "segment"]
        scores = [n for n in self.rules.order if n[0] == "score"]
        stage = "lifecycle_" if ("lifecycle", "") in parameters else "None"
        result = "(({}), ({}), {})".format(
            "".join(f"{function_name(n)}_, " for n in segments),
            "".join(f"{function_name(n)}_, " for n in scores),
            stage,
        )
        emit("evaluate", list(self.rules.order), result)

    # ---- helpers -----------------------------------------------------------------

    def const(self, value: Any) -> str:
        """The name of a constant in the module namespace (equal hashable
        constants of one type share a name)."""
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
        self._counter += 1
        name = f"_f{self._counter}"
        self.define(name, parameters, body)
        return name

    # ---- declarations ----------------------------------------------------------------

    def score_body(self, decl: ast.ScoreDecl) -> list[str]:
        """Whole-number models add ints (exact and fast); any fraction makes the
        whole model use exact decimal arithmetic."""
        numbers = [r.points for r in decl.rules]
        numbers += [r.cap for r in decl.rules if isinstance(r, ast.ScorePer) and r.cap is not None]
        if decl.clamp is not None:
            numbers += [decl.clamp.low, decl.clamp.high]
        integral = all(isinstance(exact_number(n), int) for n in numbers)
        body = ["    total = 0" if integral else "    total = _ZERO"]
        for rule in decl.rules:
            points = self.const(exact_number(rule.points))
            if isinstance(rule, ast.ScorePer):
                count = self.count(rule.event)
                if not integral:
                    cap = self.const(rule.cap) if rule.cap is not None else "None"
                    body.append(f"    total = _add(total, _per_event({points}, {count}, {cap}))")
                elif rule.cap is None:
                    body.append(f"    total += {points} * {count}")
                else:
                    # count >= 0, so the product has the sign of the points.
                    limit, bound = (
                        ("min", int(rule.cap)) if rule.points > 0 else ("max", -int(rule.cap))
                    )
                    body.append(f"    total += {limit}({points} * {count}, {self.const(bound)})")
            else:
                body.append(f"    if {self.expr(rule.condition)}:")
                body.append(
                    f"        total {'+= ' if integral else '= _add(total, '}{points}{'' if integral else ')'}"
                )
        if decl.clamp is not None:
            low = self.const(exact_number(decl.clamp.low))
            high = self.const(exact_number(decl.clamp.high))
            body.append(f"    if total < {low}:")
            body.append(f"        total = {low}")
            body.append(f"    elif total > {high}:")
            body.append(f"        total = {high}")
        body.append("    return total")
        return body

    def lifecycle_body(self) -> list[str]:
        lifecycle = self.rules.lifecycle
        assert lifecycle is not None
        ranks = self.const({s.name: i for i, s in enumerate(lifecycle.stages)})
        body = ["    rank = None"]
        keyword = "if"
        for rank in reversed(range(len(lifecycle.stages))):
            body.append(f"    {keyword} {self.expr(lifecycle.stages[rank].condition)}:")
            body.append(f"        rank = {rank}")
            keyword = "elif"
        body += [
            f"    prior = {ranks}.get(c.stage)",
            "    if prior is not None and (rank is None or rank < prior):",
            "        rank = prior",
            "    return rank",
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
        return "(" + " or ".join(self.expr(x) for x in self.cheapest_first(node.items)) + ")"

    def expr_AndExpr(self, node: ast.AndExpr) -> str:
        return "(" + " and ".join(self.expr(x) for x in self.cheapest_first(node.items)) + ")"

    def cheapest_first(self, items: tuple[ast.Expr, ...]) -> list[ast.Expr]:
        # Conditions have no side effects and cannot fail, so `and`/`or`
        # operands may run in any order: cheap tests first short-circuit the
        # costly ones (event scans, scores, other segments).
        return sorted(items, key=lambda item: estimate_cost(self.rules, item))

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
        return f"only_{function_name(key)}(c, now)" if self._lazy else function_name(key)

    def expr_SegmentTest(self, node: ast.SegmentTest) -> str:
        return self.reference(("segment", node.segment))

    def expr_EventTest(self, node: ast.EventTest) -> str:
        spec = node.event
        if spec.where is None:
            return f"({self.count(spec)} > 0)"
        predicate = self.where_function(spec.where)
        return f"any({predicate}(e, now) for e in {self.events(spec)})"

    def expr_Compare(self, node: ast.Compare) -> str:
        op = node.op
        if op == "!=":
            return f"(not {self.compare('=', node.left, node.right)})"
        return self.compare(op, node.left, node.right)

    def compare(self, op: str, left: ast.Value, right: ast.Value) -> str:
        if left.type is Type.JSON and right.type is Type.JSON:
            return f"_h.jcompare({op!r}, {self.value(left)}, {self.value(right)})"
        a = self.typed(left, right.type)
        b = self.typed(right, left.type)
        if a == "None" or b == "None":
            return "False"
        python_op = PY_OPS[op]
        if op == "=" and (self.is_constant(left) or self.is_constant(right)):
            return f"({a} == {b})"  # a missing value (None) never equals a constant
        checks = []
        if self.never_missing(left):
            pass
        elif not self.is_constant(left):
            ta = self.temp()
            checks.append(f"({ta} := {a}) is not None")
            a = ta
        if self.never_missing(right):
            pass
        elif not self.is_constant(right):
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
        ) and not (isinstance(value, ast.TextLiteral) and value.value == "")

    def expr_InList(self, node: ast.InList) -> str:
        element_type = node.items.type
        members = frozenset(
            v for v in (self.literal_value(x) for x in node.items.items) if v is not None
        )
        code = self.typed(node.value, element_type) if node.items.items else "None"
        test = f"({code} in {self.const(members)})" if members else "False"
        return f"(not {test})" if node.negated else test

    def expr_Between(self, node: ast.Between) -> str:
        test = f"({self.compare('>=', node.value, node.low)} and {self.compare('<=', node.value, node.high)})"
        return f"(not {test})" if node.negated else test

    def expr_TextMatch(self, node: ast.TextMatch) -> str:
        method = {"contains": None, "starts_with": "startswith", "ends_with": "endswith"}[node.op]
        subject = self.text_of(node.value)
        ts = self.temp()
        checks = [f"({ts} := {subject}) is not None"]
        if self.is_constant(node.pattern) and isinstance(node.pattern, ast.TextLiteral):
            pattern = self.const(fold(node.pattern.value))
        elif isinstance(node.pattern, ast.TextLiteral):  # "" is missing
            return "True" if node.negated else "False"
        else:
            tp = self.temp()
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
        test = (
            f"(({ts} := {subject}) is not None and _regex_search({self.const(node.regex)}, {ts}))"
        )
        return f"(not {test})" if node.negated else test

    def expr_Has(self, node: ast.Has) -> str:
        element = self.value(node.element)
        if node.element.type is not Type.JSON and node.element.type is not Type.UNKNOWN:
            pass  # typed values are JSON scalars already (text, number, bool)
        test = f"_h.has({self.value(node.value)}, {element})"
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
        code = f"c.fields.get({self.const(node.name)})"
        if node.path:
            return f"_jpath({code}, {self.const(node.path)})"
        return code

    def value_PropsRef(self, node: ast.PropsRef) -> str:
        assert self._event_var is not None
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
        numbers = f"_h.numbers({self.events(node.event)}, {self.const(node.prop.path)})"
        function = {"sum": "total", "min": "smallest", "max": "largest", "avg": "average"}[node.fn]
        return f"_h.{function}({numbers})"

    def value_TimeAgg(self, node: ast.TimeAgg) -> str:
        events = self.temp()
        index = "0" if node.fn == "first" else "-1"
        return f"({events}[{index}].at if ({events} := {self.events(node.event)}) else None)"

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

    def window_bounds(self, spec: ast.EventSpec) -> tuple[str, str]:
        name = self.const(spec.name) if spec.name is not None else "None"
        if spec.within is None:
            return name, "None"
        return name, f"now - {self.const(spec.within.seconds * MICROS_PER_SECOND)}"

    def events(self, spec: ast.EventSpec) -> str:
        """An expression giving the list of matching events, oldest first."""
        name, after = self.window_bounds(spec)
        window = f"_window(c, {name}, {after}, now)"
        if spec.where is None:
            return window
        predicate = self.where_function(spec.where)
        return f"[e for e in {window} if {predicate}(e, now)]"

    def count(self, spec: ast.EventSpec) -> str:
        if spec.where is None:
            name, after = self.window_bounds(spec)
            return f"_count(c, {name}, {after}, now)"
        return f"len({self.events(spec)})"

    def where_function(self, condition: ast.Expr) -> str:
        saved, self._event_var = self._event_var, "e"
        try:
            code = self.expr(condition)
        finally:
            self._event_var = saved
        return self.helper_function(["e", "now"], [f"    return {code}"])


def estimate_cost(rules: CheckedRules, node: object, seen: frozenset[NodeKey] = frozenset()) -> int:
    """A rough relative cost of evaluating ``node`` for one contact."""
    if isinstance(node, ast.EventSpec):
        return 4 + (20 if node.where is not None else 0)
    if isinstance(node, (ast.ValueAgg, ast.TimeAgg)):
        return 20 + estimate_cost(rules, node.event, seen)
    if isinstance(node, ast.Matches):
        return 6 + estimate_cost(rules, node.value, seen)
    if isinstance(node, ast.TextMatch):
        return 3 + estimate_cost(rules, node.value, seen) + estimate_cost(rules, node.pattern, seen)
    target: NodeKey | None = None
    if isinstance(node, ast.SegmentTest):
        target = ("segment", node.segment)
    elif isinstance(node, ast.ScoreRef):
        target = ("score", node.name)
    elif isinstance(node, ast.Attribute) and node.name == "stage":
        target = ("lifecycle", "")
    if target is not None:
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
                estimate_cost(rules, c, seen) for c in children if isinstance(c, (ast.Node, tuple))
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
