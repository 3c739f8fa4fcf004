"""The portable regular-expression subset of ``matches`` (spec §7).

A pattern is parsed once into a small syntax tree, checked, and written out
twice: for Python's ``re`` and for PostgreSQL's ``~`` (ARE, default flags). The
two engines disagree on much of the syntax, so neither output uses anything
whose meaning differs between them:

- Every character set (a literal, ``.``, ``\\d``..``\\S``, a bracket class) is
  resolved here to a set of code points and written as explicit ranges, so
  locale (PostgreSQL's ``\\w`` follows the collation), Unicode-aware classes
  (Python's ``\\d`` matches '٣') and ``.`` (PostgreSQL's matches a newline) play
  no part. ASCII punctuation is always backslash-escaped and control or
  unprintable characters are written ``\\uXXXX``/``\\UXXXXXXXX`` (fixed width in
  both; PostgreSQL's ``\\x`` would swallow following hex digits).
- Anchors are written ``\\A`` and ``\\Z``: start and very end of the text in
  both engines (Python's ``$`` also matches before a final newline).
- Groups are written ``(?:...)``: nothing is ever captured.
- ``(?i)`` is not passed on. Both backends fold the subject with
  :func:`nudgel.dsl.textfold.fold` and the pattern's literals and class members
  are replaced here by their fold image, so no engine's own case-insensitivity
  (which differs) is involved.

Bracket classes: ``[...]`` and ``[^...]`` hold single characters, ranges
``a-z`` (by code point, both ends inclusive), escaped ASCII punctuation
(``\\]``, ``\\-``, ``\\\\``, ``\\^``, ``\\[`` ...) and the six class escapes.
``-`` is literal only as the first or last member; elsewhere it must be
escaped. A ``]`` right after ``[`` or ``[^`` and an unescaped ``[`` inside a
class are errors (an empty class, and POSIX ``[:alpha:]``, mean different
things to different engines), as are an unescaped ``]``, ``{`` or ``}`` outside
a class.

Under ``(?i)``, ``[^S]`` means ``[^fold(S)]`` and the class escapes are left as
they are (they are ASCII-only, and folded text has no A-Z). Because folding is
idempotent, a folded subject never contains a code point that folding changes,
so such code points may be added to a set where that keeps it one range.

Limits, so that the SQL can never raise a database error: NUL and lone
surrogates cannot be in a pattern (PostgreSQL text cannot hold them);
repetition counts are at most 255 (PostgreSQL's DUPMAX); groups nest at most 50
deep; and the pattern's size with repetitions expanded is at most 1000.
PostgreSQL says "regular expression is too complex" when its NFA outgrows the
stack (``max_stack_depth``, at least 100kB) or a fixed compile space, and
counted repetitions are expanded by copying. The size (see :class:`_Sizer`)
stays well under what PostgreSQL accepted, by experiment, at 100kB, for
every shape tried (chains of literals, of optional or starred items, nested
counts, alternations, classes cut into many colors); the tests re-check the
largest accepted instance of each shape against the server.

Backtracking: Python's ``re`` takes exponential time on patterns such as
``(a*)*b`` or ``(\\w|\\d)+$``, and no simple syntactic rule excludes them all.
So :func:`search`, the in-memory matcher, does not use ``re``: it runs the
pattern's Thompson NFA as a lazily built DFA (like PostgreSQL and RE2), which
is linear in the subject for every pattern. ``PortableRegex.python`` remains a
faithful ``re`` translation (the tests check it against PostgreSQL too), but a
backtracking engine should not run user patterns on long text.
"""

from __future__ import annotations

import re
import string
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeAlias

from nudgel.dsl.textfold import FOLD_SOURCES, count_fold_sources, fold, fold_char

MAX_REPEAT = 255
"""Largest repetition count (PostgreSQL's DUPMAX)."""
MAX_DEPTH = 50
"""Deepest nesting of groups."""
MAX_SIZE = 1000
"""Largest pattern size with repetitions expanded (see the module docstring)."""

