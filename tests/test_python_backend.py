"""The in-memory backend's optimisations (issue #13) at the edges where they
could change a result: values shared between tests and between nodes (computed
once, reused only where surely computed), event windows by binary search
(boundaries, future events), one-pass event loops (where, sums of mixed
numbers, min/max/avg, first/last), the JSON-equals-text shortcut, and test
order. Each expected value follows the spec, not the implementation; and the
fused ``evaluate`` must agree with each ``only_<node>`` function (the two
code paths the compiler writes) on random rule sets and contacts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from nudgel.compiler.python import function_name
from nudgel.dsl.checker import CheckedRules, check_sources
from nudgel.runtime.contact import load_contacts
from nudgel.runtime.program import ContactResult, Program
from strategies import RuleSet, contacts, micros, now_instants, rule_sets

NOW_TEXT = "2026-06-01T12:00:00Z"
NOW = micros(NOW_TEXT)
SECOND = 1_000_000
DAY = 86_400 * SECOND


def at(offset_micros: int) -> str:
    """An RFC 3339 instant ``offset_micros`` from NOW (negative: before)."""
    from strategies import format_instant

    return format_instant(NOW + offset_micros)


def checked(source: str) -> CheckedRules:
    result = check_sources({"t.rules": source})
    assert result.rules is not None, [str(d) for d in result.diagnostics]
    return result.rules


def run(source: str, records: list[dict[str, Any]]) -> dict[str, ContactResult]:
    """Each contact's result by ``evaluate``, after checking that every
    ``only_<node>`` function gives the same value for it."""
    rules = checked(source)
    program = Program.compile(rules)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    loaded = load_contacts(records, field_types, rules.stage_names)
    results = {}
    for contact in loaded:
        result = program.evaluate(contact, NOW)
        assert_only_functions_agree(program, rules, contact, result)
        results[contact.id] = result
    return results


def assert_only_functions_agree(
    program: Program, rules: CheckedRules, contact: Any, result: ContactResult
) -> None:
    for name in rules.segments:
        assert program.segment(name)(contact, NOW) is result.segments[name], name
    for name in rules.scores:
        assert program.score(name)(contact, NOW) == result.scores[name], name
    assert program.stage(contact, NOW) == result.stage


def event(name: str, offset: int, **props: Any) -> dict[str, Any]:
    return {"name": name, "at": at(offset), "props": props}


# ---- windows -----------------------------------------------------------------


def test_window_boundaries_and_future_events() -> None:
    """``within D`` is ``(now - D, now]``; events after ``now`` never count."""
    source = """
    segment in_window { event "x" within 1d }
    segment any_time { event "x" }
    score n { +1 per event "x" within 1d  +100 per event "x" }
    segment first_in { first(event "x" within 1d) = now }
    segment last_any { last(event "x") = now - 1d }
    """
    results = run(
        source,
        [
            {"id": "start", "events": [event("x", -DAY)]},  # exactly now - 1d: out
            {"id": "just_in", "events": [event("x", -DAY + 1)]},
            {"id": "now", "events": [event("x", 0)]},  # exactly now: in
            {"id": "future", "events": [event("x", 1)]},  # never counts
            {"id": "both_ends", "events": [event("x", -DAY), event("x", 0), event("x", 1)]},
            {"id": "none", "events": [event("y", 0)]},
            {"id": "past_and_future", "events": [event("x", -DAY), event("x", 1)]},
        ],
    )
    assert results["past_and_future"].segments["last_any"]  # the future event is not last
    del results["past_and_future"]
    assert {cid: r.segments["in_window"] for cid, r in results.items()} == {
        "start": False,
        "just_in": True,
        "now": True,
        "future": False,
        "both_ends": True,
        "none": False,
    }
    assert {cid: r.segments["any_time"] for cid, r in results.items()} == {
        "start": True,
        "just_in": True,
        "now": True,
        "future": False,
        "both_ends": True,
        "none": False,
    }
    assert {cid: r.scores["n"] for cid, r in results.items()} == {
        "start": 100,
        "just_in": 101,
        "now": 101,
        "future": 0,
        "both_ends": 201,
        "none": 0,
    }
    assert results["now"].segments["first_in"] and results["both_ends"].segments["first_in"]
    assert not results["just_in"].segments["first_in"]
    assert not results["future"].segments["first_in"]
    # last ignores the future event: the last at or before now is `now`, not now - 1d
    assert results["start"].segments["last_any"]
    assert not results["both_ends"].segments["last_any"]


def test_loops_with_where_respect_the_window() -> None:
    source = """
    segment some { event "x" where (props.k = "a") within 1d }
    score count_a { +1 per event "x" where (props.k = "a") within 1d }
    segment total { sum(event "x" where (props.k = "a") within 1d, props.v) = 3 }
    segment latest { last(event "x" where (props.k = "a")) = now }
    segment earliest { first(event "x" where (props.k = "a") within 1d) = now - 1d + 1s }
    """
    records = [
        {
            "id": "c",
            "events": [
                event("x", -DAY, k="a", v=100),  # on the boundary: out
                event("x", -DAY + SECOND, k="a", v=1),
                event("x", -5, k="b", v=1000),
                event("x", 0, k="a", v=2),
                event("x", 5, k="a", v=10_000),  # future: out
            ],
        }
    ]
    (result,) = run(source, records).values()
    assert result.segments == {
        "some": True,
        "total": True,
        "latest": True,
        "earliest": True,
    }
    assert result.scores == {"count_a": 2}


# ---- aggregates ----------------------------------------------------------------


def test_sums_are_exact_over_ints_and_decimals_and_skip_non_numbers() -> None:
    """Whole numbers add as ints, decimals exactly (never 28-digit rounding);
    booleans, strings, missing and nested values are not numbers (§8)."""
    source = """
    segment tenth { sum(event "x", props.v) = 1.3 }
    segment huge { sum(event "y", props.v) = 2000000000000000000000000000000.11 }
    segment none { sum(event "z", props.v) = 0 }
    segment avg_third { avg(event "x", props.v) = 0.433333333333 }
    segment min_max { min(event "x", props.v) = 0.1 and max(event "x", props.v) = 1 }
    """
    records = [
        {
            "id": "c",
            "events": [
                event("x", -3, v=Decimal("0.1")),
                event("x", -2, v=1),
                event("x", -1, v=Decimal("0.2")),
                event("x", -1, v=True),
                event("x", -1, v="5"),
                event("x", -1, v=None),
                event("x", -1, v=[7]),
                event("x", -1),
                event("y", -3, v=10**30),
                event("y", -2, v=Decimal("1000000000000000000000000000000.1")),
                event("y", -1, v=Decimal("0.01")),
                event("z", -1, v=True),
                event("z", -1, v="1"),
            ],
        }
    ]
    (result,) = run(source, records).values()
    assert result.segments == {
        "tenth": True,
        "huge": True,
        "none": True,
        "avg_third": True,
        "min_max": True,
    }


def test_min_max_avg_first_last_of_nothing_are_missing() -> None:
    source = """
    segment min_set { min(event "x", props.v) is set }
    segment avg_set { avg(event "x" within 1d, props.v) is set }
    segment first_set { first(event "x" within 1d) is set }
    segment last_set { last(event "x" where (props.v = 1)) is set }
    segment min_not_below { not (min(event "x", props.v) < 5) }
    """
    results = run(
        source,
        [
            {"id": "no_events"},
            {"id": "not_numbers", "events": [event("x", -1, v="1")]},
            {"id": "only_old", "events": [event("x", -2 * DAY, v=1)]},
            {"id": "only_future", "events": [event("x", 10, v=1)]},
        ],
    )
    for cid, result in results.items():
        # only the old event (outside 1d, before now) has a number: 1
        assert result.segments["min_not_below"] is (cid != "only_old"), cid
        assert result.segments["min_set"] is (cid == "only_old"), cid
        assert not result.segments["avg_set"], cid
        assert result.segments["first_set"] is (cid == "not_numbers"), cid  # any event
        assert result.segments["last_set"] is (cid == "only_old"), cid


# ---- missing values and JSON -------------------------------------------------------


def test_json_equals_text_matches_only_a_string() -> None:
    """``props.k = "1"`` and ``fields.prefs.k = "1"`` hold only for the JSON
    string "1": not the number 1, true, a list holding it, or a missing value."""
    source = """
    field prefs: json
    segment by_props { event "x" where (props.k = "1") }
    segment by_field { fields.prefs.k = "1" }
    segment not_field { fields.prefs.k != "1" }
    segment flipped { "1" = fields.prefs.k }
    """
    values: dict[str, Any] = {
        "string": "1",
        "number": 1,
        "bool": True,
        "list": ["1"],
        "object": {"k": "1"},
        "empty": "",
        "null": None,
    }
    records = [
        {"id": cid, "fields": {"prefs": {"k": v}}, "events": [event("x", -1, k=v)]}
        for cid, v in values.items()
    ]
    records.append({"id": "absent", "fields": {"prefs": {}}, "events": [event("x", -1)]})
    for cid, result in run(source, records).items():
        match = cid == "string"
        assert result.segments["by_props"] is match, cid
        assert result.segments["by_field"] is match, cid
        assert result.segments["flipped"] is match, cid
        assert result.segments["not_field"] is not match, cid


def test_missing_values_and_empty_strings() -> None:
    """§6: a positive test on a missing value is false, its negation true,
    whatever the order the compiler runs the tests in."""
    source = """
    field plan: text
    field n: number
    segment plan_in { fields.plan in ["pro", ""] and tag "t" }
    segment plan_not_in { fields.plan not in ["pro"] and tag "t" }
    segment none_listed { fields.plan in [""] or event "x" }
    segment empty_compare { fields.plan = "" or fields.n > 1 }
    segment ends { email ends_with "" or phone starts_with "+254" }
    segment ordered { fields.n between 1 and count(event "x") }
    """
    results = run(
        source,
        [
            {"id": "pro", "tags": ["t"], "fields": {"plan": "pro", "n": 1}},
            {"id": "empty", "tags": ["t"], "fields": {"plan": ""}, "events": [event("x", -1)]},
            {"id": "absent", "tags": ["t"], "phone": "+2547", "fields": {"n": 2}},
            {"id": "untagged", "fields": {"plan": "pro"}},
        ],
    )
    assert {cid: r.segments["plan_in"] for cid, r in results.items()} == {
        "pro": True,
        "empty": False,
        "absent": False,
        "untagged": False,
    }
    assert {cid: r.segments["plan_not_in"] for cid, r in results.items()} == {
        "pro": False,
        "empty": True,
        "absent": True,
        "untagged": False,
    }
    assert {cid: r.segments["none_listed"] for cid, r in results.items()} == {
        "pro": False,
        "empty": True,
        "absent": False,
        "untagged": False,
    }
    assert {cid: r.segments["empty_compare"] for cid, r in results.items()} == {
        "pro": False,
        "empty": False,
        "absent": True,
        "untagged": False,
    }
    assert {cid: r.segments["ends"] for cid, r in results.items()} == {
        "pro": False,
        "empty": False,
        "absent": True,
        "untagged": False,
    }
    # n = 1 and one event "x" for "pro"? no event: count 0 < 1; absent: n = 2 > 0
    assert not any(r.segments["ordered"] for r in results.values())


# ---- shared values -----------------------------------------------------------------


def test_a_value_first_needed_behind_a_short_circuit_is_computed_again_later() -> None:
    """The count in ``a`` runs only for tagged contacts; ``b`` and the score
    need it for everyone. (Reusing ``a``'s local would fail, or be stale.)"""
    source = """
    field plan: text
    segment a { tag "t" and count(event "x" within 1d) >= 1 and fields.plan = "p" }
    segment b { count(event "x" within 1d) >= 1 }
    score s { +1 when fields.plan = "p"  +10 per event "x" within 1d }
    lifecycle {
      one when tag "u" and event "x"
      two when last(event "x") is set and fields.plan = "q"
    }
    segment c { stage = "one" or (event "x" and first(event "x") = last(event "x")) }
    """
    results = run(
        source,
        [
            {"id": "tagged", "tags": ["t"], "fields": {"plan": "p"}, "events": [event("x", -1)]},
            {"id": "untagged", "fields": {"plan": "q"}, "events": [event("x", -1)]},
            {"id": "nothing"},
            {"id": "u", "tags": ["u"], "events": [event("x", -1), event("x", -2 * DAY)]},
        ],
    )
    assert results["tagged"].segments == {"a": True, "b": True, "c": True}
    assert results["untagged"].segments == {"a": False, "b": True, "c": True}
    assert results["nothing"].segments == {"a": False, "b": False, "c": False}
    assert results["u"].segments == {"a": False, "b": True, "c": True}
    assert {cid: r.scores["s"] for cid, r in results.items()} == {
        "tagged": 11,
        "untagged": 10,
        "nothing": 0,
        "u": 10,
    }
    assert {cid: r.stage for cid, r in results.items()} == {
        "tagged": None,
        "untagged": "two",
        "nothing": None,
        "u": "one",
    }


def test_references_to_other_nodes_read_their_values() -> None:
    """In ``evaluate`` a reference is free, so it runs first; in ``only_`` it
    is a call made at most once per function."""
    source = """
    score e { +10 per event "x"  clamp 0..30 }
    segment s1 { score.e >= 20 and score.e <= 20 }
    segment s2 { in segment s1 or score.e = 30 }
    segment s3 { not in segment s2 and score.e > 0 }
    """
    results = run(
        source,
        [{"id": str(n), "events": [event("x", -1 - i) for i in range(n)]} for n in range(5)],
    )
    assert {cid: (r.segments, r.scores["e"]) for cid, r in results.items()} == {
        "0": ({"s1": False, "s2": False, "s3": False}, 0),
        "1": ({"s1": False, "s2": False, "s3": True}, 10),
        "2": ({"s1": True, "s2": True, "s3": False}, 20),
        "3": ({"s1": False, "s2": True, "s3": False}, 30),
        "4": ({"s1": False, "s2": True, "s3": False}, 30),
    }


def test_the_generated_code_binds_shared_values_in_order() -> None:
    """A window's count is computed once in ``evaluate`` and read by the
    later tests; the generated source says so, and stays free of literals."""
    source = """
    segment a { event "purchase-secret" within 30d }
    segment b { count(event "purchase-secret" within 30d) >= 2 }
    """
    program = Program.compile(checked(source))
    evaluate = program.source[program.source.index("def evaluate") :]
    assert evaluate.count("_bisect(") == 2  # events up to now, then the window start
    assert evaluate.count("c.by_name.get(") == 1
    assert "purchase-secret" not in program.source


# ---- both code paths on random rule sets ---------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_evaluate_and_only_functions_agree(data: st.DataObject) -> None:
    """``evaluate`` (every node in one function, references read as locals)
    and ``only_<node>`` (references called lazily) share no generated code
    but must give the same values, for any rule set and contact."""
    rule_set: RuleSet = data.draw(rule_sets())
    now_text = data.draw(now_instants())
    note(rule_set.source)
    rules = checked(rule_set.source)
    records = data.draw(
        contacts(
            rule_set.field_types, rule_set.stage_names, now=now_text, durations=rule_set.durations
        )
    )
    field_types = {name: rules.field_type(name) for name in rules.fields}
    program = Program.compile(rules)
    now = micros(now_text)
    for contact in load_contacts(records, field_types, rules.stage_names):
        result = program.evaluate(contact, now)
        for kind, name in rules.order:
            value = program._only[(kind, name)](contact, now)
            if kind == "segment":
                assert value is result.segments[name], function_name((kind, name))
            elif kind == "score":
                assert value == result.scores[name], function_name((kind, name))
            else:
                stage = rules.stage_names[value] if value is not None else None
                assert stage == result.stage


@pytest.mark.parametrize("within", ["1s", "30d"])
def test_counts_without_events_of_the_name(within: str) -> None:
    source = f"""
    segment none {{ not event "x" within {within} and count(event *) = 0 }}
    score s {{ -5 when not event * within {within}  +1 per event "y" }}
    """
    results = run(source, [{"id": "empty"}, {"id": "other", "events": [event("y", 0)]}])
    assert results["empty"].segments["none"] and not results["other"].segments["none"]
    assert results["empty"].scores["s"] == -5 and results["other"].scores["s"] == 1
