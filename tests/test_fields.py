"""Fields just work (issue #12): unknown custom fields are created on first
write with an inferred type, strict workspaces refuse them all at once, and
declared types are enforced with real validators."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from test_api_foundation import assert_problem, bearer, outbox_types
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=migrated_url, run_worker=False))) as c:
        yield c


@pytest.fixture
def key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def _fields(client: TestClient, key: IssuedKey) -> dict[str, str]:
    return {
        f["name"]: f["type"] for f in client.get("/v1/fields", headers=bearer(key)).json()["data"]
    }


def test_the_product_page_example_creates_its_fields(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    answer = client.post(
        "/v1/contacts",
        json={"email": "ada@example.com", "fields": {"plan": "pro", "company": "Acme"}},
        headers=bearer(key),
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["fields"] == {"company": "Acme", "plan": "pro"}
    assert [(f["name"], f["type"]) for f in body["created_fields"]] == [
        ("company", "text"),
        ("plan", "text"),
    ]
    assert _fields(client, key) == {"company": "text", "plan": "text"}
    assert outbox_types(migrated_url, key.workspace_id)[:3] == [
        "field.created",
        "field.created",
        "contact.created",
    ]
    again = client.post(
        "/v1/contacts",
        json={"email": "ada@example.com", "fields": {"plan": "team"}},
        headers=bearer(key),
    )
    assert again.json()["created_fields"] == []


def test_types_are_inferred_from_the_first_value(client: TestClient, key: IssuedKey) -> None:
    values: dict[str, Any] = {
        "ltv": 12.5,
        "seats": 3,
        "beta": True,
        "prefs": {"theme": "dark"},
        "langs": ["en", "sw"],
        "nickname": "ada",
        "nothing": None,
        "blank": "",
    }
    answer = client.post(
        "/v1/contacts", json={"email": "t@example.com", "fields": values}, headers=bearer(key)
    )
    assert answer.status_code == 201, answer.text
    assert _fields(client, key) == {
        "ltv": "number",
        "seats": "number",
        "beta": "bool",
        "prefs": "json",
        "langs": "json",
        "nickname": "text",
    }
    # The field now has its type: another kind of value is refused.
    problem = assert_problem(
        client.post(
            "/v1/contacts",
            json={"email": "t@example.com", "fields": {"seats": "many"}},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/fields/seats"


def test_an_events_traits_create_fields_too(client: TestClient, key: IssuedKey) -> None:
    answer = client.post(
        "/v1/events",
        json={"email": "e@example.com", "name": "signup", "traits": {"fields": {"referrer": "ad"}}},
        headers=bearer(key),
    )
    assert answer.status_code == 201, answer.text
    assert _fields(client, key) == {"referrer": "text"}


def test_a_strict_workspace_names_every_unknown_field_at_once(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE workspaces SET fields_strict = true WHERE id = %s", (key.workspace_id,)
        )
    problem = assert_problem(
        client.post(
            "/v1/contacts",
            json={"email": "s@example.com", "fields": {"plan": "pro", "company": "Acme"}},
            headers=bearer(key),
        ),
        422,
    )
    assert [e["pointer"] for e in problem["errors"]] == ["/fields/company", "/fields/plan"]
    assert "'company', 'plan'" in problem["detail"] and "fields_strict" in problem["detail"]
    assert _fields(client, key) == {}


@pytest.mark.parametrize(
    ("type_", "bad", "good", "stored"),
    [
        ("email", "not-an-email", "Ada@Example.COM", "ada@example.com"),
        (
            "url",
            "javascript:alert(1)",
            "https://acme.example/pricing",
            "https://acme.example/pricing",
        ),
        ("url", "ftp://acme.example/", "http://acme.example", "http://acme.example"),
        ("date", "2026-13-01", "2026-01-31", "2026-01-31"),
        ("date", "31/01/2026", "2026-02-28", "2026-02-28"),
        ("timestamp", "2026-01-31", "2026-01-31T09:30:00Z", None),
        ("timestamp", "yesterday", "2026-01-31T09:30:00+03:00", None),
    ],
)
def test_declared_types_are_enforced_with_real_validators(
    client: TestClient, key: IssuedKey, type_: str, bad: str, good: str, stored: str | None
) -> None:
    assert (
        client.post(
            "/v1/fields", json={"name": "f", "type": type_}, headers=bearer(key)
        ).status_code
        == 201
    )
    problem = assert_problem(
        client.post(
            "/v1/contacts",
            json={"email": "v@example.com", "fields": {"f": bad}},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/fields/f"
    assert type_ in problem["detail"]
    answer = client.post(
        "/v1/contacts", json={"email": "v@example.com", "fields": {"f": good}}, headers=bearer(key)
    )
    assert answer.status_code == 201, answer.text
    if stored is not None:
        assert answer.json()["fields"]["f"] == stored


def test_concurrent_first_writes_create_a_field_once(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    def write(i: int) -> int:
        return client.post(
            "/v1/contacts",
            json={"email": f"c{i}@example.com", "fields": {"score_x": i}},
            headers=bearer(key),
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(write, range(16)))
    assert statuses == [201] * 16
    assert _fields(client, key) == {"score_x": "number"}
    assert outbox_types(migrated_url, key.workspace_id).count("field.created") == 1
