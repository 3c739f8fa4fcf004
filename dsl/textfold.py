"""Case folding for ``contains``, ``starts_with``, ``ends_with`` and ``(?i)`` (spec §7).

Both sides are lower-cased character by character with the Unicode *simple*
lowercase mapping: one code point to one code point, no context. Python's
``str.lower`` is not that: it applies the *full* mapping (U+0130 'İ' becomes
'i' + U+0307) and the context-dependent final sigma. So :func:`fold` uses a
table built once, from the Unicode database of the running Python
(``unicodedata.unidata_version``), and PostgreSQL gets the same table:

    CASE WHEN octet_length(x) = char_length(x) THEN lower(x COLLATE "C")
         ELSE translate(lower(x COLLATE "C"), POSTGRES_FOLD_FROM, POSTGRES_FOLD_TO) END

``lower()`` under the "C" collation folds ASCII A-Z only, whatever the
database locale, so ASCII needs no table and the non-ASCII part is exactly
``POSTGRES_FOLD_FROM`` -> ``POSTGRES_FOLD_TO`` (passed as bound parameters).
PostgreSQL text cannot hold NUL or surrogates; neither is in the table.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from types import MappingProxyType

# Code points whose *full* lowercase (what str.lower gives) has several code
# points, with their *simple* lowercase from UnicodeData.txt. U+0130 is the only
# one up to at least Unicode 15.1; the import-time check below fails loudly if a
# newer Unicode adds one, instead of silently folding it wrong.
_SIMPLE_LOWER_OVERRIDES: dict[int, int] = {0x0130: 0x0069}
_CHUNK = 256  # divides 0x110000 and the surrogate block boundaries


def _build_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for base in range(0, sys.maxunicode + 1, _CHUNK):
        if 0xD800 <= base <= 0xDFFF:
            continue  # surrogates are not characters and have no case
        chunk = "".join(map(chr, range(base, base + _CHUNK)))
        if chunk.lower() == chunk:
            continue  # most of the code space has no case: skip it at C speed
        for cp in range(base, base + _CHUNK):
            lowered = chr(cp).lower()
            if len(lowered) == 1:
                # A character lowered alone is never a final sigma (that needs a
                # preceding letter), so a one-character result is the simple mapping.
                target = ord(lowered)
            elif cp in _SIMPLE_LOWER_OVERRIDES:
                target = _SIMPLE_LOWER_OVERRIDES[cp]
            else:
                raise RuntimeError(
                    f"U+{cp:04X} has a multi-character lowercase in Unicode "
                    "and no known simple mapping: add it to _SIMPLE_LOWER_OVERRIDES"
                )
            if target != cp:
                table[cp] = target
    return table


_TABLE = _build_table()

FOLD_MAP: Mapping[int, int] = MappingProxyType(_TABLE)
"""Every code point that folding changes, to its simple lowercase."""

FOLD_SOURCES: tuple[int, ...] = tuple(sorted(_TABLE))
"""The keys of :data:`FOLD_MAP`, sorted. Folding is idempotent (checked below),
so these code points never occur in folded text."""

# The regex translation relies on idempotence: folded text holds only fixed
# points, so a character class may freely include or omit FOLD_SOURCES.
if any(target in _TABLE for target in _TABLE.values()):
    raise RuntimeError("simple lowercase is not idempotent in this Unicode version")

_NON_ASCII = [cp for cp in FOLD_SOURCES if cp >= 0x80]
POSTGRES_FOLD_FROM: str = "".join(chr(cp) for cp in _NON_ASCII)
POSTGRES_FOLD_TO: str = "".join(chr(_TABLE[cp]) for cp in _NON_ASCII)
# ASCII is left to lower(x COLLATE "C"), which maps exactly A-Z to a-z.
if [cp for cp in FOLD_SOURCES if cp < 0x80] != list(range(ord("A"), ord("Z") + 1)):
    raise RuntimeError("ASCII folding is not exactly A-Z -> a-z")


def fold(s: str) -> str:
    """``s`` lower-cased with the simple lowercase mapping, character by character."""
    if s.isascii():
        return s.lower()  # fast path, and exactly A-Z -> a-z
    return s.translate(_TABLE)


def fold_char(cp: int) -> int:
    """The fold of one code point."""
    return _TABLE.get(cp, cp)


def count_fold_sources(lo: int, hi: int) -> int:
    """How many code points in ``lo..hi`` (inclusive) folding changes."""
    return bisect_right(FOLD_SOURCES, hi) - bisect_left(FOLD_SOURCES, lo)


def postgres_fold_sql(x: str, from_param: str, to_param: str) -> str:
    """The SQL that folds the text expression ``x`` exactly as :func:`fold` does.

    ``from_param``/``to_param`` are the placeholders bound to
    :data:`POSTGRES_FOLD_FROM`/:data:`POSTGRES_FOLD_TO`. ``x`` is repeated, so it
    should be a column or a parameter, not an expensive expression.
    """
    return (
        f"CASE WHEN octet_length({x}) = char_length({x}) "
        f'THEN lower({x} COLLATE "C") '
        f'ELSE translate(lower({x} COLLATE "C"), {from_param}, {to_param}) END'
    )
