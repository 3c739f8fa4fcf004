"""/v1/imports against a real PostgreSQL: a CSV staged with COPY and applied
through the upsert path (counts, merges, rejections with row numbers, no
partial contact), the header checks, idempotency, and a few thousand rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nudgel.api.keys.store import IssuedKey
from test_api_contacts import contacts_client, count, drop_workspace, new_key
from test_api_foundation import assert_problem, bearer, outbox_types

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    for name, type_ in [("plan", "text"), ("ltv", "number"), ("vip", "bool")]:
        response = client.post(
            "/v1/fields", json={"name": name, "type": type_}, headers=bearer(issued)
        )
        assert response.status_code == 201
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def upload(
    client: TestClient,
    key: IssuedKey,
    text: str | bytes,
    headers: dict[str, str] | None = None,
    **form: Any,
) -> Any:
    content = text.encode() if isinstance(text, str) else text
    return client.post(
        "/v1/imports",
        files={"file": ("contacts.csv", content, "text/csv")},
        data=form,
        headers=bearer(key, **(headers or {})),
    )


def wait(client: TestClient, key: IssuedKey, import_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/imports/{import_id}", headers=bearer(key)).json()
        if body["status"] in ("succeeded", "failed"):
            assert body["status"] == "succeeded", body
            return body
        time.sleep(0.05)
    raise AssertionError("the import did not finish")


def run(client: TestClient, key: IssuedKey, text: str | bytes, **form: Any) -> dict[str, Any]:
    response = upload(client, key, text, **form)
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/imports/{body['id']}"
    assert body["object"] == "import" and body["status"] == "queued"
    return wait(client, key, body["id"])


def rejected(client: TestClient, key: IssuedKey, import_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/imports/{import_id}/rejected?limit=100", headers=bearer(key))
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def contacts(client: TestClient, key: IssuedKey) -> dict[str, dict[str, Any]]:
    data = client.get("/v1/contacts?limit=100", headers=bearer(key)).json()["data"]
    return {c["email"] or c["phone"] or c["external_id"]: c for c in data}


def upsert(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code in (200, 201), response.text
    contact: dict[str, Any] = response.json()
    return contact


# ---- rows ---------------------------------------------------------------------------


def test_rows_create_update_merge_and_bad_rows_are_reported(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    ada = upsert(client, key, email="ada@example.com", name="Ada")
    phone_only = upsert(client, key, phone="+254712345678", fields={"plan": "free"})
    upsert(client, key, email="same@example.com", name="Same")
    before = outbox_types(migrated_url, key.workspace_id)
    csv = (
        "\ufeffE-mail,Phone,Name,ltv,vip,Plan,tags\n"  # BOM and a header row
        "new@example.com,,New Person,12.50,yes,pro,vip;KE\n"  # row 2: created
        "ADA@example.com,,Ada Lovelace,,,,\n"  # row 3: updated (name)
        "not-an-email,,Bad,,,,\n"  # row 4: invalid email
        "ada@example.com,0712 345678,,,,,\n"  # row 5: merges the phone-only contact
        "typed@example.com,,,lots,,,\n"  # row 6: wrong field type
        "same@example.com,,Same,,,,\n"  # row 7: unchanged
        "\n"  # row 8: a blank line, skipped
        ",,No identifier,,,,\n"  # row 9: nothing to match on
        "short@example.com,\n"  # row 10: too few cells
        '"quoted, with comma"@example.com,,"Multi\nline",,,,\n'  # row 11: invalid email
        "bool@example.com,,,,maybe,,\n"  # row 12: not a boolean
        "phone@example.com,12,,,,,\n"  # row 13: not a phone number
    )
    done = run(client, key, csv, mapping='{"E-mail": "email"}')
    # Eleven rows: the blank line is skipped (but counted in the numbering).
    assert done["counts"] == {
        "rows": 11,
        "created": 1,
        "updated": 1,
        "merged": 1,
        "unchanged": 1,
        "rejected": 7,
    }
    assert done["total"] == done["done"] == 11 and done["progress"] == 1.0
    assert [c["target"] for c in done["columns"]] == [
        "email",
        "phone",
        "name",
        "fields.ltv",
        "fields.vip",
        "fields.plan",
        "tags",
    ]
    report = {r["row"]: r for r in rejected(client, key, done["id"])}
    assert sorted(report) == [4, 6, 9, 10, 11, 12, 13]
    assert report[4]["column"] == "E-mail" and "not a valid email" in report[4]["reason"]
    assert report[4]["values"]["E-mail"] == "not-an-email"
    assert report[6]["column"] == "ltv" and "type number" in report[6]["reason"]
    assert "no identifier" in report[9]["reason"]
    assert "2 cells; the header has 7" in report[10]["reason"]
    assert report[11]["values"]["Name"] == "Multi\nline"
    assert report[12]["column"] == "vip" and "boolean" in report[12]["reason"]
    assert report[13]["column"] == "Phone"

    found = contacts(client, key)
    assert set(found) == {"ada@example.com", "same@example.com", "new@example.com"}
    new = found["new@example.com"]
    assert new["name"] == "New Person"
    assert new["fields"] == {"ltv": 12.5, "vip": True, "plan": "pro"}
    assert sorted(t["name"] for t in new["tags"]) == ["KE", "vip"]
    merged = found["ada@example.com"]
    assert merged["id"] == ada["id"] and merged["name"] == "Ada Lovelace"
    assert merged["phone"] == "+254712345678" and merged["fields"] == {"plan": "free"}
    detail = client.get(f"/v1/contacts/{merged['id']}", headers=bearer(key)).json()
    assert detail["origins"]["name"]["source"] == "import"
    # The API's events, in row order.
    after = outbox_types(migrated_url, key.workspace_id)[len(before) :]
    assert [t for t in after if t.startswith("contact.")] == [
        "contact.created",
        "contact.tagged",
        "contact.updated",
        "contact.merged",
    ]
    merges = [e for e in detail["recent_events"] if e["name"] == "contact.merged"]
    assert merges[0]["props"] == {"merged_ids": [phone_only["id"]]}
    # The applied rows are gone from the staging table; the rejected stay.
    staged = count(migrated_url, "SELECT count(*) FROM import_rows WHERE job_id = %s", done["id"])
    assert staged == 7


def test_a_row_refused_while_applied_is_rejected_alone(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    upsert(client, key, email="owner@example.com", external_id="crm-1")
    before = count(
        migrated_url, "SELECT count(*) FROM contacts WHERE workspace_id = %s", key.workspace_id
    )
    csv = (
        "email,external_id,name,tags\n"
        "first@example.com,,First,\n"
        "owner@example.com,crm-2,Thief,stolen\n"  # two external ids: 409 for the API
        "last@example.com,,Last,\n"
    )
    done = run(client, key, csv, tags=["imported"])
    assert done["counts"]["created"] == 2 and done["counts"]["rejected"] == 1
    [row] = rejected(client, key, done["id"])
    assert row["row"] == 3 and "different external ids" in row["reason"]
    found = contacts(client, key)
    # Nothing of the refused row: no new contact, no name, no tag (not even the import's).
    owner = found["owner@example.com"]
    assert owner["external_id"] == "crm-1" and owner["name"] is None and owner["tags"] == []
    after = count(
        migrated_url, "SELECT count(*) FROM contacts WHERE workspace_id = %s", key.workspace_id
    )
    assert after == before + 2
    assert (
        count(
            migrated_url,
            "SELECT count(*) FROM tags WHERE workspace_id = %s AND name = 'stolen'",
            key.workspace_id,
        )
        == 0
    )
    for email in ("first@example.com", "last@example.com"):
        assert [t["name"] for t in found[email]["tags"]] == ["imported"]


def test_the_same_identifier_twice_in_a_file_is_one_contact(
    client: TestClient, key: IssuedKey
) -> None:
    csv = "email,plan\ntwice@example.com,free\nTWICE@example.com,pro\n"
    done = run(client, key, csv)
    assert done["counts"]["created"] == 1 and done["counts"]["updated"] == 1
    assert contacts(client, key)["twice@example.com"]["fields"] == {"plan": "pro"}


def test_imported_contacts_are_evaluated_by_the_rules(client: TestClient, key: IssuedKey) -> None:
    response = client.put(
        "/v1/rules",
        json={"files": {"m.rules": 'segment pros { fields.plan = "pro" }\n'}},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.text
    job = response.json()["job"]
    deadline = time.monotonic() + 60
    while job is not None and time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).json()["status"]
        if status in ("succeeded", "failed"):
            assert status == "succeeded"
            break
        time.sleep(0.05)
    run(client, key, "email,plan\npro@example.com,pro\nfree@example.com,free\n")
    found = contacts(client, key)
    detail = client.get(f"/v1/contacts/{found['pro@example.com']['id']}", headers=bearer(key))
    assert detail.json()["segments"] == ["pros"]
    detail = client.get(f"/v1/contacts/{found['free@example.com']['id']}", headers=bearer(key))
    assert detail.json()["segments"] == []


def test_a_few_thousand_rows_with_one_percent_bad(client: TestClient, key: IssuedKey) -> None:
    rows = 3000
    lines = ["email,name,ltv"]
    for n in range(rows):
        if n % 100 == 7:
            lines.append(f"broken-{n},Person {n},{n}")
        else:
            lines.append(f"person{n}@example.com,Person {n},{n}")
    done = run(client, key, "\n".join(lines) + "\n")
    assert done["counts"] == {
        "rows": rows,
        "created": rows - 30,
        "updated": 0,
        "merged": 0,
        "unchanged": 0,
        "rejected": 30,
    }
    report: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "?limit=100" + (f"&starting_after={cursor}" if cursor else "")
        page = client.get(f"/v1/imports/{done['id']}/rejected{query}", headers=bearer(key)).json()
        report += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    # Data row n is file row n + 2.
    assert [r["row"] for r in report] == [n + 2 for n in range(rows) if n % 100 == 7]
    job = client.get(f"/v1/jobs/{done['id']}", headers=bearer(key)).json()
    assert job["kind"] == "import" and job["result"]["created"] == rows - 30


# ---- the file -----------------------------------------------------------------------


def test_unknown_columns_refuse_the_file_up_front(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    csv = "Email,Company,Notes\na@example.com,Acme,hi\n"
    problem = assert_problem(upload(client, key, csv), 422)
    assert "'Company'" in problem["detail"] and "'Notes'" in problem["detail"]
    assert [e["pointer"] for e in problem["errors"]] == ["/file", "/file"]
    assert (
        count(migrated_url, "SELECT count(*) FROM jobs WHERE workspace_id = %s", key.workspace_id)
        == 0
    )
    # Mapped or ignored, the same file goes in.
    done = run(client, key, csv, mapping='{"Company": "plan", "Notes": "-"}')
    assert done["counts"]["created"] == 1
    assert contacts(client, key)["a@example.com"]["fields"] == {"plan": "Acme"}


@pytest.mark.parametrize(
    ("content", "mapping", "needle"),
    [
        (b"", None, "empty"),
        (b"email\n\xff\xfe\x00\n", None, "not UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", None, "not UTF-8"),
        (b"email,email\na@example.com,b@example.com\n", None, "2 times"),
        (b"name\nAda\n", None, "no column maps to an identifier"),
        (b"Mail,Courriel\na,b\n", '{"Mail": "email", "Courriel": "email"}', "all map to"),
        (b"email\na@example.com\n", '{"Missing": "email"}', "does not have"),
        (b"email\na@example.com\n", '{"email": "fields.nope"}', "not an attribute"),
    ],
)
def test_a_file_that_cannot_be_imported_is_a_422(
    client: TestClient, key: IssuedKey, content: bytes, mapping: str | None, needle: str
) -> None:
    form: dict[str, Any] = {"mapping": mapping} if mapping is not None else {}
    problem = assert_problem(upload(client, key, content, **form), 422)
    assert needle in problem["detail"], problem


@pytest.mark.parametrize("mapping", ["{", "[1]", '{"a": 1}'])
def test_a_bad_mapping_is_a_422(client: TestClient, key: IssuedKey, mapping: str) -> None:
    problem = assert_problem(upload(client, key, "email\n", mapping=mapping), 422)
    assert problem["errors"][0]["pointer"] == "/mapping"


def test_a_file_over_the_limit_is_a_413(
    client: TestClient, key: IssuedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = client.app.state.settings  # type: ignore[attr-defined]
    monkeypatch.setattr(settings, "import_max_bytes", 20)
    problem = assert_problem(upload(client, key, "email\n" + "a@example.com\n" * 5), 413)
    assert "at most 20" in problem["detail"]


def test_an_idempotency_key_replays_the_import(client: TestClient, key: IssuedKey) -> None:
    csv = "email\nonce@example.com\n"
    first = upload(client, key, csv, headers={"Idempotency-Key": "imp-1"})
    assert first.status_code == 202, first.text
    again = upload(client, key, csv, headers={"Idempotency-Key": "imp-1"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other = upload(client, key, "email\ntwice@example.com\n", headers={"Idempotency-Key": "imp-1"})
    assert_problem(other, 422)
    wait(client, key, first.json()["id"])
    assert list(contacts(client, key)) == ["once@example.com"]


def test_an_import_is_private_to_its_workspace(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    done = run(client, key, "email\nmine@example.com\n")
    other = new_key(migrated_url)
    try:
        for path in (f"/v1/imports/{done['id']}", f"/v1/imports/{done['id']}/rejected"):
            assert_problem(client.get(path, headers=bearer(other)), 404)
    finally:
        drop_workspace(migrated_url, other.workspace_id)
    assert_problem(
        client.get(f"/v1/imports/{done['id']}/rejected?starting_after=x", headers=bearer(key)),
        422,
    )


# ---- lists -------------------------------------------------------------------------


def test_an_import_subscribes_every_contact_to_its_list(client: TestClient, key: IssuedKey) -> None:
    for name, double in [("news", False), ("promos", True)]:
        response = client.post(
            "/v1/lists",
            json={"name": name, "title": name.title(), "double_opt_in": double},
            headers=bearer(key),
        )
        assert response.status_code == 201, response.text
    done = run(client, key, "email,name\nsub@example.com,Sub\n", list="news")
    assert done["list"] == "news" and done["counts"]["created"] == 1
    [contact] = contacts(client, key).values()
    assert [(s["list"], s["status"]) for s in contact["subscriptions"]] == [("news", "subscribed")]

    # Double opt-in: pending and a confirmation email once the batch committed;
    # a row without an email cannot confirm, and is rejected whole.
    def inbox() -> list[dict[str, Any]]:  # no SMTP URL in these tests: the dev inbox
        response = client.get("/v1/dev/inbox?limit=100", headers=bearer(key))
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["data"]
        return messages

    sent = len(inbox())
    done = run(
        client,
        key,
        "email,phone,name\nopt@example.com,,Opt\n,+254712345679,No Email\n",
        list="promos",
    )
    assert done["counts"]["created"] == 1 and done["counts"]["rejected"] == 1
    [row] = rejected(client, key, done["id"])
    assert row["row"] == 3 and "needs an email address" in row["reason"]
    found = contacts(client, key)
    assert "+254712345679" not in found
    assert [(s["list"], s["status"]) for s in found["opt@example.com"]["subscriptions"]] == [
        ("promos", "pending")
    ]
    newest = inbox()
    assert len(newest) == sent + 1 and newest[0]["headers"]["To"] == "opt@example.com"


def test_an_unknown_list_refuses_the_import(client: TestClient, key: IssuedKey) -> None:
    problem = assert_problem(upload(client, key, "email\na@example.com\n", list="nope"), 422)
    assert "no list 'nope'" in problem["detail"]


def test_a_nul_in_the_file_name_or_a_cell_is_no_server_error(
    client: TestClient, key: IssuedKey
) -> None:
    response = client.post(
        "/v1/imports",
        files={"file": ("a\x00.csv", b"email,name\nnul@example.com,A\x00B\n", "text/csv")},
        headers=bearer(key),
    )
    assert response.status_code == 202, response.text
    assert "\x00" not in response.json()["filename"]
    done = wait(client, key, response.json()["id"])
    assert done["counts"]["rejected"] == 1
    [row] = rejected(client, key, done["id"])
    assert row["row"] == 2 and "NUL" in row["reason"]


def test_bulk_created_contacts_equal_contacts_upserted_one_by_one(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    """New people are created set-based; the result must be what the API's
    upsert gives for the same rows: profiles, tags, origins' sources, outbox."""
    rows = [
        {
            "email": "b1@example.com",
            "phone": "+254712300001",
            "name": "B One",
            "tags": ["vip", "KE"],
            "fields": {"plan": "pro", "ltv": 12.5},
        },
        {"email": "b2@example.com", "name": "B Two", "fields": {"vip": True}},
        {"phone": "+254712300003", "tags": ["vip"]},
    ]
    csv = "email,phone,name,tags,plan,ltv,vip\n" + "".join(
        f"{r.get('email', '')},{r.get('phone', '')},{r.get('name', '')},"
        f"{';'.join(r.get('tags', []))},{r.get('fields', {}).get('plan', '')},"
        f"{r.get('fields', {}).get('ltv', '')},"
        f"{str(r.get('fields', {}).get('vip', '')).lower()}\n"
        for r in rows
    )
    assert run(client, key, csv, source="api")["counts"]["created"] == 3
    other = new_key(migrated_url)
    try:
        for name, type_ in [("plan", "text"), ("ltv", "number"), ("vip", "bool")]:
            client.post("/v1/fields", json={"name": name, "type": type_}, headers=bearer(other))
        for row in rows:
            assert client.post("/v1/contacts", json=row, headers=bearer(other)).status_code == 201

        def profiles(k: IssuedKey) -> list[dict[str, Any]]:
            listed = client.get("/v1/contacts?limit=100", headers=bearer(k)).json()["data"]
            out = []
            for contact in listed:
                detail = client.get(f"/v1/contacts/{contact['id']}", headers=bearer(k)).json()
                out.append(
                    {
                        "email": detail["email"],
                        "phone": detail["phone"],
                        "name": detail["name"],
                        "fields": detail["fields"],
                        "tags": sorted(t["name"] for t in detail["tags"]),
                        "origins": sorted(
                            (name, o["source"]) for name, o in detail["origins"].items()
                        ),
                    }
                )
            return sorted(out, key=lambda p: str(p["email"]) + str(p["phone"]))

        assert profiles(key) == profiles(other)

        def events(k: IssuedKey) -> list[str]:
            return sorted(
                t for t in outbox_types(migrated_url, k.workspace_id) if not t.startswith("field.")
            )

        assert events(key) == events(other)
    finally:
        drop_workspace(migrated_url, other.workspace_id)
