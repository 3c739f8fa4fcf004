"""`where=` reads what is deployed (issue #12): `in segment X`, `score.X` and
`stage` are the stored, real-time state; rules that are not deployed are a 422
naming them."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from test_api_foundation import assert_problem, bearer
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

RULES = """
segment vip { tag "vip" }
segment engaged { score.engagement >= 20 }
score engagement {
  +10 per event "open"
}
lifecycle {
  lead     when email is set
  customer when event "purchase"
}
"""


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=migrated_url, run_worker=False))) as c:
        yield c


@pytest.fixture
def key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def _emails(client: TestClient, key: IssuedKey, where: str) -> list[str]:
    answer = client.get("/v1/contacts", params={"where": where, "limit": 100}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return sorted(c["email"] for c in answer.json()["data"])


def test_where_reads_deployed_segments_scores_and_stage(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    deployed = client.put("/v1/rules", json={"files": {"r.rules": RULES}}, headers=h)
    assert deployed.status_code in (200, 201, 202), deployed.text
    client.post("/v1/contacts", json={"email": "vip@example.com", "tags": ["vip"]}, headers=h)
    client.post("/v1/contacts", json={"email": "plain@example.com"}, headers=h)
    for _ in range(3):
        client.post("/v1/events", json={"email": "fan@example.com", "name": "open"}, headers=h)
    client.post("/v1/events", json={"email": "buyer@example.com", "name": "purchase"}, headers=h)

    assert _emails(client, key, "in segment vip") == ["vip@example.com"]
    assert _emails(client, key, "score.engagement >= 20") == ["fan@example.com"]
    assert _emails(client, key, "in segment engaged and not in segment vip") == ["fan@example.com"]
    assert _emails(client, key, 'stage = "customer"') == ["buyer@example.com"]
    assert _emails(client, key, 'stage = "lead" and score.engagement = 0') == [
        "plain@example.com",
        "vip@example.com",
    ]

    # The stored state, not a fresh computation: a membership removed behind
    # the service's back is gone from the filter too.
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM segment_members WHERE workspace_id = %s AND segment = 'vip'",
            (key.workspace_id,),
        )
    assert _emails(client, key, "in segment vip") == []


def test_where_over_rules_that_are_not_deployed_names_them(
    client: TestClient, key: IssuedKey
) -> None:
    h = bearer(key)
    for where, name in (("in segment vip", "vip"), ("score.engagement > 1", "engagement")):
        problem = assert_problem(
            client.get("/v1/contacts", params={"where": where}, headers=h), 422
        )
        assert name in problem["detail"], problem
    client.put("/v1/rules", json={"files": {"r.rules": RULES}}, headers=h)
    problem = assert_problem(
        client.get("/v1/contacts", params={"where": "in segment nope"}, headers=h), 422
    )
    assert "nope" in problem["detail"]
    problem = assert_problem(
        client.get("/v1/contacts", params={"where": 'tag "x" } segment more { tag "y"'}, headers=h),
        422,
    )
    assert "single condition" in problem["detail"]


def test_where_compares_decimal_scores_exactly(client: TestClient, key: IssuedKey) -> None:
    h = bearer(key)
    files = {"r.rules": 'score warmth {\n  +2.5 per event "open"\n}\n'}
    assert client.put("/v1/rules", json={"files": files}, headers=h).status_code in (200, 202)
    client.post("/v1/events", json={"email": "one@example.com", "name": "open"}, headers=h)
    for _ in range(2):
        client.post("/v1/events", json={"email": "two@example.com", "name": "open"}, headers=h)
    assert _emails(client, key, "score.warmth = 2.5") == ["one@example.com"]
    assert _emails(client, key, "score.warmth > 2.5") == ["two@example.com"]
    assert _emails(client, key, "score.warmth between 2 and 3") == ["one@example.com"]
