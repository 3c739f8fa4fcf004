"""Webhook delivery end to end: mutations through the API, the worker, and a real
HTTP receiver on localhost that verifies every request with `standardwebhooks`.

What is proven: retries after 500s deliver everything (nothing lost), each
contact's events arrive in outbox order, every attempt is on record in
/deliveries, a worker cancelled or killed (SIGKILL) mid-request is made good by
the next one (at-least-once: the receiver dedupes on webhook-id), two workers
side by side never send a delivery twice, a delivery gives up after
webhook_max_attempts and no longer holds its contact's later events back, the
`events` filter, a deleted webhook receives nothing more, and `nudgel worker`
stops cleanly on Ctrl-C. Nothing waits on fixed sleeps: the tests poll for a
condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from nudgel.api.webhooks.delivery import backoff_seconds, deliver_once, make_worker_pool, run_worker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from test_api_foundation import bearer

pytestmark = pytest.mark.postgres

DEADLINE = 60.0  # seconds any single wait may take before the test fails

# Fast retries so a test sees many attempts; a short lease so a crashed
# worker's deliveries are taken over within seconds. The receivers are on
# 127.0.0.1, which webhooks may only reach with webhook_allow_private.
FAST = {
    "run_worker": False,
    "webhook_allow_private": True,
    "webhook_backoff_base": 0.01,
    "webhook_backoff_max": 0.05,
    "webhook_timeout": 2.0,
    "webhook_lease_margin": 0.5,
    "webhook_poll_interval": 0.05,
}


def worker_settings(url: str, **overrides: Any) -> Settings:
    return Settings(database_url=url, **{**FAST, **overrides})


# ---- the receiver ------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    event_id: str
    payload: dict[str, Any]
    answered: int


@dataclass
class Receiver:
    """Endpoints on one local HTTP server; one secret per path."""

    port: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    log: list[Received] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many (valid) requests first
    fail_types: set[str] = field(default_factory=set)  # always 500 for these events
    stall_next: bool = False  # hold the next request until `release`
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)  # the held one is logged
    stalled_id: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            secret = self.secrets.get(path)
        if secret is None:
            return 404
        try:
            payload = Webhook(secret).verify(body, headers)
        except WebhookVerificationError as exc:
            with self.lock:
                self.invalid.append(f"{path}: {exc}")
            return 400
        with self.lock:
            stall, self.stall_next = self.stall_next, False
            if self.fail_first > 0:
                self.fail_first -= 1
                status = 500
            else:
                status = 500 if payload["type"] in self.fail_types else 200
        if stall:
            self.stalled_id = headers["webhook-id"]
            self.entered.set()
            self.release.wait(DEADLINE)
        with self.lock:
            # Logged before answering: what the worker sees next, happened after.
            self.log.append(Received(path, headers["webhook-id"], payload, status))
        if stall:
            self.stalled.set()
        return status

    def unstall(self) -> str:
        """Let the held request finish (logged as accepted); its event id."""
        self.release.set()
        assert self.stalled.wait(DEADLINE) and self.stalled_id is not None
        return self.stalled_id

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.log if r.path == path]

    def accepted(self, path: str) -> Counter[str]:
        return Counter(r.event_id for r in self.requests(path) if r.answered == 200)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if len(body) < length:
                return  # the sender died mid-request (the SIGKILL test): nothing to verify
            status = state.handle(self.path, dict(self.headers.items()), body)
            # The worker may be gone (cancelled, killed): nobody to answer.
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        # Several workers connect at once; the default backlog of 5 would
        # refuse some (retried, but then not every attempt reaches us).
        request_queue_size = 256
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


# ---- the API and the database --------------------------------------------------------


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    # The API without its worker: each test runs workers itself.
    app = create_app(
        Settings(database_url=migrated_url, run_worker=False, webhook_allow_private=True)
    )
    with TestClient(app) as client:
        yield client


def subscribe(
    client: TestClient, key: IssuedKey, receiver: Receiver, path: str, events: list[str]
) -> str:
    response = client.post(
        "/v1/webhooks", json={"url": receiver.url(path), "events": events}, headers=bearer(key)
    )
    assert response.status_code == 201, response.text
    with receiver.lock:
        receiver.secrets[path] = response.json()["secret"]
    webhook_id: str = response.json()["id"]
    return webhook_id


def mutate(client: TestClient, key: IssuedKey, contacts: int, prefix: str = "p") -> None:
    """Per contact: created + tagged, updated, tagged again; one contact deleted; a tag."""
    h = bearer(key)
    ids = []
    for i in range(contacts):
        email = f"{prefix}{i}@example.com"
        created = client.post("/v1/contacts", json={"email": email, "tags": ["a"]}, headers=h)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        updated = client.post("/v1/contacts", json={"email": email, "name": f"N{i}"}, headers=h)
        assert updated.status_code == 200, updated.text
        tagged = client.post(f"/v1/contacts/{ids[-1]}/tags", json={"tags": ["b"]}, headers=h)
        assert tagged.status_code == 200, tagged.text
    assert client.delete(f"/v1/contacts/{ids[0]}", headers=h).status_code == 200
    assert client.post("/v1/tags", json={"name": f"{prefix}-tag"}, headers=h).status_code == 201


@dataclass(frozen=True)
class Event:
    event_id: str
    type: str
    contact_pk: int | None
    payload: dict[str, Any]


def outbox_events(url: str, workspace_id: int) -> list[Event]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_id, event_type, contact_pk, payload FROM outbox"
            " WHERE workspace_id = %s ORDER BY id",
            (workspace_id,),
        ).fetchall()
    return [Event(*r) for r in rows]


def settled(url: str, workspace_id: int) -> bool:
    """Every event of the workspace fanned out, and no delivery of it pending."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM outbox WHERE workspace_id = %(ws)s"
            "        AND dispatched_at IS NULL)"
            "     + (SELECT count(*) FROM webhook_deliveries d JOIN webhooks w ON w.pk = d.webhook_pk"
            "        WHERE w.workspace_id = %(ws)s AND d.status = 'pending')",
            {"ws": workspace_id},
        ).fetchone()
    return row == (0,)


