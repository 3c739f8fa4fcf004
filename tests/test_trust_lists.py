"""Trust in lists (issue #11), against `nudgel serve` and a real PostgreSQL.

- User code never runs on the event loop, and is bounded: template bombs are
  refused when a list is saved, naming the member and the limit; a template
  that blows up only for some contacts fails that send (the subscription
  stays pending, the timeline says why) while other workspaces are served
  as usual, and the server's memory does not grow.
- People click, scanners don't: a GET of a confirm or unsubscribe link shows
  a button and changes nothing; the POST acts; one-click POST works. Tokens
  carry no readable personal data, and unsubscribe tokens expire.
- No open dev inbox: /dev/inbox is gone; GET /v1/dev/inbox needs the
  workspace's key, shows only its mail, newest first, capped.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import itsdangerous.timed
import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from test_api_foundation import free_port, outbox_types
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

# Template bombs: each is refused at save time.
NESTED = "{% for i in range(100000) %}{% for j in range(2000) %}x{% endfor %}{% endfor %}"
NESTED_SILENT = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
NESTED_LOUD = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"
MULTIPLIED = '{{ "a" * 2*10**8 }}'
HUGE_RANGE = "{% for i in range(10**9) %}x{% endfor %}"
WIDE_FORMAT = '{{ "%999999999d" % 1 }}'
PADDED = "{{ contact.name.ljust(10**9) }}"
# Fine for the sample contact (no field `n`), a bomb for a contact with n = 10000.
PER_CONTACT = (
    "{% for i in range(fields.n or 0) %}{% for j in range(fields.n or 0) %}"
    "{% endfor %}{% endfor %}Confirm: {{ confirm_url }}"
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(migrated_url: str) -> Iterator[tuple[httpx.Client, int]]:
    """`nudgel serve` on a free port, no SMTP server (the dev inbox), default limits."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": migrated_url, "NUDGEL_RUN_WORKER": "false"}
    env.pop("NUDGEL_SMTP_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudgel.cli.nudgel", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "nudgel serve exited"
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nudgel serve did not answer in 60 s"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as http:
            yield http, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def http(server: tuple[httpx.Client, int]) -> httpx.Client:
    return server[0]


def auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


def make_list(http: httpx.Client | TestClient, key: IssuedKey, **body: Any) -> None:
    response = http.post(
        "/v1/lists",
        json={"name": "news", "title": "The News", "double_opt_in": True, **body},
        headers=auth(key),
    )
    assert response.status_code == 201, response.text


def sign_up(
    http: httpx.Client | TestClient, key: IssuedKey, email: str, **fields: Any
) -> dict[str, Any]:
    response = http.post(
        "/v1/contacts",
        json={
            "email": email,
            "name": "Ada",
            "fields": fields,
            "subscriptions": {"news": "subscribed"},
        },
        headers=auth(key),
    )
    assert response.status_code in (200, 201), response.text
    contact: dict[str, Any] = response.json()
    return contact


def inbox(http: httpx.Client | TestClient, key: IssuedKey) -> list[dict[str, Any]]:
    response = http.get("/v1/dev/inbox?limit=100", headers=auth(key))
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["data"]
    return messages


def link(message: dict[str, Any], kind: str) -> str:
    """The path of the message's confirm or unsubscribe link."""
    [url] = [u for u in message["links"] if f"/{kind}/" in u]
    return "/" + url.split("/", 3)[3]


def status(http: httpx.Client | TestClient, key: IssuedKey, contact_id: str) -> str:
    detail = http.get(f"/v1/contacts/{contact_id}", headers=auth(key)).json()
    [subscription] = detail["subscriptions"]
    value: str = subscription["status"]
    return value


def timeline(http: httpx.Client | TestClient, key: IssuedKey, contact_id: str) -> list[Any]:
    response = http.get(f"/v1/contacts/{contact_id}/timeline?limit=100", headers=auth(key))
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()["data"]
    return events


# ---- user code is bounded ------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "source", "limit"),
    [
        ("confirmation_body", NESTED, "NUDGEL_TEMPLATE_MAX_RANGE"),
        ("confirmation_body", NESTED_SILENT, "NUDGEL_TEMPLATE_TIMEOUT_MS"),
        ("landing_page", NESTED_LOUD, "NUDGEL_TEMPLATE_MAX_OUTPUT"),
        ("confirmation_subject", MULTIPLIED, "NUDGEL_TEMPLATE_MAX_OUTPUT"),
        ("landing_page", HUGE_RANGE, "NUDGEL_TEMPLATE_MAX_RANGE"),
        ("confirmation_subject", WIDE_FORMAT, "NUDGEL_TEMPLATE_MAX_OUTPUT"),
        ("landing_page", PADDED, "NUDGEL_TEMPLATE_MAX_OUTPUT"),
    ],
)
def test_template_bombs_are_refused_when_saved(
    server: tuple[httpx.Client, int], key: IssuedKey, member: str, source: str, limit: str
) -> None:
    http, pid = server
    body = {"name": "bomb", "title": "Bomb", member: source}
    before = rss_kib(pid)
    started = time.monotonic()
    response = http.post("/v1/lists", json=body, headers=auth(key))
    elapsed = time.monotonic() - started
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["pointer"] == f"/{member}" and error["code"] == "template"
    assert limit in error["detail"], error
    # The render stops at its 1 s limit (or at once, for a bound known before
    # the work): ~1 s, so 3 s is generous on a loaded two-core machine.
    assert elapsed < 3, elapsed
    # Rendering happens in the worker processes: the server does not grow.
    assert rss_kib(pid) - before < 50 * 1024
    assert http.get("/v1/lists/bomb", headers=auth(key)).status_code == 404


