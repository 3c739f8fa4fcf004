"""The portable regex subset: what is accepted, what is rejected and where, and a
differential test: search(), Python's re on the `python` pattern and
PostgreSQL's `~` on the `postgres` pattern agree on every subject."""

from __future__ import annotations

import contextlib
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nudgel.dsl import regex as regex_module
from nudgel.dsl.regex import MAX_SIZE, PortableRegex, RegexError, compile_portable, search
from nudgel.dsl.textfold import POSTGRES_FOLD_FROM, POSTGRES_FOLD_TO, fold, postgres_fold_sql


@pytest.fixture(scope="module")
def pg(database_url: str) -> Iterator[psycopg.Connection]:
    # Pure SELECTs only; DATABASE_URL's server, else the embedded one.
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def matches(pattern: str, subject: str) -> bool:
    return search(compile_portable(pattern), subject)


# --- the spec's examples -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        (r"^[a-z]+\d+@", "ada12@x.com", True),
        (r"^[a-z]+\d+@", "12ada@x.com", False),
        (r"(?i)^ada", "ADA", True),
        (r"(?i)^ada", "adaeze", True),
        (r"(?i)^ada", "Mada", False),
    ],
)
def test_spec_examples(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


@pytest.mark.parametrize("pattern", [r"\bada", r"(a)\1", r"(?=a)", "[a-"])
def test_spec_errors(pattern: str) -> None:
    with pytest.raises(RegexError):
        compile_portable(pattern)


# --- semantics -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("abc", "xxabcxx", True),  # unanchored search
        ("", "", True),
        ("", "x", True),
        ("^$", "", True),
        ("^$", "\n", False),
        ("a$", "a\n", False),  # $ is the very end, not before a final newline
        ("a$", "a", True),
        ("^b", "a\nb", False),  # ^ is the very start, no multiline
        ("a.b", "a\nb", False),  # . is not a newline
        ("a.b", "a\rb", True),
        ("a[^x]b", "a\nb", True),  # a negated class is
        (r"\d", "٣", False),  # ASCII-only classes
        (r"\d", "7", True),
        (r"\w", "é", False),
        (r"\w", "_", True),
        (r"\s", "\u00a0", False),
        (r"\s", "\x0b", True),
        (r"\s", "\x0c", True),
        (r"\S", "\u00a0", True),
        (r"\W", "é", True),
        (r"[\D]", "5", False),
        (r"[^\d]", "x", True),
        (r"[\Da]", "a", True),
        (r"[\Da]", "1", False),
        (r"[^\s\S]", "x", False),  # the empty class
        (r"[\s\S]", "\n", True),
        ("[a-]", "-", True),
        ("[-a]", "-", True),
        (r"[a\-z]", "b", False),
        (r"[\]]", "]", True),
        (r"[\\]", "\\", True),
        (r"[\^]", "^", True),
        ("[a^]", "^", True),
        (r"\$\^\.\*\+\?\(\)\[\]\{\}\|\\\/", "$^.*+?()[]{}|\\/", True),
        ("x{2,3}y", "xxy", True),
        ("^x{2,3}y", "xy", False),
        ("^x{2,}$", "xxxxxxx", True),
        ("^x{0}$", "", True),
        ("^(?:ab|cd)+$", "abcdab", True),
        ("^(ab|cd)+$", "abca", False),
        ("a|", "zzz", True),
        ("(?:)*", "", True),
        ("(?:^)*a", "ba", True),
        ("(?:^|x)a", "ba", False),
        ("a(?:$|x)", "ab", False),
        ("a(?:$|x)", "a", True),
        ("é+", "ééé", True),
        ("\n", "a\nb", True),  # a raw control character is a literal
        ("😀", "x😀", True),
    ],
)
def test_search(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("(?i)straße", "STRASSE", False),  # simple mapping: ß is not ss
        ("(?i)straße", "STRAẞE", True),
        ("(?i)istanbul", "İSTANBUL", True),  # U+0130 folds to i
        ("(?i)İstanbul", "istanbul", True),
        ("(?i)ı", "I", False),  # dotless i is its own letter
        ("(?i)k", "\u212a", True),  # Kelvin sign folds to k
        ("(?i)σ", "Σ", True),
        ("(?i)ς", "Σ", False),  # no final-sigma rule
        ("(?i)[A-Z]+$", "hello", True),
        ("(?i)[^A-Z]", "Q", False),  # [^S] becomes [^fold(S)]
        ("(?i)[^a]", "A", False),
        ("(?i)[À-Þ]", "é", True),
        (r"(?i)\W", "A", False),
        ("(?i)É", "é", True),
        ("(?i)", "", True),
    ],
)
def test_ignore_case(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


def test_ignore_case_translation_folds_the_pattern() -> None:
    regex = compile_portable("(?i)[A-Z]İ")
    assert regex.ignore_case
    assert regex.python == regex.postgres == "[a-z]i"
    assert not compile_portable("[A-Z]").ignore_case


def test_outputs_use_no_engine_specific_meaning() -> None:
    regex = compile_portable(r"^a.\d\w\s$")
    # Anchors as \A and \Z; classes as explicit ASCII ranges; `.` never a newline.
    assert regex.python == regex.postgres == r"\Aa[^\u000A][0-9][0-9A-Z\_a-z][\u0009-\u000D ]\Z"
    # PostgreSQL text has no NUL or surrogates, so they are never written for it.
    regex = compile_portable(r"[\s\S]")
    assert regex.python == r"[\u0000-\U0010FFFF]"
    assert regex.postgres == r"[\u0001-\uD7FF\uE000-\U0010FFFF]"


def test_python_patterns_compile_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. FutureWarning for `[[` or `--` in a set
        for pattern in ["[[]", "[--]", r"[\[\-\&\~\|]", r"[a\-\-]", "[&&]", "[~~]", "[||]"]:
            try:
                regex = compile_portable(pattern)
            except RegexError:
                continue
            re.compile(regex.python)


# --- rejected patterns -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "position", "message"),
    [
        (r"\bada", 0, r"`\b` (word boundary) is not in the portable subset"),
        (r"a\B", 1, r"`\B` (not a word boundary)"),
        (r"(a)\1", 3, r"backreference `\1`"),
        (r"(?P<x>a)(?P=x)", 0, "named group"),
        (r"(?P=x)", 0, "named backreference"),
        (r"\k<x>", 0, "named backreference"),
        ("(?=a)", 0, "look-ahead `(?=`"),
        ("a(?!b)", 1, "look-ahead `(?!`"),
        ("(?<=a)b", 0, "look-behind `(?<=`"),
        ("(?<!a)b", 0, "look-behind `(?<!`"),
        ("(?<x>a)", 0, "named group"),
        ("(?#note)", 0, "comment"),
        ("(?>a)", 0, "atomic group"),
        ("(?s).", 0, "inline flags `(?s)`"),
        ("(?i:a)", 0, "inline flags"),
        ("a(?i)", 1, "`(?i)` is only allowed at the very start"),
        ("(?i)(?i)a", 4, "`(?i)` is only allowed at the very start"),
        ("[a-", 0, "unclosed `[`"),
        ("[a", 0, "unclosed `[`"),
        ("[", 0, "unclosed `[`"),
        ("[^", 0, "unclosed `[`"),
        ("ab(c", 2, "unclosed `(`"),
        ("(?", 0, "unclosed `(`"),
        ("ab)", 2, "unmatched `)`"),
        ("a]", 1, "unmatched `]`"),
        ("a}", 1, r"write `\}`"),
        ("a{x}", 1, r"write `\{`"),
        ("*a", 0, "`*` has nothing to repeat"),
        ("a|+", 2, "`+` has nothing to repeat"),
        ("(?)", 0, "group syntax"),
        ("(*)", 1, "`*` has nothing to repeat"),
        ("{2}", 0, "`{2}` has nothing to repeat"),
        ("(?i)?", 4, "`?` has nothing to repeat"),
        ("a**", 2, "cannot follow the quantifier `*`"),
        ("a{2}{3}", 4, "cannot follow the quantifier `{2}`"),
        ("a*?", 1, "lazy quantifier `*?`"),
        ("a+?", 1, "lazy quantifier `+?`"),
        ("a??", 1, "lazy quantifier `??`"),
        ("a{1,2}?", 1, "lazy quantifier `{1,2}?`"),
        ("a*+", 1, "possessive quantifier `*+`"),
        ("a{2}+", 1, "possessive quantifier `{2}+`"),
        ("^*", 1, "cannot repeat the anchor `^`"),
        ("a$+", 2, "cannot repeat the anchor `$`"),
        ("a{,3}", 1, "`{,3}` is not in the portable subset"),
        ("a{2,1}", 1, "`{2,1}` is reversed"),
        ("a{1,2", 1, "unclosed repetition count"),
        ("a{256}", 1, "at most 255"),
        ("a{1,1000}", 1, "at most 255"),
        ("a{99999999999999999999}", 1, "at most 255"),
        ("[z-a]", 1, "range `z-a` is reversed"),
        ("[]a]", 1, r"write `\]`"),
        ("[^]a]", 2, r"write `\]`"),
        ("[a-c-e]", 4, "must be first, last, or written `\\-`"),
        ("[a--]", 3, "`-` ending a range"),
        ("[[:alpha:]]", 1, r"write `\[`"),
        (r"[\d-z]", 1, "range cannot start at a class escape"),
        (r"[a-\w]", 3, "range cannot end at a class escape"),
        ("\\", 0, "lone `\\`"),
        ("[\\", 1, "lone `\\`"),
        (r"\n", 0, r"escape `\n` (newline)"),
        (r"\t", 0, r"escape `\t` (tab)"),
        (r"[\t]", 1, r"escape `\t` (tab)"),
        (r"\x41", 0, r"character-code escape `\x`"),
        (r"\u0041", 0, r"character-code escape `\u`"),
        (r"\N{LATIN SMALL LETTER A}", 0, "character-code escape"),
        (r"\p{L}", 0, "Unicode property escape"),
        (r"\0", 0, "octal escape"),
        (r"\A", 0, "use `^`"),
        (r"\Z", 0, "use `$`"),
        (r"\z", 0, "use `$`"),
        (r"\m", 0, "PostgreSQL word boundary"),
        (r"\y", 0, "PostgreSQL word boundary"),
        (r"\q", 0, r"escape `\q` is not in the portable subset"),
        ("\\é", 0, "only ASCII punctuation can be escaped"),
        ("\\ ", 0, "only ASCII punctuation can be escaped"),
        ("ab\0", 2, "NUL"),
        ("a\ud800", 1, "surrogate"),
        ("(" * 51 + ")" * 51, 50, "nested more than 50 deep"),
        ("(?:a{255}){4}", 10, "too big"),
        ("a" * (MAX_SIZE + 1), 0, "too big"),
    ],
)
def test_rejected(pattern: str, position: int, message: str) -> None:
    with pytest.raises(RegexError) as caught:
        compile_portable(pattern)
    assert message in caught.value.message
    assert caught.value.position == position
    assert str(caught.value) == caught.value.message


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,24}$",
        r"(?i)^[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.){1,8}[a-z]{2,63}$",
        r"^\+254[17]\d{8}$",
        r"^\d{4}-\d{2}-\d{2}$",
        r"(?i)^.{0,255}$",
        r"^https?://[^/\s]+/.*",
        "a" * MAX_SIZE,
        "(?:a{255}){3}",
        "(" * 50 + ")" * 50,
        r"\!\"\#\%\&\'\,\-\/\:\;\<\=\>\@\_\`\~",
    ],
)
def test_accepted(pattern: str) -> None:
    regex = compile_portable(pattern)
    assert regex.source == pattern
    re.compile(regex.python)


