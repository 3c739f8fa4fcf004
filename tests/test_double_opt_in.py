"""Double opt-in end to end: a real SMTP server in the test process (aiosmtpd)
receives the confirmation email, the test follows its links (a GET shows a
page whose button POSTs; the POST acts), and the subscription, the rules,
the outbox and a real webhook receiver show the result; forged, expired and
reused tokens change nothing."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import itsdangerous.timed
import psycopg
import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from test_api_contacts import drop_workspace, new_key
from test_api_foundation import bearer, free_port, outbox_types
from test_api_realtime import deploy
from test_webhook_delivery import FAST, Receiver, receiver

pytestmark = pytest.mark.postgres

__all__ = ["receiver"]  # the webhook receiver fixture, used here

PUBLIC_URL = "https://lists.example.com"
LANDING = (
    "<h1>Welcome, {{ contact.name }}!</h1>\n<p>{{ fields.company }} reads {{ list.title }}.</p>"
)
BODY = """Hi {{ contact.name or "there" }} from {{ fields.company }},

confirm here: {{ confirm_url }}
"""


@dataclass
class Mailbox:
    """What the SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def settings_for(url: str, smtp_port: int, **overrides: Any) -> Settings:
    return Settings(
        database_url=url,
        smtp_url=f"smtp://127.0.0.1:{smtp_port}",
        public_url=PUBLIC_URL,
        mail_from="News <news@example.com>",
        **{**FAST, "run_worker": True, **overrides},
    )


@pytest.fixture(scope="module")
def client(migrated_url: str, smtp: tuple[Mailbox, int]) -> Iterator[TestClient]:
    # The delivery worker runs in the app: webhooks are really sent.
    with TestClient(create_app(settings_for(migrated_url, smtp[1]))) as client:
        yield client


@pytest.fixture
def mailbox(smtp: tuple[Mailbox, int]) -> Mailbox:
    box = smtp[0]
    box.messages.clear()
    box.recipients.clear()
    return box


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    assert (
        client.post(
            "/v1/fields", json={"name": "company", "type": "text"}, headers=bearer(issued)
        ).status_code
        == 201
    )
    response = client.post(
        "/v1/lists",
        json={
            "name": "newsletter",
            "title": "The Newsletter",
            "double_opt_in": True,
            "confirmation_subject": "{{ contact.name }}, confirm {{ list.title }}",
            "confirmation_body": BODY,
            "landing_page": LANDING,
        },
        headers=bearer(issued),
    )
    assert response.status_code == 201, response.text
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def sign_up(client: TestClient, key: IssuedKey, email: str = "ada@example.co.ke") -> str:
    body = {
        "email": email,
        "name": "Ada",
        "fields": {"company": "Acme"},
        "subscriptions": {"newsletter": "subscribed"},
    }
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    assert response.json()["subscriptions"][0]["status"] == "pending"
    contact_id: str = response.json()["id"]
    return contact_id


def the_email(mailbox: Mailbox) -> EmailMessage:
    [message] = mailbox.messages
    return message


def link(message: EmailMessage, kind: str) -> str:
    """The path of the message's confirm or unsubscribe link (checked to be absolute)."""
    content = message.get_body(("plain",))
    assert content is not None
    text = content.get_content()
    found = re.findall(rf"{re.escape(PUBLIC_URL)}(/{kind}/[A-Za-z0-9_.\-]+)", text)
    assert len(found) == 1, text
    path: str = found[0]
    return path


def status(client: TestClient, key: IssuedKey, contact_id: str) -> str:
    detail = client.get(f"/v1/contacts/{contact_id}", headers=bearer(key)).json()
    [subscription] = detail["subscriptions"]
    value: str = subscription["status"]
    return value


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---- the whole flow -----------------------------------------------------------------


