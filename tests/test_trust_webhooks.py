"""Trust (issue #11): webhooks cannot reach inside, idempotency records keep no secret
and are purged, and text PostgreSQL cannot store is a 422, never a 500.

Against the served app and a real PostgreSQL. No test sends a packet anywhere
but 127.0.0.1: a public address a test names is either only checked, or
"connected" through a recording backend that never touches the network.
Name resolution is a stub where a test needs a name to resolve somewhere
(``destinations.resolve`` patched), except ``localhost`` (``/etc/hosts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.housekeeping import purge_idempotency_keys
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from nudgel.api.webhooks import destinations
from nudgel.api.webhooks.delivery import deliver_once, delivery_client, make_worker_pool
from nudgel.api.webhooks.destinations import (
    IPAddress,
    PinnedBackend,
    PinnedTransport,
    UnresolvableHost,
)
from nudgel.schema.migrate import available_migrations
from psycopg.types.json import Jsonb
from test_api_foundation import assert_problem, bearer
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

DEADLINE = 60.0  # seconds any wait may take before the test fails


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    # The default: webhooks reach public addresses only. No worker in the app.
    app = create_app(Settings(database_url=migrated_url, run_worker=False))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def dev_client(migrated_url: str) -> Iterator[TestClient]:
    # Local development: NUDGEL_WEBHOOK_ALLOW_PRIVATE=true.
    settings = Settings(database_url=migrated_url, run_worker=False, webhook_allow_private=True)
    with TestClient(create_app(settings)) as client:
        yield client


# ---- a resolver stub and a local endpoint ------------------------------------------


@dataclass
class Resolver:
    """``destinations.resolve`` for made-up names: each lookup takes the next answer
    (the last one repeats); unknown names do not resolve."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        answers = self.answers.get(host)
        if not answers:
            raise UnresolvableHost(f"{host} does not resolve")
        current = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ipaddress.ip_address(a) for a in current]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    stub = Resolver()
    monkeypatch.setattr(destinations, "resolve", stub)
    return stub


@dataclass
class Endpoint:
    """An HTTP server on 127.0.0.1 answering each path with its status (200 by
    default); ``/stall`` answers only when the test ends. Records what it got."""

    port: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.seen.append((self.path, self.headers.get("Host", "")))
            if self.path == "/stall":
                state.release.wait(DEADLINE)
            with contextlib.suppress(OSError):
                self.send_response(state.statuses.get(self.path, 200))
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
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


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def create(client: TestClient, key: IssuedKey, url: str, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/webhooks", json={"url": url, "events": ["*"]}, headers=bearer(key, **headers)
    )


def a_tag(client: TestClient, key: IssuedKey) -> None:
    """One event (tag.created) for every webhook of the workspace."""
    name = f"t{secrets.token_hex(4)}"
    assert client.post("/v1/tags", json={"name": name}, headers=bearer(key)).status_code == 201


def deliver(url: str, settings: Settings) -> None:
    """One worker pass over the whole outbox, through the production client."""

    async def main() -> None:
        pool = make_worker_pool(url)
        await pool.open(wait=True)
        try:
            async with delivery_client(settings) as http:
                await deliver_once(pool, http, settings)
        finally:
            await pool.close()

    asyncio.run(main())


def attempts(client: TestClient, key: IssuedKey, webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=bearer(key))
    assert response.status_code == 200, response.text
    return [a for d in response.json()["data"] for a in d["attempts"]]


def worker_settings(url: str, **overrides: Any) -> Settings:
    # One attempt each: a failure is final at once, no backoff to wait out.
    return Settings(
        database_url=url,
        **{"run_worker": False, "webhook_max_attempts": 1, "webhook_timeout": 5.0, **overrides},
    )


# ---- 1. webhooks cannot reach inside ----------------------------------------------

