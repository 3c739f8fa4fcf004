"""Small run-time helpers that compiled in-memory programs call. They implement
the language's value rules (§5, §6, §8) once, off the hot paths; the generated
code inlines everything else (event windows, counts, loops over events)."""

from __future__ import annotations

from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from typing import Any

from nudgel.runtime.contact import Event

# Exact decimal arithmetic: with this precision, sums and products of the
# numbers the loader accepts never round.
EXACT = Context(prec=100_000, Emax=MAX_EMAX, Emin=MIN_EMIN)
ZERO = Decimal(0)
AVG_SCALE = 10**12
# The (events, times) of a name the contact has no events of. Never mutated.
NO_EVENTS: tuple[list[Event], list[int]] = ([], [])


def jpath(value: Any, path: tuple[str, ...]) -> Any:
    """Follow object keys; None when a key is absent or a value is not an object."""
    for key in path:
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value


def jstr(value: Any) -> str | None:
    return value if type(value) is str and value != "" else None


def jnum(value: Any) -> int | Decimal | None:
    kind = type(value)
    return value if kind is int or kind is Decimal else None


def jbool(value: Any) -> bool | None:
    return value if type(value) is bool else None


def jset(value: Any) -> bool:
    return value is not None and value != ""


def jscalar(value: Any) -> tuple[int, Any] | None:
    """A JSON scalar tagged with its JSON type, for json-to-json comparisons."""
    kind = type(value)
    if kind is str:
        return (0, value) if value != "" else None
    if kind is int or kind is Decimal:
        return (1, value)
    if kind is bool:
        return (2, value)
    return None


def jcompare(op: str, left: Any, right: Any) -> bool:
    a, b = jscalar(left), jscalar(right)
    if a is None or b is None or a[0] != b[0]:
        return False
    x, y = a[1], b[1]
    if op == "=":
        return bool(x == y)
    if a[0] == 2:  # booleans have no order
        return False
    if op == "<":
        return bool(x < y)
    if op == "<=":
        return bool(x <= y)
    if op == ">":
        return bool(x > y)
    return bool(x >= y)


def has(value: Any, element: Any) -> bool:
    """A JSON array holds an element equal to ``element`` with the same JSON type."""
    if type(value) is not list:
        return False
    wanted = jscalar(element)
    if wanted is None:
        return False
    return any(jscalar(item) == wanted for item in value)


def average(values: list[int | Decimal]) -> Decimal | None:
    """Exact mean rounded half away from zero to 12 places (spec §8)."""
    if not values:
        return None
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    numerator, denominator = total.as_integer_ratio()
    denominator *= len(values)
    magnitude = (2 * abs(numerator) * AVG_SCALE + denominator) // (2 * denominator)
    return Decimal(magnitude if numerator >= 0 else -magnitude).scaleb(-12, EXACT)


def per_event(points: Decimal, count: int, cap: Decimal | None) -> Decimal:
    """``±N per EVENT [max M]``: N × count, its absolute value capped at M."""
    value = EXACT.multiply(points, count)
    if cap is not None and abs(value) > cap:
        return cap if value > 0 else -cap
    return value


def add(a: Decimal, b: Decimal | int) -> Decimal:
    return EXACT.add(a, b)