def test_confirmation_email_link_subscribes_and_fires_the_webhook(
    client: TestClient,
    key: IssuedKey,
    mailbox: Mailbox,
    receiver: Receiver,
    migrated_url: str,
) -> None:
    hook = client.post(
        "/v1/webhooks",
        json={"url": receiver.url("/hook"), "events": ["list.pending", "list.subscribed"]},
        headers=bearer(key),
    )
    assert hook.status_code == 201, hook.text
    receiver.secrets["/hook"] = hook.json()["secret"]
    deploy(client, key, 'segment readers { subscribed "newsletter" }')

    contact_id = sign_up(client, key)
    message = the_email(mailbox)
    assert mailbox.recipients == [["ada@example.co.ke"]]
    assert message["To"] == "ada@example.co.ke" and message["From"] == "News <news@example.com>"
    assert message["Subject"] == "Ada, confirm The Newsletter"
    body = message.get_body(("plain",))
    assert body is not None and "Hi Ada from Acme," in body.get_content()
    # Every email: an unsubscribe link in the text and the headers for mail clients.
    unsubscribe = link(message, "unsubscribe")
    assert message["List-Unsubscribe"] == f"<{PUBLIC_URL}{unsubscribe}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert client.get(f"/v1/contacts/{contact_id}", headers=bearer(key)).json()["segments"] == []

    page = client.post(link(message, "confirm"))
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Welcome, Ada!</h1>" in page.text and "Acme reads The Newsletter." in page.text
    detail = client.get(f"/v1/contacts/{contact_id}", headers=bearer(key)).json()
    assert detail["subscriptions"][0]["status"] == "subscribed"
    assert detail["segments"] == ["readers"]
    events = [e for e in detail["recent_events"] if e["name"].startswith("list.")]
    assert [(e["name"], e["props"]["to"], e["source"]) for e in events] == [
        ("list.subscribed", "subscribed", "email"),
        ("list.pending", "pending", "api"),
    ]
    types = outbox_types(migrated_url, key.workspace_id)
    assert types[-3:] == ["list.pending", "list.subscribed", "segment.entered"]

    # The receiver gets both, signed (it verifies with standardwebhooks), in order.
    wait_for(lambda: len(receiver.requests("/hook")) >= 2, "the webhooks")
    delivered = [r.payload for r in receiver.requests("/hook")]
    assert [p["type"] for p in delivered] == ["list.pending", "list.subscribed"]
    assert delivered[1]["data"] == {
        "contact_id": contact_id,
        "list": "newsletter",
        "status": "subscribed",
        "previous_status": "pending",
        "source": "email",
    }
    assert receiver.invalid == []


def test_a_used_link_shows_a_page_and_changes_nothing(
    client: TestClient, key: IssuedKey, mailbox: Mailbox, migrated_url: str
) -> None:
    contact_id = sign_up(client, key)
    confirm = link(the_email(mailbox), "confirm")
    assert client.post(confirm).status_code == 200
    # The contact unsubscribes, then clicks the confirm link again.
    set_unsubscribed = client.post(
        f"/v1/contacts/{contact_id}/subscriptions",
        json={"list": "newsletter", "status": "unsubscribed"},
        headers=bearer(key),
    )
    assert set_unsubscribed.status_code == 200
    before = outbox_types(migrated_url, key.workspace_id)
    again = client.get(confirm)
    assert again.status_code == 409 and "already used" in again.text
    assert status(client, key, contact_id) == "unsubscribed"
    assert outbox_types(migrated_url, key.workspace_id) == before


# ---- tokens that must not work ------------------------------------------------------


def test_forged_tokens_change_nothing(
    client: TestClient, key: IssuedKey, mailbox: Mailbox, migrated_url: str
) -> None:
    contact_id = sign_up(client, key)
    message = the_email(mailbox)
    confirm = link(message, "confirm")
    token = confirm.rsplit("/", 1)[1]
    payload, stamp, signature = token.rsplit(".", 2)
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    other_key_token = itsdangerous.URLSafeTimedSerializer("not our key", salt="x").dumps(
        {"n": "whatever"}
    )
    before = outbox_types(migrated_url, key.workspace_id)
    for forged in [
        f"{payload}.{stamp}.{flipped}",  # altered signature
        f"{payload}x.{stamp}.{signature}",  # altered payload
        other_key_token,  # signed with another key
        link(message, "unsubscribe").rsplit("/", 1)[1],  # ours, but for unsubscribing
        "nonsense",
        "a" * 1500,
    ]:
        page = client.get(f"/confirm/{forged}")
        assert page.status_code == 400, (forged, page.text)
        assert "not valid" in page.text
    bad_unsubscribe = client.get(f"/unsubscribe/{token}")  # a confirm token
    assert bad_unsubscribe.status_code == 400
    assert client.post(f"/unsubscribe/{payload}.{stamp}.{flipped}").status_code == 400
    assert status(client, key, contact_id) == "pending"
    assert outbox_types(migrated_url, key.workspace_id) == before
    # The real link still works afterwards.
    assert client.post(confirm).status_code == 200
    assert status(client, key, contact_id) == "subscribed"