def test_compile_is_cached_and_values_compare() -> None:
    assert compile_portable("a+") is compile_portable("a+")
    assert compile_portable("a+") == PortableRegex("a+", False, "a+", "a+")


# --- no catastrophic backtracking ------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        ("(a*)*b", "a" * 20_000 + "c"),
        ("(a|a)*b", "a" * 20_000),
        (r"^(\w+\s?)*$", "word " * 4_000 + "!"),
        (r"(\w|\d)+$", "1" * 20_000 + "!"),
        ("(?:a?){25}a{25}", "a" * 24),
        (r"(?:.*,){10}x", "," * 5_000),
    ],
)
def test_search_is_linear(pattern: str, subject: str) -> None:
    regex = compile_portable(pattern)
    started = time.perf_counter()
    assert search(regex, subject) is False
    assert time.perf_counter() - started < 2.0


def test_dfa_cache_bound_keeps_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny cache forces constant flushing: results must not change.
    pattern = r"(?:a|b)*a(?:a|b){6}c"
    subjects = ["".join("ab"[(i * 7 + j) % 3 % 2] for j in range(60)) + "c" for i in range(40)]
    expected = [re.search(compile_portable(pattern).python, s) is not None for s in subjects]
    monkeypatch.setattr(regex_module, "_MAX_DFA_STATES", 3)
    regex_module._matcher.cache_clear()
    try:
        assert [matches(pattern, s) for s in subjects] == expected
    finally:
        regex_module._matcher.cache_clear()