_MAX_CP = 0x10FFFF
_PUNCTUATION = frozenset(string.punctuation)


class RegexError(Exception):
    """A pattern outside the portable subset, or invalid.

    ``position`` is the 0-based code point offset in the pattern where the
    offending construct starts.
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class PortableRegex:
    source: str
    """The pattern as written."""
    ignore_case: bool
    """The pattern starts with ``(?i)``: fold the subject before matching."""
    python: str
    """The pattern for Python's ``re``, compiled with no flags."""
    postgres: str
    """The pattern for PostgreSQL's ``~`` (ARE), as a bound parameter."""


# --- code point sets --------------------------------------------------------

Ranges: TypeAlias = tuple[tuple[int, int], ...]
"""Sorted, disjoint, non-adjacent inclusive code point ranges."""


def _normalize(pairs: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(pairs):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    next_lo = 0
    for lo, hi in ranges:
        if lo > next_lo:
            out.append((next_lo, lo - 1))
        next_lo = hi + 1
    if next_lo <= _MAX_CP:
        out.append((next_lo, _MAX_CP))
    return tuple(out)


def _fold_image(ranges: Ranges) -> Ranges:
    """``{fold(c) for c in ranges}``, widened across code points that folded text
    never contains (so ``[A-Z]`` stays one range instead of becoming many)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        start = lo
        for cp in FOLD_SOURCES[bisect_left(FOLD_SOURCES, lo) : bisect_right(FOLD_SOURCES, hi)]:
            if start < cp:
                out.append((start, cp - 1))
            out.append((fold_char(cp), fold_char(cp)))
            start = cp + 1
        if start <= hi:
            out.append((start, hi))
    image = _normalize(out)
    widened: list[tuple[int, int]] = []
    for lo, hi in image:
        if widened:
            gap_lo, gap_hi = widened[-1][1] + 1, lo - 1
            if count_fold_sources(gap_lo, gap_hi) == gap_hi - gap_lo + 1:
                widened[-1] = (widened[-1][0], hi)
                continue
        widened.append((lo, hi))
    return tuple(widened)


def _postgres_clip(ranges: Ranges) -> Ranges:
    """``ranges`` without NUL and surrogates, which PostgreSQL text cannot hold
    (and which it therefore never has to match)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        for a, b in ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)):
            a = max(a, 1)
            if a <= b:
                out.append((a, b))
    return _normalize(out)


_DIGIT: Ranges = ((0x30, 0x39),)
_WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE: Ranges = ((0x09, 0x0D), (0x20, 0x20))  # tab, newline, VT, FF, CR, space
_SHORTHANDS: dict[str, Ranges] = {
    "d": _DIGIT,
    "w": _WORD,
    "s": _SPACE,
    "D": _complement(_DIGIT),
    "W": _complement(_WORD),
    "S": _complement(_SPACE),
}
_ANY_BUT_NEWLINE: Ranges = _complement(((0x0A, 0x0A),))


# --- syntax tree -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chars:
    ranges: Ranges  # what matches, already folded under (?i)
    pos: int


@dataclass(frozen=True, slots=True)
class _Anchor:
    end: bool  # False: start of text, True: very end of text
    pos: int


