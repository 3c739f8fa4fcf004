"""Evaluation half of the shared conformance suite, on both backends: every
case's expected segments, scores, stages and data errors, run straight from
``../shared/conformance``."""

from __future__ import annotations

from typing import Any

import pytest
from conformance import LOCAL_CASES_DIR, RULES_PATH, Case, load_cases
from nudgel.dsl.checker import CheckedRules, check_sources
from nudgel.dsl.timeparse import parse_timestamp
from nudgel.runtime.contact import DataError, load_contacts
from nudgel.runtime.postgres_eval import evaluate_postgres
from nudgel.runtime.program import Program
from nudgel.runtime.result import EvalResult

CASES = [c for c in load_cases() + load_cases(LOCAL_CASES_DIR) if not c.expects_error]


def compiled(case: Case) -> CheckedRules:
    result = check_sources({RULES_PATH: case.rules})
    assert result.rules is not None, result.diagnostics
    return result.rules


def evaluate(case: Case, backend: str, database_url: str | None) -> EvalResult | DataError:
    rules = compiled(case)
    field_types = {name: rules.field_type(name) for name in rules.fields}
    try:
        contacts = load_contacts(case.contacts, field_types, rules.stage_names)
    except DataError as error:
        return error
    now = parse_timestamp(case.now)
    assert now is not None
    if backend == "memory":
        return Program.compile(rules).evaluate_all(contacts, now)
    assert database_url is not None
    return evaluate_postgres(rules, contacts, now, database_url)


def assert_expectations(case: Case, outcome: EvalResult | DataError) -> None:
    expected_error = case.expect.get("data_error")
    if expected_error is not None:
        assert isinstance(outcome, DataError), f"expected a data error, got {outcome}"
        assert (outcome.contact, outcome.field) == (
            expected_error["contact"],
            expected_error["field"],
        )
        return
    assert not isinstance(outcome, DataError), str(outcome)
    document: dict[str, Any] = outcome.to_json()
    for name, members in case.expect.get("segments", {}).items():
        assert document["segments"][name] == members, f"segment {name}"
    for name, values in case.expect.get("scores", {}).items():
        got = {cid: document["scores"][name][cid] for cid in values}
        assert got == values, f"score {name}"
    for cid, stage in case.expect.get("stages", {}).items():
        assert document["stages"][cid] == stage, f"stage of {cid}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_memory_backend(case: Case) -> None:
    assert_expectations(case, evaluate(case, "memory", None))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_postgres_backend(case: Case, migrated_url: str) -> None:
    assert_expectations(case, evaluate(case, "postgres", migrated_url))