# --- differential: search() == re == PostgreSQL ---------------------------------

# Patterns are generated together with a sampler of texts they (nearly) match,
# so that subjects sit right at the edges where the engines could disagree.

Sampler = Callable[[random.Random], str]


@dataclass(frozen=True)
class Gen:
    source: str
    sample: Sampler
    quantifiable: bool = True


def _pick(chars: str | list[str]) -> Sampler:
    return lambda rnd: rnd.choice(chars)


_LITERALS = [*"abAB09_ -\n\téÉßẞİıKkΣσς😀", "\u212a", "\u00a0", "\u0663"]
_PUNCT = r".-\[]^$*+?(){}|/"
# Members and near-misses of each class escape.
_CLASS_SAMPLES = {
    "d": "0795",
    "w": "aZ_5",
    "s": " \t\n\r\x0b\x0c",
    "D": "aé\n٣",
    "W": " é-\n\u00a0",
    "S": "aé\u00a0٣",
}
_NEAR_MISSES = "aAzZ09_ \n\r\téÉ٣\u00a0-.😀İıK"


def _literal_gen(ch: str) -> Gen:
    return Gen(ch, lambda rnd: ch)


_BASE = st.one_of(
    st.sampled_from(_LITERALS).map(_literal_gen),
    st.sampled_from(_PUNCT).map(lambda ch: Gen("\\" + ch, lambda rnd: ch)),
    st.sampled_from("dwsDWS").map(lambda c: Gen("\\" + c, _pick(_CLASS_SAMPLES[c]))),
    st.just(Gen(".", _pick("aé😀 \r\n"))),
)