def test_a_template_that_blows_up_for_one_contact_fails_that_send_without_stalling(
    server: tuple[httpx.Client, int], key: IssuedKey, other_key: IssuedKey
) -> None:
    http, pid = server
    assert http.post(
        "/v1/fields", json={"name": "n", "type": "number"}, headers=auth(key)
    ).is_success
    make_list(http, key, confirmation_body=PER_CONTACT)  # the sample contact passes
    rss_before = rss_kib(pid)

    # While three bombs run one after another, another workspace's requests go on.
    bombs: list[tuple[float, dict[str, Any]]] = []

    def subscribe_bombs() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as own:
            for number in range(3):
                started = time.monotonic()
                contact = sign_up(own, key, f"bomb{number}@example.com", n=10_000)
                bombs.append((time.monotonic() - started, contact))

    thread = threading.Thread(target=subscribe_bombs)
    latencies: list[float] = []
    thread.start()
    while thread.is_alive():
        started = time.monotonic()
        response = http.post(
            "/v1/contacts",
            json={"email": f"other{len(latencies)}@example.com"},
            headers=auth(other_key),
        )
        latencies.append(time.monotonic() - started)
        assert response.status_code == 201, response.text
    thread.join()
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    print(f"\nother workspace: {len(latencies)} requests during the bombs, p99 {p99 * 1000:.0f} ms")
    # The issue aims at < 200 ms; 1 s is generous for a loaded two-core machine
    # (before, each bomb stalled every workspace for ~5 s).
    assert len(latencies) >= 10 and p99 < 1.0, latencies

    for elapsed, contact in bombs:
        # The request answers once the render's 1 s is up, not after the template's run.
        assert elapsed < 5, elapsed
        assert contact["subscriptions"][0]["status"] == "pending"
        assert status(http, key, contact["id"]) == "pending"
        [failed] = [
            e for e in timeline(http, key, contact["id"]) if e["name"] == "list.confirmation_failed"
        ]
        assert failed["props"]["list"] == "news"
        assert failed["props"]["member"] == "confirmation_body"
        assert "NUDGEL_TEMPLATE_TIMEOUT_MS" in failed["props"]["reason"]
    assert inbox(http, key) == []  # no email for them
    grown = rss_kib(pid) - rss_before
    print(f"server RSS grew {grown} KiB over the three bombs")
    assert grown < 50 * 1024
    # The workers killed on the timeouts were replaced: a contact it does not
    # blow up for gets its email at once.
    ok = sign_up(http, key, "fine@example.com", n=3)
    assert ok["subscriptions"][0]["status"] == "pending"
    [message] = inbox(http, key)
    assert message["headers"]["To"] == "fine@example.com"
    assert "list.confirmation_failed" not in [e["name"] for e in timeline(http, key, ok["id"])]


