"""Endpoints people reach for in their first hour (#12), against a real PostgreSQL:
unknown query parameters refused on every route, GET /v1/segments/{name},
DELETE /v1/tags/{name}, and the contact list's q=, sort= (keyset pages that
stay right across sorts) and include=total_count."""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.contacts.search import search_condition
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from test_api_contacts import contacts_client
from test_api_foundation import assert_problem, bearer
from test_api_realtime import deploy
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
    assert "`q`" in problem["detail"] and "`where`" in problem["detail"]
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


# ---- GET /v1/contacts: q= ------------------------------------------------------------


def ids_of(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


def search(client: TestClient, key: IssuedKey, q: str, **params: str) -> set[str]:
    response = client.get(
        "/v1/contacts", params={"q": q, "limit": "100", **params}, headers=bearer(key)
    )
    return set(ids_of(response))


def test_q_finds_a_prefix_or_any_part_of_name_email_or_phone(
    client: TestClient, key: IssuedKey
) -> None:
    ada = upsert(client, key, email="ada@example.com", name="Ada Lovelace", phone="+254712345678")
    grace = upsert(client, key, email="grace@navy.mil", name="Grace Hopper", tags=["vip"])
    elodie = upsert(client, key, email="elodie@example.fr", name="Élodie Durand", tags=["vip"])
    sale = upsert(client, key, external_id="x-1", name="100%_off Shop")
    upsert(client, key, email="someone@else.org")
    assert search(client, key, "ada") == {ada["id"]}  # a prefix of the name and the email
    assert search(client, key, "LOVE") == {ada["id"]}  # any part, in any case
    assert search(client, key, "hopper") == {grace["id"]}
    assert search(client, key, "@example.") == {ada["id"], elodie["id"]}
    assert search(client, key, "navy.mil") == {grace["id"]}
    assert search(client, key, "2547123") == {ada["id"]}
    # As people write phone numbers: without the separators it matches E.164.
    assert search(client, key, "+254 712-345") == {ada["id"]}
    assert search(client, key, "(0712) 345") == set()  # a national number is not E.164
    # Case-insensitive beyond ASCII (the database's default collation folds É).
    assert search(client, key, "ÉLODIE") == {elodie["id"]}
    assert search(client, key, "élodie") == {elodie["id"]}
    # LIKE's wildcards are the characters themselves.
    assert search(client, key, "%_") == {sale["id"]}
    assert search(client, key, "_") == {sale["id"]}
    assert search(client, key, "a%e") == set()
    # Blanks around the text are dropped; a name and an email never run together.
    assert search(client, key, "  hopper ") == {grace["id"]}
    assert search(client, key, "hoppergrace") == set()
    assert search(client, key, "zzz") == set()
    # Combined with where=.
    assert search(client, key, "example", where='tag "vip"') == {elodie["id"]}


@pytest.mark.parametrize(
    "q", ["", "   ", "a\x01b", "tab\there", "x" * 201], ids=["empty", "blank", "ctl", "tab", "long"]
)
def test_q_must_be_some_printable_text(client: TestClient, key: IssuedKey, q: str) -> None:
    response = client.get("/v1/contacts", params={"q": q}, headers=bearer(key))
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["location"] == "query"
    assert problem["errors"][0]["pointer"] == "/q"


def test_q_is_an_index_scan_where_pg_trgm_is_installed(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone() is None:
            pytest.skip("this server has no pg_trgm (the embedded one): q= scans without it")
        condition, params = search_condition("lovelace")
        conn.execute("SET LOCAL enable_seqscan = off")
        # The search alone (no workspace, whose own indexes could serve):
        # the plan shows whether the index's expression is the query's.
        explained = conn.execute(
            "EXPLAIN SELECT c.pk FROM contacts c WHERE true" + condition, params
        ).fetchall()
        plan = "\n".join(row[0] for row in explained)
    assert "contacts_search_trgm_idx" in plan, plan


# ---- GET /v1/contacts: sort= and its pages ----------------------------------------------

SCORING = """
score engagement {
  +10 when tag "vip"
  +5 when fields.plan = "pro"
}
"""
NAMES = ["ada", "Ada", "ADA b", None, "bob", "Zoe", "zoe", "Émile", "emile", "carl", None, "Carl"]
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def make_people(client: TestClient, key: IssuedKey, count: int) -> list[dict[str, Any]]:
    """``count`` contacts with shared and missing names, emails and phones,
    some tagged and some on the pro plan (so their scores tie too)."""
    people = []
    for i in range(count):
        body: dict[str, Any] = {"name": NAMES[i % len(NAMES)]}
        if i % 5 == 4:
            body["phone"] = f"+2547123450{i:02d}"  # no email
        else:
            body["email"] = f"p{(i * 7) % count:02d}@example.com"
        if i % 3 == 0:
            body["tags"] = ["vip"]
        if i % 4 == 0:
            body["fields"] = {"plan": "pro"}
        people.append(upsert(client, key, **body))
    return people


def sort_key(contact: dict[str, Any], name: str) -> Any:
    if name in ("created_at", "updated_at"):
        return datetime.fromisoformat(contact[name])
    if name == "name":
        # lower(name) under the "C" collation: ASCII letters fold, É stays.
        return None if contact["name"] is None else contact["name"].translate(_ASCII_LOWER)
    if name == "email":
        return contact["email"]
    return Decimal(contact["scores"]["engagement"]["value"])


def expected_order(contacts: list[dict[str, Any]], sort: str) -> list[str]:
    descending, name = sort.startswith("-"), sort.lstrip("-").removeprefix("score.")
    having = [c for c in contacts if sort_key(c, name) is not None]
    lacking = [c for c in contacts if sort_key(c, name) is None]
    having.sort(key=lambda c: (sort_key(c, name), c["id"]), reverse=descending)
    lacking.sort(key=lambda c: c["id"], reverse=descending)
    return [c["id"] for c in having + lacking]


def walk(client: TestClient, key: IssuedKey, limit: int, **params: str) -> list[str]:
    """Every page of the list, by next_cursor; the ids in the order served."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, "limit": str(limit)}
        if cursor is not None:
            query["starting_after"] = cursor
        response = client.get("/v1/contacts", params=query, headers=bearer(key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["data"]) <= limit
        seen += [c["id"] for c in body["data"]]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return seen
        cursor = body["next_cursor"]
        assert cursor.startswith("cur_") if "sort" in params else cursor == seen[-1]
    raise AssertionError("the pages never ended")


SORTS = [
    f"{sign}{key}"
    for key in ("created_at", "updated_at", "name", "email", "score.engagement")
    for sign in ("", "-")
]


def test_every_sort_pages_through_every_contact_once_in_order(
    client: TestClient, key: IssuedKey
) -> None:
    deploy(client, key, SCORING)
    people = make_people(client, key, 26)
    details = [client.get(f"/v1/contacts/{p['id']}", headers=bearer(key)).json() for p in people]
    assert {d["scores"]["engagement"]["value"] for d in details} == {"0", "5", "10", "15"}
    for sort in SORTS:
        expected = expected_order(details, sort)
        for limit in (1, 4, 7):
            assert walk(client, key, limit, sort=sort) == expected, (sort, limit)
        # One page that holds everything says so.
        response = client.get(
            "/v1/contacts", params={"sort": sort, "limit": "100"}, headers=bearer(key)
        )
        assert ids_of(response) == expected and response.json()["has_more"] is False
    # The default order is by id, with plain ids as cursors.
    assert walk(client, key, 5) == sorted(p["id"] for p in people)


def test_sort_combines_with_where_and_q(client: TestClient, key: IssuedKey) -> None:
    people = make_people(client, key, 20)
    details = [client.get(f"/v1/contacts/{p['id']}", headers=bearer(key)).json() for p in people]
    kept = [
        d
        for d in details
        if any(t["name"] == "vip" for t in d["tags"]) and "example" in (d["email"] or "")
    ]
    assert 2 < len(kept) < len(details)
    got = walk(client, key, 2, sort="-name", where='tag "vip"', q="EXAMPLE")
    assert got == expected_order(kept, "-name")


def test_a_page_after_a_change_neither_repeats_nor_skips_the_others(
    client: TestClient, key: IssuedKey
) -> None:
    people = make_people(client, key, 9)
    first = client.get("/v1/contacts", params={"sort": "name", "limit": "3"}, headers=bearer(key))
    cursor = first.json()["next_cursor"]
    # The contact the cursor points at goes; the keyset goes on from its key.
    gone = ids_of(first)[-1]
    assert client.delete(f"/v1/contacts/{gone}", headers=bearer(key)).status_code == 200
    rest = client.get(
        "/v1/contacts",
        params={"sort": "name", "limit": "100", "starting_after": cursor},
        headers=bearer(key),
    )
    remaining = [p for p in people if p["id"] != gone]
    assert ids_of(first)[:2] + ids_of(rest) == expected_order(remaining, "name")


def sorted_cursor(client: TestClient, key: IssuedKey, sort: str) -> str:
    response = client.get("/v1/contacts", params={"sort": sort, "limit": "1"}, headers=bearer(key))
    cursor: str = response.json()["next_cursor"]
    return cursor


def test_cursors_and_sorts_that_do_not_fit_are_422_naming_them(
    client: TestClient, key: IssuedKey
) -> None:
    deploy(client, key, SCORING)
    make_people(client, key, 3)
    by_name = sorted_cursor(client, key, "name")
    plain = ids_of(client.get("/v1/contacts?limit=1", headers=bearer(key)))[0]
    forged = "cur_" + base64.urlsafe_b64encode(b'["name", 5, "con_x"]').decode().rstrip("=")
    bad_time = "cur_" + base64.urlsafe_b64encode(b'["created_at", "yesterday", "con_x"]').decode()
    cases = [
        ({"sort": "email", "starting_after": by_name}, "/starting_after", "sort=name"),
        ({"starting_after": by_name}, "/starting_after", "sort=name"),
        ({"sort": "name", "starting_after": plain}, "/starting_after", "next_cursor"),
        ({"sort": "name", "starting_after": "cur_%%%"}, "/starting_after", "not a cursor"),
        ({"sort": "name", "starting_after": forged}, "/starting_after", "not a cursor"),
        ({"sort": "created_at", "starting_after": bad_time}, "/starting_after", "not a cursor"),
        ({"sort": "name", "starting_after": "cur_" + "A" * 5000}, "/starting_after", "longer"),
        ({"sort": "score.missing"}, "/sort", "score.engagement"),
        ({"sort": "phone"}, "/sort", ""),
        ({"sort": "--name"}, "/sort", ""),
        ({"include": "everything"}, "/include/0", ""),
    ]
    for params, pointer, words in cases:
        response = client.get("/v1/contacts", params=params, headers=bearer(key))
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["location"] == "query", params
        assert problem["errors"][0]["pointer"] == pointer, params
        assert words in problem["detail"], (params, problem["detail"])


def test_a_score_sort_needs_deployed_rules(client: TestClient, key: IssuedKey) -> None:
    response = client.get("/v1/contacts?sort=score.engagement", headers=bearer(key))
    problem = assert_problem(response, 422)
    assert "none are deployed" in problem["detail"]


# ---- GET /v1/contacts: include=total_count ------------------------------------------------


def test_total_count_counts_what_matches(client: TestClient, key: IssuedKey) -> None:
    make_people(client, key, 12)
    body = client.get("/v1/contacts?limit=2", headers=bearer(key)).json()
    assert body["total_count"] is None and body["total_count_exact"] is None
    body = client.get("/v1/contacts?limit=2&include=total_count", headers=bearer(key)).json()
    assert (body["total_count"], body["total_count_exact"]) == (12, True)
    assert len(body["data"]) == 2
    params = {"include": "total_count", "where": 'tag "vip"', "q": "example", "sort": "-name"}
    body = client.get("/v1/contacts", params=params, headers=bearer(key)).json()
    # i % 3 == 0 are tagged; i % 5 == 4 have no email: 0, 3, 6 (9 has a phone only).
    assert (body["total_count"], body["total_count_exact"]) == (3, True)


def test_total_count_stops_at_its_maximum(migrated_url: str, key: IssuedKey) -> None:
    app = create_app(Settings(database_url=migrated_url, run_worker=False, total_count_max=5))
    with TestClient(app) as capped:
        make_people(capped, key, 8)
        body = capped.get("/v1/contacts?include=total_count", headers=bearer(key)).json()
        assert (body["total_count"], body["total_count_exact"]) == (5, False)
        body = capped.get(
            "/v1/contacts", params={"include": "total_count", "q": "ada"}, headers=bearer(key)
        ).json()
        assert (body["total_count"], body["total_count_exact"]) == (3, True)  # ada, Ada, ADA b


# ---- GET /v1/segments/{name} --------------------------------------------------------------

SEGMENTS = """\
# Who we look after first.
segment vip "Very important" {
  tag "vip"
    and email is set
}

segment pros { fields.plan = "pro" }
"""
START = "2026-03-01T00:00:00Z"


def clock_to(client: TestClient, key: IssuedKey, instant: str) -> None:
    response = client.post("/v1/test_clock/advance", json={"to": instant}, headers=bearer(key))
    assert response.status_code == 200, response.text


def segment(client: TestClient, key: IssuedKey, name: str) -> dict[str, Any]:
    response = client.get(f"/v1/segments/{name}", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_segment_shows_its_definition_size_and_flows(client: TestClient, key: IssuedKey) -> None:
    frozen = client.put("/v1/test_clock", json={"frozen_time": START}, headers=bearer(key))
    assert frozen.status_code == 200, frozen.text
    deployed = deploy(client, key, SEGMENTS)
    people = [upsert(client, key, email=f"v{i}@example.com", tags=["vip"]) for i in range(3)]
    upsert(client, key, email="pro@example.com", fields={"plan": "pro"})
    vip = segment(client, key, "vip")
    assert vip["object"] == "segment"
    assert (vip["name"], vip["title"], vip["size"]) == ("vip", "Very important", 3)
    assert vip["definition"] == {
        "source": 'segment vip "Very important" {\n  tag "vip"\n    and email is set\n}',
        "file": "m.rules",
        "line": 2,
        "version": deployed["version"],
    }
    assert vip["entered"] == {"last_24h": 3, "last_7d": 3}
    assert vip["exited"] == {"last_24h": 0, "last_7d": 0}
    assert segment(client, key, "pros")["definition"]["source"] == (
        'segment pros { fields.plan = "pro" }'
    )
    # Two days on, one leaves; a day later another leaves and comes back.
    clock_to(client, key, "2026-03-03T00:00:00Z")
    untag = client.delete(f"/v1/contacts/{people[0]['id']}/tags/vip", headers=bearer(key))
    assert untag.status_code == 200, untag.text
    vip = segment(client, key, "vip")
    assert vip["size"] == 2
    assert vip["entered"] == {"last_24h": 0, "last_7d": 3}
    assert vip["exited"] == {"last_24h": 1, "last_7d": 1}
    clock_to(client, key, "2026-03-04T00:00:00Z")
    client.delete(f"/v1/contacts/{people[1]['id']}/tags/vip", headers=bearer(key))
    upsert(client, key, email="v1@example.com", tags=["vip"])
    vip = segment(client, key, "vip")
    assert vip["size"] == 2
    assert vip["entered"] == {"last_24h": 1, "last_7d": 4}
    assert vip["exited"] == {"last_24h": 1, "last_7d": 2}
    # A week after the first entries they leave the 7-day window.
    clock_to(client, key, "2026-03-08T00:00:01Z")
    vip = segment(client, key, "vip")
    assert vip["entered"] == {"last_24h": 0, "last_7d": 1}
    assert vip["exited"] == {"last_24h": 0, "last_7d": 2}


def test_an_unknown_segment_is_404(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    assert_problem(client.get("/v1/segments/vip", headers=bearer(key)), 404)  # nothing deployed
    deploy(client, key, SEGMENTS)
    assert_problem(client.get("/v1/segments/nope", headers=bearer(key)), 404)
    # Another workspace's segment is unknown here.
    assert_problem(client.get("/v1/segments/vip", headers=bearer(other_key)), 404)
    assert_problem(client.get("/v1/segments/vip"), 401)


# ---- DELETE /v1/tags/{name} -------------------------------------------------------------


def outbox_rows(url: str, workspace_id: int, after: int = 0) -> list[tuple[int, str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, event_type, payload->'data' FROM outbox WHERE workspace_id = %s"
            " AND id > %s ORDER BY id",
            (workspace_id, after),
        ).fetchall()
    return [(int(i), t, d) for i, t, d in rows]


def test_deleting_a_tag_untags_every_contact_of_the_workspace(
    client: TestClient, key: IssuedKey, other_key: IssuedKey, migrated_url: str
) -> None:
    deploy(client, key, 'segment vip { tag "vip" }\n')
    carriers = [
        upsert(client, key, email=f"c{i}@example.com", tags=["vip", "KE"]) for i in range(30)
    ]
    bystander = upsert(client, key, email="b@example.com", tags=["KE"])
    elsewhere = upsert(client, other_key, email="c0@example.com", tags=["vip"])
    assert segment(client, key, "vip")["size"] == 30
    before = max(i for i, _, _ in outbox_rows(migrated_url, key.workspace_id))
    response = client.delete("/v1/tags/vip", headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "tag", "name": "vip", "deleted": True, "untagged": 30}
    assert_problem(client.get("/v1/tags/vip", headers=bearer(key)), 404)
    for carrier in carriers:
        now = client.get(f"/v1/contacts/{carrier['id']}", headers=bearer(key)).json()
        assert [t["name"] for t in now["tags"]] == ["KE"]
        assert datetime.fromisoformat(now["updated_at"]) > datetime.fromisoformat(
            carrier["updated_at"]
        )
        assert now["segments"] == []
    after = client.get(f"/v1/contacts/{bystander['id']}", headers=bearer(key)).json()
    assert after["updated_at"] == bystander["updated_at"]
    # The deployed rules still read the tag: legal, and now nobody is in the segment.
    assert segment(client, key, "vip")["size"] == 0
    events = outbox_rows(migrated_url, key.workspace_id, before)
    untagged = [d for _, t, d in events if t == "contact.untagged"]
    assert sorted(d["id"] for d in untagged) == sorted(c["id"] for c in carriers)
    assert all(d["tags"] == ["vip"] for d in untagged)
    assert sum(t == "segment.exited" for _, t, _ in events) == 30
    assert [d for _, t, d in events if t == "tag.deleted"] == [response.json()]
    # Another workspace's contacts and definition keep the same tag.
    theirs = client.get(f"/v1/contacts/{elsewhere['id']}", headers=bearer(other_key)).json()
    assert [t["name"] for t in theirs["tags"]] == ["vip"]
    assert client.get("/v1/tags/vip", headers=bearer(other_key)).status_code == 200
    assert_problem(client.delete("/v1/tags/vip", headers=bearer(key)), 404)  # gone


def test_a_tag_without_a_definition_or_without_carriers_can_go(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    created = client.post("/v1/tags", json={"name": "empty tag"}, headers=bearer(key))
    assert created.status_code == 201, created.text
    response = client.delete("/v1/tags/empty%20tag", headers=bearer(key))
    assert response.status_code == 200 and response.json()["untagged"] == 0
    # Carried but never defined (rows from before definitions were kept).
    contact = upsert(client, key, email="old@example.com")
    with psycopg.connect(migrated_url) as conn:
        conn.execute(
            "INSERT INTO contact_tags (contact_pk, tag) SELECT pk, 'legacy/x' FROM contacts"
            " WHERE id = %s",
            (contact["id"],),
        )
    response = client.delete("/v1/tags/legacy/x", headers=bearer(key))
    assert response.status_code == 200 and response.json()["untagged"] == 1


def test_deleting_an_unknown_tag_is_404(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    assert_problem(client.delete("/v1/tags/nope", headers=bearer(key)), 404)
    upsert(client, other_key, email="x@example.com", tags=["theirs"])
    assert_problem(client.delete("/v1/tags/theirs", headers=bearer(key)), 404)
    assert_problem(client.delete("/v1/tags/theirs"), 401)
