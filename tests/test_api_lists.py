"""/v1/lists and a contact's status on lists against a real PostgreSQL: CRUD,
auth and isolation, validation, idempotency, template errors with their
line, statuses with their timeline and outbox events, the upsert's
`subscriptions`, the dev inbox (GET /v1/dev/inbox), and rules that read `subscribed "list"`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.keys.store import IssuedKey
from test_api_contacts import contacts_client
from test_api_foundation import assert_problem, bearer, outbox_types
from test_api_realtime import deploy
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/lists", {"name": "news", "title": "News"}),
    ("GET", "/v1/lists", None),
    ("GET", "/v1/lists/news", None),
    ("PATCH", "/v1/lists/news", {"title": "Other"}),
    ("DELETE", "/v1/lists/news", None),
    ("POST", "/v1/contacts/con_x/subscriptions", {"list": "news"}),
]


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    # No SMTP URL: confirmation emails go to the dev inbox.
    yield from contacts_client(migrated_url)


def create_list(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/lists", json={"title": "News", **body}, headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def new_contact(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/contacts", json={"email": "ada@example.co.ke", **body}, headers=bearer(key)
    )
    assert response.status_code in (200, 201), response.text
    contact: dict[str, Any] = response.json()
    return contact


def set_status(client: TestClient, key: IssuedKey, contact_id: str, **body: Any) -> dict[str, Any]:
    response = client.post(
        f"/v1/contacts/{contact_id}/subscriptions", json=body, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    contact: dict[str, Any] = response.json()
    return contact


def statuses(contact: dict[str, Any]) -> dict[str, str]:
    return {s["list"]: s["status"] for s in contact["subscriptions"]}


def list_events(url: str, workspace_id: int) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_type, payload->'data' FROM outbox WHERE workspace_id = %s"
            " AND event_type LIKE 'list.%%' ORDER BY id",
            (workspace_id,),
        ).fetchall()
    return [(t, d) for t, d in rows]


def timeline(client: TestClient, key: IssuedKey, contact_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/contacts/{contact_id}/timeline", headers=bearer(key))
    assert response.status_code == 200, response.text
    return [e for e in response.json()["data"] if e["name"].startswith("list.")]


# ---- lists --------------------------------------------------------------------------


def test_list_lifecycle(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    created = create_list(client, key, name="news", double_opt_in=True)
    assert created["object"] == "list" and created["name"] == "news"
    assert created["title"] == "News" and created["double_opt_in"] is True
    # Defaults that work as they are.
    assert "{{ confirm_url }}" in created["confirmation_body"]
    assert created["confirmation_subject"] and created["landing_page"]
    assert client.get("/v1/lists/news", headers=bearer(key)).json() == created

    response = client.patch(
        "/v1/lists/news",
        json={"title": "Weekly news", "confirmation_subject": "Confirm {{ list.title }}"},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["title"] == "Weekly news" and updated["updated_at"] >= created["updated_at"]
    # Nothing to change: no event.
    same = client.patch("/v1/lists/news", json={"title": "Weekly news"}, headers=bearer(key))
    assert same.status_code == 200 and same.json() == updated

    create_list(client, key, name="offers", title="Offers")
    page = client.get("/v1/lists?limit=1", headers=bearer(key)).json()
    assert [item["name"] for item in page["data"]] == ["news"] and page["has_more"]
    rest = client.get(
        f"/v1/lists?limit=1&starting_after={page['next_cursor']}", headers=bearer(key)
    ).json()
    assert [item["name"] for item in rest["data"]] == ["offers"] and not rest["has_more"]

    deleted = client.delete("/v1/lists/news", headers=bearer(key))
    assert deleted.status_code == 200
    assert deleted.json() == {
        "object": "list",
        "name": "news",
        "deleted": True,
        "subscriptions_removed": 0,
    }
    assert_problem(client.get("/v1/lists/news", headers=bearer(key)), 404)
    assert_problem(client.delete("/v1/lists/news", headers=bearer(key)), 404)
    events = list_events(migrated_url, key.workspace_id)
    assert [t for t, _ in events] == [
        "list.created",
        "list.updated",
        "list.created",
        "list.deleted",
    ]
    assert events[1][1]["previous_attributes"] == {
        "title": "News",
        "confirmation_subject": created["confirmation_subject"],
    }


def test_duplicate_name_is_409(client: TestClient, key: IssuedKey) -> None:
    create_list(client, key, name="news")
    assert_problem(
        client.post("/v1/lists", json={"name": "news", "title": "X"}, headers=bearer(key)), 409
    )


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_every_list_route_needs_a_key(
    client: TestClient, method: str, path: str, body: Any
) -> None:
    for headers in ({}, {"Authorization": "Bearer sk_live_wrong"}):
        assert_problem(client.request(method, path, json=body, headers=headers), 401)


def test_a_key_never_sees_another_workspaces_lists(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    create_list(client, key, name="news")
    contact = new_contact(client, key)
    assert_problem(client.get("/v1/lists/news", headers=bearer(other_key)), 404)
    assert_problem(
        client.patch("/v1/lists/news", json={"title": "Mine"}, headers=bearer(other_key)), 404
    )
    assert_problem(client.delete("/v1/lists/news", headers=bearer(other_key)), 404)
    assert client.get("/v1/lists", headers=bearer(other_key)).json()["data"] == []
    # Neither the other workspace's contact nor its list.
    assert_problem(
        client.post(
            f"/v1/contacts/{contact['id']}/subscriptions",
            json={"list": "news"},
            headers=bearer(other_key),
        ),
        422,  # the list is unknown there (checked first: lists lock before contacts)
    )
    create_list(client, other_key, name="news")
    assert_problem(
        client.post(
            f"/v1/contacts/{contact['id']}/subscriptions",
            json={"list": "news"},
            headers=bearer(other_key),
        ),
        404,
    )
    assert client.get("/v1/lists/news", headers=bearer(key)).json()["title"] == "News"


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"title": "X"}, "/name"),
        ({"name": "news"}, "/title"),
        ({"name": "has space", "title": "X"}, "/name"),
        ({"name": "-dash", "title": "X"}, "/name"),
        ({"name": "n" * 101, "title": "X"}, "/name"),
        ({"name": "news", "title": " padded "}, "/title"),
        ({"name": "news", "title": "X", "extra": 1}, "/extra"),
        ({"name": "news", "title": "X", "double_opt_in": "maybe"}, "/double_opt_in"),
        ({"name": "news", "title": "X", "confirmation_subject": ""}, "/confirmation_subject"),
        ({"name": "news", "title": "X", "landing_page": "a\x00b"}, "/landing_page"),
        ({"name": "news", "title": "X", "confirmation_body": "x" * 20_001}, "/confirmation_body"),
    ],
)
def test_invalid_list_bodies_are_422(
    client: TestClient, key: IssuedKey, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(client.post("/v1/lists", json=body, headers=bearer(key)), 422)
    assert pointer in [e["pointer"] for e in problem["errors"]]


def test_create_replays_with_the_same_key(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    headers = bearer(key, **{"Idempotency-Key": "list-1"})
    body = {"name": "news", "title": "News"}
    first = client.post("/v1/lists", json=body, headers=headers)
    again = client.post("/v1/lists", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert [t for t, _ in list_events(migrated_url, key.workspace_id)] == ["list.created"]


# ---- template errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "source", "line", "words"),
    [
        ("confirmation_body", "Hello,\n\n{{ confirm_url }\n", 3, "unexpected '}'"),
        ("confirmation_body", "Hi\n{% if contact.name %}\n{{ confirm_url }}\n", 3, "endif"),
        ("confirmation_subject", "Hi {{ contakt.name }}", 1, "unknown name 'contakt'"),
        ("landing_page", "<p>ok</p>\n<p>{{ confirm_url }}</p>", 2, "unknown name 'confirm_url'"),
        ("landing_page", "a\nb\n{{ 1 // 0 }}", 3, "ZeroDivisionError"),
    ],
)
def test_template_errors_are_refused_with_their_line(
    client: TestClient, key: IssuedKey, member: str, source: str, line: int, words: str
) -> None:
    body = {"name": "news", "title": "News", member: source}
    problem = assert_problem(client.post("/v1/lists", json=body, headers=bearer(key)), 422)
    [error] = problem["errors"]
    assert error["pointer"] == f"/{member}" and error["code"] == "template"
    assert error["detail"].startswith(f"line {line}: ") and words in error["detail"]
    assert f"line {line}" in problem["detail"]
    assert_problem(client.get("/v1/lists/news", headers=bearer(key)), 404)


def test_every_bad_template_is_named(client: TestClient, key: IssuedKey) -> None:
    body = {
        "name": "news",
        "title": "News",
        "confirmation_subject": "{{ x }}",
        "landing_page": "{% for %}",
    }
    problem = assert_problem(client.post("/v1/lists", json=body, headers=bearer(key)), 422)
    assert [e["pointer"] for e in problem["errors"]] == ["/confirmation_subject", "/landing_page"]


def test_sandbox_keeps_python_internals_out(client: TestClient, key: IssuedKey) -> None:
    # The sandbox hides unsafe attributes (they render as nothing) and refuses unsafe calls.
    body = {
        "name": "news",
        "title": "News",
        "landing_page": "{{ list.__class__.__mro__ }}\n{{ ''.format.__self__ }}",
    }
    create_list(client, key, **body)
    unsafe = {"name": "news2", "title": "News", "landing_page": "x\n{{ range.__call__(10**9) }}"}
    problem = assert_problem(client.post("/v1/lists", json=unsafe, headers=bearer(key)), 422)
    assert problem["errors"][0]["detail"].startswith("line 2: ")


def test_double_opt_in_needs_the_confirm_link(client: TestClient, key: IssuedKey) -> None:
    body = {"name": "news", "title": "News", "double_opt_in": True, "confirmation_body": "Hi"}
    problem = assert_problem(client.post("/v1/lists", json=body, headers=bearer(key)), 422)
    assert problem["errors"][0]["pointer"] == "/confirmation_body"
    assert "confirm_url" in problem["errors"][0]["detail"]
    # Turning it on later is checked against the stored body too.
    create_list(client, key, name="news", confirmation_body="Hi {{ contact.name }}")
    problem = assert_problem(
        client.patch("/v1/lists/news", json={"double_opt_in": True}, headers=bearer(key)), 422
    )
    assert problem["errors"][0]["pointer"] == "/confirmation_body"


def test_a_bad_template_in_an_update_changes_nothing(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    create_list(client, key, name="news")
    problem = assert_problem(
        client.patch(
            "/v1/lists/news",
            json={"title": "New", "landing_page": "<h1>\n{{ contact.name | nosuchfilter }}"},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/landing_page"
    assert problem["errors"][0]["detail"].startswith("line 2: ")
    assert client.get("/v1/lists/news", headers=bearer(key)).json()["title"] == "News"
    assert [t for t, _ in list_events(migrated_url, key.workspace_id)] == ["list.created"]


# ---- statuses -------------------------------------------------------------------------


def test_statuses_on_a_single_opt_in_list(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    create_list(client, key, name="news")
    contact = new_contact(client, key)
    cid = contact["id"]
    assert statuses(set_status(client, key, cid, list="news")) == {"news": "subscribed"}
    # Again: nothing changes, nothing fires.
    assert statuses(set_status(client, key, cid, list="news")) == {"news": "subscribed"}
    after = set_status(client, key, cid, list="news", status="unsubscribed", source="form")
    assert statuses(after) == {"news": "unsubscribed"}
    assert statuses(set_status(client, key, cid, list="news", status="bounced")) == {
        "news": "bounced"
    }
    events = list_events(migrated_url, key.workspace_id)
    assert [t for t, _ in events] == [
        "list.created",
        "list.subscribed",
        "list.unsubscribed",
        "list.bounced",
    ]
    assert events[2][1] == {
        "contact_id": cid,
        "list": "news",
        "status": "unsubscribed",
        "previous_status": "subscribed",
        "source": "form",
    }
    assert [(e["name"], e["props"], e["source"]) for e in timeline(client, key, cid)] == [
        ("list.subscribed", {"list": "news", "from": None, "to": "subscribed"}, "api"),
        ("list.unsubscribed", {"list": "news", "from": "subscribed", "to": "unsubscribed"}, "form"),
        ("list.bounced", {"list": "news", "from": "unsubscribed", "to": "bounced"}, "api"),
    ]
    detail = client.get(f"/v1/contacts/{cid}", headers=bearer(key)).json()
    assert detail["subscriptions"][0]["status"] == "bounced"
    assert detail["event_counts"]["list.subscribed"] == 1


def test_subscription_errors(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    contact = new_contact(client, key)
    problem = assert_problem(
        client.post(
            f"/v1/contacts/{contact['id']}/subscriptions",
            json={"list": "nope"},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/list"
    create_list(client, key, name="news")
    assert_problem(
        client.post(
            "/v1/contacts/con_nobody/subscriptions", json={"list": "news"}, headers=bearer(key)
        ),
        404,
    )
    for body in ({"list": "news", "status": "pending"}, {"list": "news", "x": 1}, {}):
        assert_problem(
            client.post(
                f"/v1/contacts/{contact['id']}/subscriptions", json=body, headers=bearer(key)
            ),
            422,
        )
    # Double opt-in needs an email to confirm with.
    create_list(client, key, name="doi", double_opt_in=True)
    phone_only = new_contact(client, key, email=None, phone="+254712345679")
    problem = assert_problem(
        client.post(
            f"/v1/contacts/{phone_only['id']}/subscriptions",
            json={"list": "doi"},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["errors"][0]["code"] == "no_email"
    assert [t for t, _ in list_events(migrated_url, key.workspace_id)] == [
        "list.created",
        "list.created",
    ]


def test_subscription_replays_with_the_same_key(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    create_list(client, key, name="news")
    cid = new_contact(client, key)["id"]
    headers = bearer(key, **{"Idempotency-Key": "sub-1"})
    first = client.post(f"/v1/contacts/{cid}/subscriptions", json={"list": "news"}, headers=headers)
    set_status(client, key, cid, list="news", status="unsubscribed")
    again = client.post(f"/v1/contacts/{cid}/subscriptions", json={"list": "news"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert [t for t, _ in list_events(migrated_url, key.workspace_id)][1:] == [
        "list.subscribed",
        "list.unsubscribed",
    ]


def test_upsert_sets_subscriptions(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    create_list(client, key, name="news")
    create_list(client, key, name="offers")
    body = {"email": "ada@example.co.ke", "subscriptions": {"news": "subscribed"}}
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    contact = response.json()
    assert statuses(contact) == {"news": "subscribed"}
    body = {
        "email": "ada@example.co.ke",
        "source": "form",
        "subscriptions": {"news": "unsubscribed", "offers": "subscribed"},
    }
    updated = client.post("/v1/contacts", json=body, headers=bearer(key)).json()
    assert statuses(updated) == {"news": "unsubscribed", "offers": "subscribed"}
    types = [t for t in outbox_types(migrated_url, key.workspace_id) if not t.startswith("list.c")]
    # The contact's own event first; a subscription-only change is no contact.updated.
    assert types == ["contact.created", "list.subscribed", "list.unsubscribed", "list.subscribed"]
    assert {e["source"] for e in timeline(client, key, contact["id"])} == {"api", "form"}
    # An unknown list refuses the whole upsert.
    body = {"email": "bo@example.co.ke", "subscriptions": {"news": "subscribed", "nope": "bounced"}}
    problem = assert_problem(client.post("/v1/contacts", json=body, headers=bearer(key)), 422)
    assert problem["errors"][0]["pointer"] == "/subscriptions/nope"
    listed = client.get("/v1/contacts", headers=bearer(key)).json()["data"]
    assert [c["email"] for c in listed] == ["ada@example.co.ke"]
    bad = {"email": "bo@example.co.ke", "subscriptions": {"news": "pending"}}
    assert_problem(client.post("/v1/contacts", json=bad, headers=bearer(key)), 422)


def dev_inbox(client: TestClient, key: IssuedKey) -> list[dict[str, Any]]:
    response = client.get("/v1/dev/inbox?limit=100", headers=bearer(key))
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["data"]
    return messages


def test_double_opt_in_without_smtp_uses_the_dev_inbox(client: TestClient, key: IssuedKey) -> None:
    # The dev inbox moved from the public /dev/inbox page to GET /v1/dev/inbox,
    # read with the workspace's key (issue #11).
    create_list(
        client,
        key,
        name="doi",
        title="Daily <Deals>",
        double_opt_in=True,
        confirmation_subject="Confirm, {{ contact.name }}",
    )
    body = {"email": "dev@example.co.ke", "name": "Dev", "subscriptions": {"doi": "subscribed"}}
    contact = client.post("/v1/contacts", json=body, headers=bearer(key)).json()
    assert statuses(contact) == {"doi": "pending"}
    [message] = dev_inbox(client, key)
    assert message["headers"]["Subject"] == "Confirm, Dev"
    assert message["headers"]["To"] == "dev@example.co.ke"
    links = [link for link in message["links"] if "/confirm/" in link]
    assert links and links[0] in message["text"], message
    # Upserting again does not send another email; asking explicitly does.
    client.post("/v1/contacts", json=body, headers=bearer(key))
    assert len(dev_inbox(client, key)) == 1
    set_status(client, key, contact["id"], list="doi")
    assert [m["headers"]["Subject"] for m in dev_inbox(client, key)] == ["Confirm, Dev"] * 2
    # The link's button confirms (the dev inbox links to public_url, default host:port).
    path = links[0].split("/", 3)[3]
    page = client.post("/" + path)
    assert page.status_code == 200, page.text
    assert "Daily &lt;Deals&gt;" in page.text
    detail = client.get(f"/v1/contacts/{contact['id']}", headers=bearer(key)).json()
    assert statuses(detail) == {"doi": "subscribed"}


# ---- rules -------------------------------------------------------------------------


def test_segments_follow_subscriptions(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    create_list(client, key, name="newsletter")
    deploy(client, key, 'segment readers { subscribed "newsletter" }')
    cid = new_contact(client, key)["id"]

    def segments() -> list[str]:
        detail = client.get(f"/v1/contacts/{cid}", headers=bearer(key)).json()
        segs: list[str] = detail["segments"]
        return segs

    assert segments() == []
    set_status(client, key, cid, list="newsletter")
    assert segments() == ["readers"]
    set_status(client, key, cid, list="newsletter", status="unsubscribed")
    assert segments() == []
    set_status(client, key, cid, list="newsletter")
    assert segments() == ["readers"]
    # Deleting the list removes the statuses: the contact leaves.
    deleted = client.delete("/v1/lists/newsletter", headers=bearer(key))
    assert deleted.json()["subscriptions_removed"] == 1
    assert segments() == []
    types = outbox_types(migrated_url, key.workspace_id)
    assert [t for t in types if t.startswith("segment.")] == [
        "segment.entered",
        "segment.exited",
        "segment.entered",
        "segment.exited",
    ]


def test_rules_count_list_events_on_the_timeline(client: TestClient, key: IssuedKey) -> None:
    create_list(client, key, name="news")
    deploy(client, key, 'segment churned { count(event "list.unsubscribed" within 30d) >= 1 }')
    cid = new_contact(client, key)["id"]
    set_status(client, key, cid, list="news")
    set_status(client, key, cid, list="news", status="unsubscribed")
    detail = client.get(f"/v1/contacts/{cid}", headers=bearer(key)).json()
    assert detail["segments"] == ["churned"]


def test_a_lists_contacts_by_status(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    assert (
        client.post("/v1/lists", json={"name": "news", "title": "News"}, headers=h).status_code
        == 201
    )
    ids = {}
    for email, status in (
        ("a@example.com", "subscribed"),
        ("b@example.com", "unsubscribed"),
        ("c@example.com", "subscribed"),
    ):
        made = client.post(
            "/v1/contacts", json={"email": email, "subscriptions": {"news": status}}, headers=h
        )
        assert made.status_code == 201, made.text
        ids[email] = made.json()["id"]
    client.post("/v1/contacts", json={"email": "d@example.com"}, headers=h)
    every = client.get("/v1/lists/news/contacts", headers=h).json()
    assert [c["email"] for c in every["data"]] == sorted(ids, key=ids.__getitem__)
    subscribed = client.get(
        "/v1/lists/news/contacts", params={"status": "subscribed", "limit": 1}, headers=h
    ).json()
    assert subscribed["has_more"] is True and len(subscribed["data"]) == 1
    rest = client.get(
        "/v1/lists/news/contacts",
        params={"status": "subscribed", "starting_after": subscribed["next_cursor"]},
        headers=h,
    ).json()
    assert {c["email"] for c in subscribed["data"] + rest["data"]} == {
        "a@example.com",
        "c@example.com",
    }
    assert_problem(
        client.get("/v1/lists/news/contacts", params={"status": "maybe"}, headers=h), 422
    )
    assert_problem(client.get("/v1/lists/nope/contacts", headers=h), 404)
    assert_problem(client.get("/v1/lists/news/contacts"), 401)
    other = new_key(migrated_url)
    try:
        assert_problem(client.get("/v1/lists/news/contacts", headers=bearer(other)), 404)
    finally:
        drop_workspace(migrated_url, other.workspace_id)