INTERNAL = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata"),
    ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
    ("http://192.168.1.20:8080/", "is a private address"),
    ("http://172.16.0.1/", "is a private address"),
    ("http://[::1]/hook", "::1 is a loopback address"),
    ("http://[::1]:5432/", "::1 is a loopback address"),
    ("http://2130706433/", "127.0.0.1 is a loopback address"),
    ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
    ("http://0177.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://127.1/", "127.0.0.1 is a loopback address"),
    ("http://0x7f000001/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1./", "127.0.0.1 is a loopback address"),
    ("https://127.0.0.1:8443/", "127.0.0.1 is a loopback address"),
    ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("https://168.63.129.16/", "cloud metadata"),  # Azure's: a public address
    ("http://224.0.0.251/", "multicast"),
    ("http://0.0.0.0:8000/", "0.0.0.0 is the unspecified address"),
    ("http://0/", "0.0.0.0 is the unspecified address"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://198.18.0.1/", "198.18.0.1 is a private address"),  # benchmarking
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "fc00::1 is a private address"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::]/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "carries 127.0.0.1, a loopback address"),
    ("http://[::ffff:a9fe:a9fe]/", "carries 169.254.169.254, a cloud metadata"),
    ("http://[::127.0.0.1]/", "carries 127.0.0.1, a loopback address"),  # IPv4-compatible
    ("http://[2002:a00:1::1]/", "carries 10.0.0.1, a private address"),  # 6to4
    ("http://[64:ff9b::a9fe:a9fe]/", "carries 169.254.169.254"),  # NAT64
    ("http://[64:ff9b:1::a00:1]/", "reserved"),  # local-use NAT64
    ("http://localhost:8000/", "localhost resolves to 127.0.0.1, which is a loopback"),
    ("http://LOCALHOST/", "resolves to 127.0.0.1, which is a loopback"),
]


@pytest.mark.parametrize(("url", "reason"), INTERNAL, ids=[u for u, _ in INTERNAL])
def test_every_internal_address_form_is_refused_at_creation(
    client: TestClient, key: IssuedKey, url: str, reason: str
) -> None:
    problem = assert_problem(create(client, key, url), 422)
    [error] = problem["errors"]
    assert (error["location"], error["pointer"], error["code"]) == (
        "body",
        "/url",
        "blocked_address",
    )
    assert reason in error["detail"], error["detail"]
    assert "NUDGEL_WEBHOOK_ALLOW_PRIVATE" in error["detail"]
    assert client.get("/v1/webhooks", headers=bearer(key)).json()["data"] == []


def test_a_name_with_any_private_address_is_refused(
    client: TestClient, key: IssuedKey, resolver: Resolver
) -> None:
    resolver.answers["hooks.example"] = [["93.184.216.34", "10.1.2.3"]]
    resolver.answers["metadata.example"] = [["2606:4700::1111", "169.254.169.254"]]
    problem = assert_problem(create(client, key, "https://hooks.example/in"), 422)
    assert "hooks.example resolves to 10.1.2.3, which is a private address" in problem["detail"]
    problem = assert_problem(create(client, key, "https://metadata.example/"), 422)
    assert "resolves to 169.254.169.254, which is a cloud metadata" in problem["detail"]
    assert client.get("/v1/webhooks", headers=bearer(key)).json()["data"] == []


def test_public_addresses_and_names_not_resolving_yet_are_accepted(
    client: TestClient, key: IssuedKey, resolver: Resolver
) -> None:
    resolver.answers["public.example"] = [["93.184.216.34", "2606:4700::1111"]]
    for url in (
        "https://93.184.216.34/hook",
        "https://[2606:4700::1111]/hook",
        "https://[::ffff:5db8:d822]/hook",  # 93.184.216.34, IPv4-mapped
        "https://public.example/hook",
        "https://not-yet.example/hook",  # checked again at every delivery
    ):
        assert create(client, key, url).status_code == 201, url
    assert resolver.calls == ["public.example", "not-yet.example"]


def test_allow_private_admits_private_addresses_but_never_metadata(
    dev_client: TestClient, key: IssuedKey
) -> None:
    for url in ("http://127.0.0.1:9000/", "http://10.0.0.1/", "http://[::1]/", "http://localhost/"):
        assert create(dev_client, key, url).status_code == 201, url
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://[::ffff:a9fe:a9fe]/"):
        problem = assert_problem(create(dev_client, key, url), 422)
        assert "cloud metadata" in problem["detail"]
        assert "NUDGEL_WEBHOOK_ALLOW_PRIVATE" not in problem["detail"]


def test_dns_rebinding_cannot_reach_the_private_address_at_delivery(
    client: TestClient,
    key: IssuedKey,
    resolver: Resolver,
    endpoint: Endpoint,
    migrated_url: str,
) -> None:
    """Public when the webhook is created, 127.0.0.1 (where an endpoint listens) when
    the worker connects: the worker refuses, and the endpoint never hears of it."""
    resolver.answers["rebind.example"] = [["93.184.216.34"], ["127.0.0.1"]]
    created = create(client, key, endpoint.url("/hook", host="rebind.example"))
    assert created.status_code == 201, created.text
    a_tag(client, key)

    deliver(migrated_url, worker_settings(migrated_url))

    assert endpoint.seen == []
    [attempt] = attempts(client, key, created.json()["id"])
    assert attempt["error"] == "blocked_address" and attempt["response_status"] is None
    assert resolver.calls == ["rebind.example", "rebind.example"]