@dataclass(frozen=True, slots=True)
class _Seq:
    items: tuple[_Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Alt:
    branches: tuple[_Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Group:
    body: _Node
    pos: int


@dataclass(frozen=True, slots=True)
class _Repeat:
    body: _Chars | _Group
    min: int
    max: int | None  # None: unbounded
    pos: int  # of the quantifier


_Node: TypeAlias = _Chars | _Anchor | _Seq | _Alt | _Group | _Repeat


# --- parser ------------------------------------------------------------------

_CONTROL_ESCAPES = {
    "n": "newline",
    "t": "tab",
    "r": "carriage return",
    "f": "form feed",
    "v": "vertical tab",
    "a": "bell",
    "e": "escape",
}
_QUANTIFIER = re.compile(r"\{([0-9]*)(?:(,)([0-9]*))?(\})?")  # not \d: that is Unicode


def _show(ch: str) -> str:
    """A character as a message shows it."""
    if ch.isprintable() and ch != " ":
        return f"`{ch}`"
    return f"U+{ord(ch):04X}"


def _escape_error(ch: str, pos: int) -> RegexError:
    """The error for ``\\`` followed by ``ch``, which is not allowed."""
    esc = f"`\\{ch}`"
    if ch == "b":
        msg = f"{esc} (word boundary) is not in the portable subset"
    elif ch == "B":
        msg = f"{esc} (not a word boundary) is not in the portable subset"
    elif ch in "myYM":
        msg = f"{esc} (a PostgreSQL word boundary) is not in the portable subset"
    elif ch == "A":
        msg = f"{esc} is not in the portable subset: use `^` for the start of the text"
    elif ch in "Zz":
        msg = f"{esc} is not in the portable subset: use `$` for the end of the text"
    elif ch in "123456789":
        msg = f"backreference {esc} is not in the portable subset"
    elif ch in "kg":
        msg = f"named backreference {esc} is not in the portable subset"
    elif ch == "0":
        msg = f"octal escape {esc} is not in the portable subset: write the character itself"
    elif ch in _CONTROL_ESCAPES:
        msg = (
            f"escape {esc} ({_CONTROL_ESCAPES[ch]}) is not in the portable subset: "
            "write the character itself"
        )
    elif ch in "xuUNo":
        msg = (
            f"character-code escape {esc} is not in the portable subset: write the character itself"
        )
    elif ch in "pPX":
        msg = f"Unicode property escape {esc} is not in the portable subset"
    elif ch.isascii() and ch.isalpha():
        msg = f"escape {esc} is not in the portable subset"
    else:
        msg = f"`\\` before {_show(ch)}: only ASCII punctuation can be escaped"
    return RegexError(msg, pos)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.depth = 0
        self.ignore_case = False

    def parse(self) -> _Node:
        for pos, ch in enumerate(self.text):
            if ch == "\0":
                raise RegexError("the NUL character cannot appear in a pattern", pos)
            if 0xD800 <= ord(ch) <= 0xDFFF:
                raise RegexError(f"U+{ord(ch):04X} is a lone surrogate, not a character", pos)
        if self.text.startswith("(?i)"):
            self.ignore_case = True
            self.i = 4
        node = self.alternation()
        if self.i < len(self.text):  # only a `)` stops an alternation early
            raise RegexError("unmatched `)`", self.i)
        return node

    def peek(self, offset: int = 0) -> str:
        j = self.i + offset
        return self.text[j] if j < len(self.text) else ""

    def alternation(self) -> _Node:
        start = self.i
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else _Alt(tuple(branches), start)

    def sequence(self) -> _Node:
        start = self.i
        items: list[_Node] = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified())
        return items[0] if len(items) == 1 else _Seq(tuple(items), start)

    def quantified(self) -> _Node:
        atom = self.atom()
        quantifier = self.quantifier()
        if quantifier is None:
            return atom
        low, high, qpos = quantifier
        qtext = self.text[qpos : self.i]
        if isinstance(atom, _Anchor):
            anchor = "$" if atom.end else "^"
            raise RegexError(f"`{qtext}` cannot repeat the anchor `{anchor}`", qpos)
        assert isinstance(atom, _Chars | _Group)
        after = self.peek()
        if after == "?":
            raise RegexError(f"lazy quantifier `{qtext}?` is not in the portable subset", qpos)
        if after == "+":
            raise RegexError(
                f"possessive quantifier `{qtext}+` is not in the portable subset", qpos
            )
        if after == "*" or (after == "{" and self.brace_is_quantifier()):
            raise RegexError(
                f"a quantifier cannot follow the quantifier `{qtext}`: "
                "put the repeated part in a group first, as in `(?:a{2})*`",
                self.i,
            )
        return _Repeat(atom, low, high, qpos)

    def brace_is_quantifier(self) -> bool:
        m = _QUANTIFIER.match(self.text, self.i)
        return m is not None and bool(m.group(1) or m.group(2))

    def quantifier(self) -> tuple[int, int | None, int] | None:
        pos = self.i
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.i += 1
            return {"*": (0, None, pos), "+": (1, None, pos), "?": (0, 1, pos)}[ch]
        if ch != "{" or not self.brace_is_quantifier():
            return None
        m = _QUANTIFIER.match(self.text, pos)
        assert m is not None
        low_text, comma, high_text, close = m.groups()
        if not close:
            raise RegexError("unclosed repetition count: expected `}`", pos)
        if not low_text:
            raise RegexError(
                f"`{m.group(0)}` is not in the portable subset: write `{{0,{high_text}}}`", pos
            )
        low = self.count(low_text, pos)
        high = low if not comma else (self.count(high_text, pos) if high_text else None)
        if high is not None and high < low:
            raise RegexError(f"repetition count `{m.group(0)}` is reversed", pos)
        self.i = m.end()
        return low, high, pos

    @staticmethod
    def count(digits: str, pos: int) -> int:
        if len(digits) > 3 or int(digits) > MAX_REPEAT:
            raise RegexError(
                f"repetition count {digits} is too large: at most {MAX_REPEAT} is portable", pos
            )
        return int(digits)

    def atom(self) -> _Node:
        pos = self.i
        ch = self.text[pos]
        if ch == "(":
            return self.group()
        if ch == "[":
            return self.bracket()
        self.i += 1
        if ch == ".":
            return _Chars(_ANY_BUT_NEWLINE, pos)
        if ch in ("^", "$"):
            return _Anchor(ch == "$", pos)
        if ch == "\\":
            return self.escape(pos)
        if ch in ("*", "+", "?"):
            raise RegexError(f"`{ch}` has nothing to repeat", pos)
        if ch == "{" and (m := _QUANTIFIER.match(self.text, pos)) and (m[1] or m[2]):
            raise RegexError(f"`{m[0]}` has nothing to repeat", pos)
        if ch in ("{", "}", "]"):
            what = "unmatched `]`" if ch == "]" else f"a literal `{ch}`"
            raise RegexError(f"{what}: write `\\{ch}` for the character", pos)
        return self.literal(ord(ch), pos)

    def literal(self, cp: int, pos: int) -> _Chars:
        cp = fold_char(cp) if self.ignore_case else cp
        return _Chars(((cp, cp),), pos)

    def escape(self, pos: int) -> _Chars:
        ch = self.peek()
        if not ch:
            raise RegexError("the pattern ends with a lone `\\`", pos)
        self.i += 1
        if ch in _SHORTHANDS:
            return _Chars(_SHORTHANDS[ch], pos)  # ASCII-only: folding changes nothing
        if ch in _PUNCTUATION:
            return _Chars(((ord(ch), ord(ch)),), pos)
        raise _escape_error(ch, pos)

    def group(self) -> _Group:
        pos = self.i
        if self.depth >= MAX_DEPTH:
            raise RegexError(f"groups are nested more than {MAX_DEPTH} deep", pos)
        self.i += 1
        if self.peek() == "?":
            self.group_extension(pos)
            self.i += 2  # `(?:`
        self.depth += 1
        body = self.alternation()
        self.depth -= 1
        if self.peek() != ")":
            raise RegexError("unclosed `(`", pos)
        self.i += 1
        return _Group(body, pos)

    def group_extension(self, pos: int) -> None:
        """Check what follows ``(?``: only ``(?:`` is allowed here."""
        rest = self.text[pos + 2 : pos + 4]
        if rest.startswith(":"):
            return
        if rest.startswith(("=", "!")):
            what = f"look-ahead `(?{rest[0]}`"
        elif rest in ("<=", "<!"):
            what = f"look-behind `(?{rest}`"
        elif rest.startswith(("P<", "<", "'")):
            what = "named group `(?P<name>...)`" if rest[0] == "P" else f"named group `(?{rest[0]}`"
        elif rest.startswith(("P=", "P>", "&")):
            what = "named backreference"
        elif rest.startswith("#"):
            what = "comment `(?#...)`"
        elif rest.startswith(">"):
            what = "atomic group `(?>`"
        elif rest.startswith("("):
            what = "conditional `(?(`"
        elif rest.startswith("i)"):
            raise RegexError("`(?i)` is only allowed at the very start of the pattern", pos)
        elif rest[:1].isalpha() or rest.startswith("-"):
            end = self.text.find(")", pos)
            flags = self.text[pos : end + 1] if 0 <= end < pos + 12 else self.text[pos : pos + 3]
            raise RegexError(
                f"inline flags `{flags}` are not in the portable subset (only a leading `(?i)` is)",
                pos,
            )
        elif not rest:
            raise RegexError("unclosed `(`", pos)
        else:
            what = f"group syntax `(?{rest[0]}`"
        raise RegexError(f"{what} is not in the portable subset", pos)

    def bracket(self) -> _Chars:
        pos = self.i
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        members: list[tuple[int, int]] = []  # literal members: folded under (?i)
        classes: list[tuple[int, int]] = []  # \d \w ...: never folded
        first = True
        while True:
            ch = self.peek()
            item = self.i
            if not ch:
                raise RegexError("unclosed `[`", pos)
            if ch == "]":
                if first:
                    raise RegexError(
                        "a `]` right after `[` or `[^` would make an empty class: "
                        "write `\\]` for the character",
                        item,
                    )
                self.i += 1
                break
            first_item, first = first, False
            if ch == "-":
                if first_item or self.peek(1) == "]":
                    self.i += 1
                    members.append((0x2D, 0x2D))
                    continue
                if not self.peek(1):
                    raise RegexError("unclosed `[`", pos)
                raise RegexError("a `-` inside a class must be first, last, or written `\\-`", item)
            low = self.class_member()
            if isinstance(low, tuple):
                if self.peek() == "-" and self.peek(1) not in ("]", ""):
                    raise RegexError("a range cannot start at a class escape", item)
                classes.extend(low)
                continue
            if self.peek() != "-" or self.peek(1) in ("]", ""):
                members.append((low, low))
                continue
            self.i += 1  # the `-` of a range
            if self.peek() == "-":
                raise RegexError("a `-` ending a range must be written `\\-`", self.i)
            end = self.i
            high = self.class_member()
            if isinstance(high, tuple):
                raise RegexError("a range cannot end at a class escape", end)
            if high < low:
                raise RegexError(f"range `{self.text[item : self.i]}` is reversed", item)
            members.append((low, high))
        literal = _normalize(members)
        if self.ignore_case:
            literal = _fold_image(literal)
        ranges = _normalize((*literal, *classes))
        return _Chars(_complement(ranges) if negated else ranges, pos)

    def class_member(self) -> int | Ranges:
        """One character (its code point) or a class escape (its ranges)."""
        pos = self.i
        ch = self.text[pos]
        self.i += 1
        if ch == "[":
            raise RegexError(
                "write `\\[` for a `[` inside a class "
                "(POSIX classes such as `[:alpha:]` are not in the portable subset)",
                pos,
            )
        if ch != "\\":
            return ord(ch)
        esc = self.peek()
        if not esc:
            raise RegexError("the pattern ends with a lone `\\`", pos)
        self.i += 1
        if esc in _SHORTHANDS:
            return _SHORTHANDS[esc]
        if esc in _PUNCTUATION:
            return ord(esc)
        raise _escape_error(esc, pos)


# --- size --------------------------------------------------------------------


def _postgres_sets(node: _Node) -> Iterable[Ranges]:
    if isinstance(node, _Chars):
        yield _postgres_clip(node.ranges)
    elif isinstance(node, _Seq | _Alt):
        for child in node.items if isinstance(node, _Seq) else node.branches:
            yield from _postgres_sets(child)
    elif isinstance(node, _Group | _Repeat):
        yield from _postgres_sets(node.body)


class _Sizer:
    """Estimates how big PostgreSQL's NFA for a pattern gets (module docstring).

    Two measures, with repetitions expanded: *states*, where every character set
    counts 1 (PostgreSQL recurses along chains of states, so this is what hits
    ``max_stack_depth``), and *arcs*, where a character set counts the colors it
    spans (optional chains make arcs grow quadratically until PostgreSQL runs
    out of its fixed compile space). Colors are bounded by the pieces into which
    all the pattern's range ends cut the code points. The reported size is
    ``max(states, arcs / 3)``; both limits were found by experiment.
    """

    def __init__(self, root: _Node) -> None:
        points = {p for ranges in _postgres_sets(root) for lo, hi in ranges for p in (lo, hi + 1)}
        self.boundaries = sorted(points)
        self.worst: _Node | None = None  # the innermost node over the limit

    def colors(self, ranges: Ranges) -> int:
        pieces = 0
        for lo, hi in _postgres_clip(ranges):
            pieces += 1 + bisect_right(self.boundaries, hi) - bisect_right(self.boundaries, lo)
        return max(pieces, 1)

    def measure(self, node: _Node) -> tuple[int, int]:
        """(states, arcs) of ``node``."""
        if isinstance(node, _Chars):
            states, arcs = 1, self.colors(node.ranges)
        elif isinstance(node, _Anchor):
            states, arcs = 1, 1
        elif isinstance(node, _Seq | _Alt):
            children = node.items if isinstance(node, _Seq) else node.branches
            measured = [self.measure(child) for child in children]
            extra = len(children) if isinstance(node, _Alt) else 0
            states = sum(m[0] for m in measured) + extra
            arcs = sum(m[1] for m in measured) + extra
        elif isinstance(node, _Group):
            states, arcs = (n + 1 for n in self.measure(node.body))
        else:
            copies = node.max if node.max is not None else node.min + 1
            states, arcs = (n * copies + 2 for n in self.measure(node.body))
        if self.size(states, arcs) > MAX_SIZE and self.worst is None:
            self.worst = node
        return states, arcs

    @staticmethod
    def size(states: int, arcs: int) -> int:
        return max(states, -(-arcs // 3))


def _check_size(root: _Node) -> None:
    sizer = _Sizer(root)
    size = sizer.size(*sizer.measure(root))
    if size > MAX_SIZE:
        worst = sizer.worst
        raise RegexError(
            f"the pattern is too big once its repetitions are expanded "
            f"(size {size}, at most {MAX_SIZE}): use smaller repetition counts",
            0 if worst is None else worst.pos,
        )


# --- writing the two dialects --------------------------------------------------

_Dialect: TypeAlias = Literal["python", "postgres"]


def _char(cp: int) -> str:
    """One character, written so that neither engine reads it as syntax."""
    ch = chr(cp)
    if cp < 0x80:
        if ch.isalnum() or ch == " ":
            return ch
        if ch in _PUNCTUATION:
            return "\\" + ch
    elif ch.isprintable():
        return ch
    # Controls, unprintables and (in Python only) NUL and surrogates: fixed-width
    # escapes that both engines read the same way.
    return f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"


def _class_body(ranges: Ranges) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_char(lo))
        elif hi == lo + 1:
            parts.append(_char(lo) + _char(hi))
        else:
            parts.append(f"{_char(lo)}-{_char(hi)}")
    return "".join(parts)


def _write_set(ranges: Ranges, dialect: _Dialect) -> str:
    def clip(ranges: Ranges) -> Ranges:
        return _postgres_clip(ranges) if dialect == "postgres" else ranges

    everything = clip(((0, _MAX_CP),))
    outside = _complement(ranges)
    # Whichever of the set and its complement is shorter to list.
    if outside and (not ranges or len(outside) < len(ranges)):
        listed = clip(outside)
        return f"[^{_class_body(listed)}]" if listed else f"[{_class_body(everything)}]"
    listed = clip(ranges)
    if not listed:
        return f"[^{_class_body(everything)}]"  # matches nothing
    if len(listed) == 1 and listed[0][0] == listed[0][1]:
        return _char(listed[0][0])
    return f"[{_class_body(listed)}]"


def _write(node: _Node, dialect: _Dialect) -> str:
    if isinstance(node, _Chars):
        return _write_set(node.ranges, dialect)
    if isinstance(node, _Anchor):
        return "\\Z" if node.end else "\\A"
    if isinstance(node, _Seq):
        return "".join(_write(item, dialect) for item in node.items)
    if isinstance(node, _Alt):
        return "|".join(_write(branch, dialect) for branch in node.branches)
    if isinstance(node, _Group):
        return f"(?:{_write(node.body, dialect)})"
    if node.max is None:
        quantifier = {0: "*", 1: "+"}.get(node.min, f"{{{node.min},}}")
    elif node.min == node.max:
        quantifier = f"{{{node.min}}}"
    elif (node.min, node.max) == (0, 1):
        quantifier = "?"
    else:
        quantifier = f"{{{node.min},{node.max}}}"
    return _write(node.body, dialect) + quantifier


# --- compiling ---------------------------------------------------------------


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> tuple[PortableRegex, _Node]:
    parser = _Parser(pattern)
    root = parser.parse()
    _check_size(root)
    regex = PortableRegex(
        source=pattern,
        ignore_case=parser.ignore_case,
        python=_write(root, "python"),
        postgres=_write(root, "postgres"),
    )
    return regex, root


def compile_portable(pattern: str) -> PortableRegex:
    """Check ``pattern`` against the portable subset and translate it for both
    engines. Raises :class:`RegexError`."""
    return _compile(pattern)[0]


# --- the in-memory matcher ---------------------------------------------------


class _CharSet:
    __slots__ = ("ends", "starts")

    def __init__(self, ranges: Ranges) -> None:
        self.starts = [lo for lo, _ in ranges]
        self.ends = [hi for _, hi in ranges]

    def __contains__(self, cp: int) -> bool:
        k = bisect_right(self.starts, cp) - 1
        return k >= 0 and cp <= self.ends[k]


class _Nfa:
    """A Thompson NFA: character moves, free moves, and free moves allowed only
    at the start or at the end of the text (the anchors)."""

    def __init__(self, root: _Node) -> None:
        self.moves: list[list[tuple[_CharSet, int]]] = []
        self.free: list[list[int]] = []
        self.at_start: list[list[int]] = []
        self.at_end: list[list[int]] = []
        self.start = self.new()
        self.accept = self.build(root, self.start)

    def new(self) -> int:
        for table in (self.moves, self.free, self.at_start, self.at_end):
            table.append([])
        return len(self.free) - 1

    def build(self, node: _Node, entry: int) -> int:
        """Add ``node`` starting from state ``entry``; return its exit state."""
        if isinstance(node, _Chars):
            exit_ = self.new()
            self.moves[entry].append((_CharSet(node.ranges), exit_))
            return exit_
        if isinstance(node, _Anchor):
            exit_ = self.new()
            (self.at_end if node.end else self.at_start)[entry].append(exit_)
            return exit_
        if isinstance(node, _Seq):
            for item in node.items:
                entry = self.build(item, entry)
            return entry
        if isinstance(node, _Alt):
            exit_ = self.new()
            for branch in node.branches:
                branch_entry = self.new()
                self.free[entry].append(branch_entry)
                self.free[self.build(branch, branch_entry)].append(exit_)
            return exit_
        if isinstance(node, _Group):
            return self.build(node.body, entry)
        for _ in range(node.min):
            entry = self.build(node.body, entry)
        if node.max is None:
            loop = self.new()
            self.free[entry].append(loop)
            self.free[self.build(node.body, loop)].append(loop)
            return loop
        exit_ = self.new()
        self.free[entry].append(exit_)
        for _ in range(node.max - node.min):
            entry = self.build(node.body, entry)
            self.free[entry].append(exit_)
        return exit_


class _State:
    """A DFA state: the set of NFA states alive after some prefix of the text."""

    __slots__ = ("accepting", "at_end", "consumes", "next", "nfa_states")

    def __init__(self, nfa_states: frozenset[int], accepting: bool, consumes: bool) -> None:
        self.nfa_states = nfa_states
        self.accepting = accepting  # a match ends here, whatever follows
        self.consumes = consumes  # some NFA state can still read a character
        self.at_end: bool | None = None  # a match ends here if the text ends here
        self.next: dict[str, _State] = {}


_MAX_DFA_STATES = 4096  # then the cache is dropped and rebuilt: memory stays bounded


class _Matcher:
    """Runs the NFA as a DFA built lazily, one (state, character) at a time: time
    is linear in the subject for every pattern, unlike a backtracking engine."""

    def __init__(self, root: _Node) -> None:
        self.nfa = _Nfa(root)
        self.cache: dict[frozenset[int], _State] = {}

    def closure(self, seeds: Iterable[int], at_start: bool, at_end: bool) -> frozenset[int]:
        nfa = self.nfa
        seen = set(seeds)
        stack = list(seen)
        while stack:
            s = stack.pop()
            targets = nfa.free[s]
            if at_start and nfa.at_start[s]:
                targets = targets + nfa.at_start[s]
            if at_end and nfa.at_end[s]:
                targets = targets + nfa.at_end[s]
            for t in targets:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)

    def state(self, nfa_states: frozenset[int]) -> _State:
        found = self.cache.get(nfa_states)
        if found is None:
            if len(self.cache) >= _MAX_DFA_STATES:
                for old in self.cache.values():
                    old.next.clear()
                self.cache.clear()
            consumes = any(self.nfa.moves[s] for s in nfa_states)
            found = _State(nfa_states, self.nfa.accept in nfa_states, consumes)
            self.cache[nfa_states] = found
        return found

    def accepts_at_end(self, state: _State) -> bool:
        if state.at_end is None:
            state.at_end = self.nfa.accept in self.closure(state.nfa_states, False, True)
        return state.at_end

    def step(self, state: _State, ch: str) -> _State:
        cp = ord(ch)
        core = {self.nfa.start}  # unanchored search: a match may start anywhere
        for s in state.nfa_states:
            for chars, target in self.nfa.moves[s]:
                if cp in chars:
                    core.add(target)
        following = self.state(self.closure(core, False, False))
        state.next[ch] = following
        return following

    def search(self, text: str) -> bool:
        start = self.nfa.start
        if not text:
            return self.nfa.accept in self.closure((start,), True, True)
        state = self.state(self.closure((start,), True, False))
        for ch in text:
            if state.accepting:
                return True
            if not state.consumes:
                # Nothing can read on: every later state is the bare restart
                # state, e.g. `^abc` once past the start.
                return self.accepts_at_end(self.state(self.closure((start,), False, False)))
            following = state.next.get(ch)
            state = following if following is not None else self.step(state, ch)
        return state.accepting or self.accepts_at_end(state)


@lru_cache(maxsize=512)
def _matcher(source: str) -> _Matcher:
    return _Matcher(_compile(source)[1])


def matcher(regex: PortableRegex) -> Callable[[str], bool]:
    """``search`` for one regex with its automaton found once, for compiled
    programs (they fold the subject first when ``regex.ignore_case``)."""
    return _matcher(regex.source).search


def search(regex: PortableRegex, subject: str) -> bool:
    """Whether ``regex`` matches somewhere in ``subject``: the reference
    in-memory semantics, equal to PostgreSQL's ``~`` on the compiled pattern."""
    return _matcher(regex.source).search(fold(subject) if regex.ignore_case else subject)