def test_an_expired_link_changes_nothing(
    client: TestClient,
    key: IssuedKey,
    mailbox: Mailbox,
    migrated_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contact_id = sign_up(client, key)
    confirm = link(the_email(mailbox), "confirm")
    before = outbox_types(migrated_url, key.workspace_id)
    now = time.time()
    # Eight days on (links last seven by default), as itsdangerous tells the time.
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: now + 8 * 24 * 3600)
    page = client.get(confirm)
    assert page.status_code == 410 and "expired" in page.text
    assert status(client, key, contact_id) == "pending"
    assert outbox_types(migrated_url, key.workspace_id) == before
    # Six days on it still works: expiry is what refused it, nothing was used up.
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: now + 6 * 24 * 3600)
    assert client.post(confirm).status_code == 200
    assert status(client, key, contact_id) == "subscribed"


def test_a_short_max_age_setting(
    migrated_url: str, smtp: tuple[Mailbox, int], key: IssuedKey, mailbox: Mailbox
) -> None:
    settings = settings_for(migrated_url, smtp[1], run_worker=False, confirmation_max_age=1)
    with TestClient(create_app(settings)) as short:
        contact_id = sign_up(short, key)
        confirm = link(the_email(mailbox), "confirm")
        time.sleep(2.1)
        assert short.get(confirm).status_code == 410
        assert status(short, key, contact_id) == "pending"


# ---- unsubscribing ------------------------------------------------------------------


def test_the_unsubscribe_link(
    client: TestClient, key: IssuedKey, mailbox: Mailbox, migrated_url: str
) -> None:
    contact_id = sign_up(client, key)
    message = the_email(mailbox)
    assert client.post(link(message, "confirm")).status_code == 200
    unsubscribe = link(message, "unsubscribe")
    page = client.post(unsubscribe)
    assert page.status_code == 200 and "You are unsubscribed" in page.text
    assert "The Newsletter" in page.text
    assert status(client, key, contact_id) == "unsubscribed"
    types = outbox_types(migrated_url, key.workspace_id)
    assert types[-1] == "list.unsubscribed"
    # Twice, or by the one-click POST mail clients send: still unsubscribed, no new event.
    assert client.post(unsubscribe).status_code == 200
    one_click = client.post(unsubscribe, content=b"List-Unsubscribe=One-Click")
    assert one_click.status_code == 200
    assert outbox_types(migrated_url, key.workspace_id) == types
    timeline = client.get(f"/v1/contacts/{contact_id}/timeline", headers=bearer(key)).json()
    last = timeline["data"][-1]
    assert (last["name"], last["source"]) == ("list.unsubscribed", "email")


def test_one_click_unsubscribe_from_a_pending_subscription(
    client: TestClient, key: IssuedKey, mailbox: Mailbox
) -> None:
    # "I never asked for this": unsubscribing before confirming; the confirm link then
    # no longer applies.
    contact_id = sign_up(client, key)
    message = the_email(mailbox)
    assert client.post(link(message, "unsubscribe")).status_code == 200
    assert status(client, key, contact_id) == "unsubscribed"
    page = client.get(link(message, "confirm"))
    assert page.status_code == 410 and "no longer applies" in page.text
    assert status(client, key, contact_id) == "unsubscribed"


def test_links_of_a_deleted_contact_show_a_page(
    client: TestClient, key: IssuedKey, mailbox: Mailbox
) -> None:
    contact_id = sign_up(client, key)
    message = the_email(mailbox)
    assert client.delete(f"/v1/contacts/{contact_id}", headers=bearer(key)).status_code == 200
    assert client.get(link(message, "confirm")).status_code == 410
    assert client.get(link(message, "unsubscribe")).status_code == 410


# ---- operations ---------------------------------------------------------------------


