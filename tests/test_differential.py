"""The differential test: random well-typed rule sets and random contacts,
evaluated by the in-memory backend and by the compiled SQL on a real
PostgreSQL; any difference fails.

`HYPOTHESIS_PROFILE=long` runs thousands of examples; CI runs the `ci` profile.
The compiled SQL must also never raise a database error on data the schema
accepts (any exception here fails the test).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from nudgel.dsl.checker import check_sources
from nudgel.runtime.contact import load_contacts
from nudgel.runtime.pgload import load_contacts_into
from nudgel.runtime.postgres_eval import run_everything, throwaway_schema
from nudgel.runtime.program import Program
from strategies import RuleSet, contacts, micros, now_instants, rule_sets

_workspaces = itertools.count()


@pytest.fixture(scope="module")
def pg(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """One throwaway schema for the whole module; each example loads its
    contacts into a workspace of its own."""
    with psycopg.connect(database_url, autocommit=True) as conn, throwaway_schema(conn):
        yield conn


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RuleSet, str, list[dict[str, Any]]]:
    rule_set = draw(rule_sets())
    now = draw(now_instants())
    records = draw(
        contacts(rule_set.field_types, rule_set.stage_names, now=now, durations=rule_set.durations)
    )
    return rule_set, now, records


@settings(
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ]
)
@given(scenarios())
def test_backends_agree(
    pg: psycopg.Connection[Any], scenario: tuple[RuleSet, str, list[dict[str, Any]]]
) -> None:
    rule_set, now_text, records = scenario
    note(rule_set.source)
    checked = check_sources(rule_set.sources)
    assert checked.rules is not None, [d for d in checked.diagnostics if d.is_error]
    rules = checked.rules
    field_types = {name: rules.field_type(name) for name in rules.fields}
    loaded = load_contacts(records, field_types, rules.stage_names)
    now = micros(now_text)

    in_memory = Program.compile(rules).evaluate_all(loaded, now).to_json()
    workspace = load_contacts_into(
        pg, loaded, workspace=f"diff{next(_workspaces)}", field_types=field_types
    )
    in_postgres = run_everything(pg, rules, workspace, now).to_json()
    assert in_postgres == in_memory