@dataclass
class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Where connections would go; refuses them all (no packet leaves)."""

    targets: list[tuple[str, int]] = field(default_factory=list)

    async def connect_tcp(
        self, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        self.targets.append((host, port))
        raise httpcore.ConnectError("refused by the test")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise AssertionError("never a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_the_connection_goes_to_the_address_that_was_checked(
    resolver: Resolver, endpoint: Endpoint
) -> None:
    """One resolution per connection, and the socket goes to its checked address: a
    resolver that answers differently the next time (public, then 127.0.0.1) is not
    asked again between the check and the connect."""
    resolver.answers["flip.example"] = [["93.184.216.34"], ["127.0.0.1"]]
    recording = RecordingBackend()
    backend = PinnedBackend(allow_private=False, inner=recording)

    async def post() -> None:
        async with httpx.AsyncClient(transport=PinnedTransport(backend)) as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(endpoint.url("/hook", host="flip.example"), content=b"{}")

    asyncio.run(post())
    assert recording.targets == [("93.184.216.34", endpoint.port)]
    assert resolver.calls == ["flip.example"]
    assert endpoint.seen == []


def test_a_pinned_connection_keeps_the_host_name_in_the_request(
    dev_client: TestClient,
    key: IssuedKey,
    resolver: Resolver,
    endpoint: Endpoint,
    migrated_url: str,
) -> None:
    """With allow-private on, a name resolving to 127.0.0.1 is delivered to: the
    socket goes to the resolved address, the request still names the host."""
    resolver.answers["receiver.example"] = [["127.0.0.1"]]
    created = create(dev_client, key, endpoint.url("/named", host="receiver.example"))
    assert created.status_code == 201, created.text
    a_tag(dev_client, key)

    deliver(migrated_url, worker_settings(migrated_url, webhook_allow_private=True))

    assert endpoint.seen == [("/named", f"receiver.example:{endpoint.port}")]
    [attempt] = attempts(dev_client, key, created.json()["id"])
    assert attempt["error"] is None and attempt["response_status"] == 200


def test_deliveries_show_short_error_classes(
    dev_client: TestClient,
    key: IssuedKey,
    resolver: Resolver,
    endpoint: Endpoint,
    migrated_url: str,
) -> None:
    endpoint.statuses.update({"/500": 503, "/404": 404, "/302": 302})
    tls_port = endpoint.port  # plain HTTP: a TLS handshake with it fails
    expected = {
        endpoint.url("/500"): ("http_5xx", 503),
        endpoint.url("/404"): ("http_4xx", 404),
        endpoint.url("/302"): ("http_3xx", 302),
        endpoint.url("/stall"): ("timeout", None),
        f"http://127.0.0.1:{closed_port()}/": ("connection_refused", None),
        "http://nowhere.example/": ("dns_error", None),
        f"https://127.0.0.1:{tls_port}/": ("tls_error", None),
        endpoint.url("/ok"): (None, 200),
    }
    hooks = {}
    for url in expected:
        created = create(dev_client, key, url)
        assert created.status_code == 201, created.text
        hooks[url] = created.json()["id"]
    a_tag(dev_client, key)

    deliver(migrated_url, worker_settings(migrated_url, webhook_allow_private=True))

    for url, (error, status) in expected.items():
        [attempt] = attempts(dev_client, key, hooks[url])
        assert (attempt["error"], attempt["response_status"]) == (error, status), url
    with psycopg.connect(migrated_url) as conn:
        raw = conn.execute(
            "SELECT d.last_error FROM webhook_deliveries d JOIN webhooks w ON w.pk = d.webhook_pk"
            " WHERE w.workspace_id = %s",
            (key.workspace_id,),
        ).fetchall()
    classes = {error for error, _ in expected.values()}
    assert {r[0] for r in raw} == classes


def test_the_migration_turns_stored_raw_errors_into_classes(
    key: IssuedKey, pg_conn: psycopg.Connection
) -> None:
    # key before pg_conn: the rollback comes first at teardown, then the workspace's drop.
    webhook = pg_conn.execute(
        "INSERT INTO webhooks (workspace_id, id, url, events, secret)"
        " VALUES (%s, %s, 'https://example.com/', '{*}', 'whsec_x') RETURNING pk",
        (key.workspace_id, f"wh_{secrets.token_hex(8)}"),
    ).fetchone()
    assert webhook is not None
    outbox = pg_conn.execute(
        "INSERT INTO outbox (workspace_id, event_id, event_type, payload)"
        " VALUES (%s, %s, 'tag.created', '{}') RETURNING id",
        (key.workspace_id, f"evt_{secrets.token_hex(8)}"),
    ).fetchone()
    assert outbox is not None
    delivery = pg_conn.execute(
        "INSERT INTO webhook_deliveries (webhook_pk, outbox_id, last_error)"
        " VALUES (%s, %s, 'ConnectError: [Errno 111] Connection refused') RETURNING pk",
        (webhook[0], outbox[0]),
    ).fetchone()
    assert delivery is not None
    raw = {
        "HTTP 503": "http_5xx",
        "HTTP 404": "http_4xx",
        "timeout: no answer within 10s": "timeout",
        "ReadTimeout: timed out": "timeout",
        "interrupted: the worker stopped before the endpoint answered": "interrupted",
        "ConnectError: [Errno -2] Name or service not known": "dns_error",
        "ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed": "tls_error",
        "ConnectError: [Errno 111] Connection refused": "connection_refused",
        "RemoteProtocolError: Server disconnected": "protocol_error",
        "ConnectError: All connection attempts failed": "connection_error",
        "blocked_address": "blocked_address",
    }
    for error in raw:
        pg_conn.execute(
            "INSERT INTO webhook_attempts (delivery_pk, error) VALUES (%s, %s)",
            (delivery[0], error),
        )
    secret = "whsec_" + secrets.token_hex(16)
    pg_conn.execute(
        "INSERT INTO idempotency_keys"
        " (workspace_id, key, request_fingerprint, state, response_status, response_body)"
        " VALUES (%s, 'k', '\\x00', 'done', 201, %s)",
        (key.workspace_id, Jsonb({"object": "webhook", "id": "wh_1", "secret": secret})),
    )
    [migration] = [m for m in available_migrations() if m.name == "0014_webhook_hygiene"]

    pg_conn.execute(migration.sql.encode())  # again, on rows as earlier versions wrote them

    rows = pg_conn.execute(
        "SELECT error FROM webhook_attempts WHERE delivery_pk = %s ORDER BY pk", (delivery[0],)
    ).fetchall()
    assert [r[0] for r in rows] == list(raw.values())
    last = pg_conn.execute(
        "SELECT last_error FROM webhook_deliveries WHERE pk = %s", (delivery[0],)
    ).fetchone()
    assert last == ("connection_refused",)
    body = pg_conn.execute(
        "SELECT response_body FROM idempotency_keys WHERE workspace_id = %s", (key.workspace_id,)
    ).fetchone()
    assert body == ({"object": "webhook", "id": "wh_1"},)


# ---- 2. idempotency kept clean -------------------------------------------------------


def stored_rows(url: str, workspace_id: int) -> list[str]:
    """Each idempotency record of the workspace, whole, as text."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT k::text FROM idempotency_keys k WHERE workspace_id = %s", (workspace_id,)
        ).fetchall()
    return [r[0] for r in rows]


