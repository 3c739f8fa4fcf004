"""/v1/events and /v1/contacts/{id}/timeline against a real PostgreSQL: recording by
id or identifier (creating the contact), timeline order and pagination, `at`
normalisation, invalid bodies, auth and isolation, idempotency, the outbox, and
events surviving a merge on exactly one timeline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.keys.store import IssuedKey
from test_api_contacts import contacts_client
from test_api_foundation import assert_problem, bearer, outbox_types

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


def outbox(url: str, workspace_id: int) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_type, payload FROM outbox WHERE workspace_id = %s ORDER BY id",
            (workspace_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def count(url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def record(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/events", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()
    return event


def timeline(client: TestClient, key: IssuedKey, contact_id: str) -> list[dict[str, Any]]:
    """The whole timeline, page by page (small pages, to exercise the cursor)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = client.get(
            f"/v1/contacts/{contact_id}/timeline", params=params, headers=bearer(key)
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["data"]
        if not page["has_more"]:
            return events
        params["starting_after"] = page["next_cursor"]


# ---- recording --------------------------------------------------------------------


def test_an_unknown_email_creates_the_contact(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    event = record(
        client,
        key,
        email="  Ada@Example.CO.KE ",
        name="order.placed",
        at="2026-01-02T15:04:05+03:00",
        props={"total": 1250, "items": [{"sku": "A-1"}], "gift": None},
        source="ecommerce",
    )
    assert event["object"] == "event" and event["id"].startswith("ev_")
    assert event["name"] == "order.placed" and event["source"] == "ecommerce"
    assert event["at"] == "2026-01-02T12:04:05Z"
    assert event["props"] == {"total": 1250, "items": [{"sku": "A-1"}], "gift": None}
    contact = client.get(f"/v1/contacts/{event['contact_id']}", headers=bearer(key)).json()
    assert contact["email"] == "ada@example.co.ke"
    assert [e["id"] for e in contact["recent_events"]] == [event["id"]]
    types = outbox(migrated_url, key.workspace_id)
    assert [t for t, _ in types] == ["contact.created", "event.recorded"]
    created, recorded = types[0][1]["data"], types[1][1]["data"]
    assert created["id"] == event["contact_id"] and created["email"] == "ada@example.co.ke"
    assert recorded == event
    # The same email (spelt otherwise) finds that contact: no second one.
    again = record(client, key, email="ADA@example.co.ke", name="page.viewed")
    assert again["contact_id"] == event["contact_id"] and again["source"] is None
    assert [t for t, _ in outbox(migrated_url, key.workspace_id)][2:] == ["event.recorded"]
    assert (
        count(
            migrated_url, "SELECT count(*) FROM contacts WHERE workspace_id = %s", key.workspace_id
        )
        == 1
    )


def test_record_by_id_phone_and_external_id(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    contact = client.post(
        "/v1/contacts",
        json={"email": "b@example.com", "phone": "+254712345678", "external_id": "u-7"},
        headers=h,
    ).json()
    cid = contact["id"]
    by_id = record(client, key, contact_id=cid, name="signed_in", source="api")
    by_phone = record(client, key, phone="0712 345678", name="sms.replied", source="campaign")
    by_external = record(client, key, external_id=" u-7 ", name="form.sent", source="my-crm")
    assert by_id["contact_id"] == by_phone["contact_id"] == by_external["contact_id"] == cid
    assert by_external["source"] == "my-crm"
    assert [t for t, _ in outbox(migrated_url, key.workspace_id)] == [
        "contact.created",
        "event.recorded",
        "event.recorded",
        "event.recorded",
    ]
    # A new phone or external id creates its contact.
    fresh = record(client, key, external_id="u-8", name="x")
    assert fresh["contact_id"] != cid
    assert [t for t, _ in outbox(migrated_url, key.workspace_id)][-2:] == [
        "contact.created",
        "event.recorded",
    ]


def test_default_at_is_now(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    event = record(client, key, email="now@example.com", name="x")
    pk = int(event["id"].removeprefix("ev_"))
    assert (
        count(
            migrated_url,
            "SELECT count(*) FROM events WHERE pk = %s AND abs(extract(epoch FROM now() - at)) < 60",
            pk,
        )
        == 1
    )
    assert event["at"].endswith("Z")


@pytest.mark.parametrize(
    ("at", "utc"),
    [
        ("2026-03-01T00:30:00+03:00", "2026-02-28T21:30:00Z"),
        ("2026-03-01T00:30:00-05:30", "2026-03-01T06:00:00Z"),
        ("2026-03-01t00:30:00.250z", "2026-03-01T00:30:00.250000Z"),
        ("2024-02-29T23:59:59.123456+00:00", "2024-02-29T23:59:59.123456Z"),
    ],
)
def test_at_with_an_offset_is_normalised_to_utc(
    client: TestClient, key: IssuedKey, at: str, utc: str
) -> None:
    event = record(client, key, email="at@example.com", name="x", at=at)
    assert event["at"] == utc
    [shown] = timeline(client, key, event["contact_id"])
    assert shown["at"] == utc


# ---- timeline ---------------------------------------------------------------------


def test_timeline_is_chronological_and_paginated(client: TestClient, key: IssuedKey) -> None:
    first = record(client, key, email="t@example.com", name="c", at="2026-01-03T00:00:00Z")
    cid = first["contact_id"]
    ats = [
        ("a", "2026-01-01T00:00:00Z"),
        ("tie-1", "2026-01-02T00:00:00Z"),
        ("tie-2", "2026-01-02T03:00:00+03:00"),  # the same instant: ordered by id
        ("d", "2026-01-04T00:00:00Z"),
        ("b", "2026-01-01T12:00:00+01:00"),
    ]
    for name, at in ats:
        record(client, key, contact_id=cid, name=name, at=at, props={"n": name})
    events = timeline(client, key, cid)
    assert [e["name"] for e in events] == ["a", "b", "tie-1", "tie-2", "c", "d"]
    assert len({e["id"] for e in events}) == 6
    assert all(e["contact_id"] == cid and e["object"] == "event" for e in events)
    assert events[0]["props"] == {"n": "a"}
    # One page, then the rest after its cursor.
    page = client.get(
        f"/v1/contacts/{cid}/timeline", params={"limit": 4}, headers=bearer(key)
    ).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert page["next_cursor"] == events[3]["id"]
    rest = client.get(
        f"/v1/contacts/{cid}/timeline",
        params={"limit": 4, "starting_after": page["next_cursor"]},
        headers=bearer(key),
    ).json()
    assert [e["id"] for e in rest["data"]] == [e["id"] for e in events[4:]]
    assert rest["has_more"] is False and rest["next_cursor"] is None


def test_timeline_of_a_contact_without_events(client: TestClient, key: IssuedKey) -> None:
    cid = client.post("/v1/contacts", json={"email": "e@example.com"}, headers=bearer(key)).json()[
        "id"
    ]
    page = client.get(f"/v1/contacts/{cid}/timeline", headers=bearer(key)).json()
    assert page == {"object": "list", "data": [], "has_more": False, "next_cursor": None}


@pytest.mark.parametrize("cursor", ["ev_x", "nope", "ev_0", "ev_99999999999999999999", "other"])
def test_a_cursor_not_on_the_timeline_is_422(
    client: TestClient, key: IssuedKey, cursor: str
) -> None:
    mine = record(client, key, email="cur@example.com", name="x")
    other = record(client, key, email="cur2@example.com", name="y")
    if cursor == "other":
        cursor = other["id"]  # an event of another contact
    problem = assert_problem(
        client.get(
            f"/v1/contacts/{mine['contact_id']}/timeline",
            params={"starting_after": cursor},
            headers=bearer(key),
        ),
        422,
    )
    assert problem["errors"][0]["pointer"] == "/starting_after"


# ---- invalid requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"email": "a@example.com"}, "/name"),
        ({"email": "a@example.com", "name": ""}, "/name"),
        ({"email": "a@example.com", "name": "   "}, "/name"),
        ({"email": "a@example.com", "name": 5}, "/name"),
        ({"email": "a@example.com", "name": "x", "at": "2026-01-02T03:04:05"}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": "2026-01-02"}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": "yesterday"}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": "2026-02-30T00:00:00Z"}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": "2026-01-02T03:04:05+25:00"}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": 1767322800}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": "0001-01-01T00:30:00+03:00"}, "/at"),
        ({"email": "a@example.com", "name": "x", "at": "9999-12-31T23:30:00-03:00"}, "/at"),
        ({"email": "a@example.com", "name": "x", "props": [1, 2]}, "/props"),
        ({"email": "a@example.com", "name": "x", "props": "text"}, "/props"),
        ({"email": "a@example.com", "name": "x", "props": {"a": "\x00"}}, "/props/a"),
        ({"email": "a@example.com", "name": "x", "source": ""}, "/source"),
        ({"email": "a@example.com", "name": "x", "colour": "red"}, "/colour"),
        ({"name": "x"}, ""),
        ({"name": "x", "email": " "}, ""),
        ({"name": "x", "email": "a@example.com", "contact_id": "con_x"}, ""),
        ({"name": "x", "email": "not an email"}, "/email"),
        ({"name": "x", "phone": "12"}, "/phone"),
    ],
)
def test_invalid_bodies_are_422(
    client: TestClient, key: IssuedKey, migrated_url: str, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(client.post("/v1/events", json=body, headers=bearer(key)), 422)
    assert pointer in [e["pointer"] for e in problem["errors"]], problem
    assert outbox_types(migrated_url, key.workspace_id) == []
    assert (
        count(
            migrated_url, "SELECT count(*) FROM contacts WHERE workspace_id = %s", key.workspace_id
        )
        == 0
    )


def test_non_finite_props_are_422(client: TestClient, key: IssuedKey) -> None:
    response = client.post(
        "/v1/events",
        content=b'{"email": "a@example.com", "name": "x", "props": {"big": 1e400}}',
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert_problem(response, 422)


def test_an_unknown_contact_is_404(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    assert_problem(
        client.post("/v1/events", json={"contact_id": "con_x", "name": "x"}, headers=h), 404
    )
    assert_problem(client.get("/v1/contacts/con_x/timeline", headers=h), 404)
    assert outbox_types(migrated_url, key.workspace_id) == []


# ---- auth, isolation, idempotency ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/events", {"email": "a@example.com", "name": "x"}),
        ("GET", "/v1/contacts/con_x/timeline", None),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer sk_live_wrong"])
def test_every_event_route_needs_a_key(
    client: TestClient, method: str, path: str, body: Any, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, json=body, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_key_never_records_on_or_reads_another_workspaces_contact(
    client: TestClient, key: IssuedKey, other_key: IssuedKey, migrated_url: str
) -> None:
    mine = record(client, key, email="iso@example.com", name="secret", props={"x": 1})
    cid = mine["contact_id"]
    b = bearer(other_key)
    assert_problem(client.post("/v1/events", json={"contact_id": cid, "name": "x"}, headers=b), 404)
    assert_problem(client.get(f"/v1/contacts/{cid}/timeline", headers=b), 404)
    assert_problem(
        client.get(
            f"/v1/contacts/{cid}/timeline", params={"starting_after": mine["id"]}, headers=b
        ),
        404,
    )
    # The same email in the other workspace is another contact, with its own timeline.
    theirs = record(client, other_key, email="iso@example.com", name="theirs")
    assert theirs["contact_id"] != cid
    assert [e["name"] for e in timeline(client, other_key, theirs["contact_id"])] == ["theirs"]
    assert [e["id"] for e in timeline(client, key, cid)] == [mine["id"]]
    assert outbox_types(migrated_url, other_key.workspace_id) == [
        "contact.created",
        "event.recorded",
    ]


def test_record_replays_with_the_same_key(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key, **{"Idempotency-Key": "ev-1"})
    body = {"email": "idem@example.com", "name": "paid", "props": {"amount": 10}}
    first = client.post("/v1/events", json=body, headers=h)
    again = client.post("/v1/events", json=body, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert_problem(client.post("/v1/events", json={**body, "name": "other"}, headers=h), 422)
    assert len(timeline(client, key, first.json()["contact_id"])) == 1
    assert outbox_types(migrated_url, key.workspace_id) == ["contact.created", "event.recorded"]


def test_a_blocked_email_never_matches(client: TestClient, key: IssuedKey) -> None:
    one = record(client, key, email="test@example.com", name="x")
    two = record(client, key, email="TEST@example.com", name="y")
    assert one["contact_id"] != two["contact_id"]


# ---- merge --------------------------------------------------------------------------


def test_a_merge_moves_events_onto_exactly_one_timeline(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    recorded: list[str] = []
    by_email = record(client, key, email="m@example.com", name="a1", at="2026-01-01T00:00:00Z")
    recorded.append(by_email["id"])
    by_phone = record(client, key, phone="+254712345678", name="b1", at="2026-01-01T01:00:00Z")
    recorded.append(by_phone["id"])
    for n, (name, cid) in enumerate([("a2", by_email), ("b2", by_phone)]):
        ev = record(
            client, key, contact_id=cid["contact_id"], name=name, at=f"2026-01-0{n + 2}T00:00:00Z"
        )
        recorded.append(ev["id"])
    other = record(client, key, email="bystander@example.com", name="z")
    recorded.append(other["id"])
    merged = client.post(
        "/v1/contacts", json={"email": "m@example.com", "phone": "+254712345678"}, headers=h
    )
    assert merged.status_code == 200, merged.text
    survivor = merged.json()["id"]
    assert survivor == by_email["contact_id"]  # the oldest
    assert_problem(client.get(f"/v1/contacts/{by_phone['contact_id']}/timeline", headers=h), 404)
    # Every recorded event of a live contact is on exactly one timeline.
    live = [
        c["id"] for c in client.get("/v1/contacts", params={"limit": 100}, headers=h).json()["data"]
    ]
    assert sorted(live) == sorted([survivor, other["contact_id"]])
    seen: list[str] = []
    for cid in live:
        events = timeline(client, key, cid)
        seen += [e["id"] for e in events if e["name"] != "contact.merged"]
        assert all(e["contact_id"] == cid for e in events)
    assert sorted(seen) == sorted(recorded)
    names = [e["name"] for e in timeline(client, key, survivor)]
    assert names[:4] == ["a1", "b1", "a2", "b2"] and names[4] == "contact.merged"
    # Recording by the merged contact's phone now lands on the survivor.
    after = record(client, key, phone="0712345678", name="b3")
    assert after["contact_id"] == survivor
    assert (
        count(
            migrated_url,
            "SELECT count(*) FROM events e JOIN contacts c ON c.pk = e.contact_pk"
            " WHERE c.workspace_id = %s",
            key.workspace_id,
        )
        == len(recorded) + 2
    )  # the merge marker and b3