def test_links_survive_a_restart(
    migrated_url: str, smtp: tuple[Mailbox, int], key: IssuedKey, mailbox: Mailbox
) -> None:
    # No NUDGEL_SECRET_KEY: the key generated once is in the database, so a new
    # instance (a restart, another replica) accepts the links the first sent.
    settings = settings_for(migrated_url, smtp[1], run_worker=False)
    with TestClient(create_app(settings)) as first:
        contact_id = sign_up(first, key)
    confirm = link(the_email(mailbox), "confirm")
    with TestClient(create_app(settings)) as second:
        assert second.post(confirm).status_code == 200
        assert status(second, key, contact_id) == "subscribed"
    # A configured key signs instead: the stored one's links are not its own.
    keyed = settings_for(migrated_url, smtp[1], run_worker=False, secret_key="s" * 40)
    with TestClient(create_app(keyed)) as third:
        assert third.get(confirm).status_code == 400


def test_an_smtp_failure_keeps_the_change_and_is_logged(
    migrated_url: str, key: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(migrated_url, free_port(), run_worker=False, smtp_timeout=2)
    with TestClient(create_app(settings)) as broken, caplog.at_level(logging.ERROR):
        contact_id = sign_up(broken, key)
        assert status(broken, key, contact_id) == "pending"
    assert any("could not send the email" in r.getMessage() for r in caplog.records)


def test_no_dev_inbox_with_smtp(client: TestClient) -> None:
    assert client.get("/dev/inbox").status_code == 404


def test_pages_are_not_in_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/confirm", "/unsubscribe", "/dev"))]


def test_confirmations_are_stored_single_use(
    client: TestClient, key: IssuedKey, mailbox: Mailbox, migrated_url: str
) -> None:
    sign_up(client, key)
    assert client.post(link(the_email(mailbox), "confirm")).status_code == 200
    with psycopg.connect(migrated_url) as conn:
        rows = conn.execute(
            "SELECT list, used_at IS NOT NULL FROM list_confirmations WHERE workspace_id = %s",
            (key.workspace_id,),
        ).fetchall()
    assert rows == [("newsletter", True)]


def test_a_confirm_link_survives_a_merge(
    client: TestClient, key: IssuedKey, mailbox: Mailbox
) -> None:
    older = client.post("/v1/contacts", json={"phone": "+254712345670"}, headers=bearer(key))
    assert older.status_code == 201
    sign_up(client, key, email="bo@example.co.ke")
    confirm = link(the_email(mailbox), "confirm")
    # The pending contact merges into the older one (which keeps its id).
    merged = client.post(
        "/v1/contacts",
        json={"email": "bo@example.co.ke", "phone": "+254712345670"},
        headers=bearer(key),
    )
    assert merged.status_code == 200 and merged.json()["id"] == older.json()["id"]
    assert client.post(confirm).status_code == 200
    assert status(client, key, older.json()["id"]) == "subscribed"


def test_a_resent_email_and_the_older_link(
    client: TestClient, key: IssuedKey, mailbox: Mailbox, migrated_url: str
) -> None:
    contact_id = sign_up(client, key)
    # Asking again while pending sends a new email (no new status, no event).
    before = outbox_types(migrated_url, key.workspace_id)
    again = client.post(
        f"/v1/contacts/{contact_id}/subscriptions",
        json={"list": "newsletter"},
        headers=bearer(key),
    )
    assert again.status_code == 200 and len(mailbox.messages) == 2
    assert outbox_types(migrated_url, key.workspace_id) == before
    first, second = (link(m, "confirm") for m in mailbox.messages)
    assert first != second
    assert client.post(second).status_code == 200
    page = client.get(first)
    assert page.status_code == 409 and "already confirmed" in page.text
    assert status(client, key, contact_id) == "subscribed"
    assert outbox_types(migrated_url, key.workspace_id).count("list.subscribed") == 1


def test_simultaneous_clicks_confirm_once(
    client: TestClient, key: IssuedKey, mailbox: Mailbox, migrated_url: str
) -> None:
    contact_id = sign_up(client, key)
    confirm = link(the_email(mailbox), "confirm")
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: client.post(confirm).status_code, range(8)))
    assert codes == [200] + [409] * 7
    assert status(client, key, contact_id) == "subscribed"
    assert outbox_types(migrated_url, key.workspace_id).count("list.subscribed") == 1
