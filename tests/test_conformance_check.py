"""Front-end half of the shared conformance suite: every `diagnostics`
expectation holds, and every other case's rules check without errors."""

from __future__ import annotations

import pytest
from conformance import LOCAL_CASES_DIR, RULES_PATH, Case, load_cases
from nudgel.dsl.checker import check_sources

CASES = load_cases() + load_cases(LOCAL_CASES_DIR)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_checks_as_expected(case: Case) -> None:
    result = check_sources({RULES_PATH: case.rules})
    found = [(x.code, x.span.line, x.span.column, x.help or "") for x in result.diagnostics]
    for expected in case.expect.get("diagnostics", []):
        assert any(_fits(expected, f) for f in found), f"expected {expected}, got {found}"
    if case.expects_error:
        assert result.rules is None
    else:
        errors = [x for x in result.diagnostics if x.is_error]
        assert not errors, errors
        assert result.rules is not None


def _fits(expected: dict[str, object], found: tuple[str, int, int, str]) -> bool:
    code, line, column, help = found
    return (
        code == expected["code"]
        and expected.get("line", line) == line
        and expected.get("col", column) == column
        and str(expected.get("help_contains", "")) in help
    )
