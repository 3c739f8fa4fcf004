"""/v1/webhooks against a real PostgreSQL: create (secret shown once), list, get,
delete, deliveries; invalid bodies, auth, workspace isolation, idempotency."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from nudgel.api.webhooks.outbox import EVENT_TYPES
from standardwebhooks.webhooks import Webhook
from test_api_foundation import assert_problem, bearer

pytestmark = pytest.mark.postgres

HOOK = {"url": "https://example.com/hooks/nudgel", "events": ["contact.created"]}

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/webhooks", HOOK),
    ("GET", "/v1/webhooks", None),
    ("GET", "/v1/webhooks/wh_x", None),
    ("DELETE", "/v1/webhooks/wh_x", None),
    ("GET", "/v1/webhooks/wh_x/deliveries", None),
]


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    # No worker: these tests look at the API only (test_webhook_delivery sends).
    app = create_app(Settings(database_url=migrated_url, run_worker=False))
    with TestClient(app) as client:
        yield client


def create(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/webhooks", json={**HOOK, **body}, headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# ---- create, read, list, delete ----------------------------------------------------


def test_create_returns_the_secret_once(client: TestClient, key: IssuedKey) -> None:
    created = create(client, key, events=["contact.created", "contact.deleted"])
    assert created["object"] == "webhook" and created["id"].startswith("wh_")
    assert created["url"] == HOOK["url"]
    assert created["events"] == ["contact.created", "contact.deleted"]
    assert created["created_at"]
    secret = created["secret"]
    assert secret.startswith("whsec_")
    Webhook(secret)  # a valid Standard Webhooks secret
    got = client.get(f"/v1/webhooks/{created['id']}", headers=bearer(key))
    assert got.status_code == 200
    assert got.json() == {k: v for k, v in created.items() if k != "secret"}
    listed = client.get("/v1/webhooks", headers=bearer(key)).json()
    assert listed["data"] == [got.json()]
    assert secret not in got.text and secret not in str(listed)
    # Every webhook gets its own secret.
    assert create(client, key)["secret"] != secret


def test_url_scheme_is_stored_in_lower_case(client: TestClient, key: IssuedKey) -> None:
    created = create(client, key, url="HTTPS://Example.com/Hook?a=B")
    assert created["url"] == "https://Example.com/Hook?a=B"


def test_all_events_and_duplicates(client: TestClient, key: IssuedKey) -> None:
    assert create(client, key, events=["*"])["events"] == ["*"]
    assert create(client, key, events=["tag.created", "*"])["events"] == ["*"]
    twice = create(client, key, events=["tag.created", "field.created", "tag.created"])
    assert twice["events"] == ["tag.created", "field.created"]
    every = sorted(EVENT_TYPES)
    assert create(client, key, events=every)["events"] == every


def test_list_is_paginated_in_creation_order(client: TestClient, key: IssuedKey) -> None:
    ids = [create(client, key, url=f"http://example.com/{i}")["id"] for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["starting_after"] = cursor
        page = client.get("/v1/webhooks", params=params, headers=bearer(key)).json()
        seen += [w["id"] for w in page["data"]]
        assert all("secret" not in w for w in page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == ids


def test_delete(client: TestClient, key: IssuedKey) -> None:
    hook = create(client, key)
    response = client.delete(f"/v1/webhooks/{hook['id']}", headers=bearer(key))
    assert response.status_code == 200
    assert response.json() == {"object": "webhook", "id": hook["id"], "deleted": True}
    for method in ("GET", "DELETE"):
        assert_problem(
            client.request(method, f"/v1/webhooks/{hook['id']}", headers=bearer(key)), 404
        )
    assert_problem(client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=bearer(key)), 404)
    assert client.get("/v1/webhooks", headers=bearer(key)).json()["data"] == []


def test_deliveries_of_a_new_webhook_are_empty(client: TestClient, key: IssuedKey) -> None:
    hook = create(client, key)
    response = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=bearer(key))
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [], "has_more": False, "next_cursor": None}
    bad = client.get(
        f"/v1/webhooks/{hook['id']}/deliveries",
        params={"starting_after": "evt_1"},
        headers=bearer(key),
    )
    assert assert_problem(bad, 422)["errors"][0]["pointer"] == "/starting_after"


def test_changes_to_webhooks_emit_no_events(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    hook = create(client, key)
    client.delete(f"/v1/webhooks/{hook['id']}", headers=bearer(key))
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE workspace_id = %s", (key.workspace_id,)
        ).fetchone()
    assert row == (0,)


# ---- invalid bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"events": ["*"]}, "/url"),
        ({"url": "https://example.com"}, "/events"),
        ({**HOOK, "url": "ftp://example.com/x"}, "/url"),
        ({**HOOK, "url": "example.com/hook"}, "/url"),
        ({**HOOK, "url": "/relative/path"}, "/url"),
        ({**HOOK, "url": "https://"}, "/url"),
        ({**HOOK, "url": "https://exa mple.com/"}, "/url"),
        ({**HOOK, "url": "https://user:pw@example.com/"}, "/url"),
        ({**HOOK, "url": "https://example.com/" + "x" * 2100}, "/url"),
        ({**HOOK, "url": 42}, "/url"),
        ({**HOOK, "events": []}, "/events"),
        ({**HOOK, "events": "contact.created"}, "/events"),
        ({**HOOK, "events": ["contact.exploded"]}, "/events/0"),
        ({**HOOK, "events": ["contact.created", "CONTACT.CREATED"]}, "/events/1"),
        ({**HOOK, "events": ["contact.*"]}, "/events/0"),
        ({**HOOK, "events": [None]}, "/events/0"),
        ({**HOOK, "secret": "whsec_mine"}, "/secret"),
    ],
)
def test_invalid_bodies_are_422(
    client: TestClient, key: IssuedKey, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(client.post("/v1/webhooks", json=body, headers=bearer(key)), 422)
    assert [e["pointer"] for e in problem["errors"]] == [pointer]
    assert client.get("/v1/webhooks", headers=bearer(key)).json()["data"] == []


def test_not_json_is_422(client: TestClient, key: IssuedKey) -> None:
    response = client.post(
        "/v1/webhooks",
        content=b"{not json",
        headers=bearer(key, **{"Content-Type": "application/json"}),
    )
    assert_problem(response, 422)


# ---- auth and isolation ------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Bearer sk_live_wrong"])
def test_every_webhook_route_needs_a_key(
    client: TestClient, method: str, path: str, body: Any, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, json=body, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_key_never_sees_another_workspaces_webhooks(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    hook = create(client, key)
    path = f"/v1/webhooks/{hook['id']}"
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/deliveries")]:
        assert_problem(client.request(method, path + suffix, headers=bearer(other_key)), 404)
    assert client.get("/v1/webhooks", headers=bearer(other_key)).json()["data"] == []
    # Still there for its owner.
    assert client.get(path, headers=bearer(key)).status_code == 200


# ---- idempotency -------------------------------------------------------------------


def test_create_replays_with_the_same_key(client: TestClient, key: IssuedKey) -> None:
    headers = bearer(key, **{"Idempotency-Key": secrets.token_hex(8)})
    first = client.post("/v1/webhooks", json=HOOK, headers=headers)
    again = client.post("/v1/webhooks", json=HOOK, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    # The retry gets what the first call answered, secret included: it may
    # be the only answer the client ever saw.
    assert again.json() == first.json()
    assert len(client.get("/v1/webhooks", headers=bearer(key)).json()["data"]) == 1
    other = client.post(
        "/v1/webhooks", json={**HOOK, "url": "https://example.com/other"}, headers=headers
    )
    assert_problem(other, 422)