async def _wait(condition: Callable[[], bool], tasks: list[asyncio.Task[None]]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await asyncio.to_thread(condition):
        for task in tasks:
            if task.done():
                task.result()  # a worker must not end by itself: re-raise why
                raise AssertionError("a worker stopped")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the workers")
        await asyncio.sleep(0.05)


def run_workers(
    url: str, settings: Settings, condition: Callable[[], bool], workers: int = 1
) -> None:
    """Run ``workers`` delivery loops (each with its own pool) until ``condition``."""

    async def main() -> None:
        pools = [make_worker_pool(url) for _ in range(workers)]
        for pool in pools:
            await pool.open(wait=True)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_worker(pool, settings, stop)) for pool in pools]
        try:
            await _wait(condition, tasks)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for pool in pools:
                await pool.close()

    asyncio.run(main())


# ---- what every test checks ------------------------------------------------------


def assert_contact_order(receiver: Receiver, path: str, expected: list[Event]) -> None:
    """No request for a contact's event before each earlier one of it was accepted."""
    position = {e.event_id: i for i, e in enumerate(expected)}
    accepted: set[str] = set()
    for request in receiver.requests(path):
        event = expected[position[request.event_id]]
        if event.contact_pk is not None:
            earlier = [
                e.event_id
                for e in expected[: position[event.event_id]]
                if e.contact_pk == event.contact_pk
            ]
            missing = [e for e in earlier if e not in accepted]
            assert not missing, f"{event.type} {event.event_id} sent before {missing}"
        if request.answered == 200:
            accepted.add(request.event_id)


def assert_all_delivered(receiver: Receiver, path: str, expected: list[Event]) -> Counter[str]:
    """Each expected event accepted at least once, with its outbox payload; nothing else."""
    assert receiver.invalid == []
    accepted = receiver.accepted(path)
    assert set(accepted) == {e.event_id for e in expected}
    by_id = {e.event_id: e for e in expected}
    for request in receiver.requests(path):
        assert request.payload == by_id[request.event_id].payload
        assert request.payload["type"] == by_id[request.event_id].type
    assert_contact_order(receiver, path, expected)
    return accepted


def deliveries(client: TestClient, key: IssuedKey, webhook_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 7}
    while True:
        response = client.get(
            f"/v1/webhooks/{webhook_id}/deliveries", params=params, headers=bearer(key)
        )
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["data"]
        if not page["has_more"]:
            return found
        params["starting_after"] = page["next_cursor"]


# ---- the tests -----------------------------------------------------------------------


