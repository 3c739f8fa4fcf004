"""The in-memory Program API: compile once, evaluate contacts, dependency sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from nudgel.dsl.checker import CheckedRules, check_sources
from nudgel.dsl.diagnostics import InternalError
from nudgel.runtime.contact import load_contacts
from nudgel.runtime.program import Program, to_micros

RULES = """
field plan: text
field prefs: json
segment hot { tag "premium" and fields.plan = "pro-secret-literal" and score.engagement >= 25 }
segment news { subscribed "newsletter" and not in segment hot }
segment recent { event "visit" within 7d }
segment dark { fields.prefs.theme = "dark" and email is set }
score engagement {
  +10 per event "email_open" within 90d max 50
  +25 per event "purchase"
  -5 when not event * within 30d
}
lifecycle {
  lead when email is set
  customer when score.engagement > 40
}
segment vip_leads { stage = "lead" and tag "vip" }
"""
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def rules() -> CheckedRules:
    result = check_sources({"r.rules": RULES})
    assert result.rules is not None, result.diagnostics
    return result.rules


def test_evaluate_one_contact() -> None:
    program = Program.compile(rules())
    (contact,) = load_contacts(
        [
            {
                "id": "c1",
                "email": "A@X.com",
                "tags": ["premium"],
                "fields": {"plan": "pro-secret-literal", "prefs": {"theme": "dark"}},
                "events": [
                    {"name": "purchase", "at": "2026-05-30T00:00:00Z"},
                    {"name": "visit", "at": "2026-05-31T00:00:00+02:00"},
                ],
            }
        ],
        {"plan": rules().field_type("plan"), "prefs": rules().field_type("prefs")},
        rules().stage_names,
    )
    result = program.evaluate(contact, NOW)
    assert result.segments == {
        "hot": True,
        "news": False,
        "recent": True,
        "dark": True,
        "vip_leads": False,
    }
    assert result.scores == {"engagement": Decimal(25)}
    assert result.stage == "lead"
    assert program.segment("hot")(contact, to_micros(NOW)) is True
    assert program.score("engagement")(contact, to_micros(NOW + timedelta(days=31))) == 20


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError):
        to_micros(datetime(2026, 6, 1))
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_rule_literals_live_in_the_namespace_not_the_source() -> None:
    program = Program.compile(rules())
    assert "pro-secret-literal" not in program.source
    assert "newsletter" not in program.source


def test_dependency_sets() -> None:
    program = Program.compile(rules())
    deps = program.dependencies
    hot = deps[("segment", "hot")]
    assert hot.tags == {"premium"} and hot.fields == {"plan"}
    assert hot.events == {"email_open", "purchase"} and hot.any_event and hot.time
    assert ("score", "engagement") in hot.nodes
    news = deps[("segment", "news")]
    assert news.lists == {"newsletter"} and news.tags == {"premium"}
    assert ("segment", "hot") in news.nodes
    dark = deps[("segment", "dark")]
    assert dark.fields == {"prefs"} and dark.attributes == {"email"} and not dark.time
    assert not dark.reads_event("visit")
    recent = deps[("segment", "recent")]
    assert recent.events == {"visit"} and recent.time and recent.reads_event("visit")
    lifecycle = deps[("lifecycle", "")]
    assert lifecycle.attributes == {"email", "stage"} and ("score", "engagement") in lifecycle.nodes
    vip = deps[("segment", "vip_leads")]
    assert ("lifecycle", "") in vip.nodes and vip.tags == {"vip"}
    assert {"email", "stage"} <= vip.attributes and vip.events == {"email_open", "purchase"}


def test_evaluate_all_sorts_members_by_code_point() -> None:
    program = Program.compile(check_sources({"r.rules": "segment all { true }"}).rules)  # type: ignore[arg-type]
    contacts = load_contacts([{"id": i} for i in ["b", "É", "a", "Z"]], {}, ())
    result = program.evaluate_all(contacts, NOW)
    assert result.segments["all"] == ["Z", "a", "b", "É"]
    assert result.to_json()["stages"] == {"Z": None, "a": None, "b": None, "É": None}


def test_a_node_without_a_backend_rule_fails_loudly() -> None:
    from dataclasses import dataclass

    from nudgel.compiler.python import PythonCompiler
    from nudgel.dsl import ast

    @dataclass(frozen=True, slots=True)
    class Strange(ast.Expr):
        pass

    with pytest.raises(InternalError, match="Strange"):
        PythonCompiler(rules()).expr(Strange())
