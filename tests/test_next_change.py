"""The time plan: no result changes strictly between ``now`` and the next
change instant it computes, on random rule sets and contacts (which put
events and times on window boundaries, ±1 µs)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from nudgel.dsl.checker import check_sources
from nudgel.runtime.contact import load_contacts
from nudgel.runtime.next_change import time_plan
from nudgel.runtime.program import Program
from strategies import RuleSet, contacts, micros, now_instants, rule_sets

DAY = 86_400 * 1_000_000


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RuleSet, int, list[dict[str, Any]], list[float]]:
    rule_set = draw(rule_sets())
    now_text = draw(now_instants())
    records = draw(
        contacts(
            rule_set.field_types, rule_set.stage_names, now=now_text, durations=rule_set.durations
        )
    )
    fractions = draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=4))
    return rule_set, micros(now_text), records, fractions


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_nothing_changes_before_the_next_change(
    scenario: tuple[RuleSet, int, list[dict[str, Any]], list[float]],
) -> None:
    rule_set, now, records, fractions = scenario
    note(rule_set.source)
    rules = check_sources(rule_set.sources).rules
    assert rules is not None
    field_types = {name: rules.field_type(name) for name in rules.fields}
    program = Program.compile(rules)
    plan = time_plan(rules)
    for contact in load_contacts(records, field_types, rules.stage_names):
        at_now = program.evaluate(contact, now)
        change = plan.next_change(contact, now)
        assert change is None or change > now
        # With no change ahead, probe far away (past every window and event).
        horizon = change if change is not None else now + 400 * DAY
        probes = {
            now + 1,
            horizon - 1,
            *(now + 1 + int(f * (horizon - now - 1)) for f in fractions),
        }
        for instant in sorted(p for p in probes if now < p < horizon):
            assert program.evaluate(contact, instant) == at_now, (contact.id, instant, change)


def test_plan_offsets_and_instants() -> None:
    rules = check_sources(
        {
            "a.rules": "field trial: timestamp\n"
            'segment a { count(event "p" within 30d) >= 2 and fields.trial + 3d < now - 7d }\n'
            'segment b { now > "2026-12-01" }\n'
        }
    ).rules
    assert rules is not None
    plan = time_plan(rules)
    assert plan.offsets == {0, 30 * DAY, 10 * DAY}
    assert plan.instants == {micros("2026-12-01T00:00:00Z")}
    assert plan.time_fields == {"trial"}


def test_rules_without_time_have_no_plan() -> None:
    rules = check_sources({"a.rules": 'segment a { tag "x" and name = "Ada" }'}).rules
    assert rules is not None
    assert not time_plan(rules).time_dependent
