"""The service foundation against a real PostgreSQL: auth, workspace isolation,
problem+json errors, pagination, idempotency, the outbox, OpenAPI, `nudgel serve`."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.http import idempotency
from nudgel.api.keys.store import IssuedKey, KeyMode, create_key, revoke_key
from nudgel.api.settings import Settings
from nudgel.api.webhooks import outbox
from nudgel.cli.nudgel import cli
from openapi_spec_validator import validate

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"

# Every /v1 route, with a body that would be valid.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/fields", {"name": "ltv", "type": "number"}),
    ("GET", "/v1/fields", None),
    ("GET", "/v1/fields/ltv", None),
    ("DELETE", "/v1/fields/ltv", None),
    ("POST", "/v1/tags", {"name": "premium", "color": "#ff8800"}),
    ("GET", "/v1/tags", None),
    ("GET", "/v1/tags/premium", None),
    ("PATCH", "/v1/tags/premium", {"color": "#00ff00"}),
]


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=migrated_url))
    with TestClient(app) as client:  # runs the lifespan: migrations, pool
        yield client


def new_key(url: str, mode: KeyMode = "live") -> IssuedKey:
    with psycopg.connect(url, autocommit=True) as conn:
        return create_key(conn, f"ws_{secrets.token_hex(6)}", mode)


@pytest.fixture
def key(migrated_url: str) -> IssuedKey:
    return new_key(migrated_url)


@pytest.fixture
def other_key(migrated_url: str) -> IssuedKey:
    return new_key(migrated_url, "test")


def bearer(key: IssuedKey, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}", **extra}


def outbox_types(url: str, workspace_id: int) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_type FROM outbox WHERE workspace_id = %s ORDER BY id", (workspace_id,)
        ).fetchall()
    return [r[0] for r in rows]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and isinstance(body["title"], str)
    assert "detail" in body and body["instance"] == response.request.url.path
    return body


# ---- authentication ---------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer nope",
        "Bearer sk_live_wrong",
        "Bearer sk_test_",
    ],
)
def test_every_route_needs_a_valid_key(
    client: TestClient, method: str, path: str, body: Any, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, json=body, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_revoked_key_is_refused(client: TestClient, migrated_url: str, key: IssuedKey) -> None:
    assert client.get("/v1/tags", headers=bearer(key)).status_code == 200
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        assert revoke_key(conn, key.secret)
        assert not revoke_key(conn, key.secret)
    response = client.get("/v1/tags", headers=bearer(key))
    assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_only_the_hash_is_stored(migrated_url: str, key: IssuedKey) -> None:
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute("SELECT prefix, hash FROM api_keys WHERE id = %s", (key.id,)).fetchone()
    assert row is not None
    prefix, digest = row
    assert key.secret.startswith(prefix) and len(prefix) < 16
    assert key.secret.encode() not in bytes(digest) and len(bytes(digest)) == 32


def test_keys_create_command(client: TestClient, migrated_url: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["keys", "create", "--workspace", f"cli_{secrets.token_hex(4)}", "--test"],
        env={"DATABASE_URL": migrated_url},
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[0]
    assert secret.startswith("sk_test_")
    assert (
        client.get("/v1/fields", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    )


# ---- workspace isolation ----------------------------------------------------


def test_a_key_never_sees_another_workspace(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    a, b = bearer(key), bearer(other_key)
    assert (
        client.post("/v1/fields", json={"name": "ltv", "type": "number"}, headers=a).status_code
        == 201
    )
    assert (
        client.post("/v1/tags", json={"name": "premium", "color": "#ff8800"}, headers=a).status_code
        == 201
    )

    assert client.get("/v1/fields", headers=b).json()["data"] == []
    assert client.get("/v1/tags", headers=b).json()["data"] == []
    assert_problem(client.get("/v1/fields/ltv", headers=b), 404)
    assert_problem(client.get("/v1/tags/premium", headers=b), 404)
    assert_problem(client.patch("/v1/tags/premium", json={"color": "#000000"}, headers=b), 404)
    assert_problem(client.delete("/v1/fields/ltv", headers=b), 404)
    # The same names are free in the other workspace.
    assert (
        client.post("/v1/fields", json={"name": "ltv", "type": "text"}, headers=b).status_code
        == 201
    )
    assert client.post("/v1/tags", json={"name": "premium"}, headers=b).status_code == 201

    # ... and nothing B did touched A.
    assert client.get("/v1/fields/ltv", headers=a).json()["type"] == "number"
    assert client.get("/v1/tags/premium", headers=a).json()["color"] == "#ff8800"
    assert client.get("/v1/fields/ltv", headers=b).json()["type"] == "text"
    assert client.get("/v1/tags/premium", headers=b).json()["color"] is None


def test_idempotency_keys_are_per_workspace(
    client: TestClient, key: IssuedKey, other_key: IssuedKey
) -> None:
    body = {"name": "vip"}
    first = client.post("/v1/tags", json=body, headers=bearer(key, **{"Idempotency-Key": "k1"}))
    other = client.post(
        "/v1/tags", json=body, headers=bearer(other_key, **{"Idempotency-Key": "k1"})
    )
    assert first.status_code == other.status_code == 201
    assert "idempotent-replayed" not in other.headers


# ---- resources ----------------------------------------------------------------


def test_fields_lifecycle(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    created = client.post("/v1/fields", json={"name": "plan", "type": "text"}, headers=h)
    assert created.status_code == 201
    assert created.json()["object"] == "field" and created.json()["name"] == "plan"
    assert client.get("/v1/fields/plan", headers=h).json() == created.json()
    assert_problem(client.post("/v1/fields", json={"name": "plan", "type": "json"}, headers=h), 409)
    deleted = client.delete("/v1/fields/plan", headers=h)
    assert deleted.json() == {"object": "field", "name": "plan", "deleted": True}
    assert_problem(client.delete("/v1/fields/plan", headers=h), 404)
    assert outbox_types(migrated_url, key.workspace_id) == ["field.created", "field.deleted"]


def test_tags_lifecycle(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    created = client.post("/v1/tags", json={"name": "VIP customer", "color": "#FF8800"}, headers=h)
    assert created.status_code == 201
    assert created.json()["color"] == "#ff8800"
    assert client.get("/v1/tags/VIP%20customer", headers=h).json() == created.json()
    same = client.patch("/v1/tags/VIP%20customer", json={"color": "#ff8800"}, headers=h)
    assert same.status_code == 200 and same.json() == created.json()
    assert client.patch("/v1/tags/VIP%20customer", json={}, headers=h).json() == created.json()
    updated = client.patch("/v1/tags/VIP%20customer", json={"color": "#00aa55"}, headers=h)
    assert updated.json()["color"] == "#00aa55"
    cleared = client.patch("/v1/tags/VIP%20customer", json={"color": None}, headers=h)
    assert cleared.json()["color"] is None
    # Unchanged colours fire nothing; each change fires tag.updated.
    assert outbox_types(migrated_url, key.workspace_id) == [
        "tag.created",
        "tag.updated",
        "tag.updated",
    ]
    with psycopg.connect(migrated_url) as conn:
        row = conn.execute(
            "SELECT payload FROM outbox WHERE workspace_id = %s ORDER BY id DESC LIMIT 1",
            (key.workspace_id,),
        ).fetchone()
    assert row is not None
    assert row[0]["data"]["previous_attributes"] == {"color": "#00aa55"}


# ---- invalid requests -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "location", "pointer"),
    [
        ("POST", "/v1/fields", {"name": "Bad-Name", "type": "text"}, "body", "/name"),
        ("POST", "/v1/fields", {"name": "9lives", "type": "text"}, "body", "/name"),
        ("POST", "/v1/fields", {"name": "ltv", "type": "float"}, "body", "/type"),
        ("POST", "/v1/fields", {"type": "text"}, "body", "/name"),
        ("POST", "/v1/fields", {"name": "ltv", "type": "text", "extra": 1}, "body", "/extra"),
        ("POST", "/v1/tags", {"name": "x", "color": "red"}, "body", "/color"),
        ("POST", "/v1/tags", {"name": " padded"}, "body", "/name"),
        ("POST", "/v1/tags", {"name": ""}, "body", "/name"),
        ("PATCH", "/v1/tags/x", {"color": "#12345"}, "body", "/color"),
        ("GET", "/v1/tags?limit=0", None, "query", "/limit"),
        ("GET", "/v1/fields?limit=101", None, "query", "/limit"),
    ],
)
def test_invalid_requests_are_422_problems_with_the_path(
    client: TestClient,
    key: IssuedKey,
    migrated_url: str,
    method: str,
    path: str,
    body: Any,
    location: str,
    pointer: str,
) -> None:
    problem = assert_problem(client.request(method, path, json=body, headers=bearer(key)), 422)
    assert {"location": location, "pointer": pointer} in [
        {"location": e["location"], "pointer": e["pointer"]} for e in problem["errors"]
    ]
    assert outbox_types(migrated_url, key.workspace_id) == []


def test_body_that_is_not_json(client: TestClient, key: IssuedKey) -> None:
    response = client.post(
        "/v1/tags", content=b"{nope", headers=bearer(key, **{"Content-Type": "application/json"})
    )
    assert assert_problem(response, 422)["errors"]


def test_unknown_route_and_method_are_problems(client: TestClient, key: IssuedKey) -> None:
    assert_problem(client.get("/v1/nothing", headers=bearer(key)), 404)
    assert_problem(client.put("/v1/tags", headers=bearer(key)), 405)


# ---- pagination -------------------------------------------------------------------


def test_pagination_walks_every_object_once(client: TestClient, key: IssuedKey) -> None:
    h = bearer(key)
    names = sorted(f"t{i:02d}" for i in range(23))
    for name in names:
        assert client.post("/v1/tags", json={"name": name}, headers=h).status_code == 201

    first = client.get("/v1/tags", headers=h).json()
    assert first["object"] == "list" and len(first["data"]) == 10 and first["has_more"]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor is not None:
            params["starting_after"] = cursor
        page = client.get("/v1/tags", params=params, headers=h).json()
        pages += 1
        seen += [t["name"] for t in page["data"]]
        if not page["has_more"]:
            assert page.get("next_cursor") is None
            break
        cursor = page["next_cursor"]
        assert cursor == page["data"][-1]["name"]
    assert seen == names and pages == 4

    exact = client.get("/v1/tags", params={"limit": 23}, headers=h).json()
    assert len(exact["data"]) == 23 and not exact["has_more"]
    after_last = client.get("/v1/tags", params={"starting_after": names[-1]}, headers=h).json()
    assert after_last == {"object": "list", "data": [], "has_more": False, "next_cursor": None}
    # A cursor that names no object (e.g. deleted since) still positions the page.
    between = client.get(
        "/v1/tags", params={"starting_after": "t05x", "limit": 2}, headers=h
    ).json()
    assert [t["name"] for t in between["data"]] == ["t06", "t07"]


def test_field_list_paginates(client: TestClient, key: IssuedKey) -> None:
    h = bearer(key)
    for name in ["a", "b", "c"]:
        client.post("/v1/fields", json={"name": name, "type": "text"}, headers=h)
    page = client.get("/v1/fields", params={"limit": 2}, headers=h).json()
    assert [f["name"] for f in page["data"]] == ["a", "b"] and page["has_more"]
    rest = client.get(
        "/v1/fields", params={"limit": 2, "starting_after": page["next_cursor"]}, headers=h
    ).json()
    assert [f["name"] for f in rest["data"]] == ["c"] and not rest["has_more"]


# ---- idempotency ---------------------------------------------------------------------


def test_replay_returns_the_first_response(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key, **{"Idempotency-Key": "create-ltv"})
    first = client.post("/v1/fields", json={"name": "ltv", "type": "number"}, headers=h)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # Key order and white space do not change the request.
    again = client.post(
        "/v1/fields",
        content=b'{ "type": "number",  "name": "ltv" }',
        headers={**h, "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    # Even after the object changed, the replay is the first response.
    assert client.delete("/v1/fields/ltv", headers=bearer(key)).status_code == 200
    later = client.post("/v1/fields", json={"name": "ltv", "type": "number"}, headers=h)
    assert later.status_code == 201 and later.json() == first.json()
    assert outbox_types(migrated_url, key.workspace_id) == ["field.created", "field.deleted"]


def test_key_reused_with_other_parameters_is_422(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key, **{"Idempotency-Key": "k"})
    assert client.post("/v1/tags", json={"name": "a"}, headers=h).status_code == 201
    problem = assert_problem(client.post("/v1/tags", json={"name": "b"}, headers=h), 422)
    assert "Idempotency-Key" in problem["title"]
    # Another path is other parameters too.
    assert_problem(client.post("/v1/fields", json={"name": "a", "type": "text"}, headers=h), 422)
    assert client.get("/v1/tags/b", headers=bearer(key)).status_code == 404
    assert outbox_types(migrated_url, key.workspace_id) == ["tag.created"]


def test_in_flight_request_gets_409(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key, **{"Idempotency-Key": "slow"})
    # Hold the lock an in-flight request with this key would hold.
    with psycopg.connect(migrated_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, %s))",
            (idempotency.lock_text(key.workspace_id, "slow"), idempotency.LOCK_SEED),
        )
        response = client.post("/v1/tags", json={"name": "a"}, headers=h)
        assert "in flight" in assert_problem(response, 409)["title"]
        # Unlocked explicitly: a closed session's locks go only when the
        # server has finished with the backend, which may be a moment later.
        holder.execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, %s))",
            (idempotency.lock_text(key.workspace_id, "slow"), idempotency.LOCK_SEED),
        )
    # Released: the request runs (the 409 left nothing behind).
    assert client.post("/v1/tags", json={"name": "a"}, headers=h).status_code == 201
    assert outbox_types(migrated_url, key.workspace_id) == ["tag.created"]


def test_concurrent_retry_of_a_slow_request_gets_409(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    """A real in-flight request: the first POST blocks inside its transaction
    (on a row another transaction is inserting), the retry gets 409, and once
    the first finishes the retry replays its response."""
    h = bearer(key, **{"Idempotency-Key": "concurrent"})
    body = {"name": "slow"}
    with psycopg.connect(migrated_url) as blocker:
        blocker.execute(
            "INSERT INTO tags (workspace_id, name) VALUES (%s, 'slow')", (key.workspace_id,)
        )
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/v1/tags", json=body, headers=h)
            wait_for_lock_waiter(blocker, first)
            second = client.post("/v1/tags", json=body, headers=h)
            assert_problem(second, 409)
            blocker.rollback()  # the first request's insert goes ahead
            response = first.result(timeout=30)
    assert response.status_code == 201
    replay = client.post("/v1/tags", json=body, headers=h)
    assert replay.status_code == 201 and replay.json() == response.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert outbox_types(migrated_url, key.workspace_id) == ["tag.created"]


def wait_for_lock_waiter(conn: psycopg.Connection, request: Future[Any]) -> None:
    """Until some backend of this database waits for a lock (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        assert not request.done(), request.result()
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE NOT l.granted AND a.datname = current_database()"
        ).fetchone()
        if row is not None and row[0] > 0:
            return
        assert time.monotonic() < deadline, "the first request never blocked"
        time.sleep(0.05)


