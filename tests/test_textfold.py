"""textfold: Python's fold() and the PostgreSQL expression fold every string alike."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nudgel.dsl.textfold import (
    FOLD_MAP,
    FOLD_SOURCES,
    POSTGRES_FOLD_FROM,
    POSTGRES_FOLD_TO,
    count_fold_sources,
    fold,
    fold_char,
    postgres_fold_sql,
)


@pytest.fixture(scope="module")
def pg(database_url: str) -> Iterator[psycopg.Connection]:
    # Pure SELECTs only; DATABASE_URL's server, else the embedded one.
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


_FOLD_QUERY = (
    f"SELECT {postgres_fold_sql('x', '%(f)s', '%(t)s')} "
    "FROM unnest(%(xs)s::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n"
)


def postgres_fold(conn: psycopg.Connection, texts: list[str]) -> list[str]:
    rows = conn.execute(
        _FOLD_QUERY, {"f": POSTGRES_FOLD_FROM, "t": POSTGRES_FOLD_TO, "xs": texts}
    ).fetchall()
    return [row[0] for row in rows]


def assert_same_fold(conn: psycopg.Connection, texts: list[str]) -> None:
    for text, folded in zip(texts, postgres_fold(conn, texts), strict=True):
        if folded != fold(text):
            diff = [
                f"U+{ord(a):04X}: python U+{ord(b):04X}, postgres U+{ord(c):04X}"
                for a, b, c in zip(text, fold(text), folded, strict=True)
                if b != c
            ]
            raise AssertionError("fold differs: " + "; ".join(diff[:10]))


# --- the mapping itself --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("ADA Lovelace", "ada lovelace"),
        ("İstanbul", "istanbul"),  # simple mapping: U+0130 -> i, not "i̇"
        ("ΣΑΣ", "σασ"),  # no final sigma: character by character
        ("ẞ", "ß"),  # capital sharp s has a simple lowercase
        ("ß", "ß"),  # and ß has no one-character uppercase/lowercase change
        ("\u212a\u212b", "kå"),  # Kelvin and Ångström signs
        ("ǅ", "ǆ"),  # titlecase digraph
        ("Ωmega ΌΡΟΣ", "ωmega όροσ"),
        ("𐐀𞤀", "𐐨𞤢"),  # Deseret and Adlam, outside the BMP
        ("", ""),
        ("ı", "ı"),  # dotless i stays
    ],
)
def test_fold_examples(text: str, folded: str) -> None:
    assert fold(text) == folded


def test_fold_is_simple_lowercase_of_each_character() -> None:
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        lowered = chr(cp).lower()
        expected = lowered if len(lowered) == 1 else "i"  # U+0130 is the only multi-char one
        assert fold(chr(cp)) == expected, f"U+{cp:04X}"
        assert fold_char(cp) == ord(expected)
    multi = [cp for cp in range(sys.maxunicode + 1) if len(chr(cp).lower()) > 1]
    assert multi == [0x0130], unicodedata.unidata_version


def test_fold_is_idempotent_and_sources_never_survive() -> None:
    assert all(target not in FOLD_MAP for target in FOLD_MAP.values())
    sources = set(FOLD_SOURCES)
    assert sources == set(FOLD_MAP)
    everything = "".join(chr(cp) for cp in range(1, 0x20000) if not 0xD800 <= cp <= 0xDFFF)
    assert not sources & {ord(ch) for ch in fold(everything)}


def test_postgres_tables() -> None:
    assert len(POSTGRES_FOLD_FROM) == len(POSTGRES_FOLD_TO) == len(set(POSTGRES_FOLD_FROM))
    assert all(ord(ch) >= 0x80 for ch in POSTGRES_FOLD_FROM)
    for table in (POSTGRES_FOLD_FROM, POSTGRES_FOLD_TO):
        assert "\0" not in table
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in table)
        table.encode("utf-8")  # PostgreSQL text must be valid UTF-8
    non_ascii = {cp: t for cp, t in FOLD_MAP.items() if cp >= 0x80}
    pairs = zip(map(ord, POSTGRES_FOLD_FROM), map(ord, POSTGRES_FOLD_TO), strict=True)
    assert dict(pairs) == non_ascii
    assert {cp for cp in FOLD_MAP if cp < 0x80} == set(range(ord("A"), ord("Z") + 1))


def test_count_fold_sources() -> None:
    assert count_fold_sources(ord("A"), ord("Z")) == 26
    assert count_fold_sources(ord("a"), ord("z")) == 0
    assert count_fold_sources(0, sys.maxunicode) == len(FOLD_MAP)


def test_fold_keeps_length_and_non_letters() -> None:
    text = "a\u0301 ❤ 123 \t\n ﬁ ŉ"  # ligatures and ŉ have no one-character lowercase change
    assert fold(text) == text
    assert len(fold("ÀÉÎÕÜ" * 100)) == 500


# --- against PostgreSQL ------------------------------------------------------


def _chunks(cps: list[int], size: int = 2048) -> list[str]:
    return ["".join(map(chr, cps[i : i + size])) for i in range(0, len(cps), size)]


def test_postgres_lower_c_folds_ascii_only(pg: psycopg.Connection) -> None:
    # The premise of the table: lower() under "C" touches A-Z and nothing else,
    # whatever the database's own locale.
    text = "".join(chr(cp) for cp in range(1, 0x800))
    (lowered,) = pg.execute('SELECT lower(%s COLLATE "C")', (text,)).fetchone() or ("",)
    expected = "".join(ch.lower() if "A" <= ch <= "Z" else ch for ch in text)
    assert lowered == expected


def test_postgres_folds_every_mapped_code_point(pg: psycopg.Connection) -> None:
    cps = sorted(set(FOLD_MAP) | set(FOLD_MAP.values()))
    assert_same_fold(pg, _chunks(cps))
    # Each one alone as well: the ASCII fast path and translate() both get used.
    assert_same_fold(pg, [chr(cp) for cp in cps])


def test_postgres_folds_every_possibly_cased_code_point(pg: psycopg.Connection) -> None:
    # The whole BMP, plus every 256-block beyond it that has any case at all
    # (the rest of the code space is uncased: fold and PostgreSQL leave it alone).
    cps = [cp for cp in range(1, 0x10000) if not 0xD800 <= cp <= 0xDFFF]
    for base in range(0x10000, sys.maxunicode + 1, 256):
        block = "".join(map(chr, range(base, base + 256)))
        if block.lower() != block or block.upper() != block:
            cps.extend(range(base, base + 256))
    assert_same_fold(pg, _chunks(cps))


_CASED = st.characters(categories=("Lu", "Ll", "Lt"))
_ANY = st.characters(exclude_categories=("Cs",), exclude_characters="\0")
_TEXT = st.text(st.one_of(_CASED, _ANY, st.sampled_from("AZaz İıΣσςẞßKk")), max_size=40)


@given(st.lists(_TEXT, min_size=1, max_size=50))
def test_postgres_fold_matches_python(pg: psycopg.Connection, texts: list[str]) -> None:
    assert_same_fold(pg, texts)