@st.composite
def _bracket(draw: st.DrawFn) -> Gen:
    sources: list[str] = []
    members: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            ch = draw(st.sampled_from([c for c in _LITERALS if c != "-"]))
            sources.append(ch)
            members.append(ch)
        elif kind == 1:
            ch = draw(st.sampled_from(_PUNCT))
            sources.append("\\" + ch)
            members.append(ch)
        elif kind == 2:
            c = draw(st.sampled_from("dwsDWS"))
            sources.append("\\" + c)
            members.extend(_CLASS_SAMPLES[c])
        else:
            low, high = sorted(
                draw(st.lists(st.sampled_from("09AZaz_ÀÞàþ"), min_size=2, max_size=2))
            )
            sources.append(f"{low}-{high}")
            members.extend([low, high, chr((ord(low) + ord(high)) // 2)])
    if draw(st.booleans()) and draw(st.booleans()):
        sources.insert(0, "-")
        members.append("-")
    if draw(st.booleans()) and draw(st.booleans()):
        sources.append("-")
        members.append("-")
    negated = draw(st.booleans())
    pool = _NEAR_MISSES + "".join(members) if negated else "".join(members)
    return Gen(f"[{'^' if negated else ''}{''.join(sources)}]", _pick(pool))


_QUANTIFIERS = st.sampled_from(
    [(1, 1)] * 3 + [(0, None), (1, None), (0, 1), (0, 0), (2, 2), (1, 3), (2, None)]
)


def _quantified(gen: Gen, bounds: tuple[int, int | None]) -> Gen:
    low, high = bounds
    if (low, high) == (1, 1):
        return gen
    suffix = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get(bounds)
    if suffix is None:
        suffix = f"{{{low}}}" if low == high else f"{{{low},{'' if high is None else high}}}"
    most = low + 3 if high is None else high

    def sample(rnd: random.Random) -> str:
        return "".join(gen.sample(rnd) for _ in range(rnd.randint(low, most)))

    return Gen(gen.source + suffix, sample)


def _group(body: Gen, capture: bool) -> Gen:
    return Gen(f"({'' if capture else '?:'}{body.source})", body.sample)


def _seq(items: list[Gen]) -> Gen:
    return Gen(
        "".join(g.source for g in items),
        lambda rnd: "".join(g.sample(rnd) for g in items),
        quantifiable=False,
    )


def _alt(branches: list[Gen]) -> Gen:
    return Gen(
        "|".join(g.source for g in branches),
        lambda rnd: rnd.choice(branches).sample(rnd),
        quantifiable=False,
    )


def _extend(children: st.SearchStrategy[Gen]) -> st.SearchStrategy[Gen]:
    atoms = st.one_of(_BASE, _bracket(), st.builds(_group, children, st.booleans()))
    return st.one_of(
        st.builds(_quantified, atoms, _QUANTIFIERS),
        st.lists(children, min_size=2, max_size=4).map(_seq),
        st.builds(_group, st.lists(children, min_size=2, max_size=3).map(_alt), st.booleans()),
        st.sampled_from(["^", "$"]).map(lambda a: Gen(a, lambda rnd: "", quantifiable=False)),
    )


_BODIES = st.recursive(
    st.builds(_quantified, st.one_of(_BASE, _bracket()), _QUANTIFIERS), _extend, max_leaves=10
)
_PATTERNS = st.builds(
    lambda ignore_case, branches: Gen(
        ("(?i)" if ignore_case else "") + _alt(branches).source, _alt(branches).sample
    ),
    st.booleans(),
    st.lists(_BODIES, min_size=1, max_size=2),
)


def _mutate(text: str, rnd: random.Random) -> str:
    """``text`` with small edits where engines tend to differ: case, newlines, ends."""
    chars = list(text)
    for _ in range(rnd.choice([0, 0, 1, 2])):
        k = rnd.randrange(len(chars) + 1)
        edit = rnd.randrange(5)
        if edit == 0 and k < len(chars):  # change case, if it stays one character
            swapped = chars[k].swapcase()
            chars[k] = swapped if len(swapped) == 1 else chars[k]
        elif edit == 1 and k < len(chars):
            del chars[k]
        elif edit == 2:
            chars.insert(k, "\n")
        elif edit == 3:
            chars.insert(k, rnd.choice(_NEAR_MISSES))
        elif k < len(chars):
            chars[k] = rnd.choice(_NEAR_MISSES)
    out = "".join(chars)
    return rnd.choice(["", "", "x", "\n"]) + out + rnd.choice(["", "", "\n", "y"])


_DIFF_QUERY = f"""
SELECT (CASE WHEN ic THEN {postgres_fold_sql("s", "%(f)s", "%(t)s")} ELSE s END) ~ p,
       (CASE WHEN ic THEN {postgres_fold_sql("s", "%(f)s", "%(t)s")} ELSE s END) COLLATE "C" ~ p
FROM unnest(%(s)s::text[], %(p)s::text[], %(ic)s::bool[]) WITH ORDINALITY AS t(s, p, ic, n)
ORDER BY n
"""


def _compare(pg: psycopg.Connection, regexes: list[PortableRegex], subjects: list[str]) -> None:
    pairs = [(r, s) for r in regexes for s in subjects]
    rows = pg.execute(
        _DIFF_QUERY,
        {
            "f": POSTGRES_FOLD_FROM,
            "t": POSTGRES_FOLD_TO,
            "s": [s for _, s in pairs],
            "p": [r.postgres for r, _ in pairs],
            "ic": [r.ignore_case for r, _ in pairs],
        },
    ).fetchall()
    for (regex, subject), (in_pg, in_pg_c) in zip(pairs, rows, strict=True):
        target = fold(subject) if regex.ignore_case else subject
        in_re = re.search(regex.python, target) is not None
        ours = search(regex, subject)
        assert ours == in_re == in_pg == in_pg_c, (
            f"pattern {regex.source!r} (python {regex.python!r}, postgres {regex.postgres!r}) "
            f"on {subject!r}: search={ours} re={in_re} postgres={in_pg} postgres C={in_pg_c}"
        )


# Example counts come from the hypothesis profile (tests/conftest.py): `ci` by
# default, HYPOTHESIS_PROFILE=long for a thorough run.
@given(st.lists(_PATTERNS, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_differential(pg: psycopg.Connection, gens: list[Gen], rnd: random.Random) -> None:
    regexes = [compile_portable(g.source) for g in gens]
    subjects = ["", "\n", *(_mutate(rnd.choice(gens).sample(rnd), rnd) for _ in range(20))]
    _compare(pg, regexes, subjects)


def test_fixed_cases_against_postgres(pg: psycopg.Connection) -> None:
    patterns = [
        r"^[a-z]+\d+@",
        "(?i)^ada",
        "a$",
        "^$",
        "a.b",
        r"\d\w\s",
        r"[\D\S]",
        r"[^\s\S]",
        r"[\s\S]",
        "(?i)[^A-Z]",
        "(?i)[À-ÿ]+$",
        "(?i)İ",
        "(?i)k",
        "\u00a0",
        "\x01",
        "(?:^)*a",
        "(?:$|x)",
        "x{0}",
        "",
        "😀+",
        "[😀-🙏]",
        "\ufffe",
        r"\$\^\.\*\+\?\(\)\[\]\{\}\|\\\/\'\"\#\%\&\,\:\;\<\=\>\@\_\`\~\!",
        # Unprintable, unassigned, private-use and edge code points (written \uXXXX).
        "\u0085",
        "[\u0080-\u009f]+$",
        "\u2028|\ufeff",
        "\ue000\U0010ffff",
        "\u0378",
        "[\ud7ff-\ue000]",  # a range across the surrogates
        "[^\ud7ff-\ue000]",
        "(?i)ǅ",
        "(?i)[Ǆǅǆ]x",
        "\x7f",
    ]
    subjects = ["", "a", "a\n", "\n", "ada12@x.com", "ADA", "Mada", "a\nb", "0a ", "٣é\u00a0"]
    subjects += [
        "İ",
        "\u212a",
        "ÀÉ",
        "\x01",
        "😀😃",
        "\ufffe",
        r"$^.*+?()[]{}|\/'" + '"#%&,:;<=>@_`~!',
    ]
    subjects += ["\u0085", "\u0080\u009f", "\u2028", "\ufeff", "\ue000\U0010ffff", "\u0378"]
    subjects += ["\ud7ff", "\ue000", "ǅx", "Ǆx", "ǆ", "\x7f"]
    _compare(pg, [compile_portable(p) for p in patterns], subjects)


# --- PostgreSQL never raises on an accepted pattern ---------------------------------


def _largest(make: Callable[[int], str], limit: int = 5000) -> str:
    """The biggest instance of a pattern shape that compile_portable accepts."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        try:
            compile_portable(make(middle))
            low = middle
        except RegexError:
            high = middle - 1
    return make(low)


_SPLIT = "".join(chr(0x100 + 2 * i) for i in range(30))  # cuts [Ā-ȁ] into many colors
_SHAPES: dict[str, Callable[[int], str]] = {
    "literals": lambda n: "a" * n,
    "optional chain": lambda n: "a?" * n,
    "star chain": lambda n: "a*" * n,
    "plus chain": lambda n: "a+" * n,
    "alternation groups": lambda n: "(?:ab|cd)" * n,
    "wide alternation": lambda n: "|".join(["ab"] * n),
    "counted groups": lambda n: f"(?:a{{255}}){{{n}}}",
    "optional counts": lambda n: f"(?:[a-z]{{0,{n}}}){{3}}",
    "doubling nest": lambda n: "(?:" * n + "a" + "){1,2}" * n,
    "star nest": lambda n: "(?:" * n + "a" + ")*" * n,
    "colors": lambda n: _SPLIT + "[\u0100-\u0200]?" * n,
    "dot colors": lambda n: _SPLIT + ".?" * n,
    "negated colors": lambda n: _SPLIT + "[^a]*" * n,
    "high colors": lambda n: "".join(chr(0x10000 + 7 * i) for i in range(60)) + "[^a]?" * n,
    "folded classes": lambda n: "(?i)" + "[^Ā-ɏ]?" * n,
    "anchors": lambda n: "(?:^|a)(?:$|b)" * n,
}


def test_postgres_accepts_the_largest_patterns(pg: psycopg.Connection) -> None:
    # At the smallest max_stack_depth PostgreSQL allows, where its limits are
    # lowest (needs a superuser; otherwise the server's own setting is used).
    with contextlib.suppress(psycopg.Error):
        pg.execute("SET max_stack_depth = '100kB'")
    try:
        for name, make in _SHAPES.items():
            regex = compile_portable(_largest(make))
            row = pg.execute(
                "SELECT %(a)s::text ~ %(p)s, %(b)s::text ~ %(p)s",
                {"a": "x" * 100, "b": "ab" * 50, "p": regex.postgres},
            ).fetchone()
            assert row is not None, name
            assert row == (search(regex, "x" * 100), search(regex, "ab" * 50)), name
    finally:
        pg.execute("RESET max_stack_depth")


@pytest.mark.parametrize("count", [1, 100, 255])
def test_postgres_accepts_every_count(pg: psycopg.Connection, count: int) -> None:
    for pattern in (f"a{{{count}}}", f"a{{0,{count}}}", f"a{{{count},}}", f"(?:ab){{{count}}}"):
        regex = compile_portable(pattern)
        row = pg.execute("SELECT %s::text ~ %s", ("a" * count, regex.postgres)).fetchone()
        assert row == (search(regex, "a" * count),)