def test_outbox_refuses_to_record_outside_a_transaction(migrated_url: str, key: IssuedKey) -> None:
    async def attempt() -> None:
        async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as conn:
            with pytest.raises(RuntimeError, match="inside the mutation"):
                await outbox.record(conn, key.workspace_id, "tag.created", {})
            async with conn.transaction():
                with pytest.raises(ValueError, match="unknown event type"):
                    await outbox.record(conn, key.workspace_id, "tag.exploded", {})

    asyncio.run(attempt())


def test_failed_mutation_records_nothing(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    h = bearer(key)
    body = {"name": "dup", "type": "text"}
    assert client.post("/v1/fields", json=body, headers=h).status_code == 201
    keyed = bearer(key, **{"Idempotency-Key": "retry-me"})
    assert_problem(client.post("/v1/fields", json=body, headers=keyed), 409)
    with psycopg.connect(migrated_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE workspace_id = %s", (key.workspace_id,)
        ).fetchone()
    assert count == (0,)
    # The failure was not stored: once the conflict is gone, the same key runs.
    assert client.delete("/v1/fields/dup", headers=h).status_code == 200
    retried = client.post("/v1/fields", json=body, headers=keyed)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert outbox_types(migrated_url, key.workspace_id) == [
        "field.created",
        "field.deleted",
        "field.created",
    ]


def test_idempotency_key_is_validated(client: TestClient, key: IssuedKey) -> None:
    response = client.post(
        "/v1/tags", json={"name": "a"}, headers=bearer(key, **{"Idempotency-Key": "x" * 256})
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["location"] == "header"


# ---- outbox ---------------------------------------------------------------------------


def test_outbox_row_per_mutation(client: TestClient, key: IssuedKey, migrated_url: str) -> None:
    h = bearer(key)
    client.post("/v1/fields", json={"name": "ltv", "type": "number"}, headers=h)
    client.post("/v1/tags", json={"name": "premium"}, headers=h)
    client.patch("/v1/tags/premium", json={"color": "#abcdef"}, headers=h)
    client.delete("/v1/fields/ltv", headers=h)
    # Reads and failures write nothing.
    client.get("/v1/fields", headers=h)
    client.post("/v1/tags", json={"name": "premium"}, headers=h)
    client.delete("/v1/fields/ltv", headers=h)
    client.patch("/v1/tags/none", json={"color": "#abcdef"}, headers=h)
    assert outbox_types(migrated_url, key.workspace_id) == [
        "field.created",
        "tag.created",
        "tag.updated",
        "field.deleted",
    ]
    with psycopg.connect(migrated_url) as conn:
        rows = conn.execute(
            "SELECT event_id, payload FROM outbox WHERE workspace_id = %s ORDER BY id",
            (key.workspace_id,),
        ).fetchall()
    assert all(event_id.startswith("evt_") for event_id, _ in rows)
    assert rows[0][1]["type"] == "field.created"
    assert rows[0][1]["data"]["name"] == "ltv"


# ---- OpenAPI and serving ----------------------------------------------------------------


def test_openapi_document_is_valid_and_complete(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    operations = [
        (path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
    ]
    assert {(m.upper(), p) for p, m, _ in operations} >= {
        ("POST", "/v1/fields"),
        ("GET", "/v1/fields"),
        ("DELETE", "/v1/fields/{name}"),
        ("POST", "/v1/tags"),
        ("GET", "/v1/tags"),
        ("GET", "/v1/tags/{name}"),
        ("PATCH", "/v1/tags/{name}"),
    }
    for path, method, op in operations:
        assert op.get("summary"), (method, path)
        assert op.get("description"), (method, path)
        if not path.startswith("/v1/"):
            continue
        assert op["security"] == [{"bearerAuth": []}]
        for status in ("401", "422"):
            content = op["responses"][status]["content"]
            assert content == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        if method == "post":
            assert any(p["name"] == "Idempotency-Key" for p in op["parameters"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_nudgel_serve_answers(migrated_url: str) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": migrated_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudgel.cli.nudgel", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nudgel serve did not answer in 60 s"
                time.sleep(0.2)
        assert response.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/tags").status_code == 401
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert f"http://127.0.0.1:{port}" in output


def test_the_docs_work_offline(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn" not in html.lower() and "https://" not in html.replace("https://fonts", "")
        assets = re.findall(r'(?:src|href)="(/static-offline-docs/[^"]+)"', html)
        assert assets, html
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