def test_one_workspaces_slow_templates_leave_workers_for_the_others(
    migrated_url: str, key: IssuedKey, other_key: IssuedKey
) -> None:
    # Two workers, one render at a time per workspace: two bombs of one workspace
    # use one worker (the second waits its turn), the other workspace gets the other.
    settings = Settings(
        database_url=migrated_url, run_worker=False, template_timeout_ms=3000, template_workers=2
    )
    with TestClient(create_app(settings)) as client:
        assert client.post(
            "/v1/fields", json={"name": "n", "type": "number"}, headers=auth(key)
        ).is_success
        make_list(client, key, confirmation_body=PER_CONTACT)
        make_list(client, other_key)
        bombs = [
            threading.Thread(
                target=sign_up, args=(client, key, f"b{i}@example.com"), kwargs={"n": 10_000}
            )
            for i in range(2)
        ]
        for thread in bombs:
            thread.start()
        time.sleep(0.5)  # both bombs are in: one renders, one waits
        started = time.monotonic()
        sign_up(client, other_key, "other@example.com")
        elapsed = time.monotonic() - started
        for thread in bombs:
            thread.join()
        # Without the per-workspace turn it would wait for a bomb's 3 s to end
        # (2.7 s measured with two renders per workspace allowed).
        assert elapsed < 1.5, elapsed
        assert [m["headers"]["To"] for m in inbox(client, other_key)] == ["other@example.com"]


def test_a_landing_page_that_fails_falls_back_and_the_confirmation_stands(
    http: httpx.Client, key: IssuedKey
) -> None:
    assert http.post(
        "/v1/fields", json={"name": "n", "type": "number"}, headers=auth(key)
    ).is_success
    landing = (
        "{% for i in range(fields.n or 0) %}{% for j in range(fields.n or 0) %}"
        "{% endfor %}{% endfor %}<h1>Welcome</h1>"
    )
    make_list(http, key, landing_page=landing)
    contact = sign_up(http, key, "slow@example.com", n=10_000)
    [message] = inbox(http, key)
    page = http.post(link(message, "confirm"))
    assert page.status_code == 200 and "You are subscribed to The News" in page.text
    assert status(http, key, contact["id"]) == "subscribed"


# ---- people click, scanners don't -------------------------------------------------------


def test_a_scanners_get_changes_nothing_and_the_button_does(
    http: httpx.Client, key: IssuedKey, migrated_url: str
) -> None:
    make_list(http, key)
    contact = sign_up(http, key, "ada@example.com")
    [message] = inbox(http, key)
    confirm, unsubscribe = link(message, "confirm"), link(message, "unsubscribe")
    before = outbox_types(migrated_url, key.workspace_id)

    # A mail scanner follows every link, more than once.
    for _ in range(2):
        page = http.get(confirm)
        assert page.status_code == 200
        assert "<form method=post>" in page.text and "Confirm my subscription" in page.text
        assert page.headers["cache-control"] == "no-store"
        page = http.get(unsubscribe)
        assert page.status_code == 200 and "<form method=post>" in page.text
    assert status(http, key, contact["id"]) == "pending"
    assert outbox_types(migrated_url, key.workspace_id) == before

    # The person presses the button: the form POSTs to the same address.
    confirmed = http.post(confirm)
    assert confirmed.status_code == 200 and "You are now subscribed to The News" in confirmed.text
    assert status(http, key, contact["id"]) == "subscribed"
    assert outbox_types(migrated_url, key.workspace_id)[len(before) :] == ["list.subscribed"]
    # The used link's GET says so, and still changes nothing.
    assert http.get(confirm).status_code == 409

    after = outbox_types(migrated_url, key.workspace_id)
    assert http.get(unsubscribe).status_code == 200
    assert status(http, key, contact["id"]) == "subscribed"
    assert outbox_types(migrated_url, key.workspace_id) == after
    unsubscribed = http.post(unsubscribe, data={})
    assert unsubscribed.status_code == 200 and "You are unsubscribed" in unsubscribed.text
    assert status(http, key, contact["id"]) == "unsubscribed"
    assert outbox_types(migrated_url, key.workspace_id)[len(after) :] == ["list.unsubscribed"]


