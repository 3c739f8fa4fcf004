"""Concurrent upserts end exactly where a sequential run does.

200 upserts from 20 concurrent clients over 30 people: each request names
one person by their email, their phone or both (in varying spellings), with a
tag. Requests with only an email and only a phone make two contacts until a
request with both merges them, so the outcome (which identifiers end up
together, which tags each group has) does not depend on the order, and the
concurrent run must produce the same groups as a sequential one, with no
identifier on two contacts and every tag and outbox event accounted for.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey, create_key
from nudgel.api.settings import Settings
from test_api_contacts import drop_workspace
from test_api_foundation import bearer

pytestmark = pytest.mark.postgres

PEOPLE = 30
REQUESTS = 200
CLIENTS = 20
SEED = 20240601


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=migrated_url, pool_max_size=CLIENTS)
    with TestClient(create_app(settings)) as client:
        yield client


def _key(url: str) -> IssuedKey:
    with psycopg.connect(url, autocommit=True) as conn:
        return create_key(conn, f"ws_{secrets.token_hex(6)}", "test")


def workload() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    bodies = []
    for _ in range(REQUESTS):
        person = rng.randrange(PEOPLE)
        email = rng.choice([f"p{person}@example.com", f" P{person}@Example.COM "])
        phone = rng.choice([f"+25471200{person:04d}", f"071200{person:04d}"])
        shape = rng.choice(["email", "phone", "both"])
        body: dict[str, Any] = {"tags": [f"t{rng.randrange(5)}"]}
        if shape != "phone":
            body["email"] = email
        if shape != "email":
            body["phone"] = phone
        bodies.append(body)
    return bodies


Group = tuple[str | None, str | None, frozenset[str]]


def groups(url: str, workspace_id: int) -> set[Group]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.email, c.phone, coalesce(array_agg(t.tag) FILTER (WHERE t.tag IS NOT NULL),"
            " '{}') FROM contacts c LEFT JOIN contact_tags t ON t.contact_pk = c.pk"
            " WHERE c.workspace_id = %s GROUP BY c.pk",
            (workspace_id,),
        ).fetchall()
    return {(email, phone, frozenset(tags)) for email, phone, tags in rows}


def test_concurrent_upserts_match_a_sequential_run(client: TestClient, migrated_url: str) -> None:
    sequential, concurrent = _key(migrated_url), _key(migrated_url)
    try:
        check_against_sequential(client, migrated_url, sequential, concurrent)
    finally:
        drop_workspace(migrated_url, sequential.workspace_id)
        drop_workspace(migrated_url, concurrent.workspace_id)


def check_against_sequential(
    client: TestClient, migrated_url: str, sequential: IssuedKey, concurrent: IssuedKey
) -> None:
    bodies = workload()

    for body in bodies:
        response = client.post("/v1/contacts", json=body, headers=bearer(sequential))
        assert response.status_code in (200, 201), response.text

    def send(body: dict[str, Any]) -> int:
        response = client.post("/v1/contacts", json=body, headers=bearer(concurrent))
        assert response.status_code in (200, 201), response.text
        return response.status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(send, bodies))
    assert statuses.count(201) >= 1

    expected = groups(migrated_url, sequential.workspace_id)
    got = groups(migrated_url, concurrent.workspace_id)
    assert got == expected
    # Every person's tags are on their contact(s): nothing was lost in a merge.
    assert len(expected) >= PEOPLE

    with psycopg.connect(migrated_url) as conn:
        for kind in ("email", "phone"):
            dupes = conn.execute(
                f"SELECT {kind} FROM contacts WHERE workspace_id = %s AND {kind} IS NOT NULL"
                f" GROUP BY {kind} HAVING count(*) > 1",
                (concurrent.workspace_id,),
            ).fetchall()
            assert dupes == []
        # Every contact ever created is alive or was merged into a live one,
        # and every merge left its event on the survivor's timeline.
        created = {
            r[0]
            for r in conn.execute(
                "SELECT payload->'data'->>'id' FROM outbox WHERE workspace_id = %s"
                " AND event_type = 'contact.created'",
                (concurrent.workspace_id,),
            )
        }
        merged = conn.execute(
            "SELECT payload->'data'->>'id', payload->'data'->'merged_ids' FROM outbox"
            " WHERE workspace_id = %s AND event_type = 'contact.merged'",
            (concurrent.workspace_id,),
        ).fetchall()
        live = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM contacts WHERE workspace_id = %s", (concurrent.workspace_id,)
            )
        }
        assert merged, "the workload should merge contacts"
        merged_away = {cid for _, ids in merged for cid in ids}
        assert created == live | merged_away and not (live & merged_away)
        timeline_merges = conn.execute(
            "SELECT count(*) FROM events e JOIN contacts c ON c.pk = e.contact_pk"
            " WHERE c.workspace_id = %s AND e.name = 'contact.merged'",
            (concurrent.workspace_id,),
        ).fetchone()
        assert timeline_merges == (len(merged),)
