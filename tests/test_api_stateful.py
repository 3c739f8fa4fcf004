"""The contact API as a state machine: random sequences of upserts (with merges
and external-id conflicts), tagging, events and deletes against the real
service and PostgreSQL, compared after every step with a model.

The model is the identity rules in miniature (``nudgel.api.contacts.store``):
each live contact's identifiers (with their blocked flag), name, tags, the
events the API accepted for it and the merges it absorbed. Identifier values
come from small pools in several spellings, so requests keep meeting each
other: merges, 409 conflicts and blocked values (``test@example.com``) happen
in most runs. Every response is checked against the model's prediction, and
after every step PostgreSQL itself is compared with the model: the live
contacts and their profiles, no matchable identifier on two contacts, every
accepted event on exactly one live contact (the one the model expects) and
the events of deleted contacts gone, and the outbox rows per event type.
Upserts sent with an ``Idempotency-Key`` are retried later: the retry gets the
first response (even after merges or a delete) and acts not again, and the
key reused with other parameters is refused.

    HYPOTHESIS_PROFILE=long python -m pytest tests/test_api_stateful.py   # longer runs
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import event as label
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nudgel.api.keys.store import IssuedKey
from test_api_contacts import contacts_client, drop_workspace, new_key
from test_api_foundation import bearer

pytestmark = pytest.mark.postgres

KINDS = ("email", "phone", "whatsapp_id", "external_id")
BLOCKED = "test@example.com"  # contacts_client's blocked_identifiers

# Raw spellings -> the normalised value the service stores.
EMAILS = {
    "a@example.com": "a@example.com",
    " A@Example.COM ": "a@example.com",
    "b@example.com": "b@example.com",
    "c@example.org": "c@example.org",
    "test@example.com": BLOCKED,
    "Test@Example.com": BLOCKED,
}
PHONES = {
    "+254712000001": "+254712000001",
    "0712 000001": "+254712000001",
    "+254712000002": "+254712000002",
    "0712000003": "+254712000003",
}
WHATSAPP_IDS = {"w1": "w1", " w2 ": "w2"}
EXTERNAL_IDS = {"x1": "x1", "x2": "x2", " x3": "x3"}
POOLS: dict[str, dict[str, str]] = {
    "email": EMAILS,
    "phone": PHONES,
    "whatsapp_id": WHATSAPP_IDS,
    "external_id": EXTERNAL_IDS,
}
NAMES = [None, "", "Ada", "Bo"]
TAGS = ["vip", "KE", "lead"]
EVENT_NAMES = ["visit", "purchase"]  # never "contact.merged", the merge's own event


def _raw(kind: str) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(sorted(POOLS[kind])))


upsert_bodies = st.fixed_dictionaries(
    {kind: _raw(kind) for kind in KINDS},
    optional={
        "name": st.sampled_from(NAMES),
        "tags": st.lists(st.sampled_from(TAGS), max_size=2),
    },
).map(lambda body: {k: v for k, v in body.items() if v is not None})
# An email and a phone (and maybe more): the requests that link (and merge) contacts.
linking_bodies = st.fixed_dictionaries(
    {"email": st.sampled_from(sorted(EMAILS)), "phone": st.sampled_from(sorted(PHONES))},
    optional={k: st.sampled_from(sorted(POOLS[k])) for k in ("whatsapp_id", "external_id")},
)


@dataclass
class Contact:
    id: str
    seq: int  # creation order: a merge keeps the oldest
    ids: dict[str, tuple[str, bool]]  # kind -> (normalised value, blocked)
    name: str | None
    tags: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)  # ev_ ids the API accepted
    merges: int = 0  # contact.merged events on its timeline

    def matches(self, matchable: dict[str, str]) -> bool:
        return any(self.ids.get(kind) == (value, False) for kind, value in matchable.items())


def _normalised(body: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    values = {kind: POOLS[kind][body[kind]] for kind in KINDS if body.get(kind)}
    return values, {kind for kind, value in values.items() if value == BLOCKED}


# A merge keeps a real value of a kind over a blocked placeholder, whichever
# contact is older (test_a_merge_keeps_a_real_identifier_over_a_blocked_one).
BLOCKED_BEATS_REAL_ON_MERGE = False


def _merge_source(found: list[Contact], kind: str) -> Contact | None:
    """The contact (oldest first) whose value of ``kind`` the survivor keeps."""
    holders = [c for c in found if kind in c.ids]
    if not BLOCKED_BEATS_REAL_ON_MERGE:
        holders.sort(key=lambda c: c.ids[kind][1])  # real values first, stable
    return holders[0] if holders else None


class ContactMachine(RuleBasedStateMachine):
    def __init__(self, client: TestClient, url: str) -> None:
        super().__init__()
        self.client = client
        self.url = url
        self.key: IssuedKey = new_key(url)
        self.headers = bearer(self.key)
        self.live: dict[str, Contact] = {}
        self.gone: dict[str, Contact] = {}  # deleted or merged away
        self.defined_tags: set[str] = set()
        self.outbox: Counter[str] = Counter()
        self.seq = itertools.count()
        self.keys = itertools.count()
        # Upserts sent with an Idempotency-Key that succeeded: (key, body, status, response).
        self.replayable: list[tuple[str, dict[str, Any], int, dict[str, Any]]] = []

    def teardown(self) -> None:
        drop_workspace(self.url, self.key.workspace_id)

    # ---- the model ------------------------------------------------------------

    def _found(self, matchable: dict[str, str]) -> list[Contact]:
        return sorted((c for c in self.live.values() if c.matches(matchable)), key=lambda c: c.seq)

    def _define_tags(self, tags: list[str]) -> None:
        for tag in sorted(set(tags) - self.defined_tags):
            self.defined_tags.add(tag)
            self.outbox["tag.created"] += 1

    def _new_contact(self, contact_id: str, values: dict[str, str], blocked: set[str]) -> Contact:
        assert contact_id.startswith("con_")
        assert contact_id not in self.live and contact_id not in self.gone
        ids = {kind: (value, kind in blocked) for kind, value in values.items()}
        contact = Contact(contact_id, next(self.seq), ids, None)
        self.live[contact_id] = contact
        self.outbox["contact.created"] += 1
        return contact

    def _check_profile(self, contact: Contact, body: dict[str, Any]) -> None:
        assert body["id"] == contact.id
        for kind in KINDS:
            assert body[kind] == contact.ids.get(kind, (None, False))[0], (kind, body)
        assert body["name"] == contact.name
        assert sorted(t["name"] for t in body["tags"]) == sorted(contact.tags)

    # ---- rules -----------------------------------------------------------------

    @rule(body=linking_bodies)
    def link(self, body: dict[str, Any]) -> None:
        self.upsert(body)

    @rule(body=upsert_bodies, idempotent=st.booleans())
    def upsert(self, body: dict[str, Any], idempotent: bool = False) -> None:
        values, blocked = _normalised(body)
        matchable = {k: v for k, v in values.items() if k not in blocked}
        found = self._found(matchable)
        headers = dict(self.headers)
        if idempotent:
            headers["Idempotency-Key"] = f"key-{next(self.keys)}"
        response = self.client.post("/v1/contacts", json=body, headers=headers)
        if idempotent and response.status_code in (200, 201):
            self.replayable.append(
                (headers["Idempotency-Key"], body, response.status_code, response.json())
            )

        owners = {matchable["external_id"]} if "external_id" in matchable else set()
        owners |= {c.ids["external_id"][0] for c in found if "external_id" in c.ids}
        if len(owners) > 1:
            assert response.status_code == 409, response.text
            assert response.json()["external_ids"] == sorted(owners)
            label("upsert: 409 external-id conflict")
            return

        name = (body.get("name") or "").strip() or None
        tags = body.get("tags", [])
        if not found:
            assert response.status_code == 201, response.text
            contact = self._new_contact(response.json()["id"], values, blocked)
            contact.name = name
        else:
            assert response.status_code == 200, response.text
            contact, others = found[0], found[1:]
            # The survivor's profile: the request's matchable values, else the
            # oldest contact's that has one, else the request's blocked value.
            ids: dict[str, tuple[str, bool]] = {}
            for kind in KINDS:
                if kind in matchable:
                    ids[kind] = (matchable[kind], False)
                elif source := _merge_source(found, kind):
                    ids[kind] = source.ids[kind]
                elif kind in values:
                    ids[kind] = (values[kind], True)
            new_name = name or next((c.name for c in found if c.name), None)
            changed = bool(others) or ids != contact.ids or new_name != contact.name
            contact.ids, contact.name = ids, new_name
            for other in others:
                contact.events |= other.events
                contact.merges += other.merges
                contact.tags |= other.tags
                self.gone[other.id] = self.live.pop(other.id)
            label(f"upsert: {'merge' if others else 'changed' if changed else 'unchanged'}")
            if others:
                contact.merges += 1
                self.outbox["contact.merged"] += 1
            elif changed:
                self.outbox["contact.updated"] += 1
        self._define_tags(tags)
        if set(tags) - contact.tags:
            self.outbox["contact.tagged"] += 1
        contact.tags |= set(tags)
        self._check_profile(contact, response.json())

    @precondition(lambda self: bool(self.replayable))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """A retry gets the first response, whatever happened since, and acts not again."""
        key, body, status, first = data.draw(st.sampled_from(self.replayable), label="replayed")
        headers = {**self.headers, "Idempotency-Key": key}
        response = self.client.post("/v1/contacts", json=body, headers=headers)
        assert response.status_code == status, response.text
        assert response.json() == first
        assert response.headers.get("Idempotent-Replayed") == "true"
        # The same key with other parameters is refused, and changes nothing either.
        other = {**body, "name": "Someone Else"}
        refused = self.client.post("/v1/contacts", json=other, headers=headers)
        assert refused.status_code == 422, refused.text

    def _some_id(self, data: st.DataObject) -> str:
        choices = sorted(self.live) + sorted(self.gone) + ["con_unknown"]
        return data.draw(st.sampled_from(choices), label="contact id")

    @rule(data=st.data(), tags=st.lists(st.sampled_from(TAGS), min_size=1, max_size=2))
    def tag(self, data: st.DataObject, tags: list[str]) -> None:
        contact_id = self._some_id(data)
        response = self.client.post(
            f"/v1/contacts/{contact_id}/tags", json={"tags": tags}, headers=self.headers
        )
        contact = self.live.get(contact_id)
        if contact is None:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        self._define_tags(tags)
        if set(tags) - contact.tags:
            self.outbox["contact.tagged"] += 1
        contact.tags |= set(tags)
        self._check_profile(contact, response.json())

    @rule(data=st.data(), tag=st.sampled_from(TAGS))
    def untag(self, data: st.DataObject, tag: str) -> None:
        contact_id = self._some_id(data)
        response = self.client.delete(
            f"/v1/contacts/{contact_id}/tags/{quote(tag)}", headers=self.headers
        )
        contact = self.live.get(contact_id)
        if contact is None or tag not in contact.tags:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        contact.tags.discard(tag)
        self.outbox["contact.untagged"] += 1
        self._check_profile(contact, response.json())

    @rule(
        data=st.data(),
        by=st.sampled_from(["contact_id", "email", "phone", "external_id"]),
        name=st.sampled_from(EVENT_NAMES),
    )
    def record_event(self, data: st.DataObject, by: str, name: str) -> None:
        if by == "contact_id":
            raw = self._some_id(data)
            contact = self.live.get(raw)
        else:
            raw = data.draw(st.sampled_from(sorted(POOLS[by])), label=by)
            values, blocked = _normalised({by: raw})
            matchable = {k: v for k, v in values.items() if k not in blocked}
            found = self._found(matchable)
            # One identifier matches at most one contact: no merge, no conflict.
            assert len(found) <= 1
            contact = found[0] if found else None
        response = self.client.post(
            "/v1/events", json={by: raw, "name": name}, headers=self.headers
        )
        if contact is None and by == "contact_id":
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 201, response.text
        event = response.json()
        label(f"event by {by}: {'existing' if contact else 'new'} contact")
        if contact is None:  # an unknown (or blocked) identifier creates the contact
            contact = self._new_contact(event["contact_id"], values, blocked)
        assert event["contact_id"] == contact.id and event["name"] == name
        assert event["id"].startswith("ev_")
        contact.events.add(event["id"])
        self.outbox["event.recorded"] += 1

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        contact_id = self._some_id(data)
        response = self.client.delete(f"/v1/contacts/{contact_id}", headers=self.headers)
        if contact_id not in self.live:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        assert response.json() == {"object": "contact", "id": contact_id, "deleted": True}
        self.gone[contact_id] = self.live.pop(contact_id)
        self.outbox["contact.deleted"] += 1

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), limit=st.sampled_from([1, 3, 100]))
    def read_timeline(self, data: st.DataObject, limit: int) -> None:
        """The API's timeline of a live contact, page by page: the accepted
        events and merges, each once, in (at, id) order."""
        contact = self.live[data.draw(st.sampled_from(sorted(self.live)), label="live id")]
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        while True:
            response = self.client.get(
                f"/v1/contacts/{contact.id}/timeline", params=params, headers=self.headers
            )
            assert response.status_code == 200, response.text
            page = response.json()
            seen += page["data"]
            if not page["has_more"]:
                break
            params["starting_after"] = page["next_cursor"]
        assert all(e["contact_id"] == contact.id for e in seen)
        assert [(e["at"], int(e["id"][3:])) for e in seen] == sorted(
            (e["at"], int(e["id"][3:])) for e in seen
        )
        ids = [e["id"] for e in seen if e["name"] != "contact.merged"]
        assert len(ids) == len(set(ids)) and set(ids) == contact.events
        assert sum(e["name"] == "contact.merged" for e in seen) == contact.merges

    # ---- invariants: PostgreSQL against the model ---------------------------------

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, {"ws": self.key.workspace_id}).fetchall()

    @invariant()
    def contacts_match_the_model(self) -> None:
        rows = self._query(
            "SELECT c.id, c.email, c.phone, c.whatsapp_id, c.external_id,"
            " c.unmatched_identifiers, c.name,"
            " array(SELECT tag FROM contact_tags t WHERE t.contact_pk = c.pk ORDER BY tag)"
            " FROM contacts c WHERE c.workspace_id = %(ws)s"
        )
        assert {r[0] for r in rows} == set(self.live)
        matchable: Counter[tuple[str, str]] = Counter()
        for contact_id, *values, unmatched, name, tags in rows:
            contact = self.live[contact_id]
            stored = {
                kind: (value, kind in unmatched)
                for kind, value in zip(KINDS, values, strict=True)
                if value is not None
            }
            assert stored == contact.ids, contact_id
            assert name == contact.name and set(tags) == contact.tags, contact_id
            matchable.update((kind, value) for kind, (value, b) in stored.items() if not b)
        shared = [ident for ident, n in matchable.items() if n > 1]
        assert not shared, f"identifiers on several live contacts: {shared}"

    @invariant()
    def events_are_where_the_model_says(self) -> None:
        rows = self._query(
            "SELECT 'ev_' || e.pk, e.name, c.id FROM events e JOIN contacts c"
            " ON c.pk = e.contact_pk WHERE c.workspace_id = %(ws)s"
        )
        where = {
            event_id: contact_id for event_id, name, contact_id in rows if name != "contact.merged"
        }
        merges = Counter(contact_id for _, name, contact_id in rows if name == "contact.merged")
        expected = {e: c.id for c in self.live.values() for e in c.events}
        assert where == expected
        assert len(rows) == len(expected) + sum(merges.values())
        assert merges == Counter({c.id: c.merges for c in self.live.values() if c.merges})
        # Events of deleted contacts are gone from the table, whoever owned them.
        dropped = [int(e[3:]) for c in self.gone.values() for e in c.events if e not in expected]
        if dropped:
            left = self._query(f"SELECT pk FROM events WHERE pk = ANY(ARRAY{dropped}::bigint[])")
            assert not left

    @invariant()
    def every_mutation_has_its_outbox_event(self) -> None:
        rows = self._query(
            "SELECT event_type, count(*) FROM outbox WHERE workspace_id = %(ws)s GROUP BY 1"
        )
        assert Counter(dict(rows)) == +self.outbox


def test_a_merge_keeps_a_real_identifier_over_a_blocked_one(
    client: TestClient, migrated_url: str
) -> None:
    key = new_key(migrated_url)
    try:
        h = bearer(key)
        placeholder = {"email": "test@example.com", "phone": "+254712000001"}
        older = client.post("/v1/contacts", json=placeholder, headers=h).json()
        client.post(
            "/v1/contacts", json={"email": "ada@example.com", "whatsapp_id": "w1"}, headers=h
        )
        merged = client.post(
            "/v1/contacts", json={"phone": "+254712000001", "whatsapp_id": "w1"}, headers=h
        )
        assert merged.status_code == 200 and merged.json()["id"] == older["id"]
        # Ada's address must survive the merge: a placeholder never replaces a real value.
        assert merged.json()["email"] == "ada@example.com"
        again = client.post("/v1/contacts", json={"email": "ada@example.com"}, headers=h)
        assert again.status_code == 200 and again.json()["id"] == older["id"]
    finally:
        drop_workspace(migrated_url, key.workspace_id)


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


def test_contact_api_state_machine(client: TestClient, migrated_url: str) -> None:
    # ci: 25 runs of up to 20 steps (well under a minute); long: 500.
    run_state_machine_as_test(  # type: ignore[no-untyped-call]
        lambda: ContactMachine(client, migrated_url),
        settings=settings(
            max_examples=max(5, settings().max_examples // 6),
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