def test_one_click_unsubscribe_needs_no_page(
    http: httpx.Client, key: IssuedKey, migrated_url: str
) -> None:
    make_list(http, key)
    contact = sign_up(http, key, "ada@example.com")
    [message] = inbox(http, key)
    url = message["headers"]["List-Unsubscribe"].strip("<>")
    assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert url.endswith(link(message, "unsubscribe"))
    # RFC 8058: what a mail client sends for its unsubscribe button.
    one_click = http.post(
        link(message, "unsubscribe"),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert status(http, key, contact["id"]) == "unsubscribed"
    assert outbox_types(migrated_url, key.workspace_id)[-1] == "list.unsubscribed"


def _payload(token: str) -> Any:
    """What an itsdangerous token carries, decoded as anyone could."""
    data = token.rsplit(".", 2)[0]
    compressed = data.startswith(".")
    raw = base64.urlsafe_b64decode(data.lstrip(".") + "=" * (-len(data.lstrip(".")) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


def test_tokens_carry_no_personal_data(http: httpx.Client, key: IssuedKey) -> None:
    make_list(http, key, landing_page='<a href="{{ unsubscribe_url }}">Unsubscribe</a>')
    contact = sign_up(http, key, "ada.lovelace@example.com")
    [message] = inbox(http, key)
    confirmed = http.post(link(message, "confirm"))
    landing_links = [t for t in confirmed.text.split('"') if "/unsubscribe/" in t]
    assert len(landing_links) == 1, confirmed.text
    tokens = [link(message, "confirm"), link(message, "unsubscribe"), *landing_links]
    # (The workspace id is a short number: the payload's one member shows it is absent.)
    secrets = [contact["id"], "ada.lovelace", "example.com", "news"]
    for path in tokens:
        token = path.rsplit("/", 1)[1]
        payload = _payload(token)
        # Only a random nonce: nothing names the workspace, contact, email or list.
        assert isinstance(payload, dict) and list(payload) == ["n"], payload
        decoded = json.dumps(payload)
        for secret in secrets:
            assert secret not in decoded and secret not in token, (secret, token)


def test_unsubscribe_tokens_expire(migrated_url: str, key: IssuedKey) -> None:
    settings = Settings(database_url=migrated_url, run_worker=False, unsubscribe_max_age=1)
    with TestClient(create_app(settings)) as client:
        make_list(client, key)
        contact = sign_up(client, key, "ada@example.com")
        [message] = inbox(client, key)
        time.sleep(2.1)
        for page in (
            client.get(link(message, "unsubscribe")),
            client.post(link(message, "unsubscribe")),
        ):
            assert page.status_code == 410 and "expired" in page.text
        assert status(client, key, contact["id"]) == "pending"
        # Confirm links keep their own (longer) max age.
        assert client.post(link(message, "confirm")).status_code == 200


def test_unsubscribe_tokens_last_a_year_by_default(
    migrated_url: str, key: IssuedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(Settings(database_url=migrated_url, run_worker=False))) as client:
        make_list(client, key)
        contact = sign_up(client, key, "ada@example.com")
        [message] = inbox(client, key)
        unsubscribe = link(message, "unsubscribe")
        now = time.time()
        # A year and a day on, as itsdangerous tells the time: expired.
        monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: now + 366 * 24 * 3600)
        assert client.post(unsubscribe).status_code == 410
        assert status(client, key, contact["id"]) == "pending"
        # Eleven months on: it works.
        monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: now + 334 * 24 * 3600)
        assert client.post(unsubscribe).status_code == 200
        assert status(client, key, contact["id"]) == "unsubscribed"


def test_forged_and_reused_unsubscribe_tokens(
    http: httpx.Client, key: IssuedKey, migrated_url: str
) -> None:
    make_list(http, key)
    contact = sign_up(http, key, "ada@example.com")
    [message] = inbox(http, key)
    unsubscribe = link(message, "unsubscribe")
    payload, stamp, signature = unsubscribe.rsplit("/", 1)[1].rsplit(".", 2)
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    before = outbox_types(migrated_url, key.workspace_id)
    signed_elsewhere = itsdangerous.URLSafeTimedSerializer("not ours", salt="x").dumps({"n": "x"})
    for forged in (f"{payload}.{stamp}.{flipped}", signed_elsewhere, "nonsense"):
        for method in ("GET", "POST"):
            page = http.request(method, f"/unsubscribe/{forged}")
            assert page.status_code == 400 and "not valid" in page.text
    assert status(http, key, contact["id"]) == "pending"
    assert outbox_types(migrated_url, key.workspace_id) == before
    # Used twice: the second changes nothing.
    assert http.post(unsubscribe).status_code == 200
    after = outbox_types(migrated_url, key.workspace_id)
    assert http.post(unsubscribe).status_code == 200
    assert outbox_types(migrated_url, key.workspace_id) == after


def test_links_survive_a_merge(http: httpx.Client, key: IssuedKey) -> None:
    make_list(http, key)
    older = http.post("/v1/contacts", json={"phone": "+254712345670"}, headers=auth(key)).json()
    sign_up(http, key, "bo@example.com")
    [message] = inbox(http, key)
    merged = http.post(
        "/v1/contacts",
        json={"email": "bo@example.com", "phone": "+254712345670"},
        headers=auth(key),
    )
    assert merged.status_code == 200 and merged.json()["id"] == older["id"]
    assert http.get(link(message, "confirm")).status_code == 200
    assert http.post(link(message, "confirm")).status_code == 200
    assert status(http, key, older["id"]) == "subscribed"
    assert http.post(link(message, "unsubscribe")).status_code == 200
    assert status(http, key, older["id"]) == "unsubscribed"


# ---- no open dev inbox ------------------------------------------------------------------


def test_the_dev_inbox_needs_a_key_and_is_per_workspace(
    http: httpx.Client, key: IssuedKey, other_key: IssuedKey
) -> None:
    assert http.get("/dev/inbox").status_code == 404
    assert http.get("/v1/dev/inbox").status_code == 401
    for issued in (key, other_key):
        make_list(http, issued, confirmation_subject="Confirm, {{ contact.email }}")
    for email in ("a@example.com", "b@example.com"):
        sign_up(http, key, email)
    sign_up(http, other_key, "other@example.com")
    mine = inbox(http, key)
    assert [m["headers"]["To"] for m in mine] == ["b@example.com", "a@example.com"]  # newest first
    assert [m["headers"]["Subject"] for m in mine] == [
        "Confirm, b@example.com",
        "Confirm, a@example.com",
    ]
    newest = mine[0]
    assert newest["object"] == "dev_inbox_message" and newest["truncated"] is False
    assert newest["headers"]["From"] and newest["headers"]["List-Unsubscribe"]
    assert newest["links"] == [u for u in newest["links"] if u in newest["text"]]
    assert {link(newest, "confirm")[:9], link(newest, "unsubscribe")[:13]} == {
        "/confirm/",
        "/unsubscribe/",
    }
    assert [m["headers"]["To"] for m in inbox(http, other_key)] == ["other@example.com"]
    # Pages of the newest first.
    page = http.get("/v1/dev/inbox?limit=1", headers=auth(key)).json()
    assert page["has_more"] and page["data"][0]["id"] == newest["id"]
    rest = http.get(
        f"/v1/dev/inbox?limit=1&starting_after={page['next_cursor']}", headers=auth(key)
    ).json()
    assert [m["id"] for m in rest["data"]] == [mine[1]["id"]] and not rest["has_more"]


def test_the_dev_inbox_is_capped(migrated_url: str, key: IssuedKey) -> None:
    settings = Settings(
        database_url=migrated_url,
        run_worker=False,
        dev_inbox_max_messages=3,
        dev_inbox_max_message_bytes=1024,
    )
    with TestClient(create_app(settings)) as client:
        make_list(client, key, confirmation_body="{{ 'é' * 2000 }}\n{{ confirm_url }}")
        for number in range(5):
            sign_up(client, key, f"p{number}@example.com")
        kept = inbox(client, key)
        assert [m["headers"]["To"] for m in kept] == [f"p{n}@example.com" for n in (4, 3, 2)]
        for message in kept:
            assert message["truncated"] is True and len(message["text"].encode()) <= 1024
    with psycopg.connect(migrated_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM dev_inbox_messages WHERE workspace_id = %s", (key.workspace_id,)
        ).fetchone()
    assert count == (3,)


def test_no_dev_inbox_with_smtp(migrated_url: str, key: IssuedKey) -> None:
    settings = Settings(database_url=migrated_url, run_worker=False, smtp_url="smtp://127.0.0.1:1")
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/dev/inbox", headers=auth(key))
        assert response.status_code == 404 and "SMTP" in response.json()["detail"]


# ---- the render pool's life ----------------------------------------------------------------


def test_the_render_workers_stop_with_the_app(migrated_url: str) -> None:
    with TestClient(create_app(Settings(database_url=migrated_url, run_worker=False))) as client:
        pool = client.app.state.renderer._pool
        pids = list(pool._pool_manager.worker_manager.workers)
        assert pids and all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not pool.active
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_nudgel_import_renders_confirmations_in_workers(migrated_url: str, tmp_path: Path) -> None:
    from test_cli_rules import nudgel

    issued = new_key(migrated_url)
    try:
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            name = conn.execute(
                "SELECT name FROM workspaces WHERE id = %s", (issued.workspace_id,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO lists (workspace_id, name, title, double_opt_in,"
                " confirmation_subject, confirmation_body, landing_page)"
                " VALUES (%s, 'news', 'News', true, 'Hi {{ contact.name }}',"
                " %s, 'ok')",
                (
                    issued.workspace_id,
                    PER_CONTACT.replace("fields.n", "(contact.name or '')|length * 1000"),
                ),
            )
        csv = tmp_path / "people.csv"
        # Ten letters: 10,000 x 10,000 loops, past the 1 s limit (within the range limit).
        csv.write_text("email,name\nok@example.com,\nslow@example.com,Ada Lovela\n")
        done = nudgel(
            migrated_url, "import", str(csv), "--workspace", name, "--test", "--list", "news"
        )
        assert done.returncode == 0, done.stderr
        with psycopg.connect(migrated_url) as conn:
            kept = conn.execute(
                "SELECT headers->>'To' FROM dev_inbox_messages WHERE workspace_id = %s",
                (issued.workspace_id,),
            ).fetchall()
            failed = conn.execute(
                "SELECT c.email, e.props->>'reason' FROM events e JOIN contacts c"
                " ON c.pk = e.contact_pk WHERE c.workspace_id = %s"
                " AND e.name = 'list.confirmation_failed'",
                (issued.workspace_id,),
            ).fetchall()
        assert kept == [("ok@example.com",)]
        assert [email for email, _ in failed] == ["slow@example.com"]
        assert "NUDGEL_TEMPLATE_TIMEOUT_MS" in failed[0][1]
    finally:
        drop_workspace(migrated_url, issued.workspace_id)
