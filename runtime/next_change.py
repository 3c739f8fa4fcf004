"""When can a contact's results change with no new data? (time passing)

Rules read time only by comparing an instant built from ``now`` with an
instant built from the contact (an event's ``at``, ``first``/``last``, a date
or timestamp attribute or field) or from a literal, each side shifted by
durations: ``now - 30d > created_at``, ``within 30d`` (``at > now - 30d``),
``at <= now`` for every event. Such a comparison flips only where
``now + a = T + b``, i.e. at ``T + (b - a)`` (or one microsecond later, for
strict comparisons). So a :class:`TimePlan` keeps the offsets ``b - a`` the
rules use and the literal instants compared with ``now``; for one contact the
next change can only come at one of ``T + c`` or ``T + c + 1 µs`` after
``now``, for T among its instants. That set is a superset of the real change
points: re-evaluating there is always enough, sometimes more than needed
(nothing changes and the next candidate is taken), never too late.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nudgel.dsl import ast
from nudgel.dsl.checker import CheckedRules
from nudgel.runtime.contact import Contact

__all__ = ["TimePlan", "time_plan"]

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class TimePlan:
    # c in T + c: flip points relative to each of the contact's instants.
    offsets: frozenset[int]
    # Absolute flip points: literal instants (shifted) compared with ``now``.
    instants: frozenset[int]
    # Field names whose values are instants (date and timestamp fields).
    time_fields: frozenset[str]

    @property
    def time_dependent(self) -> bool:
        return bool(self.offsets or self.instants)

    def next_change(self, contact: Contact, now: int) -> int | None:
        """The first instant after ``now`` at which a result may change, or None."""
        best: int | None = None
        for instant in self.instants:
            for candidate in (instant, instant + 1):
                if candidate > now and (best is None or candidate < best):
                    best = candidate
        if not self.offsets:
            return best
        times = sorted(_contact_instants(contact, self.time_fields))
        for offset in self.offsets:
            # The first T with T + offset + 1 > now, i.e. T >= now - offset.
            index = bisect.bisect_left(times, now - offset)
            if index == len(times):
                continue
            start = times[index] + offset
            candidate = start if start > now else start + 1
            if best is None or candidate < best:
                best = candidate
        return best


def _contact_instants(contact: Contact, time_fields: frozenset[str]) -> Iterator[int]:
    yield from contact.all_times
    for value in (contact.created_at, contact.updated_at):
        if value is not None:
            yield value
    for name in time_fields:
        value = contact.fields.get(name)
        if isinstance(value, int):
            yield value


@dataclass(frozen=True, slots=True)
class _Side:
    """One operand of a comparison: ``base + shift`` (micros)."""

    kind: str  # "now", "literal", "contact"
    shift: int
    literal: int | None = None


def time_plan(rules: CheckedRules) -> TimePlan:
    offsets: set[int] = set()
    instants: set[int] = set()
    for node in _all_nodes(rules):
        if isinstance(node, ast.EventSpec):
            # `at <= now` always; `at > now - D` with a window.
            offsets.add(0)
            if node.within is not None:
                offsets.add(node.within.seconds * MICROS)
        operands = _operands(node)
        if operands is None:
            continue
        sides = [_side(value) for value in operands]
        for now_side in (s for s in sides if s is not None and s.kind == "now"):
            for other in sides:
                if other is None or other.kind == "now":
                    continue
                if other.kind == "literal":
                    assert other.literal is not None
                    instants.add(other.literal + other.shift - now_side.shift)
                else:
                    offsets.add(other.shift - now_side.shift)
    time_fields = frozenset(
        name for name, decl in rules.fields.items() if decl.type_name in ("date", "timestamp")
    )
    return TimePlan(frozenset(offsets), frozenset(instants), time_fields)


def _operands(node: object) -> tuple[ast.Value, ...] | None:
    if isinstance(node, ast.Compare):
        return (node.left, node.right)
    if isinstance(node, ast.Between):
        return (node.value, node.low, node.high)
    if isinstance(node, ast.InList):
        return (node.value, *node.items.items)
    return None


def _side(value: ast.Value) -> _Side | None:
    shift = 0
    while isinstance(value, ast.TimeShift):
        shift += value.offset_seconds * MICROS
        value = value.value
    if isinstance(value, ast.Now):
        return _Side("now", shift)
    if isinstance(value, ast.TimeLiteral):
        return _Side("literal", shift, value.micros)
    if isinstance(value, (ast.Attribute, ast.FieldRef, ast.TimeAgg)):
        return _Side("contact", shift)
    return None


def _all_nodes(rules: CheckedRules) -> Iterable[object]:
    roots: list[object] = [decl.body for decl in rules.segments.values()]
    for score in rules.scores.values():
        roots.extend(score.rules)
    if rules.lifecycle is not None:
        roots.extend(stage.condition for stage in rules.lifecycle.stages)
    stack = roots
    while stack:
        node = stack.pop()
        yield node
        if hasattr(node, "__dataclass_fields__"):
            for name in node.__dataclass_fields__:
                if name in ("span", "type", "regex"):
                    continue
                child = getattr(node, name)
                if isinstance(child, tuple):
                    stack.extend(child)
                elif child is not None and hasattr(child, "__dataclass_fields__"):
                    stack.append(child)
