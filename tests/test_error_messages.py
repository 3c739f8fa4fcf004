"""Errors a person can act on (issue #12): each message says what is wrong
where the user wrote it, and what to write instead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from nudgel.dsl.checker import check_sources
from test_api_foundation import assert_problem, bearer
from workspaces import drop_workspace, new_key


def _only(source: str) -> tuple[str, str | None]:
    diagnostics = [d for d in check_sources({"a.rules": source}).diagnostics if d.is_error]
    assert len(diagnostics) == 1, diagnostics
    return diagnostics[0].message, diagnostics[0].help


@pytest.mark.parametrize(
    ("condition", "declaration"),
    [
        ("fields.ltv > 5000", "field ltv: number"),
        ("fields.ltv between 1 and 9", "field ltv: number"),
        ('fields.plan in ["pro", "team"]', "field plan: text"),
        ('fields.plan contains "pro"', "field plan: text"),
        ("fields.beta", "field beta: bool"),
        ('fields.prefs.theme = "dark"', "field prefs: json"),
        ("fields.renewal < now - 1d", "field renewal: timestamp"),
        ("fields.beta = true", "field beta: bool"),
    ],
)
def test_an_unknown_fields_hint_declares_the_type_its_use_suggests(
    condition: str, declaration: str
) -> None:
    message, help_ = _only(f"segment s {{ {condition} }}")
    assert message.startswith("unknown field")
    assert help_ == f"declare it: `{declaration}`"


def test_text_compared_with_a_number_field_gets_a_useful_help() -> None:
    _, help_ = _only('field ltv: number\nsegment s { fields.ltv > "big" }')
    assert help_ == "`fields.ltv` is a number: compare it with a number, e.g. 5000"
    _, help_ = _only('field ltv: number\nsegment s { fields.ltv > "5000" }')
    assert help_ == "write the number without quotes: 5000"


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        ("1mo", "months are not a unit; use days: 30d"),
        ("3months", "months are not a unit; use days: 90d"),
        ("2y", "years are not a unit; use days: 730d"),
        (
            "10ms",
            "`10ms` is not a duration: write a whole number and one of the units s, m, h, d, w (e.g. 30d)",
        ),
    ],
)
def test_a_duration_with_a_unit_that_is_not_one_says_what_to_write(
    duration: str, message: str
) -> None:
    found, _ = _only(f'segment s {{ event "x" within {duration} }}')
    assert found == message


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=migrated_url, run_worker=False))) as c:
        yield c


@pytest.fixture
def key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


@pytest.mark.postgres
def test_a_where_that_ends_early_names_no_brace_the_user_never_typed(
    client: TestClient, key: IssuedKey
) -> None:
    problem = assert_problem(
        client.get("/v1/contacts", params={"where": 'tag "vip" and'}, headers=bearer(key)), 422
    )
    assert "}" not in problem["detail"]
    assert problem["detail"] == "where: 1:14: the condition ends too early, expected a condition"
    assert problem["diagnostics"][0]["help"] == "a condition must follow `and`, `or` and `not`"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("content", "headers", "pointer", "detail"),
    [
        (
            b'{"email": "a@b.co",, }',
            {"Content-Type": "application/json"},
            "",
            "the body is not valid JSON: Expecting property name enclosed in double quotes"
            " at line 1, column 20",
        ),
        (
            b'{"email": "a@b.co"}',
            {},
            "",
            "send the body as a JSON object, with the header `Content-Type: application/json`",
        ),
        (
            b"[1]",
            {"Content-Type": "application/json"},
            "",
            "the body must be a JSON object, not an array",
        ),
        (
            b'{"email": "a@b.co", "tags": [" x"]}',
            {"Content-Type": "application/json"},
            "/tags/0",
            "must be printable text, without control characters or spaces at either end",
        ),
    ],
)
def test_body_errors_say_what_to_send(
    client: TestClient,
    key: IssuedKey,
    content: bytes,
    headers: dict[str, str],
    pointer: str,
    detail: str,
) -> None:
    problem = assert_problem(
        client.post("/v1/contacts", content=content, headers=bearer(key, **headers)), 422
    )
    assert problem["errors"][0]["pointer"] == pointer
    assert problem["errors"][0]["detail"] == detail
    assert "Value error" not in problem["detail"] and "^" not in problem["detail"]


@pytest.mark.postgres
def test_our_validators_messages_have_no_pydantic_prefix(
    client: TestClient, key: IssuedKey
) -> None:
    problem = assert_problem(
        client.post(
            "/v1/events",
            json={"email": "a@b.co", "name": "x", "at": "yesterday"},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["detail"] == (
        "body/at: must be an RFC 3339 date-time with an offset, e.g. 2026-01-02T15:04:05+03:00"
    )
    problem = assert_problem(
        client.post("/v1/lists", json={"name": "bad name!", "title": "t"}, headers=bearer(key)), 422
    )
    assert "letter or digit" in problem["detail"] and "[A-Za-z" not in problem["detail"]
