"""/v1/contacts against a real PostgreSQL: upsert, normalisation, merge and its
protections, field validation, auth and isolation, idempotency, where=, tags, delete."""

from __future__ import annotations

from collections.abc import Iterator
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

CURL_BODY = {
    "email": "ada@example.co.ke",
    "phone": "+254712345678",
    "name": "Ada Wanjiku",
    "tags": ["premium", "KE"],
    "fields": {"plan": "pro", "company": "Acme Ltd"},
}

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/contacts", {"email": "a@example.com"}),
    ("GET", "/v1/contacts", None),
    ("GET", "/v1/contacts/con_x", None),
    ("DELETE", "/v1/contacts/con_x", None),
    ("POST", "/v1/contacts/con_x/tags", {"tags": ["a"]}),
    ("DELETE", "/v1/contacts/con_x/tags/a", None),
]


def contacts_client(url: str) -> Iterator[TestClient]:
    """The app as the contact and event tests run it (one blocked email; webhooks may
    reach the test receivers on 127.0.0.1, also for the worker it runs)."""
    app = create_app(
        Settings(
            database_url=url, blocked_identifiers=["test@example.com"], webhook_allow_private=True
        )
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    for name, type_ in [("plan", "text"), ("company", "text"), ("ltv", "number")]:
        response = client.post(
            "/v1/fields", json={"name": name, "type": type_}, headers=bearer(issued)
        )
        assert response.status_code == 201
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def contact_types(url: str, workspace_id: int) -> list[str]:
    return [t for t in outbox_types(url, workspace_id) if not t.startswith(("field.", "tag."))]


def count(url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def add_event(url: str, contact_id: str, name: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO events (contact_pk, name, at) SELECT pk, %s, now() FROM contacts"
            " WHERE id = %s",
            (name, contact_id),
        )


# ---- upsert -----------------------------------------------------------------------


def test_the_issue_body_creates_a_normalised_contact(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    body = {**CURL_BODY, "email": "  Ada@Example.CO.KE ", "phone": "0712 345678"}
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    contact = response.json()
    assert contact["object"] == "contact" and contact["id"].startswith("con_")
    assert contact["email"] == "ada@example.co.ke"
    assert contact["phone"] == "+254712345678"
    assert contact["name"] == "Ada Wanjiku"
    assert contact["fields"] == {"plan": "pro", "company": "Acme Ltd"}
    assert contact["tags"] == [{"name": "KE", "color": None}, {"name": "premium", "color": None}]
    assert contact["subscriptions"] == [] and contact["created_at"] and contact["updated_at"]
    assert contact_types(migrated_url, key.workspace_id) == ["contact.created", "contact.tagged"]
    # Unknown tags were defined, without a colour.
    assert client.get("/v1/tags/premium", headers=bearer(key)).json()["color"] is None
    # The exact curl body works as is too (it matches the same contact).
    again = client.post("/v1/contacts", json=CURL_BODY, headers=bearer(key))
    assert again.status_code == 200 and again.json()["id"] == contact["id"]


def test_update_by_any_identifier(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    created = client.post("/v1/contacts", json=CURL_BODY, headers=h).json()
    updated = client.post(
        "/v1/contacts",
        json={"phone": "+254 712 345 678", "name": "Ada W.", "fields": {"ltv": 12.5, "plan": ""}},
        headers=h,
    )
    assert updated.status_code == 200
    got = updated.json()
    assert got["id"] == created["id"] and got["name"] == "Ada W."
    # Empty values never clear a stored one.
    assert got["fields"] == {"plan": "pro", "company": "Acme Ltd", "ltv": 12.5}
    assert got["email"] == "ada@example.co.ke"
    # The same request again changes nothing and fires nothing.
    same = client.post("/v1/contacts", json={"phone": "+254712345678"}, headers=h)
    assert same.status_code == 200
    assert contact_types(migrated_url, key.workspace_id) == [
        "contact.created",
        "contact.tagged",
        "contact.updated",
    ]
    # Exact numbers are stored for the rules to read.
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT fields->>'ltv', jsonb_typeof(fields->'ltv') FROM contacts WHERE id = %s",
            (created["id"],),
        ).fetchone()
    assert row == ("12.5", "number")


def test_merge_into_the_oldest(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    older = client.post(
        "/v1/contacts",
        json={"email": "ada@example.com", "tags": ["a"], "fields": {"plan": "pro"}},
        headers=h,
    ).json()
    newer = client.post(
        "/v1/contacts",
        json={
            "phone": "+254712000001",
            "name": "Ada",
            "tags": ["b"],
            "fields": {"plan": "free", "company": "Acme"},
        },
        headers=h,
    ).json()
    add_event(migrated_url, older["id"], "signup")
    add_event(migrated_url, newer["id"], "purchase")
    merged = client.post(
        "/v1/contacts",
        json={"email": "ADA@example.com", "phone": "0712000001", "fields": {"ltv": 3}},
        headers=h,
    )
    assert merged.status_code == 200, merged.text
    contact = merged.json()
    assert contact["id"] == older["id"]
    assert contact["email"] == "ada@example.com" and contact["phone"] == "+254712000001"
    assert contact["name"] == "Ada"
    # The survivor's values win over the merged contact's, the request's over both.
    assert contact["fields"] == {"plan": "pro", "company": "Acme", "ltv": 3}
    assert [t["name"] for t in contact["tags"]] == ["a", "b"]
    assert_problem(client.get(f"/v1/contacts/{newer['id']}", headers=h), 404)
    detail = client.get(f"/v1/contacts/{older['id']}", headers=h).json()
    names = sorted(e["name"] for e in detail["recent_events"])
    assert names == ["contact.merged", "purchase", "signup"]
    timeline_merge = next(e for e in detail["recent_events"] if e["name"] == "contact.merged")
    assert timeline_merge["props"] == {"merged_ids": [newer["id"]]}
    types = contact_types(migrated_url, key.workspace_id)
    assert types[-1] == "contact.merged"
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT payload FROM outbox WHERE workspace_id = %s AND event_type = 'contact.merged'",
            (key.workspace_id,),
        ).fetchone()
    assert row is not None
    assert row[0]["data"]["id"] == older["id"] and row[0]["data"]["merged_ids"] == [newer["id"]]
    assert (
        count(
            migrated_url, "SELECT count(*) FROM contacts WHERE workspace_id = %s", key.workspace_id
        )
        == 1
    )


def test_different_external_ids_never_merge(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    a = client.post("/v1/contacts", json={"email": "a@example.com", "external_id": "u1"}, headers=h)
    b = client.post("/v1/contacts", json={"phone": "+254712000002", "external_id": "u2"}, headers=h)
    before = outbox_types(migrated_url, key.workspace_id)
    response = client.post(
        "/v1/contacts", json={"email": "a@example.com", "phone": "+254712000002"}, headers=h
    )
    problem = assert_problem(response, 409)
    assert "'u1'" in problem["detail"] and "'u2'" in problem["detail"]
    assert sorted(problem["external_ids"]) == ["u1", "u2"]
    # A request's own external id conflicts with the one of the contact it matches.
    assert_problem(
        client.post(
            "/v1/contacts", json={"email": "a@example.com", "external_id": "u3"}, headers=h
        ),
        409,
    )
    assert outbox_types(migrated_url, key.workspace_id) == before
    assert client.get(f"/v1/contacts/{a.json()['id']}", headers=h).json()["phone"] is None
    assert client.get(f"/v1/contacts/{b.json()['id']}", headers=h).json()["email"] is None


def test_blocked_values_never_match(client: TestClient, key: IssuedKey) -> None:
    h = bearer(key)
    first = client.post(
        "/v1/contacts", json={"email": "Test@Example.com", "phone": "+254712000003"}, headers=h
    )
    second = client.post("/v1/contacts", json={"email": "test@example.com"}, headers=h)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    # Stored in the profile all the same.
    assert first.json()["email"] == second.json()["email"] == "test@example.com"
    # Matching by phone finds the first and leaves the second alone.
    third = client.post(
        "/v1/contacts", json={"email": "test@example.com", "phone": "+254712000003"}, headers=h
    )
    assert third.status_code == 200 and third.json()["id"] == first.json()["id"]
    # A blocked value never replaces a real one.
    real = client.post(
        "/v1/contacts", json={"email": "real@example.com", "phone": "+254712000004"}, headers=h
    )
    kept = client.post(
        "/v1/contacts", json={"email": "test@example.com", "phone": "+254712000004"}, headers=h
    )
    assert kept.json()["id"] == real.json()["id"] and kept.json()["email"] == "real@example.com"
    assert len(client.get("/v1/contacts", headers=h).json()["data"]) == 3


@pytest.mark.parametrize(
    ("body", "pointer", "words"),
    [
        ({"email": "a@example.com", "fields": {"ltv": "a lot"}}, "/fields/ltv", ["ltv", "number"]),
        ({"email": "a@example.com", "fields": {"plan": 3}}, "/fields/plan", ["plan", "text"]),
        # Unknown fields are created on first write (#12), unless the name cannot be one.
        (
            {"email": "a@example.com", "fields": {"Not-A-Name": 1}},
            "/fields/Not-A-Name",
            ["identifier"],
        ),
        ({"email": "a@example.com", "fields": {"segment": 1}}, "/fields/segment", ["keyword"]),
        ({"email": "not an email"}, "/email", ["email"]),
        ({"email": "a@b"}, "/email", ["email"]),
        ({"phone": "12"}, "/phone", ["phone"]),
        ({"phone": "+254 1"}, "/phone", ["phone"]),
        ({"email": "a@example.com", "tags": [" x"]}, "/tags/0", []),
        ({"email": "a@example.com", "unknown": 1}, "/unknown", []),
    ],
)
def test_invalid_bodies_are_422(
    client: TestClient,
    key: IssuedKey,
    migrated_url: str,
    body: dict[str, Any],
    pointer: str,
    words: list[str],
) -> None:
    problem = assert_problem(client.post("/v1/contacts", json=body, headers=bearer(key)), 422)
    assert pointer in [e["pointer"] for e in problem["errors"]]
    assert all(w in problem["detail"] for w in words), problem["detail"]
    assert contact_types(migrated_url, key.workspace_id) == []


# ---- auth, isolation, idempotency ---------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "Bearer sk_live_wrong"])
def test_every_contact_route_needs_a_key(
    client: TestClient, method: str, path: str, body: Any, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, json=body, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_key_never_sees_another_workspaces_contacts(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    a, b = bearer(key), bearer(other_key)
    mine = client.post("/v1/contacts", json={**CURL_BODY}, headers=a).json()
    cid = mine["id"]
    assert client.get("/v1/contacts", headers=b).json()["data"] == []
    assert (
        client.get("/v1/contacts", params={"where": 'tag "premium"'}, headers=b).json()["data"]
        == []
    )
    assert_problem(client.get(f"/v1/contacts/{cid}", headers=b), 404)
    assert_problem(client.delete(f"/v1/contacts/{cid}", headers=b), 404)
    assert_problem(client.post(f"/v1/contacts/{cid}/tags", json={"tags": ["x"]}, headers=b), 404)
    assert_problem(client.delete(f"/v1/contacts/{cid}/tags/premium", headers=b), 404)
    # The same identifiers make a separate contact in the other workspace.
    theirs = client.post("/v1/contacts", json={"email": CURL_BODY["email"]}, headers=b)
    assert theirs.status_code == 201 and theirs.json()["id"] != cid
    assert client.get(f"/v1/contacts/{cid}", headers=a).json()["name"] == "Ada Wanjiku"


def test_upsert_replays_with_the_same_key(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key, **{"Idempotency-Key": "up-1"})
    first = client.post("/v1/contacts", json=CURL_BODY, headers=h)
    again = client.post("/v1/contacts", json=CURL_BODY, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert_problem(client.post("/v1/contacts", json={"email": "x@example.com"}, headers=h), 422)
    assert contact_types(migrated_url, key.workspace_id) == ["contact.created", "contact.tagged"]


# ---- where= -------------------------------------------------------------------------


def test_where_filters_with_the_rules_language(client: TestClient, key: IssuedKey) -> None:
    h = bearer(key)
    ada = client.post("/v1/contacts", json=CURL_BODY, headers=h).json()
    client.post(
        "/v1/contacts",
        json={"email": "bo@example.com", "tags": ["premium"], "fields": {"plan": "free"}},
        headers=h,
    )
    client.post(
        "/v1/contacts", json={"email": "cy@example.com", "fields": {"plan": "pro"}}, headers=h
    )
    page = client.get(
        "/v1/contacts", params={"where": 'tag "premium" and fields.plan = "pro"'}, headers=h
    ).json()
    assert [c["id"] for c in page["data"]] == [ada["id"]]
    pros = client.get(
        "/v1/contacts", params={"where": 'fields.plan = "pro"', "limit": 1}, headers=h
    )
    assert pros.json()["has_more"]
    rest = client.get(
        "/v1/contacts",
        params={"where": 'fields.plan = "pro"', "starting_after": pros.json()["next_cursor"]},
        headers=h,
    ).json()
    assert len(rest["data"]) == 1 and not rest["has_more"]
    everyone = client.get("/v1/contacts", headers=h).json()["data"]
    assert [c["id"] for c in everyone] == sorted(c["id"] for c in everyone)
    assert len(everyone) == 3


@pytest.mark.parametrize(
    ("where", "code", "line", "column"),
    [
        ('fields.nope = "x"', "E200", 1, 1),
        ('tag "a" and\n  fields.plan > 3', "E210", 2, 3),
        ('tag "a" and', "E100", 1, 12),
        ('tag "a" } segment other { tag "b"', "E100", 1, 1),
    ],
)
def test_bad_where_is_422_with_diagnostics(
    client: TestClient, key: IssuedKey, where: str, code: str, line: int, column: int
) -> None:
    response = client.get("/v1/contacts", params={"where": where}, headers=bearer(key))
    problem = assert_problem(response, 422)
    first = problem["diagnostics"][0]
    assert (first["code"], first["line"], first["column"]) == (code, line, column), problem
    assert first["file"] == "where"


# ---- tags and delete ----------------------------------------------------------------


def test_tag_and_untag(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    client.post("/v1/tags", json={"name": "vip", "color": "#ff8800"}, headers=h)
    cid = client.post("/v1/contacts", json={"email": "t@example.com"}, headers=h).json()["id"]
    tagged = client.post(f"/v1/contacts/{cid}/tags", json={"tags": ["vip", "new one"]}, headers=h)
    assert tagged.status_code == 200
    assert tagged.json()["tags"] == [
        {"name": "new one", "color": None},
        {"name": "vip", "color": "#ff8800"},
    ]
    # Adding what it has fires nothing.
    client.post(f"/v1/contacts/{cid}/tags", json={"tags": ["vip"]}, headers=h)
    untagged = client.delete(f"/v1/contacts/{cid}/tags/new%20one", headers=h)
    assert [t["name"] for t in untagged.json()["tags"]] == ["vip"]
    assert_problem(client.delete(f"/v1/contacts/{cid}/tags/new%20one", headers=h), 404)
    assert_problem(client.post("/v1/contacts/con_none/tags", json={"tags": ["a"]}, headers=h), 404)
    assert_problem(client.post(f"/v1/contacts/{cid}/tags", json={"tags": []}, headers=h), 422)
    assert contact_types(migrated_url, key.workspace_id) == [
        "contact.created",
        "contact.tagged",
        "contact.untagged",
    ]


def test_delete_erases_the_contact_and_its_events(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    cid = client.post("/v1/contacts", json=CURL_BODY, headers=h).json()["id"]
    add_event(migrated_url, cid, "signup")
    deleted = client.delete(f"/v1/contacts/{cid}", headers=h)
    assert deleted.json() == {"object": "contact", "id": cid, "deleted": True}
    assert_problem(client.get(f"/v1/contacts/{cid}", headers=h), 404)
    assert_problem(client.delete(f"/v1/contacts/{cid}", headers=h), 404)
    assert (
        count(
            migrated_url,
            "SELECT count(*) FROM events e WHERE NOT EXISTS"
            " (SELECT 1 FROM contacts c WHERE c.pk = e.contact_pk)",
        )
        == 0
    )
    assert contact_types(migrated_url, key.workspace_id)[-1] == "contact.deleted"
    # Its identifiers are free again.
    assert client.post("/v1/contacts", json=CURL_BODY, headers=h).status_code == 201
