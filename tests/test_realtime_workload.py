"""A randomised workload against the real-time evaluation: thousands of
mutations (upserts that create, update and merge, events in the past and the
future, tags added and removed, deletes) and test-clock moves, over a rule
set that uses every construct the service's data can feed. The stored state
must then equal a fresh SQL evaluation: `nudgel rules verify` finds no drift.

Seeded (NUDGEL_WORKLOAD_SEED, NUDGEL_WORKLOAD_STEPS to change), so a failure
reproduces.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nudgel.api.keys.store import IssuedKey
from test_api_contacts import contacts_client, drop_workspace
from test_api_foundation import bearer
from test_api_realtime import _key, deploy, drift

pytestmark = pytest.mark.postgres

SEED = int(os.environ.get("NUDGEL_WORKLOAD_SEED", "20261126"))
STEPS = int(os.environ.get("NUDGEL_WORKLOAD_STEPS", "1500"))

FIELDS = {
    "plan": "text",
    "ltv": "number",
    "beta": "bool",
    "birthday": "date",
    "trial_ends": "timestamp",
    "work_email": "email",
    "site": "url",
    "prefs": "json",
}

RULES = """
segment premium "Premium" { tag "premium" and fields.plan in ["pro", "enterprise"] }
segment acme { email ends_with "@acme.com" or fields.work_email contains "acme" }
segment kenyan { phone starts_with "+254" and not tag "test" }
segment named { name matches "^[A-Z][a-z]+" and name is set }
segment big_spender { sum(event "purchase", props.amount) >= 100 }
segment recent_buyer { count(event "purchase" within 7d) >= 1 }
segment lapsed { event "purchase" and not event "purchase" within 30d }
segment active { event * within 3d }
segment big_order { event "purchase" where (props.amount > 50 and at > now - 14d) within 14d }
segment avg_high { avg(event "purchase", props.amount) between 20 and 80 }
segment first_old { first(event "visit") < now - 10d }
segment last_recent { last(event "visit") >= now - 2d }
segment trial_ending { fields.trial_ends < now + 3d and fields.trial_ends > now - 1d }
segment birthday_set { fields.birthday is set and fields.birthday > "1990-01-01" }
segment beta_users { fields.beta }
segment langs_sw { fields.prefs.langs has "sw" }
segment valued { fields.ltv >= 1000 or score.engagement > 40 }
segment new_contact { created_at > now - 5d }
segment customers { stage >= "customer" }
segment vip_customers { in segment customers and in segment premium }
score engagement {
  +10 per event "email_open" within 90d max 50
  +25 per event "purchase" within 30d
  +5 when in segment active
  -5 when not event * within 30d
  clamp -20..100
}
score spend {
  +1 per event "purchase" max 10
  +3 when max(event "purchase", props.amount) > 90
  -2 when min(event "purchase", props.amount) < 5
}
lifecycle {
  lead when email is set or phone is set
  customer when count(event "purchase") >= 1
  champion when score.engagement >= 60 and score.spend >= 3
}
"""

EMAILS = [f"p{i}@{d}" for i in range(12) for d in ("acme.com", "example.com")]
PHONES = [f"+2547120000{i:02d}" for i in range(15)] + [f"+4420791000{i:02d}" for i in range(5)]
NAMES = ["Ada", "bob", "Chidi", "Ésa", "", "Zoë Kamau"]
TAGS = ["premium", "test", "vip"]
EVENTS = ["purchase", "email_open", "visit", "page_view"]
START = datetime(2026, 3, 1, tzinfo=UTC)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Workload:
    def __init__(self, client: TestClient, key: IssuedKey, rng: random.Random) -> None:
        self.client, self.key, self.rng = client, key, rng
        self.now = START
        self.contact_ids: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.request(method, path, json=body, headers=bearer(self.key))
        # 409: two different external ids would merge (not used here) or a
        # retryable race; 404: a contact deleted earlier. Anything else is a bug.
        assert response.status_code < 500, response.text
        assert response.status_code in (200, 201, 204, 404, 409), response.text
        return response.json() if response.content else None

    def field_values(self) -> dict[str, Any]:
        rng = self.rng
        candidates: dict[str, Any] = {
            "plan": rng.choice(["pro", "free", "enterprise", None]),
            "ltv": rng.choice([0, 999.99, 1000, 2500.5, None]),
            "beta": rng.choice([True, False, None]),
            "birthday": rng.choice(["1985-04-02", "1995-12-31", None]),
            "trial_ends": rng.choice(
                [_iso(self.now + timedelta(days=d, hours=h)) for d in (-2, 0, 2, 5) for h in (0, 7)]
                + [None]
            ),
            "work_email": rng.choice(["Boss@ACME.com", "x@example.com", None]),
            "site": rng.choice(["https://acme.com", None]),
            "prefs": rng.choice(
                [{"langs": ["sw", "en"]}, {"langs": ["en"]}, {"langs": "sw"}, None]
            ),
        }
        chosen = rng.sample(sorted(candidates), rng.randint(0, 3))
        return {name: candidates[name] for name in chosen}

    def upsert(self) -> None:
        rng = self.rng
        body: dict[str, Any] = {}
        if rng.random() < 0.8:
            body["email"] = rng.choice(EMAILS)
        if rng.random() < 0.5 or not body:
            body["phone"] = rng.choice(PHONES)
        if rng.random() < 0.4:
            body["name"] = rng.choice(NAMES)
        if rng.random() < 0.3:
            body["tags"] = rng.sample(TAGS, rng.randint(1, 2))
        fields = self.field_values()
        if fields:
            body["fields"] = fields
        result = self.call("POST", "/v1/contacts", body)
        if result and "id" in result and result["id"] not in self.contact_ids:
            self.contact_ids.append(result["id"])

    def event(self) -> None:
        rng = self.rng
        at = self.now + timedelta(hours=rng.choice([-24 * 40, -24 * 8, -24 * 2, -5, 0, 3, 24 * 4]))
        body: dict[str, Any] = {
            "name": rng.choice(EVENTS),
            "at": _iso(at),
            "props": {"amount": rng.choice([1, 4.5, 20, 55, 95, 120])},
        }
        if self.contact_ids and rng.random() < 0.5:
            body["contact_id"] = rng.choice(self.contact_ids)
        else:
            body["email"] = rng.choice(EMAILS)
        result = self.call("POST", "/v1/events", body)
        if result and result.get("contact_id") not in (None, *self.contact_ids):
            self.contact_ids.append(result["contact_id"])

    def tag(self) -> None:
        if not self.contact_ids:
            return
        contact = self.rng.choice(self.contact_ids)
        tag = self.rng.choice(TAGS)
        if self.rng.random() < 0.5:
            self.call("POST", f"/v1/contacts/{contact}/tags", {"tags": [tag]})
        else:
            self.call("DELETE", f"/v1/contacts/{contact}/tags/{tag}")

    def delete(self) -> None:
        if self.contact_ids:
            contact = self.rng.choice(self.contact_ids)
            self.call("DELETE", f"/v1/contacts/{contact}")
            self.contact_ids.remove(contact)

    def advance(self) -> None:
        self.now += timedelta(hours=self.rng.choice([1, 6, 30, 24 * 3, 24 * 9]))
        self.call("POST", "/v1/test_clock/advance", {"to": _iso(self.now)})

    def step(self) -> None:
        action = self.rng.choices(
            [self.upsert, self.event, self.tag, self.delete, self.advance],
            weights=[35, 40, 12, 3, 10],
        )[0]
        action()


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


def test_random_workload_leaves_no_drift(client: TestClient, migrated_url: str) -> None:
    key = _key(migrated_url)
    try:
        for name, type_name in FIELDS.items():
            created = client.post(
                "/v1/fields", json={"name": name, "type": type_name}, headers=bearer(key)
            )
            assert created.status_code == 201, created.text
        frozen = client.put(
            "/v1/test_clock", json={"frozen_time": _iso(START)}, headers=bearer(key)
        )
        assert frozen.status_code == 200
        workload = Workload(client, key, random.Random(SEED))
        # Some contacts before the rules: the backfill evaluates them.
        for _ in range(40):
            workload.upsert()
            workload.event()
        deploy(client, key, RULES)
        assert drift(migrated_url, key.workspace_id) == []
        for number in range(1, STEPS + 1):
            workload.step()
            if number % 500 == 0:
                assert drift(migrated_url, key.workspace_id) == [], f"after step {number}"
        assert drift(migrated_url, key.workspace_id) == []
        sizes = client.get("/v1/segments?limit=100", headers=bearer(key)).json()["data"]
        # The workload is meant to exercise the rules: most segments got members.
        assert sum(1 for s in sizes if s["size"] > 0) >= 12, sizes
    finally:
        drop_workspace(migrated_url, key.workspace_id)
