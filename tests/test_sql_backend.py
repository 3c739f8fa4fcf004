"""The PostgreSQL backend: compiled SQL text, plans and behaviour.

- Without a database: no rule literal (nor any other constant) is ever in the
  SQL text, a node without a visitor fails loudly, parameters bind as
  documented.
- With one: the tricky points of spec §5-§10 (NULL logic, collation, folding,
  LIKE wildcards, exact decimals, big integers, JSON type guards, windows,
  future events, avg rounding, time zones), each checked against the
  in-memory backend as well; garbage in ``contacts.fields`` never raises;
  every query kind (segment members, one contact, score values, stages,
  everything) agrees with the others and with the in-memory backend on
  generated rule sets and contacts; plans use the indexes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nudgel.compiler.sql import CompiledQuery, SqlCompiler, pg_timestamptz_text
from nudgel.dsl import ast
from nudgel.dsl.checker import CheckedRules, check_sources
from nudgel.dsl.diagnostics import InternalError
from nudgel.dsl.timeparse import MICROS_PER_DAY, MICROS_PER_SECOND, parse_timestamp
from nudgel.runtime.contact import Contact, load_contacts
from nudgel.runtime.pgload import load_contacts_into
from nudgel.runtime.postgres_eval import evaluate_postgres, run_everything, throwaway_schema
from nudgel.runtime.program import Program
from nudgel.runtime.result import EvalResult
from sqlglot import exp
from strategies import contacts as contact_records
from strategies import now_instants, rule_sets

NOW = "2026-06-01T12:00:00Z"


def checked(source: str) -> CheckedRules:
    result = check_sources({"test.rules": source})
    assert result.rules is not None, [d.message for d in result.diagnostics]
    return result.rules


def micros(text: str) -> int:
    value = parse_timestamp(text)
    assert value is not None
    return value


def load(rules: CheckedRules, records: Sequence[Mapping[str, Any]]) -> list[Contact]:
    field_types = {name: rules.field_type(name) for name in rules.fields}
    return load_contacts(records, field_types, rules.stage_names)


def every_query(rules: CheckedRules) -> list[CompiledQuery]:
    compiler = SqlCompiler(rules)
    queries = [compiler.everything()]
    for name in rules.segments:
        queries += [compiler.segment_members(name), compiler.segment_contains(name)]
    queries += [compiler.score_values(name) for name in rules.scores]
    if rules.lifecycle is not None:
        queries.append(compiler.stages())
    return queries


# ---- the SQL text ------------------------------------------------------------------

# Every literal is distinctive, so finding it in SQL text means it was formatted in.
LITERAL_RULES = r"""
field zqplan: text
field zqltv: number
field zqbday: date
field zqtrial: timestamp
field zqprefs: json
field zqbeta: bool

segment zqseg {
  fields.zqplan = "zq'text\"1" and fields.zqplan in ["zqlist1", "zqlist2"]
  and name contains "zq%_contains" and phone starts_with "zq+starts"
  and email ends_with "@ZQENDS.example" and name matches "(?i)^zqre[0-9]+$"
  and fields.zqltv > 424242.4242 and fields.zqltv between 31337 and 31338.5
  and fields.zqbday < "2031-07-04" and fields.zqtrial <= now + 17d
  and created_at > "2029-02-03T04:05:06.789Z" - 5h
  and fields.zqprefs.zqkey1."zq-key2" = 777.125 and fields.zqprefs.zqarr has "zqelem"
  and fields.zqprefs.zqflag and not fields.zqbeta
  and tag "zqtag" and subscribed "zqnewsletter"
  and count(event "zqevent" where (props.zqprop >= 8675309 and at > now - 13h) within 19d) >= 23
  and avg(event "zqevent", props.zqamount) >= 55.5
  and stage >= "zqlead" and score.zqscore > 91
}

score zqscore {
  +11 per event "zqopen" within 97d max 53
  -7.25 when fields.zqplan = "zqpro"
  clamp -3..129
}

