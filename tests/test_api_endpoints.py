"""Endpoints people reach for in their first hour (#12), against a real PostgreSQL:
unknown query parameters refused on every route, GET /v1/segments/{name},
DELETE /v1/tags/{name}, and the contact list's q=, sort= (keyset pages that
stay right across sorts) and include=total_count."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nudgel.api.keys.store import IssuedKey
from test_api_contacts import contacts_client
from test_api_foundation import assert_problem, bearer
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    for name, type_ in [("plan", "text"), ("ltv", "number")]:
        response = client.post(
            "/v1/fields", json={"name": name, "type": type_}, headers=bearer(issued)
        )
        assert response.status_code == 201, response.text
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def upsert(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code in (200, 201), response.text
    contact: dict[str, Any] = response.json()
    return contact


# ---- unknown query parameters ------------------------------------------------------


def v1_operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, path with its parameters filled in) of every /v1 operation the app documents."""
    doc = client.get("/openapi.json").json()
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in doc["paths"].items()
        if path.startswith("/v1/")
        for method in item
    ]


def test_every_route_refuses_an_unknown_query_parameter(client: TestClient, key: IssuedKey) -> None:
    operations = v1_operations(client)
    assert len(operations) > 40  # every resource, not a few
    for method, path in operations:
        response = client.request(method, f"{path}?nudgel_unknown=1", headers=bearer(key))
        problem = assert_problem(response, 400)
        assert problem["type"].endswith("/unknown-query-parameter"), (method, path)
        assert "`nudgel_unknown`" in problem["detail"], (method, path)
        assert problem["errors"] == [
            {
                "location": "query",
                "pointer": "/nudgel_unknown",
                "detail": problem["errors"][0]["detail"],
                "code": "unknown_parameter",
            }
        ]


def test_a_filter_the_list_does_not_have_is_a_400_naming_it(
    client: TestClient, key: IssuedKey
) -> None:
    upsert(client, key, email="ada@example.com")
    upsert(client, key, email="grace@example.com")
    response = client.get("/v1/contacts?email=ada@example.com&limit=5", headers=bearer(key))
    problem = assert_problem(response, 400)
    # What it takes, so the client can see that q= is the search it wanted.
    assert problem["detail"].startswith("This operation does not take `email` (it takes: ")
    assert "`where`" in problem["detail"]
    # Declared parameters, those of dependencies (limit) included, are accepted.
    assert client.get("/v1/contacts?limit=5", headers=bearer(key)).status_code == 200


def test_the_key_is_checked_before_the_parameters(client: TestClient) -> None:
    response = client.get("/v1/contacts?email=ada@example.com")
    assert_problem(response, 401)


def test_every_v1_operation_documents_the_400(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        if path.startswith("/v1/"):
            for method, operation in item.items():
                assert "400" in operation["responses"], (method, path)
