"""Real-time segments, scores and lifecycle through the API: deploy rules,
change data, move the test clock, and see memberships, scores, stages, their
outbox events and history follow the rules; backfill and drift check."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.keys.store import IssuedKey, create_key
from nudgel.api.rules.deploy import verify
from test_api_contacts import contacts_client, drop_workspace
from test_api_foundation import assert_problem, bearer
from test_webhook_delivery import Receiver, run_workers, subscribe, worker_settings

# The local webhook receiver, as a fixture of this module.
from test_webhook_delivery import receiver as webhook_receiver  # noqa: F401

pytestmark = pytest.mark.postgres

RULES = """
segment vip "VIP" { tag "vip" }
segment buyers { count(event "purchase" within 30d) >= 2 }
segment big_plan { fields.plan = "pro" and in segment vip }
score engagement {
  +10 per event "email_open" within 90d max 50
  +25 per event "purchase" within 30d
  -5 when not event * within 30d
}
lifecycle {
  lead when email is set
  customer when count(event "purchase") >= 1
  champion when score.engagement >= 60
}
"""

START = "2026-03-01T00:00:00Z"


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


def _key(url: str, mode: str = "test") -> IssuedKey:
    with psycopg.connect(url, autocommit=True) as conn:
        return create_key(conn, f"rt_{secrets.token_hex(6)}", mode)  # type: ignore[arg-type]


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = _key(migrated_url)
    response = client.post(
        "/v1/fields", json={"name": "plan", "type": "text"}, headers=bearer(issued)
    )
    assert response.status_code == 201
    # A frozen clock: every evaluation below happens at a known instant.
    advanced = client.put("/v1/test_clock", json={"frozen_time": START}, headers=bearer(issued))
    assert advanced.status_code == 200, advanced.text
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def deploy(client: TestClient, key: IssuedKey, source: str) -> dict[str, Any]:
    response = client.put("/v1/rules", json={"files": {"m.rules": source}}, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    if body["job"] is not None:
        wait_job(client, key, body["job"]["id"])
    return body


def wait_job(client: TestClient, key: IssuedKey, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
        if job["status"] in ("succeeded", "failed"):
            assert job["status"] == "succeeded", job
            return job
        time.sleep(0.05)
    raise AssertionError("the backfill did not finish")


def rule_events(url: str, workspace_id: int) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_type, payload->'data' FROM outbox WHERE workspace_id = %s"
            " AND split_part(event_type, '.', 1) IN ('segment', 'score', 'stage') ORDER BY id",
            (workspace_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def summary(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    out = []
    for kind, data in events:
        if kind.startswith("segment."):
            out.append((kind, data["segment"]))
        elif kind == "score.changed":
            out.append((kind, f"{data['score']} {data['old']}->{data['new']}"))
        else:
            out.append((kind, f"{data['old']}->{data['new']}"))
    return out


def drift(url: str, workspace_id: int) -> list[str]:
    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return [str(d) for d in await verify(conn, workspace_id)]

    return asyncio.run(run())


def segment_ids(client: TestClient, key: IssuedKey, name: str) -> list[str]:
    response = client.get(f"/v1/segments/{name}/contacts?limit=100", headers=bearer(key))
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


def upsert(client: TestClient, key: IssuedKey, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


def event(client: TestClient, key: IssuedKey, email: str, name: str, at: str) -> None:
    response = client.post(
        "/v1/events", json={"email": email, "name": name, "at": at}, headers=bearer(key)
    )
    assert response.status_code == 201, response.text


# ---- deploying ------------------------------------------------------------------


def test_rules_with_errors_are_refused_and_change_nothing(
    client: TestClient, key: IssuedKey
) -> None:
    assert_problem(client.get("/v1/rules", headers=bearer(key)), 404)
    bad = {"files": {"a.rules": 'segment a { fields.plam = "pro" }', "b.rules": "segment {"}}
    body = assert_problem(client.put("/v1/rules", json=bad, headers=bearer(key)), 422)
    found = [(d["file"], d["code"], d["line"]) for d in body["diagnostics"]]
    # Every file's errors, collected: not just the first.
    assert ("a.rules", "E200", 1) in found and ("b.rules", "E100", 1) in found
    assert body["detail"].startswith("a.rules:1:13: ")
    assert_problem(client.get("/v1/rules", headers=bearer(key)), 404)


def test_field_declarations_must_match_the_workspace(client: TestClient, key: IssuedKey) -> None:
    source = (
        "field plan: number\nfield ltv: number\nsegment a { fields.plan > 1 and fields.ltv > 1 }"
    )
    body = assert_problem(
        client.put("/v1/rules", json={"files": {"m.rules": source}}, headers=bearer(key)), 422
    )
    found = {(d["code"], d["line"], d["column"]) for d in body["diagnostics"]}
    # plan is text in the workspace; ltv, not defined, would be created by a
    # deploy (#12: the files are the schema), but this one changes nothing.
    assert found == {("E271", 1, 13)}
    fields = client.get("/v1/fields", headers=bearer(key)).json()["data"]
    assert "ltv" not in {f["name"] for f in fields}
    # Undeclared workspace fields are declared implicitly, with their type.
    ok = client.put(
        "/v1/rules",
        json={"files": {"m.rules": 'segment a { fields.plan = "pro" }'}},
        headers=bearer(key),
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["warnings"] == []


def test_deploy_versions_and_unchanged_redeploy(client: TestClient, key: IssuedKey) -> None:
    first = deploy(client, key, RULES)
    assert first["version"] == 1 and first["job"] is not None
    assert first["segments"] == ["vip", "buyers", "big_plan"]
    assert first["stages"] == ["lead", "customer", "champion"]
    again = deploy(client, key, RULES)
    assert again["version"] == 1 and again["job"] is None
    current = client.get("/v1/rules", headers=bearer(key)).json()
    assert current["version"] == 1 and current["files"] == {"m.rules": RULES}


# ---- real time -------------------------------------------------------------------


def test_contacts_enter_and_exit_as_data_and_time_change(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    deploy(client, key, RULES)
    ada = upsert(client, key, {"email": "ada@example.com", "tags": ["vip"]})
    assert segment_ids(client, key, "vip") == [ada["id"]]
    assert summary(rule_events(migrated_url, key.workspace_id)) == [
        ("segment.entered", "vip"),
        ("score.changed", "engagement 0->-5"),
        ("stage.changed", "None->lead"),
    ]
    event(client, key, "ada@example.com", "purchase", "2026-02-20T00:00:00Z")
    event(client, key, "ada@example.com", "purchase", "2026-02-27T00:00:00Z")
    assert segment_ids(client, key, "buyers") == [ada["id"]]
    detail = client.get(f"/v1/contacts/{ada['id']}", headers=bearer(key)).json()
    assert detail["stage"] == "customer"
    assert detail["scores"]["engagement"]["value"] == "50"
    assert set(detail["segments"]) == {"vip", "buyers"}

    # 30 days after the first purchase it leaves the window: one purchase left.
    before = len(rule_events(migrated_url, key.workspace_id))
    moved = client.post(
        "/v1/test_clock/advance", json={"to": "2026-03-22T00:00:00.000001Z"}, headers=bearer(key)
    )
    assert moved.status_code == 200 and moved.json()["evaluated"] >= 1
    assert segment_ids(client, key, "buyers") == []
    later = summary(rule_events(migrated_url, key.workspace_id)[before:])
    assert later == [("segment.exited", "buyers"), ("score.changed", "engagement 50->25")]
    # Then inactivity: 30 days after the last event, -5 and no purchase points.
    client.post("/v1/test_clock/advance", json={"to": "2026-04-01T00:00:00Z"}, headers=bearer(key))
    detail = client.get(f"/v1/contacts/{ada['id']}", headers=bearer(key)).json()
    assert detail["scores"]["engagement"] == {
        "value": "-5",
        "change_30d": "-55",  # it was 50 on March 2nd
        "change_60d": "-5",  # before its first change a score is 0
        "change_90d": "-5",
    }
    assert detail["stage"] == "customer"  # stages only move forward
    history = client.get(
        f"/v1/contacts/{ada['id']}/rule_history?kind=segment&limit=100", headers=bearer(key)
    ).json()["data"]
    assert [(h["name"], h["new_value"], h["reason"]) for h in history] == [
        ("vip", "true", "contact.created, contact.tagged"),
        ("buyers", "true", "event.recorded purchase"),
        ("buyers", "false", "time"),
    ]
    assert history[-1]["at"].startswith("2026-03-22T00:00:00.000001")
    assert drift(migrated_url, key.workspace_id) == []


def test_tags_fields_and_dependent_segments(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    deploy(client, key, RULES)
    bob = upsert(client, key, {"email": "bob@example.com", "fields": {"plan": "pro"}})
    assert segment_ids(client, key, "big_plan") == []
    tagged = client.post(
        f"/v1/contacts/{bob['id']}/tags", json={"tags": ["vip"]}, headers=bearer(key)
    )
    assert tagged.status_code in (200, 201), tagged.text
    assert segment_ids(client, key, "big_plan") == [bob["id"]]
    untagged = client.delete(f"/v1/contacts/{bob['id']}/tags/vip", headers=bearer(key))
    assert untagged.status_code in (200, 204), untagged.text
    assert segment_ids(client, key, "big_plan") == []
    assert segment_ids(client, key, "vip") == []
    upsert(client, key, {"email": "bob@example.com", "fields": {"plan": "free"}, "tags": ["vip"]})
    assert segment_ids(client, key, "vip") == [bob["id"]]
    assert segment_ids(client, key, "big_plan") == []
    assert drift(migrated_url, key.workspace_id) == []


def test_merge_and_delete(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    deploy(client, key, RULES)
    first = upsert(client, key, {"email": "m1@example.com", "tags": ["vip"]})
    second = upsert(client, key, {"phone": "+254712000001"})
    event(client, key, "m1@example.com", "purchase", "2026-02-25T00:00:00Z")
    with psycopg.connect(migrated_url) as conn:
        conn.execute(
            "INSERT INTO events (contact_pk, name, at, props)"
            " SELECT pk, 'purchase', '2026-02-26T00:00:00Z', '{}' FROM contacts WHERE id = %s",
            (second["id"],),
        )
    merged = upsert(client, key, {"email": "m1@example.com", "phone": "+254712000001"})
    assert merged["id"] == first["id"]
    # The survivor now has both purchases: re-evaluated after the merge.
    assert segment_ids(client, key, "buyers") == [first["id"]]
    deleted = client.delete(f"/v1/contacts/{first['id']}", headers=bearer(key))
    assert deleted.status_code == 200, deleted.text
    assert segment_ids(client, key, "vip") == []
    events = rule_events(migrated_url, key.workspace_id)
    exits = [(d["segment"], d["reason"]) for t, d in events if t == "segment.exited"]
    assert ("vip", "contact.deleted") in exits and ("buyers", "contact.deleted") in exits
    with psycopg.connect(migrated_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM segment_members WHERE workspace_id = %s", (key.workspace_id,)
        ).fetchone()
    assert left == (0,)
    assert drift(migrated_url, key.workspace_id) == []


# ---- backfill ----------------------------------------------------------------------


def test_backfill_is_silent_for_new_segments_and_fires_for_changed_ones(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    ids = [
        upsert(client, key, {"email": f"b{i}@example.com", "tags": ["vip"] if i % 2 else []})["id"]
        for i in range(6)
    ]
    body = deploy(client, key, 'segment vip { tag "vip" }\nsegment all_ { email is set }')
    job = client.get(f"/v1/jobs/{body['job']['id']}", headers=bearer(key)).json()
    assert job["total"] == 6 and job["done"] == 6 and job["progress"] == 1.0
    assert job["result"]["entered"] == 9
    assert sorted(segment_ids(client, key, "vip")) == sorted(ids[1::2])
    assert rule_events(migrated_url, key.workspace_id) == []  # first fill: silent
    sizes = {
        s["name"]: s["size"] for s in client.get("/v1/segments", headers=bearer(key)).json()["data"]
    }
    assert sizes == {"vip": 3, "all_": 6}
    # Changing vip moves contacts: those fire.
    deploy(client, key, 'segment vip { not tag "vip" }\nsegment all_ { email is set }')
    moved = summary(rule_events(migrated_url, key.workspace_id))
    assert sorted(moved) == sorted(
        [("segment.entered", "vip")] * 3 + [("segment.exited", "vip")] * 3
    )
    assert sorted(segment_ids(client, key, "vip")) == sorted(ids[0::2])
    # A segment dropped from the rules is gone, members and all.
    deploy(client, key, "segment all_ { email is set }")
    assert_problem(client.get("/v1/segments/vip/contacts", headers=bearer(key)), 404)
    assert drift(migrated_url, key.workspace_id) == []


def test_test_clock_is_for_test_keys_and_moves_forward_only(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    live = _key(migrated_url, "live")
    try:
        assert_problem(
            client.post("/v1/test_clock/advance", json={"to": START}, headers=bearer(live)), 403
        )
        assert_problem(
            client.put("/v1/test_clock", json={"frozen_time": START}, headers=bearer(live)), 403
        )
    finally:
        drop_workspace(migrated_url, live.workspace_id)
    back = client.post(
        "/v1/test_clock/advance", json={"to": "2026-02-01T00:00:00Z"}, headers=bearer(key)
    )
    assert assert_problem(back, 422)["errors"][0]["pointer"] == "/to"
    assert (
        client.get("/v1/test_clock", headers=bearer(key))
        .json()["frozen_time"]
        .startswith("2026-03-01T00:00:00")
    )


def test_the_scheduler_moves_contacts_out_of_windows_on_the_wall_clock(
    migrated_url: str,
) -> None:
    """No test clock: the scheduler in the serve process re-evaluates the
    contact when its event leaves the window, with no request at all."""
    from datetime import UTC, datetime, timedelta

    from nudgel.api.app import create_app
    from nudgel.api.settings import Settings

    key = _key(migrated_url, "live")
    settings = Settings(database_url=migrated_url, schedule_interval=0.2)
    try:
        with TestClient(create_app(settings)) as client:
            deploy(client, key, 'segment recent { event "visit" within 30d }')
            at = datetime.now(UTC) - timedelta(days=30) + timedelta(seconds=3)
            recorded = client.post(
                "/v1/events",
                json={"email": "w@example.com", "name": "visit", "at": at.isoformat()},
                headers=bearer(key),
            )
            assert recorded.status_code == 201, recorded.text
            contact_id = recorded.json()["contact_id"]
            assert segment_ids(client, key, "recent") == [contact_id]
            deadline = time.monotonic() + 30
            while segment_ids(client, key, "recent") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert segment_ids(client, key, "recent") == []
            exits = [
                d for t, d in rule_events(migrated_url, key.workspace_id) if t == "segment.exited"
            ]
            assert [(d["contact_id"], d["reason"]) for d in exits] == [(contact_id, "time")]
    finally:
        drop_workspace(migrated_url, key.workspace_id)


def test_a_field_the_rules_read_cannot_be_deleted(client: TestClient, key: IssuedKey) -> None:
    deploy(client, key, 'segment pro { fields.plan = "pro" }')
    refused = assert_problem(client.delete("/v1/fields/plan", headers=bearer(key)), 409)
    assert "m.rules:1:15: unknown field `plan`" in refused["detail"]
    deploy(client, key, 'segment vip { tag "vip" }')
    assert client.delete("/v1/fields/plan", headers=bearer(key)).status_code == 200
    assert client.get("/v1/rules", headers=bearer(key)).status_code == 200


REALTIME_ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", "/v1/rules", {"files": {"m.rules": 'segment a { tag "x" }'}}),
    ("GET", "/v1/rules", None),
    ("GET", "/v1/segments", None),
    ("GET", "/v1/segments/a/contacts", None),
    ("GET", "/v1/jobs/job_x", None),
    ("GET", "/v1/test_clock", None),
    ("PUT", "/v1/test_clock", {"frozen_time": START}),
    ("POST", "/v1/test_clock/advance", {"to": START}),
    ("GET", "/v1/contacts/con_x/rule_history", None),
]


@pytest.mark.parametrize(("method", "path", "body"), REALTIME_ENDPOINTS)
def test_every_realtime_route_needs_a_key(
    client: TestClient, method: str, path: str, body: Any
) -> None:
    for headers in ({}, {"Authorization": "Bearer sk_test_nope"}):
        response = client.request(method, path, json=body, headers=headers)
        assert_problem(response, 401)


def test_another_workspace_sees_none_of_it(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    body = deploy(client, key, 'segment vip { tag "vip" }')
    ada = upsert(client, key, {"email": "iso@example.com", "tags": ["vip"]})
    other = _key(migrated_url)
    try:
        theirs = bearer(other)
        assert_problem(client.get("/v1/rules", headers=theirs), 404)
        assert client.get("/v1/segments", headers=theirs).json()["data"] == []
        assert_problem(client.get("/v1/segments/vip/contacts", headers=theirs), 404)
        assert_problem(client.get(f"/v1/jobs/{body['job']['id']}", headers=theirs), 404)
        assert_problem(client.get(f"/v1/contacts/{ada['id']}/rule_history", headers=theirs), 404)
        # Their clock is theirs: moving it leaves ours where it was.
        client.put("/v1/test_clock", json={"frozen_time": "2030-01-01T00:00:00Z"}, headers=theirs)
        ours = client.get("/v1/test_clock", headers=bearer(key)).json()["frozen_time"]
        assert ours.startswith("2026-03-01")
    finally:
        drop_workspace(migrated_url, other.workspace_id)


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/files"),
        ({"files": {}}, "/files"),
        ({"files": {"notes.txt": "segment a { true }"}}, "/files/notes.txt"),
        ({"files": {"m.rules": 7}}, "/files/m.rules"),
        ({"files": {"m.rules": "segment a { true }"}, "extra": 1}, "/extra"),
    ],
)
def test_invalid_deploy_bodies(
    client: TestClient, key: IssuedKey, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(client.put("/v1/rules", json=body, headers=bearer(key)), 422)
    assert any(e["pointer"].startswith(pointer) for e in problem["errors"]), problem


def test_advance_is_idempotent_with_a_key(client: TestClient, key: IssuedKey) -> None:
    headers = bearer(key, **{"Idempotency-Key": "adv-1"})
    first = client.post(
        "/v1/test_clock/advance", json={"to": "2026-03-05T00:00:00Z"}, headers=headers
    )
    again = client.post(
        "/v1/test_clock/advance", json={"to": "2026-03-05T00:00:00Z"}, headers=headers
    )
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    bad = client.post("/v1/test_clock/advance", json={"to": "next week"}, headers=bearer(key))
    assert assert_problem(bad, 422)["errors"][0]["pointer"] == "/to"


def test_segment_and_score_webhooks_are_delivered_signed_and_in_order(
    client: TestClient,
    key: IssuedKey,
    migrated_url: str,
    webhook_receiver: Receiver,  # noqa: F811  (the fixture imported above)
) -> None:
    """End to end: a real receiver verifies every signature; it sees the
    contact enter, its score and stage change, and exit as the window closes."""
    deploy(client, key, RULES)
    subscribe(
        client,
        key,
        webhook_receiver,
        "/rules",
        ["segment.entered", "segment.exited", "score.changed", "stage.changed"],
    )
    webhook_receiver.fail_first = 2  # retried, then delivered
    upsert(client, key, {"email": "hook@example.com", "tags": ["vip"]})
    event(client, key, "hook@example.com", "purchase", "2026-02-28T00:00:00Z")
    event(client, key, "hook@example.com", "purchase", "2026-02-28T12:00:00Z")
    client.post("/v1/test_clock/advance", json={"to": "2026-04-01T00:00:00Z"}, headers=bearer(key))
    expected = rule_events(migrated_url, key.workspace_id)

    def delivered() -> bool:
        return len(webhook_receiver.accepted("/rules")) == len(expected)

    run_workers(migrated_url, worker_settings(migrated_url), delivered)
    assert webhook_receiver.invalid == []
    got = [
        (r.payload["type"], r.payload["data"])
        for r in webhook_receiver.requests("/rules")
        if r.answered == 200
    ]
    assert got == expected
    assert summary(got) == [
        ("segment.entered", "vip"),
        ("score.changed", "engagement 0->-5"),
        ("stage.changed", "None->lead"),
        ("score.changed", "engagement -5->25"),
        ("stage.changed", "lead->customer"),
        ("segment.entered", "buyers"),
        ("score.changed", "engagement 25->50"),
        ("segment.exited", "buyers"),
        ("score.changed", "engagement 50->-5"),
    ]


def test_backfill_in_many_small_batches_written_side_by_side(
    client: TestClient, key: IssuedKey, migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client.app.state.settings, "backfill_batch_size", 2)  # type: ignore[attr-defined]
    ids = [
        upsert(client, key, {"email": f"s{i}@example.com", "tags": ["vip"] if i % 3 else []})["id"]
        for i in range(9)
    ]
    body = deploy(client, key, RULES)
    job = client.get(f"/v1/jobs/{body['job']['id']}", headers=bearer(key)).json()
    assert (job["total"], job["done"], job["result"]["contacts"]) == (9, 9, 9)
    assert sorted(segment_ids(client, key, "vip")) == sorted(i for n, i in enumerate(ids) if n % 3)
    assert drift(migrated_url, key.workspace_id) == []


def test_rule_history_pages_in_numeric_order(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    """Ids across a digit boundary (rh_9, rh_10) come in numeric order, page by page."""
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        # Move the id sequence to just below a power of ten: the ids below
        # cross it (999 -> 1000), where text order and number order differ.
        row = conn.execute("SELECT max(id) FROM rule_history").fetchone()
        last = int(row[0] or 0) if row else 0
        target = 10 ** len(str(last + 10)) - 6
        conn.execute("SELECT setval(pg_get_serial_sequence('rule_history', 'id'), %s)", (target,))
    deploy(client, key, 'segment vip { tag "vip" }')
    ada = upsert(client, key, {"email": "pages@example.com"})
    for _ in range(6):
        assert client.post(
            f"/v1/contacts/{ada['id']}/tags", json={"tags": ["vip"]}, headers=bearer(key)
        ).status_code in (200, 201)
        assert (
            client.delete(f"/v1/contacts/{ada['id']}/tags/vip", headers=bearer(key)).status_code
            == 200
        )
    boundary = target + 6
    seen: list[int] = []
    cursor = None
    while True:
        query = f"?limit=5&starting_after={cursor}" if cursor else "?limit=5"
        page = client.get(
            f"/v1/contacts/{ada['id']}/rule_history{query}", headers=bearer(key)
        ).json()
        seen += [int(h["id"].removeprefix("rh_")) for h in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == sorted(seen) and len(seen) == 12 and seen[0] < boundary <= seen[-1]


def test_keyword_field_names_are_refused_and_old_ones_do_not_break_deploys(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    """Found by schemathesis: a field named like a keyword made every deploy a 500."""
    refused = client.post(
        "/v1/fields", json={"name": "segment", "type": "text"}, headers=bearer(key)
    )
    problem = assert_problem(refused, 422)
    assert (
        problem["errors"][0]["pointer"] == "/name" and "keyword" in problem["errors"][0]["detail"]
    )
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, 'count', 'text')",
            (key.workspace_id,),
        )
    deployed = deploy(client, key, 'segment pro { fields.plan = "pro" }')
    assert deployed["version"] == 1
    query = client.get("/v1/contacts?where=fields.plan%20%3D%20%22pro%22", headers=bearer(key))
    assert query.status_code == 200, query.text