lifecycle {
  zqsubscriber when subscribed "zqnewsletter"
  zqlead when email is set
}
"""

DISTINCTIVE = [
    "zq'text",
    "zqlist1",
    "zq%_contains",
    "zq+starts",
    "zqends",
    "zqre",
    "424242",
    "31337",
    "31338",
    "2031",
    "2029",
    "zqkey1",
    "zq-key2",
    "777",
    "zqelem",
    "zqflag",
    "zqtag",
    "zqnewsletter",
    "zqevent",
    "zqprop",
    "8675309",
    "zqamount",
    "55.5",
    "zqlead",
    "zqsubscriber",
    "zqopen",
    "53",
    "7.25",
    "129",
    "zqplan",
    "zqltv",
    "zqprefs",
    "1468800",  # 17d in seconds
    "'C'",
    "'UTC'",
    "'number'",
    "'string'",
    "'subscribed'",
]


def test_no_value_is_ever_in_the_sql_text() -> None:
    rules = checked(LITERAL_RULES)
    for query in every_query(rules):
        # Placeholder names (p53) aside.
        lowered = re.sub(r"%\(\w+\)s", "%()s", query.sql).lower()
        for literal in DISTINCTIVE:
            assert literal.lower() not in lowered, f"{literal!r} in the SQL text:\n{query.sql}"
        # Nor any other constant: the parsed SQL has no literal at all, and
        # TRUE/NULL only in the `IS TRUE` / `IS NULL` tests.
        tree = sqlglot.parse_one(query.sql, read="postgres")
        literals = [node.sql() for node in tree.find_all(exp.Literal)]
        assert literals == [], literals
        for node in tree.find_all(exp.Boolean, exp.Null):
            assert isinstance(node.parent, exp.Is), node.parent.sql() if node.parent else node
    texts = " ".join(str(v) for q in every_query(rules) for v in q.params.values())
    for literal in ["zq'text\"1", "zqlist2", "zq%_contains", "@zqends.example", "zqelem", "zqkey1"]:
        # As text, or JSON-encoded where it is compared as jsonb.
        assert literal in texts or json.dumps(literal) in texts, literal


def test_parameters_are_only_placeholders_and_all_bound() -> None:
    rules = checked(LITERAL_RULES)
    for query in every_query(rules):
        bound = query.bind(now=micros(NOW), workspace_id=7, contact_pk=3)
        used = set(_placeholders(query.sql))
        assert used <= set(bound), used - set(bound)
        assert set(query.params) <= used  # nothing unused is carried around


def _placeholders(sql: str) -> list[str]:
    names = []
    rest = sql
    while "%(" in rest:
        rest = rest.split("%(", 1)[1]
        name, rest = rest.split(")s", 1)
        names.append(name)
    return names


def test_now_and_its_shifts_bind_as_exact_instants() -> None:
    rules = checked('segment s { event "x" within 30d and created_at <= now + 1s }')
    query = SqlCompiler(rules).segment_members("s")
    bound = query.bind(now=micros("2026-03-29T01:30:00.000001Z"), workspace_id=1)
    assert bound["now"] == "2026-03-29 01:30:00.000001+00"
    shifted = {bound[name] for name in query.now_offsets}
    assert shifted == {"2026-02-27 01:30:00.000001+00", "2026-03-29 01:30:01.000001+00"}


def test_segment_contains_needs_the_contact() -> None:
    query = SqlCompiler(checked('segment s { tag "x" }')).segment_contains("s")
    with pytest.raises(ValueError, match="contact_pk"):
        query.bind(now=0, workspace_id=1)


@pytest.mark.parametrize(
    ("micros_value", "text"),
    [
        (0, "1970-01-01 00:00:00.000000+00"),
        (-1, "1969-12-31 23:59:59.999999+00"),
        (micros("0001-01-01T00:00:00Z"), "0001-01-01 00:00:00.000000+00"),
        (micros("0001-01-01T00:00:00Z") - MICROS_PER_DAY, "0001-12-31 00:00:00.000000+00 BC"),
        (
            micros("9999-12-31T23:59:59Z") + 100_000 * MICROS_PER_DAY,
            "10273-10-15 23:59:59.000000+00",
        ),
    ],
)
def test_timestamps_beyond_python_dates_format_for_postgres(micros_value: int, text: str) -> None:
    assert pg_timestamptz_text(micros_value) == text


@dataclasses.dataclass(frozen=True, slots=True)
class Mystery(ast.Expr):
    pass


def test_a_node_without_a_visitor_fails_loudly() -> None:
    rules = checked('segment s { tag "x" }')
    segment = rules.segments["s"]
    broken = dataclasses.replace(
        rules, segments={"s": dataclasses.replace(segment, body=Mystery(span=segment.span))}
    )
    with pytest.raises(InternalError, match="no rule for Mystery"):
        SqlCompiler(broken).segment_members("s")
    with pytest.raises(InternalError, match="no rule for Mystery"):
        SqlCompiler(broken).everything()


# ---- behaviour, against PostgreSQL and the in-memory backend -----------------------------


def both(
    source: str, records: Sequence[Mapping[str, Any]], database_url: str, now: str = NOW
) -> dict[str, Any]:
    """Evaluate on both backends; they must agree. Returns the result document."""
    rules = checked(source)
    contacts = load(rules, records)
    memory = Program.compile(rules).evaluate_all(contacts, micros(now)).to_json()
    sql = evaluate_postgres(rules, contacts, micros(now), database_url).to_json()
    assert sql == memory
    return sql


@pytest.mark.postgres
def test_missing_values_follow_two_valued_logic(database_url: str) -> None:
    source = """
    field plan: text
    field ltv: number
    field prefs: json
    segment eq { fields.plan = "pro" }
    segment ne { fields.plan != "pro" }
    segment not_lt { not (fields.ltv < 5) }
    segment lt_or { fields.ltv < 5 or tag "x" }
    segment not_lt_or { not (fields.ltv < 5 or tag "x") }
    segment nin { fields.plan not in ["pro"] }
    segment ncontains { fields.plan not contains "r" }
    segment nmatch { fields.plan not matches "^$" }
    segment plan_set { fields.plan is set }
    segment jne { fields.prefs.a != 1 }
    segment jset { fields.prefs.a is set }
    segment jnot { not fields.prefs.a }
    segment nbetween { fields.ltv not between 1 and 10 }
    """
    records = [
        {"id": "c1", "fields": {"plan": "pro", "ltv": 3, "prefs": {"a": 1}}},
        {"id": "c2", "fields": {"plan": "", "prefs": {"a": ""}}},
        {"id": "c3", "fields": {"prefs": {"a": None}}},
        {"id": "c4", "tags": ["x"], "fields": {"ltv": 50, "prefs": {"a": True}}},
    ]
    result = both(source, records, database_url)["segments"]
    assert result["eq"] == ["c1"]
    assert result["ne"] == ["c2", "c3", "c4"]
    assert result["not_lt"] == ["c2", "c3", "c4"]
    assert result["lt_or"] == ["c1", "c4"]
    assert result["not_lt_or"] == ["c2", "c3"]
    assert result["nin"] == ["c2", "c3", "c4"]
    assert result["ncontains"] == ["c2", "c3", "c4"]
    assert result["nmatch"] == ["c1", "c2", "c3", "c4"]  # "" is missing, so `^$` never matches
    assert result["plan_set"] == ["c1"]
    assert result["jne"] == ["c2", "c3", "c4"]
    assert result["jset"] == ["c1", "c4"]
    assert result["jnot"] == ["c1", "c2", "c3"]
    assert result["nbetween"] == ["c2", "c3", "c4"]


@pytest.mark.postgres
def test_text_compares_by_code_point_and_folds_for_matching(database_url: str) -> None:
    source = r"""
    segment before_a { name < "a" }
    segment exact { name = "Éclair" }
    segment ecole { name contains "ÉCOLE" }
    segment dotted_i { name starts_with "i" }
    segment kelvin { name ends_with "k" }
    segment sigma { name contains "σ" }
    segment pct { name contains "50%" }
    segment underscore { name contains "a_b" }
    segment backslash { name ends_with "a\\b" }
    segment ci_regex { name matches "(?i)^é" }
    segment acme { email ends_with "@ACME.com" }
    segment kenya { phone starts_with "+254" }
    """
    records = [
        {"id": "c1", "name": "Zebra"},
        {"id": "c2", "name": "apple"},
        {"id": "c3", "name": "Éclair"},
        {"id": "c4", "name": "l'ÉCOLE du soir"},
        {"id": "c5", "name": "İstanbul"},  # simple lowercase of U+0130 is "i"
        {"id": "c6", "name": "5 \u212a"},  # KELVIN SIGN folds to "k"
        {"id": "c7", "name": "ΣΊΣΥΦΟΣ"},
        {"id": "c8", "name": "Save 50% now"},
        {"id": "c9", "name": "Save 500 now"},
        {"id": "c10", "name": "a_b"},
        {"id": "c11", "name": "axb"},
        {"id": "c12", "name": "xa\\b"},
        {"id": "c13", "name": "xab", "email": "Ada@Acme.COM", "phone": "+254700"},
        {"id": "c14", "name": "", "email": "ada@acme.co", "phone": "+2547"},
    ]
    result = both(source, records, database_url)["segments"]
    assert result["before_a"] == ["c1", "c6", "c8", "c9"]  # "5 K", "Save..." < "a" < "É"
    assert result["exact"] == ["c3"]
    assert result["ecole"] == ["c4"]
    assert result["dotted_i"] == ["c5"]
    assert result["kelvin"] == ["c6"]
    assert result["sigma"] == ["c7"]
    assert result["pct"] == ["c8"]
    assert result["underscore"] == ["c10"]
    assert result["backslash"] == ["c12"]
    assert result["ci_regex"] == ["c3"]
    assert result["acme"] == ["c13"]
    assert result["kenya"] == ["c13", "c14"]


@pytest.mark.postgres
def test_numbers_are_exact(database_url: str) -> None:
    source = """
    field ltv: number
    segment big { fields.ltv > 9007199254740992 }
    segment point3 { sum(event "pay", props.amount) = 0.3 }
    segment huge_sum { sum(event "pay", props.amount) = 18014398509481986 }
    segment tiny { fields.ltv = 0.000000000000000000000000000001 }
    score s { +0.1 per event "pay" +0.2 when fields.ltv > 0 -1000000000000000000000 when tag "x" }
    """
    pay = "2026-05-01T00:00:00Z"
    records = [
        {"id": "c1", "fields": {"ltv": 9007199254740993}},
        {"id": "c2", "fields": {"ltv": 9007199254740992}},
        {
            "id": "c3",
            "events": [
                {"name": "pay", "at": pay, "props": {"amount": Decimal("0.1")}},
                {"name": "pay", "at": pay, "props": {"amount": Decimal("0.2")}},
            ],
        },
        {
            "id": "c4",
            "events": [
                {"name": "pay", "at": pay, "props": {"amount": 9007199254740993}},
                {"name": "pay", "at": pay, "props": {"amount": 9007199254740993}},
            ],
        },
        {"id": "c5", "tags": ["x"], "fields": {"ltv": Decimal("1E-30")}},
    ]
    result = both(source, records, database_url)
    assert result["segments"]["big"] == ["c1"]
    assert result["segments"]["point3"] == ["c3"]
    assert result["segments"]["huge_sum"] == ["c4"]
    assert result["segments"]["tiny"] == ["c5"]
    assert result["scores"]["s"] == {
        "c1": "0.2",
        "c2": "0.2",
        "c3": "0.2",
        "c4": "0.2",
        "c5": "-999999999999999999999.8",
    }


@pytest.mark.postgres
def test_avg_rounds_half_away_from_zero_at_12_places(database_url: str) -> None:
    def buyer(cid: str, *amounts: Any) -> dict[str, Any]:
        events = [{"name": "b", "at": "2026-05-01T00:00:00Z", "props": {"a": a}} for a in amounts]
        return {"id": cid, "events": events}

    source = """
    segment third { avg(event "b", props.a) = 0.333333333333 }
    segment two_thirds { avg(event "b", props.a) = 0.666666666667 }
    segment half_up { avg(event "b", props.a) = 0.000000000001 }
    segment half_down { avg(event "b", props.a) = -0.000000000001 }
    segment none { avg(event "b", props.a) is not set }
    segment mixed { avg(event "b", props.a) = 2 }
    """
    records = [
        buyer("c1", 0, 0, 1),
        buyer("c2", 0, 1, 1),
        buyer("c3", Decimal("0.0000000000005")),
        buyer("c4", Decimal("-0.0000000000005")),
        buyer("c5", "1", True, None),
        buyer("c6", 1, 3, "100", {"x": 5}),
        {"id": "c7"},
    ]
    result = both(source, records, database_url)["segments"]
    assert result == {
        "third": ["c1"],
        "two_thirds": ["c2"],
        "half_up": ["c3"],
        "half_down": ["c4"],
        "none": ["c5", "c7"],
        "mixed": ["c6"],
    }


@pytest.mark.postgres
def test_json_comparisons_are_typed(database_url: str) -> None:
    source = """
    field prefs: json
    segment five { fields.prefs.v = 5 }
    segment five_text { fields.prefs.v = "5" }
    segment yes { fields.prefs.v = true }
    segment truthy { fields.prefs.v }
    segment above { fields.prefs.v > 3 }
    segment before_b { fields.prefs.v < "b" }
    segment same { fields.prefs.v = fields.prefs.w }
    segment less { fields.prefs.v < fields.prefs.w }
    segment has_sw { fields.prefs.v has "sw" }
    segment has_5 { fields.prefs.v has 5 }
    segment has_w { fields.prefs.v has fields.prefs.w }
    segment listed { fields.prefs.v in [5, 7] }
    """
    records = [
        {"id": "c1", "fields": {"prefs": {"v": 5, "w": Decimal("5.0")}}},
        {"id": "c2", "fields": {"prefs": {"v": "5", "w": 5}}},
        {"id": "c3", "fields": {"prefs": {"v": True, "w": False}}},
        {"id": "c4", "fields": {"prefs": {"v": "a", "w": "b"}}},
        {"id": "c5", "fields": {"prefs": {"v": ["sw", 5, [7]], "w": 5}}},
        {"id": "c6", "fields": {"prefs": {"v": [{"a": 1, "b": 2}], "w": {"a": 1}}}},
        {"id": "c7", "fields": {"prefs": {"v": ["", None], "w": ""}}},
        {"id": "c8", "fields": {"prefs": {"v": None, "w": None}}},
        {"id": "c9", "fields": {"prefs": "not an object"}},
    ]
    result = both(source, records, database_url)["segments"]
    assert result["five"] == ["c1"]
    assert result["five_text"] == ["c2"]
    assert result["yes"] == result["truthy"] == ["c3"]
    assert result["above"] == ["c1"]
    assert result["before_b"] == ["c2", "c4"]  # the strings "5" and "a"
    assert result["same"] == ["c1"]
    assert result["less"] == ["c4"]  # booleans have no order: not c3
    assert result["has_sw"] == ["c5"]
    assert result["has_5"] == ["c5"]
    assert result["has_w"] == ["c5"]  # an object element is not "equal" by containment
    assert result["listed"] == ["c1"]


@pytest.mark.postgres
def test_event_windows_and_future_events(database_url: str) -> None:
    source = """
    segment recent { event "v" within 30d }
    segment ever { event "v" }
    segment counted { count(event * within 1s) = 1 }
    segment latest { last(event "v") = now }
    segment first_day { first(event "v") = "2026-05-02T12:00:00.000001Z" }
    """
    at = {
        "edge": "2026-05-02T12:00:00Z",  # exactly now - 30d: out of the window
        "inside": "2026-05-02T12:00:00.000001Z",
        "now": NOW,
        "future": "2026-06-01T12:00:00.000001Z",
    }
    records = [{"id": key, "events": [{"name": "v", "at": value}]} for key, value in at.items()]
    result = both(source, records, database_url)["segments"]
    assert result["recent"] == ["inside", "now"]
    assert result["ever"] == ["edge", "inside", "now"]
    assert result["counted"] == ["now"]
    assert result["latest"] == ["now"]
    assert result["first_day"] == ["inside"]


@pytest.mark.postgres
def test_dates_and_missing_timestamps(database_url: str) -> None:
    source = """
    field day: date
    segment joined { fields.day > now - 2d }
    segment early { fields.day < "2026-01-01" }
    segment undated { created_at is not set }
    segment new { created_at > now - 7d }
    segment day_before_trial { fields.day + 1d <= created_at }
    """
    records = [
        {"id": "c1", "fields": {"day": "2026-05-31"}, "created_at": "2026-06-01T00:00:00Z"},
        {"id": "c2", "fields": {"day": "2026-05-30"}},
        {"id": "c3", "fields": {"day": "2025-12-31"}, "created_at": "2026-01-01T00:00:00+03:00"},
    ]
    result = both(source, records, database_url)["segments"]
    assert result["joined"] == ["c1"]
    assert result["early"] == ["c3"]
    assert result["undated"] == ["c2"]
    assert result["new"] == ["c1"]
    assert result["day_before_trial"] == ["c1"]


@pytest.mark.postgres
def test_scores_and_lifecycle(database_url: str) -> None:
    source = """
    score s {
      +10 per event "o" within 90d max 25
      -3 per event "c" max 5
      +2.5 when tag "vip"
      clamp -4..100
    }
    lifecycle {
      sub when subscribed "n"
      lead when email is set
      hot when score.s >= 20
    }
    segment hot_or_later { stage >= "hot" }
    segment between_stages { stage between "sub" and "lead" }
    """
    events = [{"name": "o", "at": f"2026-05-0{d}T00:00:00Z"} for d in range(1, 4)]
    records = [
        {"id": "c1", "events": events, "email": "a@x.io"},
        {"id": "c2", "events": [{"name": "c", "at": "2026-05-01T00:00:00Z"}] * 3, "tags": ["vip"]},
        {"id": "c3", "subscriptions": {"n": "subscribed"}, "stage": "hot"},
        {"id": "c4", "subscriptions": {"n": "pending"}},
    ]
    result = both(source, records, database_url)
    assert result["scores"]["s"] == {"c1": "25", "c2": "-2.5", "c3": "0", "c4": "0"}
    assert result["stages"] == {"c1": "hot", "c2": None, "c3": "hot", "c4": None}
    assert result["segments"]["hot_or_later"] == ["c1", "c3"]
    assert result["segments"]["between_stages"] == []


# ---- data that does not fit never raises -----------------------------------------------

GARBAGE_RULES = """
field plan: text
field work: email
field ltv: number
field beta: bool
field day: date
field trial: timestamp
field prefs: json
segment s {
  fields.plan = "x" or fields.plan < "m" or fields.plan contains "a" or fields.work ends_with "a"
  or fields.ltv > 1 or fields.ltv in [1, 2] or fields.beta or fields.day > now - 1000d
  or fields.trial < now or fields.prefs.a > 1 or fields.prefs.a has 1 or fields.prefs.a.b = "c"
  or fields.plan matches "^a" or fields.day is set or fields.trial is set
}
score v { +1 when fields.ltv >= 0 +2 when fields.beta +4 when fields.day is set }
"""

GARBAGE = [
    {"plan": 7, "work": ["a"], "ltv": "1e400", "beta": "true", "day": 20260101, "trial": True},
    {"plan": {"a": 1}, "ltv": "NaN", "beta": 1, "day": "2026-02-30", "trial": "2026-06-01"},
    {
        "plan": None,
        "ltv": {"x": 1},
        "beta": None,
        "day": "2026-1-1",
        "trial": "2026-06-01T25:00:00Z",
    },
    {"ltv": [1], "day": "0000-01-01", "trial": "not a time", "prefs": [1, 2]},
    {"ltv": "", "day": "", "trial": "", "prefs": "text", "beta": "false"},
    {"prefs": {"a": "1"}, "day": {"y": 2026}, "trial": 1780000000},
]


@pytest.fixture
def schema_conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn, throwaway_schema(conn):
        yield conn


@pytest.mark.postgres
def test_garbage_in_fields_never_raises_and_reads_as_missing(
    schema_conn: psycopg.Connection,
) -> None:
    rules = checked(GARBAGE_RULES)
    contacts = load(rules, [{"id": f"g{i}"} for i in range(len(GARBAGE))])
    field_types = {name: rules.field_type(name) for name in rules.fields}
    workspace = load_contacts_into(schema_conn, contacts, workspace="w", field_types=field_types)
    for i, fields in enumerate(GARBAGE):
        schema_conn.execute(
            "UPDATE contacts SET fields = %s::jsonb WHERE id = %s", (json.dumps(fields), f"g{i}")
        )
    now = micros(NOW)
    result = run_everything(schema_conn, rules, workspace, now)
    # Every field is garbage, so every one reads as missing, exactly as for
    # contacts without fields.
    assert result == Program.compile(rules).evaluate_all(contacts, now)
    assert result.segments["s"] == []
    for query in every_query(rules):
        params = query.bind(now=now, workspace_id=workspace, contact_pk=1)
        schema_conn.execute(query.sql, params).fetchall()


# ---- the time zone of the session plays no part ------------------------------------------

TIME_RULES = """
field day: date
field due: timestamp
segment window { event "v" within 1d }
segment day_old { fields.day <= now - 1d }
segment due_soon { fields.due + 1d > now and fields.due <= now + 2w }
segment week { event * within 1w }
"""


@pytest.mark.postgres
@pytest.mark.parametrize("now", ["2026-03-29T01:30:00Z", "2026-11-01T06:30:00Z", NOW])
@pytest.mark.parametrize("zone", ["America/St_Johns", "Pacific/Chatham", "Europe/London"])
def test_results_do_not_depend_on_the_session_time_zone(
    schema_conn: psycopg.Connection, now: str, zone: str
) -> None:
    rules = checked(TIME_RULES)
    instant = micros(now)
    records = []
    for hours in range(-30, 400, 7):
        at = instant - hours * 3600 * MICROS_PER_SECOND
        day = (instant // MICROS_PER_DAY - hours // 24) * MICROS_PER_DAY
        records.append(
            {
                "id": f"c{hours}",
                "events": [{"name": "v", "at": pg_rfc3339(at)}],
                "fields": {"day": pg_rfc3339(day)[:10], "due": pg_rfc3339(at)},
            }
        )
    contacts = load(rules, records)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    workspace = load_contacts_into(schema_conn, contacts, workspace="tz", field_types=field_types)
    schema_conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
    try:
        result = run_everything(schema_conn, rules, workspace, instant)
    finally:
        schema_conn.execute("RESET TimeZone")
    assert result == Program.compile(rules).evaluate_all(contacts, instant)


def pg_rfc3339(value: int) -> str:
    return pg_timestamptz_text(value).replace(" ", "T").replace(".000000", "")[:-3] + "Z"


# ---- every query kind agrees, on generated rules and contacts -----------------------------


def check_every_query(
    conn: psycopg.Connection, rules: CheckedRules, contacts: list[Contact], now: int
) -> None:
    field_types = {name: rules.field_type(name) for name in rules.fields}
    workspace = load_contacts_into(
        conn, contacts, workspace=secrets.token_hex(8), field_types=field_types
    )
    expected = Program.compile(rules).evaluate_all(contacts, now)
    assert run_everything(conn, rules, workspace, now) == expected
    compiler = SqlCompiler(rules)
    pks = dict(conn.execute("SELECT id, pk FROM contacts WHERE workspace_id = %s", (workspace,)))
    for name in rules.segments:
        query = compiler.segment_members(name)
        rows = conn.execute(query.sql, query.bind(now=now, workspace_id=workspace)).fetchall()
        assert sorted(r[0] for r in rows) == expected.segments[name], name
        query = compiler.segment_contains(name)
        for contact in contacts[:3]:
            params = query.bind(now=now, workspace_id=workspace, contact_pk=pks[contact.id])
            member = conn.execute(query.sql, params).fetchone()
            assert member == (contact.id in expected.segments[name],), (name, contact.id)
    for name in rules.scores:
        query = compiler.score_values(name)
        rows = conn.execute(query.sql, query.bind(now=now, workspace_id=workspace)).fetchall()
        assert {r[0]: r[1] for r in rows} == expected.scores[name], name
    if rules.lifecycle is not None:
        query = compiler.stages()
        rows = conn.execute(query.sql, query.bind(now=now, workspace_id=workspace)).fetchall()
        assert dict(rows) == expected.stages


@pytest.fixture(scope="module")
def shared_schema(database_url: str) -> Iterator[psycopg.Connection]:
    """One schema for many generated examples, each in its own workspace."""
    with psycopg.connect(database_url, autocommit=True) as conn, throwaway_schema(conn):
        yield conn


@pytest.mark.postgres
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_rules_agree_with_the_memory_backend(
    shared_schema: psycopg.Connection, data: st.DataObject
) -> None:
    rule_set = data.draw(rule_sets(layout="tidy"))
    now_text = data.draw(now_instants())
    records = data.draw(
        contact_records(
            rule_set.field_types, rule_set.stage_names, now=now_text, durations=rule_set.durations
        )
    )
    result = check_sources(rule_set.sources)
    assert result.rules is not None
    rules = result.rules
    contacts = load(rules, records)
    check_every_query(shared_schema, rules, contacts, micros(now_text))


@pytest.mark.postgres
def test_workspaces_are_kept_apart(shared_schema: psycopg.Connection) -> None:
    rules = checked('segment s { tag "x" }\nscore n { +1 when tag "x" }')
    mine = load(rules, [{"id": "a", "tags": ["x"]}, {"id": "b"}])
    theirs = load(rules, [{"id": "a"}, {"id": "z", "tags": ["x"]}])
    load_contacts_into(shared_schema, theirs, workspace=secrets.token_hex(8), field_types={})
    check_every_query(shared_schema, rules, mine, micros(NOW))


# ---- plans ---------------------------------------------------------------------------------


Planned = tuple[psycopg.Connection, int]


def plan_nodes(conn: psycopg.Connection, query: CompiledQuery, workspace: int) -> list[Any]:
    params = query.bind(now=micros(NOW), workspace_id=workspace, contact_pk=1)
    (document,) = conn.execute("EXPLAIN (FORMAT JSON) " + query.sql, params).fetchone() or ()
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(document[0]["Plan"])
    return nodes


@pytest.fixture(scope="module")
def planned(shared_schema: psycopg.Connection) -> Planned:
    """A few thousand contacts with events, analysed, for plan shapes."""
    conn = shared_schema
    row = conn.execute("INSERT INTO workspaces (name) VALUES ('plans') RETURNING id").fetchone()
    assert row is not None
    workspace = row[0]
    conn.execute(
        """
        INSERT INTO contacts (workspace_id, id, email, fields)
        SELECT %(w)s, 'p' || i, 'p' || i || '@acme.com', jsonb_build_object('plan', 'pro')
        FROM generate_series(1, 5000) AS i
        """,
        {"w": workspace},
    )
    conn.execute(
        """
        INSERT INTO contact_tags (contact_pk, tag)
        SELECT pk, CASE WHEN pk %% 20 = 0 THEN 'premium' ELSE 'basic' END
        FROM contacts WHERE workspace_id = %(w)s
        """,
        {"w": workspace},
    )
    conn.execute(
        """
        INSERT INTO events (contact_pk, name, at)
        SELECT pk, (ARRAY['purchase', 'email_open', 'visit'])[1 + g %% 3],
               timestamptz '2026-06-01 12:00:00+00' - g * interval '7 hours'
        FROM contacts, generate_series(1, 30) AS g WHERE workspace_id = %(w)s
        """,
        {"w": workspace},
    )
    conn.execute("VACUUM ANALYZE contacts, contact_tags, events")
    return conn, workspace


SPEC_RULES = """
field plan: text
segment hot_leads {
  score.engagement >= 50 and tag "premium" and fields.plan in ["pro", "enterprise"]
  and (email ends_with "@acme.com" or phone starts_with "+254")
  and count(event "purchase" within 30d) >= 2
}
score engagement {
  +10 per event "email_open" within 90d max 50
  +25 per event "purchase"
  -5 when not event * within 30d
  +15 when fields.plan = "pro"
  clamp 0..100
}
"""


@pytest.mark.postgres
def test_segment_plan_probes_the_indexes_after_the_tag(
    planned: tuple[psycopg.Connection, int],
) -> None:
    conn, workspace = planned
    nodes = plan_nodes(
        conn, SqlCompiler(checked(SPEC_RULES)).segment_members("hot_leads"), workspace
    )
    indexes = {n.get("Index Name") for n in nodes}
    # The tag drives (or filters through its index), events are probed per
    # contact with name and time as index conditions, never scanned.
    assert indexes & {"contact_tags_tag_contact_pk_idx", "contact_tags_pkey"}
    event_scans = [n for n in nodes if n.get("Relation Name") == "events"]
    assert event_scans and all("Index" in n["Node Type"] for n in event_scans)
    named = [n for n in event_scans if n.get("Index Name") == "events_contact_pk_name_at_idx"]
    assert named and all("name" in n["Index Cond"] and "at" in n["Index Cond"] for n in named)


@pytest.mark.postgres
def test_score_plan_reads_events_once(planned: Planned) -> None:
    conn, workspace = planned
    query = SqlCompiler(checked(SPEC_RULES)).score_values("engagement")
    nodes = plan_nodes(conn, query, workspace)
    # One LATERAL aggregate per contact: a single range of an index on
    # contact_pk, never a scan, hash or sort of all the events.
    (scan,) = [n for n in nodes if n.get("Relation Name") == "events"]
    assert "Index" in scan["Node Type"] and "contact_pk" in scan["Index Cond"]
    assert not [n for n in nodes if n.get("Subplan Name")]
    assert not [n for n in nodes if n["Node Type"] == "Sort"]


@pytest.mark.postgres
def test_batch_queries_read_only_the_event_names_they_use(planned: Planned) -> None:
    conn, workspace = planned
    rules = checked(
        """
        score s { +1 per event "purchase" within 30d  +2 per event "email_open" }
        lifecycle { customer when count(event "purchase") >= 2 or score.s > 3 }
        """
    )
    compiler = SqlCompiler(rules)
    for query in (compiler.score_values("s"), compiler.stages(), compiler.everything()):
        nodes = plan_nodes(conn, query, workspace)
        (scan,) = [n for n in nodes if n.get("Relation Name") == "events"]
        assert scan["Node Type"] == "Index Only Scan"
        assert scan["Index Name"] == "events_contact_pk_name_at_idx"
        assert "contact_pk" in scan["Index Cond"]
        # As a range of the index or checked on its entries, per the planner.
        assert "name" in scan["Index Cond"] + scan.get("Filter", "")


@pytest.mark.postgres
def test_one_contact_is_found_by_primary_key(planned: Planned) -> None:
    conn, workspace = planned
    nodes = plan_nodes(
        conn, SqlCompiler(checked(SPEC_RULES)).segment_contains("hot_leads"), workspace
    )
    assert "contacts_pkey" in {n.get("Index Name") for n in nodes}


@pytest.mark.postgres
def test_evaluate_postgres_drops_its_schema(database_url: str) -> None:
    def schemas() -> set[str]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT nspname FROM pg_namespace").fetchall()
        return {r[0] for r in rows if r[0].startswith("nudgel_eval_")}

    before = schemas()
    rules = checked('segment s { tag "x" }')
    result = evaluate_postgres(rules, load(rules, [{"id": "a", "tags": ["x"]}]), 0, database_url)
    assert result == EvalResult(segments={"s": ["a"]}, scores={}, stages={"a": None})
    assert schemas() == before
