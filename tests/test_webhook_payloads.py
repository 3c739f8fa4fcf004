"""The OpenAPI document's webhooks section describes every event type, and the
payloads the service writes validate against their schemas."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.http.webhook_payloads import PAYLOADS
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from nudgel.api.webhooks.outbox import EVENT_TYPES
from test_api_foundation import bearer
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


def test_every_event_type_is_in_the_documents_webhooks(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["webhooks"]) == set(EVENT_TYPES) == set(PAYLOADS)
    for event_type, item in doc["webhooks"].items():
        operation = item["post"]
        assert operation["summary"] and event_type in operation["description"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]


def test_the_payloads_written_validate_against_their_schemas(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    rules = 'segment vip { tag "vip" }\nscore heat {\n  +10 per event "open"\n}\nlifecycle {\n  lead when email is set\n}\n'
    assert client.put("/v1/rules", json={"files": {"r.rules": rules}}, headers=h).status_code == 200
    client.post("/v1/lists", json={"name": "news", "title": "News"}, headers=h)
    client.patch("/v1/lists/news", json={"title": "Weekly"}, headers=h)
    client.post("/v1/tags", json={"name": "vip", "color": "#ff0000"}, headers=h)
    client.patch("/v1/tags/vip", json={"color": "#00ff00"}, headers=h)
    client.post("/v1/fields", json={"name": "plan", "type": "text"}, headers=h)
    made = client.post(
        "/v1/contacts",
        json={"email": "a@example.com", "tags": ["vip"], "subscriptions": {"news": "subscribed"}},
        headers=h,
    ).json()
    client.post("/v1/events", json={"email": "a@example.com", "name": "open"}, headers=h)
    client.post("/v1/contacts", json={"email": "a@example.com", "name": "Ada"}, headers=h)
    client.post("/v1/contacts", json={"phone": "+254712345678"}, headers=h)
    client.post(
        "/v1/contacts", json={"email": "a@example.com", "phone": "+254712345678"}, headers=h
    )
    client.delete(f"/v1/contacts/{made['id']}/tags/vip", headers=h)
    client.delete(f"/v1/contacts/{made['id']}", headers=h)
    client.delete("/v1/fields/plan", headers=h)
    client.delete("/v1/lists/news", headers=h)
    client.delete("/v1/tags/vip", headers=h)
    with psycopg.connect(migrated_url) as conn:
        rows = conn.execute(
            "SELECT event_type, payload FROM outbox WHERE workspace_id = %s ORDER BY id",
            (key.workspace_id,),
        ).fetchall()
    seen = set()
    for event_type, payload in rows:
        model, _ = PAYLOADS[event_type]
        model.model_validate(payload["data"])
        seen.add(event_type)
    # The workload above writes most types; the rest have their own tests.
    assert len(seen) >= 16, sorted(seen)
