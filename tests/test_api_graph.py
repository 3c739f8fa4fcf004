"""The contact graph against a real PostgreSQL: an event's `traits` applied as an
upsert (create, update, merge into the oldest, the merge protections, validation),
the origin of each profile value, and the timeline roll-ups on the contact detail."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from test_api_contacts import contact_types, contacts_client, count, drop_workspace, new_key
from test_api_foundation import assert_problem, bearer

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


def _workspace(url: str, client: TestClient) -> IssuedKey:
    issued = new_key(url)
    for name, type_ in [("plan", "text"), ("company", "text"), ("ltv", "number")]:
        response = client.post(
            "/v1/fields", json={"name": name, "type": type_}, headers=bearer(issued)
        )
        assert response.status_code == 201
    return issued


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = _workspace(migrated_url, client)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


@pytest.fixture
def other_key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = _workspace(migrated_url, client)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def record(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/events", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()
    return event


def upsert(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code in (200, 201), response.text
    contact: dict[str, Any] = response.json()
    return contact


def detail(client: TestClient, key: IssuedKey, contact_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/contacts/{contact_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    contact: dict[str, Any] = response.json()
    return contact


def events_of(url: str, workspace_id: int) -> int:
    return int(
        count(
            url,
            "SELECT count(*) FROM events e JOIN contacts c ON c.pk = e.contact_pk"
            " WHERE c.workspace_id = %s",
            workspace_id,
        )
    )


def contacts_of(url: str, workspace_id: int) -> int:
    return int(count(url, "SELECT count(*) FROM contacts WHERE workspace_id = %s", workspace_id))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---- traits create, update, merge -------------------------------------------------------


def test_traits_create_the_contact_the_event_names(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    event = record(
        client,
        key,
        email="Ada@Example.co.ke",
        name="form.submitted",
        source="form",
        traits={
            "name": " Ada Wanjiku ",
            "phone": "0712 345678",
            "tags": ["lead"],
            "fields": {"plan": "pro", "ltv": 12.5},
        },
    )
    contact = detail(client, key, event["contact_id"])
    assert contact["email"] == "ada@example.co.ke"
    assert contact["phone"] == "+254712345678"
    assert contact["name"] == "Ada Wanjiku"
    assert contact["fields"] == {"plan": "pro", "ltv": 12.5}
    assert [t["name"] for t in contact["tags"]] == ["lead"]
    assert contact_types(migrated_url, key.workspace_id) == [
        "contact.created",
        "contact.tagged",
        "event.recorded",
    ]
    # The trait phone identifies the same contact from now on.
    again = record(client, key, phone="+254712345678", name="page.viewed")
    assert again["contact_id"] == event["contact_id"]


def test_traits_update_the_contact_by_id_and_fire_only_on_change(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    created = upsert(client, key, email="grace@example.com", name="Grace")
    traits = {"name": "Grace Hopper", "fields": {"company": "Navy"}, "push_tokens": ["tok-1"]}
    record(client, key, contact_id=created["id"], name="profile.edited", traits=traits)
    contact = detail(client, key, created["id"])
    assert contact["name"] == "Grace Hopper" and contact["fields"] == {"company": "Navy"}
    assert contact["push_tokens"] == ["tok-1"] and contact["email"] == "grace@example.com"
    assert contact_types(migrated_url, key.workspace_id) == [
        "contact.created",
        "contact.updated",
        "event.recorded",
    ]
    # The same traits again change nothing: only the event is recorded.
    record(client, key, contact_id=created["id"], name="profile.edited", traits=traits)
    assert contact_types(migrated_url, key.workspace_id)[3:] == ["event.recorded"]
    # Empty traits are an event like any other.
    record(client, key, contact_id=created["id"], name="ping", traits={})
    assert contact_types(migrated_url, key.workspace_id)[4:] == ["event.recorded"]


def test_a_trait_phone_of_another_contact_merges_into_the_oldest(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    older = upsert(client, key, phone="+254712345678", name="Ada", fields={"plan": "pro"})
    first = record(client, key, contact_id=older["id"], name="a", at="2026-01-01T00:00:00Z")
    newer = record(client, key, email="ada@example.com", name="b", at="2026-01-02T00:00:00Z")
    assert newer["contact_id"] != older["id"]
    # The newer contact, named by id, brings the older one's phone: both merge
    # into the older one, and the event lands there.
    event = record(
        client,
        key,
        contact_id=newer["contact_id"],
        name="checkout",
        source="ecommerce",
        traits={"phone": "0712345678", "fields": {"company": "Acme"}},
    )
    assert event["contact_id"] == older["id"]
    assert_problem(client.get(f"/v1/contacts/{newer['contact_id']}", headers=h), 404)
    survivor = detail(client, key, older["id"])
    assert survivor["email"] == "ada@example.com" and survivor["phone"] == "+254712345678"
    assert survivor["fields"] == {"plan": "pro", "company": "Acme"}
    timeline = client.get(f"/v1/contacts/{older['id']}/timeline", headers=h).json()["data"]
    assert [e["id"] for e in timeline if e["name"] in ("a", "b", "checkout")] == [
        first["id"],
        newer["id"],
        event["id"],
    ]
    merge = next(e for e in timeline if e["name"] == "contact.merged")
    assert merge["props"] == {"merged_ids": [newer["contact_id"]]}
    assert merge["source"] == "ecommerce"  # the touchpoint that joined them
    assert contacts_of(migrated_url, key.workspace_id) == 1
    assert contact_types(migrated_url, key.workspace_id) == [
        "contact.created",
        "event.recorded",
        "contact.created",
        "event.recorded",
        "contact.merged",
        "event.recorded",
    ]


def test_traits_with_an_identifying_email_merge_the_contact_they_match(
    client: TestClient, key: IssuedKey
) -> None:
    older = upsert(client, key, external_id="crm-1", name="Ada")
    newer = upsert(client, key, email="ada@example.com")
    event = record(
        client, key, email="ada@example.com", name="signup", traits={"external_id": "crm-1"}
    )
    assert event["contact_id"] == older["id"]
    survivor = detail(client, key, older["id"])
    assert survivor["email"] == "ada@example.com" and survivor["external_id"] == "crm-1"
    assert_problem(client.get(f"/v1/contacts/{newer['id']}", headers=bearer(key)), 404)


def test_a_blocked_trait_value_never_merges(client: TestClient, key: IssuedKey) -> None:
    one = record(client, key, email="one@example.com", name="x", traits={"phone": "+254712345678"})
    two = record(
        client, key, email="two@example.com", name="x", traits={"email": "two@example.com"}
    )
    blocked = {"email": "test@example.com"}
    a = record(client, key, phone="+254712345678", name="y", traits={"name": "A"})
    b = record(client, key, external_id="e-2", name="y", traits=blocked)
    c = record(client, key, external_id="e-3", name="y", traits=blocked)
    assert a["contact_id"] == one["contact_id"]
    assert len({one["contact_id"], two["contact_id"], b["contact_id"], c["contact_id"]}) == 4
    assert detail(client, key, c["contact_id"])["email"] == "test@example.com"


# ---- what is refused writes nothing ----------------------------------------------------------


def test_traits_joining_two_external_ids_are_409_and_write_nothing(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    a = upsert(client, key, external_id="crm-1", email="a@example.com")
    b = upsert(client, key, external_id="crm-2", phone="+254712345678")
    before = (
        contact_types(migrated_url, key.workspace_id),
        events_of(migrated_url, key.workspace_id),
    )
    conflicts = [
        {"email": "a@example.com", "traits": {"phone": "+254712345678", "name": "X"}},
        {"contact_id": a["id"], "traits": {"phone": "+254712345678"}},
        {"contact_id": a["id"], "traits": {"external_id": "crm-3"}},
        {"external_id": "crm-1", "traits": {"phone": "+254712345678", "tags": ["t"]}},
    ]
    for body in conflicts:
        response = client.post("/v1/events", json={**body, "name": "x"}, headers=h)
        problem = assert_problem(response, 409)
        assert problem["type"].endswith("identity-conflict"), problem
    assert (
        contact_types(migrated_url, key.workspace_id),
        events_of(migrated_url, key.workspace_id),
    ) == before
    assert detail(client, key, a["id"])["name"] is None
    assert detail(client, key, b["id"])["tags"] == []
    assert client.get("/v1/tags/t", headers=h).status_code == 404


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"email": "a@example.com", "traits": {"fields": {"ltv": "lots"}}}, "/traits/fields/ltv"),
        ({"email": "a@example.com", "traits": {"fields": {"No": 1}}}, "/traits/fields/No"),
        ({"email": "a@example.com", "traits": {"phone": "not a phone"}}, "/traits/phone"),
        ({"email": "a@example.com", "traits": {"email": "nope"}}, "/traits/email"),
        ({"email": "a@example.com", "traits": {"email": "b@example.com"}}, "/traits/email"),
        ({"phone": "+254712345678", "traits": {"phone": "+254700000001"}}, "/traits/phone"),
        ({"email": "a@example.com", "traits": {"name": "n" * 501}}, "/traits/name"),
        ({"email": "a@example.com", "traits": {"stage": "x"}}, "/traits/stage"),
        ({"email": "a@example.com", "traits": {"tags": [" "]}}, "/traits/tags/0"),
        ({"email": "a@example.com", "traits": {"source": "form"}}, "/traits/source"),
        ({"email": "a@example.com", "traits": []}, "/traits"),
        ({"email": "bad", "traits": {"phone": "+254712345678"}}, "/email"),
    ],
)
def test_invalid_traits_are_422_with_a_pointer_and_write_nothing(
    client: TestClient,
    key: IssuedKey,
    migrated_url: str,
    body: dict[str, Any],
    pointer: str,
) -> None:
    before = contact_types(migrated_url, key.workspace_id)
    response = client.post("/v1/events", json={**body, "name": "x"}, headers=bearer(key))
    problem = assert_problem(response, 422)
    assert pointer in [e["pointer"] for e in problem["errors"]], problem
    assert contact_types(migrated_url, key.workspace_id) == before
    assert contacts_of(migrated_url, key.workspace_id) == 0


def test_the_same_identifier_in_traits_is_allowed(client: TestClient, key: IssuedKey) -> None:
    event = record(
        client, key, email="Same@Example.com", name="x", traits={"email": "same@example.com "}
    )
    assert detail(client, key, event["contact_id"])["email"] == "same@example.com"


def test_traits_on_an_unknown_contact_id_are_404_and_write_nothing(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    body = {"contact_id": "con_nobody", "name": "x", "traits": {"email": "new@example.com"}}
    assert_problem(client.post("/v1/events", json=body, headers=bearer(key)), 404)
    assert contacts_of(migrated_url, key.workspace_id) == 0
    assert contact_types(migrated_url, key.workspace_id) == []


# ---- origins ------------------------------------------------------------------------------


def test_origins_record_the_source_of_each_change_only(client: TestClient, key: IssuedKey) -> None:
    created = upsert(client, key, email="ada@example.com", name="Ada", fields={"plan": "pro"})
    first = detail(client, key, created["id"])
    assert set(first["origins"]) == {"email", "name", "fields.plan"}
    assert {o["source"] for o in first["origins"].values()} == {"api"}
    # The time of the write: the updated_at it stored.
    assert when(first["origins"]["email"]["at"]) == when(first["updated_at"])
    record(
        client,
        key,
        email="ada@example.com",
        name="form.submitted",
        source="form",
        traits={"name": "Ada W.", "phone": "+254712345678", "fields": {"plan": "pro", "ltv": 5}},
    )
    second = detail(client, key, created["id"])
    origins = second["origins"]
    assert {k: o["source"] for k, o in origins.items()} == {
        "email": "api",
        "name": "form",
        "phone": "form",
        "fields.plan": "api",  # resent unchanged: the first origin stays
        "fields.ltv": "form",
    }
    assert origins["email"] == first["origins"]["email"]
    assert origins["fields.plan"] == first["origins"]["fields.plan"]
    assert when(origins["name"]["at"]) == when(second["updated_at"]) > when(first["updated_at"])
    # Resending every value from another source changes no origin.
    record(
        client,
        key,
        phone="+254712345678",
        name="order.placed",
        source="ecommerce",
        traits={"name": "Ada W.", "email": "ada@example.com", "fields": {"ltv": 5}},
    )
    upsert(client, key, email="ada@example.com", name="Ada W.", source="campaign")
    assert detail(client, key, created["id"])["origins"] == origins
    # An upsert names its own source; push tokens record the write that added one.
    upsert(client, key, email="ada@example.com", push_tokens=["t1"], source="campaign")
    third = detail(client, key, created["id"])["origins"]
    assert third["push_tokens"]["source"] == "campaign"
    upsert(client, key, email="ada@example.com", push_tokens=["t1"], source="page")
    assert detail(client, key, created["id"])["origins"]["push_tokens"] == third["push_tokens"]
    # A custom source is a source like any other.
    record(client, key, email="ada@example.com", name="x", source="pos", traits={"name": "Ada"})
    assert detail(client, key, created["id"])["origins"]["name"]["source"] == "pos"


def test_an_invalid_upsert_source_is_422(client: TestClient, key: IssuedKey) -> None:
    for source in ["", " form", "x" * 101, 5]:
        response = client.post(
            "/v1/contacts", json={"email": "a@example.com", "source": source}, headers=bearer(key)
        )
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["pointer"] == "/source"


def test_a_merge_carries_the_origins_of_the_values_that_win(
    client: TestClient, key: IssuedKey
) -> None:
    a = record(
        client,
        key,
        email="ada@example.com",
        name="form.submitted",
        source="form",
        traits={"name": "Ada", "fields": {"plan": "pro"}, "push_tokens": ["ta"]},
    )
    b = record(
        client,
        key,
        phone="+254712345678",
        name="order.placed",
        source="ecommerce",
        traits={"name": "Ada Wanjiku", "fields": {"plan": "basic", "company": "Acme"}},
    )
    a_origins = detail(client, key, a["contact_id"])["origins"]
    b_origins = detail(client, key, b["contact_id"])["origins"]
    # The merge itself changes no value: no origin says "page".
    event = record(
        client,
        key,
        email="ada@example.com",
        name="page.viewed",
        source="page",
        traits={"phone": "+254712345678"},
    )
    assert event["contact_id"] == a["contact_id"]
    merged = detail(client, key, a["contact_id"])
    assert merged["name"] == "Ada" and merged["fields"] == {"plan": "pro", "company": "Acme"}
    assert merged["origins"] == {
        "email": a_origins["email"],
        "name": a_origins["name"],  # the survivor's value won
        "push_tokens": a_origins["push_tokens"],
        "fields.plan": a_origins["fields.plan"],
        "phone": b_origins["phone"],  # taken from the merged contact, with its origin
        "fields.company": b_origins["fields.company"],
    }
    assert merged["sources"] == ["ecommerce", "form", "page"]


def test_origins_of_values_a_merge_replaces_are_the_requests(
    client: TestClient, key: IssuedKey
) -> None:
    a = upsert(client, key, email="ada@example.com", name="Ada")
    upsert(client, key, phone="+254712345678", name="Other", source="form")
    record(
        client,
        key,
        contact_id=a["id"],
        name="x",
        source="campaign",
        traits={"phone": "+254712345678", "name": "Ada Lovelace"},
    )
    origins = detail(client, key, a["id"])["origins"]
    assert {k: o["source"] for k, o in origins.items()} == {
        "email": "api",
        "phone": "form",
        "name": "campaign",
    }


# ---- roll-ups ------------------------------------------------------------------------------


def test_rollups_add_up_the_timeline(client: TestClient, key: IssuedKey) -> None:
    empty = upsert(client, key, email="quiet@example.com")
    quiet = detail(client, key, empty["id"])
    assert quiet["first_seen"] is None and quiet["last_seen"] is None
    assert quiet["event_counts"] == {} and quiet["sources"] == ["api"]  # the email's origin
    cid = record(
        client, key, email="ada@example.com", name="page.viewed", at="2026-03-01T10:00:00Z"
    )["contact_id"]
    record(client, key, contact_id=cid, name="page.viewed", at="2026-01-01T08:00:00+03:00")
    record(
        client,
        key,
        contact_id=cid,
        name="order.placed",
        at="2026-02-01T00:00:00Z",
        source="ecommerce",
    )
    record(
        client, key, contact_id=cid, name="page.viewed", at="2026-02-15T00:00:00Z", source="page"
    )
    contact = detail(client, key, cid)
    assert contact["event_counts"] == {"page.viewed": 3, "order.placed": 1}
    assert when(contact["first_seen"]) == when("2026-01-01T05:00:00Z")
    assert when(contact["last_seen"]) == when("2026-03-01T10:00:00Z")
    # Events without a source add none; the email was set by an event with no source: "api".
    assert contact["sources"] == ["api", "ecommerce", "page"]
    assert contact["origins"]["email"]["source"] == "api"
    # The list view stays as it was: no roll-ups there.
    listed = client.get("/v1/contacts", headers=bearer(key)).json()["data"][0]
    assert "event_counts" not in listed and "origins" not in listed


def test_rollups_follow_events_a_merge_moves(client: TestClient, key: IssuedKey) -> None:
    h = bearer(key)
    a = record(client, key, email="ada@example.com", name="visit", at="2026-02-01T00:00:00Z")
    b = record(
        client, key, phone="+254712345678", name="visit", at="2026-01-01T00:00:00Z", source="form"
    )
    record(client, key, contact_id=b["contact_id"], name="buy", at="2026-04-01T00:00:00Z")
    merger = record(
        client,
        key,
        contact_id=a["contact_id"],
        name="link",
        at="2026-03-01T00:00:00Z",
        source="campaign",
        traits={"phone": "+254712345678"},
    )
    assert merger["contact_id"] == a["contact_id"]
    contact = detail(client, key, a["contact_id"])
    assert contact["event_counts"] == {"visit": 2, "buy": 1, "link": 1, "contact.merged": 1}
    assert when(contact["first_seen"]) == when("2026-01-01T00:00:00Z")  # b's, moved over
    # The merge marker is on the timeline at the time of the merge (now).
    assert when(contact["last_seen"]) == max(
        when(contact["updated_at"]), when("2026-04-01T00:00:00Z")
    )
    assert contact["sources"] == ["api", "campaign", "form"]
    # Deleting the contact deletes its roll-ups with it.
    assert client.delete(f"/v1/contacts/{a['contact_id']}", headers=h).status_code == 200
    fresh = record(client, key, phone="+254712345678", name="back")
    assert fresh["contact_id"] != a["contact_id"]
    assert detail(client, key, fresh["contact_id"])["event_counts"] == {"back": 1}


# ---- idempotency and isolation ------------------------------------------------------------------


def test_an_event_with_traits_replays_with_the_same_key(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key, **{"Idempotency-Key": "graph-1"})
    body = {
        "email": "idem@example.com",
        "name": "signup",
        "source": "form",
        "traits": {"name": "Idem", "tags": ["new"], "fields": {"ltv": 1}},
    }
    first = client.post("/v1/events", json=body, headers=h)
    again = client.post("/v1/events", json=body, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    changed = {**body, "traits": {"name": "Other"}}
    assert_problem(client.post("/v1/events", json=changed, headers=h), 422)
    assert events_of(migrated_url, key.workspace_id) == 1
    assert contact_types(migrated_url, key.workspace_id) == [
        "contact.created",
        "contact.tagged",
        "event.recorded",
    ]
    assert detail(client, key, first.json()["contact_id"])["name"] == "Idem"


def test_traits_never_reach_another_workspace(
    client: TestClient, key: IssuedKey, other_key: IssuedKey, migrated_url: str
) -> None:
    mine = upsert(client, key, email="ada@example.com", phone="+254712345678")
    # Another workspace cannot name my contact by id, even with traits.
    body = {"contact_id": mine["id"], "name": "x", "traits": {"name": "Mallory"}}
    assert_problem(client.post("/v1/events", json=body, headers=bearer(other_key)), 404)
    # The same identifiers there are a contact of its own, merging nothing of mine.
    theirs = record(
        client,
        other_key,
        email="ada@example.com",
        name="x",
        source="form",
        traits={"phone": "+254712345678", "name": "Theirs"},
    )
    assert theirs["contact_id"] != mine["id"]
    assert contacts_of(migrated_url, other_key.workspace_id) == 1
    me = detail(client, key, mine["id"])
    assert me["name"] is None and me["event_counts"] == {} and me["sources"] == ["api"]
    assert_problem(client.get(f"/v1/contacts/{mine['id']}", headers=bearer(other_key)), 404)
    assert contact_types(migrated_url, key.workspace_id) == ["contact.created"]


# ---- concurrency ---------------------------------------------------------------------------

PEOPLE = 8
CLIENTS = 12


def test_concurrent_traits_merges_leave_one_contact_per_person(
    migrated_url: str, client: TestClient
) -> None:
    """Events whose traits merge (by contact id or identifier) race with upserts
    joining the same people: every request ends 2xx (or 404 for a contact id a
    concurrent merge removed), one contact per person is left, with every
    recorded event on its timeline."""
    settings = Settings(
        database_url=migrated_url, pool_max_size=CLIENTS, blocked_identifiers=["test@example.com"]
    )
    issued = _workspace(migrated_url, client)
    try:
        with TestClient(create_app(settings)) as racing:
            h = bearer(issued)
            by_email = [
                record(racing, issued, email=f"p{i}@example.com", name="e") for i in range(PEOPLE)
            ]
            by_phone = [
                record(racing, issued, phone=f"+25471200{i:04d}", name="p") for i in range(PEOPLE)
            ]
            rng = random.Random(4)
            requests: list[tuple[str, dict[str, Any]]] = []
            for _ in range(12 * PEOPLE):
                i = rng.randrange(PEOPLE)
                email, phone = f"p{i}@example.com", f"+25471200{i:04d}"
                requests.append(
                    rng.choice(
                        [
                            (
                                "/v1/events",
                                {
                                    "contact_id": by_email[i]["contact_id"],
                                    "name": "a",
                                    "traits": {"phone": phone},
                                },
                            ),
                            (
                                "/v1/events",
                                {
                                    "contact_id": by_phone[i]["contact_id"],
                                    "name": "b",
                                    "traits": {"email": email, "tags": ["t"]},
                                },
                            ),
                            (
                                "/v1/events",
                                {
                                    "email": email,
                                    "name": "c",
                                    "source": "form",
                                    "traits": {"phone": phone, "name": f"P{i}"},
                                },
                            ),
                            ("/v1/events", {"phone": phone, "name": "d"}),
                            ("/v1/contacts", {"email": email, "phone": phone, "source": "page"}),
                        ]
                    )
                )

            def send(request: tuple[str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
                response = racing.post(request[0], json=request[1], headers=h)
                return response.status_code, response.json()

            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(send, requests))
            assert {status for status, _ in results} <= {200, 201, 404}, results
            recorded = {e["id"] for e in by_email + by_phone} | {
                body["id"]
                for (path, _), (status, body) in zip(requests, results, strict=True)
                if path == "/v1/events" and status == 201
            }
            contacts = racing.get("/v1/contacts", params={"limit": 100}, headers=h).json()["data"]
            assert sorted((c["email"], c["phone"]) for c in contacts) == sorted(
                (f"p{i}@example.com", f"+25471200{i:04d}") for i in range(PEOPLE)
            )
            seen: set[str] = set()
            for contact in contacts:
                events = racing.get(
                    f"/v1/contacts/{contact['id']}/timeline", params={"limit": 100}, headers=h
                ).json()["data"]
                # The roll-ups add up this timeline, whatever merges moved onto it.
                rolled = detail(racing, issued, contact["id"])
                assert sum(rolled["event_counts"].values()) == len(events)
                seen |= {e["id"] for e in events if e["name"] != "contact.merged"}
            assert seen == recorded
    finally:
        drop_workspace(migrated_url, issued.workspace_id)