def test_a_replayed_creation_returns_the_secret_the_record_does_not_hold(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    headers = {"Idempotency-Key": secrets.token_hex(8)}
    first = create(client, key, "https://93.184.216.34/hook", **headers)
    again = create(client, key, "https://93.184.216.34/hook", **headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    secret = first.json()["secret"]
    [row] = stored_rows(migrated_url, key.workspace_id)
    assert first.json()["id"] in row  # the record is there, and names the webhook
    assert secret not in row and secret.removeprefix("whsec_") not in row
    assert "secret" not in row


def test_a_replay_of_a_deleted_webhooks_creation_is_404(client: TestClient, key: IssuedKey) -> None:
    headers = {"Idempotency-Key": secrets.token_hex(8)}
    first = create(client, key, "https://93.184.216.34/hook", **headers)
    assert first.status_code == 201
    deleted = client.delete(f"/v1/webhooks/{first.json()['id']}", headers=bearer(key))
    assert deleted.status_code == 200
    problem = assert_problem(create(client, key, "https://93.184.216.34/hook", **headers), 404)
    assert "deleted since" in problem["detail"]


def add_records(url: str, workspace_id: int, ages: dict[str, timedelta]) -> None:
    with psycopg.connect(url) as conn:
        for name, age in ages.items():
            conn.execute(
                "INSERT INTO idempotency_keys (workspace_id, key, request_fingerprint, state,"
                " response_status, response_body, created_at)"
                " VALUES (%s, %s, '\\x00', 'done', 200, '{}', %s)",
                (workspace_id, name, datetime.now(UTC) - age),
            )


def record_keys(url: str, *workspace_ids: int) -> set[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT workspace_id, key FROM idempotency_keys WHERE workspace_id = ANY(%s)",
            (list(workspace_ids),),
        ).fetchall()
    return {(r[0], r[1]) for r in rows}


def test_records_past_the_retention_are_purged_in_batches(
    key: IssuedKey, other_key: IssuedKey, migrated_url: str
) -> None:
    old, young = timedelta(hours=3), timedelta(hours=1)
    add_records(migrated_url, key.workspace_id, {f"old{i}": old for i in range(7)})
    add_records(migrated_url, key.workspace_id, {"young": young})
    add_records(migrated_url, other_key.workspace_id, {"old": old, "young": young})
    settings = Settings(
        database_url=migrated_url, idempotency_retention_hours=2, idempotency_purge_batch=3
    )

    async def purge() -> int:
        async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as conn:
            return await purge_idempotency_keys(conn, settings)

    assert asyncio.run(purge()) >= 8  # 3 + 3 + 2 here, and any other test's old ones
    assert record_keys(migrated_url, key.workspace_id, other_key.workspace_id) == {
        (key.workspace_id, "young"),
        (other_key.workspace_id, "young"),
    }


def test_the_background_work_of_serve_purges(migrated_url: str) -> None:
    issued = new_key(migrated_url)
    try:
        add_records(
            migrated_url, issued.workspace_id, {"old": timedelta(hours=30), "new": timedelta(0)}
        )
        settings = Settings(database_url=migrated_url, run_worker=True, webhook_poll_interval=0.05)
        with TestClient(create_app(settings)):
            deadline = time.monotonic() + DEADLINE
            while record_keys(migrated_url, issued.workspace_id) != {(issued.workspace_id, "new")}:
                assert time.monotonic() < deadline, "the serve process did not purge"
                time.sleep(0.05)
    finally:
        drop_workspace(migrated_url, issued.workspace_id)


# ---- 3. never a 500 on input ---------------------------------------------------------

NUL, SURROGATE = "\x00", "\ud800"
CONTACT = {"email": "nul@example.com"}

# (method, path, body, where the unstorable text is)
UNSTORABLE: list[tuple[str, str, Any, tuple[str, str]]] = [
    (
        "POST",
        "/v1/contacts",
        {**CONTACT, "push_tokens": [f"tok{NUL}en"]},
        ("body", "/push_tokens/0"),
    ),
    ("POST", "/v1/contacts", {**CONTACT, "push_tokens": [SURROGATE]}, ("body", "/push_tokens/0")),
    ("POST", "/v1/contacts", {**CONTACT, "tags": ["ok", f"v{NUL}ip"]}, ("body", "/tags/1")),
    ("POST", "/v1/contacts", {**CONTACT, "name": f"Ada{NUL}"}, ("body", "/name")),
    ("POST", "/v1/contacts", {**CONTACT, "name": f"Ada{SURROGATE}"}, ("body", "/name")),
    ("POST", "/v1/contacts", {**CONTACT, "fields": {"plan": f"p{NUL}"}}, ("body", "/fields/plan")),
    ("POST", "/v1/contacts", {**CONTACT, "fields": {f"pl{NUL}an": "x"}}, ("body", "/fields")),
    ("POST", "/v1/contacts", {"email": f"a{NUL}@example.com"}, ("body", "/email")),
    ("POST", "/v1/contacts", {**CONTACT, "source": f"f{NUL}orm"}, ("body", "/source")),
    (
        "POST",
        "/v1/contacts",
        {**CONTACT, "subscriptions": {f"n{NUL}": "subscribed"}},
        ("body", "/subscriptions"),
    ),
    (
        "POST",
        "/v1/events",
        {**CONTACT, "name": "order.placed", "props": {"total": 1, "note": f"x{NUL}"}},
        ("body", "/props/note"),
    ),
    (
        "POST",
        "/v1/events",
        {**CONTACT, "name": "order.placed", "props": {f"k{SURROGATE}": 1}},
        ("body", "/props"),
    ),
    (
        "POST",
        "/v1/events",
        {**CONTACT, "name": "order.placed", "props": {"a": [{"b": [f"{NUL}"]}]}},
        ("body", "/props/a/0/b/0"),
    ),
    ("POST", "/v1/events", {**CONTACT, "name": f"order{NUL}"}, ("body", "/name")),
    (
        "POST",
        "/v1/events",
        {**CONTACT, "name": "x", "traits": {"name": NUL}},
        ("body", "/traits/name"),
    ),
    ("POST", "/v1/tags", {"name": f"t{NUL}"}, ("body", "/name")),
    ("PATCH", "/v1/tags/vip", {"color": f"#{NUL}"}, ("body", "/color")),
    ("POST", "/v1/fields", {"name": f"f{NUL}", "type": "text"}, ("body", "/name")),
    ("POST", "/v1/lists", {"name": "news", "title": f"T{NUL}"}, ("body", "/title")),
    ("POST", "/v1/lists", {"name": f"n{NUL}", "title": "T"}, ("body", "/name")),
    ("PATCH", "/v1/lists/news", {"landing_page": f"{SURROGATE}"}, ("body", "/landing_page")),
    (
        "POST",
        "/v1/webhooks",
        {"url": f"https://example.com/{NUL}", "events": ["*"]},
        ("body", "/url"),
    ),
    (
        "POST",
        "/v1/webhooks",
        {"url": "https://example.com/", "events": [NUL]},
        ("body", "/events/0"),
    ),
    (
        "PUT",
        "/v1/rules",
        {"files": {"a.rules": f"segment a {{ {NUL} }}"}},
        ("body", "/files/a.rules"),
    ),
    ("PUT", "/v1/rules", {"files": {f"a{NUL}.rules": "x"}}, ("body", "/files")),
    ("GET", f"/v1/contacts?starting_after=con_{NUL}", None, ("query", "/starting_after")),
    ("GET", f"/v1/segments/s{NUL}/contacts", None, ("path", "/name")),
    ("GET", f"/v1/tags/a{NUL}b", None, ("path", "/name")),
    ("DELETE", f"/v1/lists/n{NUL}", None, ("path", "/name")),
    ("GET", f"/v1/webhooks?starting_after=wh_{NUL}", None, ("query", "/starting_after")),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "where"),
    UNSTORABLE,
    ids=[f"{m} {p} {w[1]}" for m, p, _, w in UNSTORABLE],
)
def test_unstorable_text_anywhere_is_a_422(
    client: TestClient,
    key: IssuedKey,
    migrated_url: str,
    method: str,
    path: str,
    body: Any,
    where: tuple[str, str],
) -> None:
    # Sent as escapes ("\u0000", "\ud800"): how JSON carries them.
    content = None if body is None else json.dumps(body).encode()
    headers = bearer(key, **{"Content-Type": "application/json"})
    response = client.request(method, path.replace(NUL, "%00"), content=content, headers=headers)
    problem = assert_problem(response, 422)
    assert {"location": where[0], "pointer": where[1], "code": "unstorable_characters"} in [
        {k: e[k] for k in ("location", "pointer", "code")} for e in problem["errors"]
    ], problem
    with psycopg.connect(migrated_url) as conn:
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM contacts WHERE workspace_id = %(ws)s)"
            " + (SELECT count(*) FROM outbox WHERE workspace_id = %(ws)s)",
            {"ws": key.workspace_id},
        ).fetchone()
    assert stored == (0,)


def test_an_unstorable_idempotency_key_is_a_422(client: TestClient, key: IssuedKey) -> None:
    response = client.post(
        "/v1/tags", json={"name": "vip"}, headers=bearer(key, **{"Idempotency-Key": f"k{NUL}"})
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["location"] == "header"


def test_valid_surrogate_pairs_and_other_control_text_are_stored(
    client: TestClient, key: IssuedKey
) -> None:
    # An emoji arrives as a surrogate pair escape: one character, stored as is.
    body = {**CONTACT, "name": "Ada \ud83d\ude00", "push_tokens": ["tab\there"]}
    response = client.post(
        "/v1/contacts",
        content=json.dumps(body).encode(),
        headers=bearer(key, **{"Content-Type": "application/json"}),
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Ada \U0001f600"
    assert response.json()["push_tokens"] == ["tab\there"]