def test_retries_after_500s_deliver_everything_in_order(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    everything = subscribe(client, key, receiver, "/all", ["*"])
    subscribe(client, key, receiver, "/created", ["contact.created"])
    receiver.fail_first = 12
    mutate(client, key, contacts=4)
    events = outbox_events(migrated_url, key.workspace_id)
    assert len(events) > 12

    run_workers(
        migrated_url,
        worker_settings(migrated_url),
        lambda: settled(migrated_url, key.workspace_id),
    )

    assert receiver.fail_first == 0  # the 500s happened
    assert sum(r.answered == 500 for r in receiver.log) == 12
    # Without a crash, each event is accepted exactly once per webhook.
    assert set(assert_all_delivered(receiver, "/all", events).values()) == {1}
    created = [e for e in events if e.type == "contact.created"]
    assert set(assert_all_delivered(receiver, "/created", created).values()) == {1}

    # /deliveries: newest first, every attempt with its answer.
    listed = deliveries(client, key, everything)
    assert [d["event_id"] for d in listed] == [e.event_id for e in reversed(events)]
    assert [d["event_type"] for d in listed] == [e.type for e in reversed(events)]
    assert all(d["status"] == "delivered" and d["finished_at"] for d in listed)
    assert all(d["next_attempt_at"] is None for d in listed)
    assert sum(len(d["attempts"]) for d in listed) == len(receiver.requests("/all"))
    for d in listed:
        *failed, last = d["attempts"]
        assert last["response_status"] == 200 and last["error"] is None and last["finished_at"]
        assert all(a["response_status"] == 500 and a["error"] == "http_5xx" for a in failed)
    assert any(len(d["attempts"]) > 1 for d in listed)


def test_a_worker_cancelled_mid_request_is_made_good(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    webhook_id = subscribe(client, key, receiver, "/all", ["*"])
    mutate(client, key, contacts=3)
    events = outbox_events(migrated_url, key.workspace_id)
    settings = worker_settings(migrated_url)
    receiver.stall_next = True

    async def cancelled_mid_request() -> None:
        pool = make_worker_pool(migrated_url)
        await pool.open(wait=True)
        task = asyncio.create_task(run_worker(pool, settings))
        assert await asyncio.to_thread(receiver.entered.wait, DEADLINE)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()

    asyncio.run(cancelled_mid_request())
    stalled = receiver.unstall()  # processed, though nobody waits for the answer
    run_workers(migrated_url, settings, lambda: settled(migrated_url, key.workspace_id))

    accepted = assert_all_delivered(receiver, "/all", events)
    assert accepted[stalled] == 2  # sent again: at-least-once, deduped on webhook-id
    listed = {d["event_id"]: d for d in deliveries(client, key, webhook_id)}
    first, *rest = listed[stalled]["attempts"]
    assert first["finished_at"] is None and first["error"].startswith("interrupted")
    assert rest[-1]["response_status"] == 200
    assert all(d["status"] == "delivered" for d in listed.values())


def _worker_process(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url}
    env.update({f"NUDGEL_{name.upper()}": str(value) for name, value in FAST.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "nudgel.cli.nudgel", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_worker_process_is_made_good(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    subscribe(client, key, receiver, "/all", ["*"])
    mutate(client, key, contacts=3)
    events = outbox_events(migrated_url, key.workspace_id)
    receiver.stall_next = True
    process = _worker_process(migrated_url)
    try:
        assert receiver.entered.wait(DEADLINE), process.stderr
    finally:
        process.kill()  # SIGKILL: no clean-up of any kind
        process.communicate(timeout=DEADLINE)
    stalled = receiver.unstall()

    run_workers(
        migrated_url,
        worker_settings(migrated_url),
        lambda: settled(migrated_url, key.workspace_id),
    )
    accepted = assert_all_delivered(receiver, "/all", events)
    assert accepted[stalled] == 2


def test_worker_command_delivers_and_stops_on_ctrl_c(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    subscribe(client, key, receiver, "/all", ["*"])
    receiver.fail_first = 3
    mutate(client, key, contacts=2)
    events = outbox_events(migrated_url, key.workspace_id)
    process = _worker_process(migrated_url)
    try:
        deadline = time.monotonic() + DEADLINE
        while not settled(migrated_url, key.workspace_id):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "timed out waiting for `nudgel worker`"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "worker stopped" in stderr and "Traceback" not in stderr
    assert set(assert_all_delivered(receiver, "/all", events).values()) == {1}


def test_two_workers_never_send_a_delivery_twice(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    webhook_id = subscribe(client, key, receiver, "/all", ["*"])
    subscribe(client, key, receiver, "/tags", ["contact.tagged", "contact.untagged"])
    receiver.fail_first = 10
    mutate(client, key, contacts=15)
    events = outbox_events(migrated_url, key.workspace_id)

    run_workers(
        migrated_url,
        worker_settings(migrated_url),
        lambda: settled(migrated_url, key.workspace_id),
        workers=3,
    )

    # Not one event accepted twice: no delivery was ever in two workers' hands.
    assert set(assert_all_delivered(receiver, "/all", events).values()) == {1}
    tagged = [e for e in events if e.type in ("contact.tagged", "contact.untagged")]
    assert set(assert_all_delivered(receiver, "/tags", tagged).values()) == {1}
    listed = deliveries(client, key, webhook_id)
    assert len(listed) == len(events)
    attempts = [a for d in listed for a in d["attempts"]]
    assert len(attempts) == len(receiver.requests("/all")), [a["error"] for a in attempts]
    assert all(a["finished_at"] for a in attempts)


def test_give_up_after_max_attempts_frees_the_contacts_later_events(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    webhook_id = subscribe(client, key, receiver, "/all", ["*"])
    receiver.fail_types = {"contact.tagged"}
    h = bearer(key)
    client.post("/v1/tags", json={"name": "x"}, headers=h)
    contact = client.post("/v1/contacts", json={"email": "g@example.com"}, headers=h).json()
    client.post(f"/v1/contacts/{contact['id']}/tags", json={"tags": ["x"]}, headers=h)
    client.post("/v1/contacts", json={"email": "g@example.com", "name": "G"}, headers=h)
    events = outbox_events(migrated_url, key.workspace_id)
    assert [e.type for e in events] == [
        "tag.created",
        "contact.created",
        "contact.tagged",
        "contact.updated",
    ]

    run_workers(
        migrated_url,
        worker_settings(migrated_url, webhook_max_attempts=3),
        lambda: settled(migrated_url, key.workspace_id),
    )

    contact_requests = [r for r in receiver.requests("/all") if r.payload["type"] != "tag.created"]
    assert [(r.payload["type"], r.answered) for r in contact_requests] == [
        ("contact.created", 200),
        ("contact.tagged", 500),
        ("contact.tagged", 500),
        ("contact.tagged", 500),
        ("contact.updated", 200),
    ]
    listed = {d["event_type"]: d for d in deliveries(client, key, webhook_id)}
    failed = listed["contact.tagged"]
    assert failed["status"] == "failed" and failed["finished_at"]
    assert [a["response_status"] for a in failed["attempts"]] == [500, 500, 500]
    assert listed["contact.updated"]["status"] == "delivered"


def test_only_subscribed_events_from_existing_webhooks(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    mutate(client, key, contacts=1, prefix="before")  # before any webhook: sent to none
    before = len(outbox_events(migrated_url, key.workspace_id))
    subscribe(client, key, receiver, "/deleted", ["contact.deleted", "tag.created"])
    mutate(client, key, contacts=2, prefix="after")
    events = outbox_events(migrated_url, key.workspace_id)[before:]
    run_workers(
        migrated_url,
        worker_settings(migrated_url),
        lambda: settled(migrated_url, key.workspace_id),
    )
    wanted = [e for e in events if e.type in ("contact.deleted", "tag.created")]
    assert len(wanted) == 2
    assert set(assert_all_delivered(receiver, "/deleted", wanted).values()) == {1}


def test_a_deleted_webhook_receives_nothing_more(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    gone = subscribe(client, key, receiver, "/gone", ["*"])
    subscribe(client, key, receiver, "/kept", ["*"])
    receiver.fail_types = {"contact.created"}  # /gone retries this for ever
    mutate(client, key, contacts=1)
    settings = worker_settings(migrated_url, webhook_max_attempts=1000)

    async def passes(count: int, condition: Callable[[], bool] | None = None) -> None:
        pool = make_worker_pool(migrated_url)
        await pool.open(wait=True)
        try:
            async with httpx.AsyncClient() as http:
                deadline = time.monotonic() + DEADLINE
                while condition is not None and not condition():
                    assert time.monotonic() < deadline
                    await deliver_once(pool, http, settings)
                    await asyncio.sleep(0.02)
                for _ in range(count):
                    await deliver_once(pool, http, settings)
                    # Longer than the backoff: every pending retry is due again.
                    await asyncio.sleep(settings.webhook_backoff_max * 2)
        finally:
            await pool.close()

    asyncio.run(passes(0, lambda: len(receiver.requests("/gone")) >= 3))
    assert client.delete(f"/v1/webhooks/{gone}", headers=bearer(key)).status_code == 200
    seen = len(receiver.requests("/gone"))
    mutate(client, key, contacts=1, prefix="later")
    asyncio.run(passes(10))
    assert len(receiver.requests("/gone")) == seen
    # The other webhook got the later events.
    later = {r.payload["data"].get("email") for r in receiver.requests("/kept")}
    assert "later0@example.com" in later


def test_signature_headers(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    """The raw request, as a receiver without the library would see it."""
    subscribe(client, key, receiver, "/all", ["tag.created"])
    client.post("/v1/tags", json={"name": "raw"}, headers=bearer(key))
    seen: list[httpx.Request] = []

    async def capture() -> None:
        pool = make_worker_pool(migrated_url)
        await pool.open(wait=True)

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(204)

        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
                await deliver_once(pool, http, worker_settings(migrated_url))
                await deliver_once(pool, http, worker_settings(migrated_url))
        finally:
            await pool.close()

    asyncio.run(capture())
    [request] = seen
    (event,) = outbox_events(migrated_url, key.workspace_id)
    assert request.headers["webhook-id"] == event.event_id
    assert request.headers["content-type"] == "application/json"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
    assert request.headers["webhook-signature"].startswith("v1,")
    assert json.loads(request.content) == event.payload
    Webhook(receiver.secrets["/all"]).verify(request.content, dict(request.headers))
    assert settled(migrated_url, key.workspace_id)  # 204 is a success too


def test_the_serve_process_runs_the_worker(
    key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    """With run_worker on, the app delivers by itself, and its shutdown stops the worker."""
    settings = worker_settings(migrated_url, run_worker=True)
    with TestClient(create_app(settings)) as serving:
        subscribe(serving, key, receiver, "/all", ["*"])
        receiver.fail_first = 2
        mutate(serving, key, contacts=2)
        deadline = time.monotonic() + DEADLINE
        while not settled(migrated_url, key.workspace_id):
            assert time.monotonic() < deadline, "timed out waiting for the in-app worker"
            time.sleep(0.05)
    # Leaving the block ran the lifespan's shutdown: it returned, so the worker stopped.
    events = outbox_events(migrated_url, key.workspace_id)
    assert set(assert_all_delivered(receiver, "/all", events).values()) == {1}


def test_an_interrupted_last_attempt_gives_up(
    client: TestClient, key: IssuedKey, receiver: Receiver, migrated_url: str
) -> None:
    """With one attempt allowed, a delivery whose worker died mid-request ends failed
    once its lease is over, instead of holding its contact's later events for ever."""
    webhook_id = subscribe(client, key, receiver, "/all", ["*"])
    mutate(client, key, contacts=2)
    settings = worker_settings(migrated_url, webhook_max_attempts=1)
    receiver.stall_next = True

    async def cancelled_mid_request() -> None:
        pool = make_worker_pool(migrated_url)
        await pool.open(wait=True)
        task = asyncio.create_task(run_worker(pool, settings))
        assert await asyncio.to_thread(receiver.entered.wait, DEADLINE)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()

    asyncio.run(cancelled_mid_request())
    stalled = receiver.unstall()
    run_workers(migrated_url, settings, lambda: settled(migrated_url, key.workspace_id))

    listed = {d["event_id"]: d for d in deliveries(client, key, webhook_id)}
    assert listed[stalled]["status"] == "failed"
    for d in listed.values():
        [attempt] = d["attempts"]
        if d["status"] == "failed":  # the held request, and any others cut short with it
            assert attempt["error"].startswith("interrupted") and attempt["finished_at"] is None
        else:
            assert d["status"] == "delivered" and attempt["response_status"] == 200
    assert sum(d["status"] == "delivered" for d in listed.values()) > 0


def test_backoff_grows_with_jitter_and_stays_under_the_cap(migrated_url: str) -> None:
    settings = Settings(database_url=migrated_url, webhook_backoff_base=5, webhook_backoff_max=3600)
    for attempts in range(1, 5000, 7):
        full = min(3600.0, 5.0 * 2 ** min(attempts - 1, 60))
        delays = {backoff_seconds(attempts, settings) for _ in range(20)}
        assert all(full / 2 <= d <= full for d in delays), attempts
        assert len(delays) > 1  # jittered
