"""GET /v1/contacts/export and `nudgel export` against a real PostgreSQL: the CSV
round-trips through the import, JSON lines match the API, where= filters,
CSV injection is neutralised, and 100,000 contacts stream from a served
process in flat memory and come back equal through POST /v1/imports."""

from __future__ import annotations

import csv
import io
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from nudgel.api.contacts.export import neutralised, restored
from nudgel.api.jobs.imports import ATTRIBUTES
from nudgel.api.keys.store import IssuedKey, create_key
from served import serving
from test_api_contacts import contacts_client
from test_api_foundation import assert_problem, bearer
from test_api_imports import upload, wait
from test_cli_rules import nudgel
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

FIELDS = [
    ("plan", "text"),
    ("ltv", "number"),
    ("vip", "bool"),
    ("born", "date"),
    ("seen", "timestamp"),
    ("work", "email"),
    ("site", "url"),
    ("meta", "json"),
]


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    yield from contacts_client(migrated_url)


def with_fields(client: TestClient, issued: IssuedKey) -> IssuedKey:
    for name, type_ in FIELDS:
        response = client.post(
            "/v1/fields", json={"name": name, "type": type_}, headers=bearer(issued)
        )
        assert response.status_code == 201, response.text
    return issued


@pytest.fixture
def key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = with_fields(client, new_key(migrated_url))
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


@pytest.fixture
def second_key(migrated_url: str, client: TestClient) -> Iterator[IssuedKey]:
    issued = with_fields(client, new_key(migrated_url))
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def upsert(client: TestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code in (200, 201), response.text
    contact: dict[str, Any] = response.json()
    return contact


def export(client: TestClient, key: IssuedKey, **params: str) -> httpx.Response:
    response = client.get("/v1/contacts/export", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


# Values as people have them: accents, commas, quotes, line breaks, several
# tags and tokens, negative and decimal numbers, JSON of every shape.
NAMES = ["Ada Lovelace", "Élodie Durand", 'Wanjiku "Shiku" Kamau', "O'Brien, Pat", "Line\nbreak"]
META: list[Any] = [{"a": [1, "b", None]}, [1, 2.5], "just text", 42, True, {"nested": {"k": "v"}}]


def person(i: int) -> dict[str, Any]:
    body: dict[str, Any] = {"name": NAMES[i % len(NAMES)] + f" {i}"}
    if i % 7 != 3:
        body["email"] = f"person{i}@example.com"
    if i % 2 == 0:
        body["phone"] = f"+25471{i:07d}"
    if i % 7 == 3:
        body["external_id"] = f"ext-{i}"
    if i % 3 == 0:
        body["tags"] = ["vip", f"cohort {i % 4}"]
    if i % 5 == 0:
        body["push_tokens"] = [f"tok{i}a", f"tok{i}b"]
    fields: dict[str, Any] = {
        "plan": ["free", "pro", "team"][i % 3],
        "ltv": [-12.5, 0, 1999.99][i % 3],
    }
    if i % 2:
        fields |= {"vip": i % 4 == 1, "born": f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}"}
        fields |= {
            "seen": f"2026-03-0{1 + i % 9}T10:{i % 60:02d}:00Z",
            "site": f"https://x.test/{i}",
        }
        fields |= {"work": f"w{i}@work.example.org", "meta": META[i % len(META)]}
    body["fields"] = fields
    return body


def profiles(client: TestClient, key: IssuedKey) -> dict[str, dict[str, Any]]:
    """Every contact of the workspace, by its email or external id, as the
    values a CSV carries (not ids, times or colours)."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
        body = client.get("/v1/contacts", params=params, headers=bearer(key)).json()
        for c in body["data"]:
            found[c["email"] or c["external_id"]] = {
                "email": c["email"],
                "phone": c["phone"],
                "whatsapp_id": c["whatsapp_id"],
                "external_id": c["external_id"],
                "name": c["name"],
                "tags": sorted(t["name"] for t in c["tags"]),
                "push_tokens": sorted(c["push_tokens"]),
                "fields": c["fields"],
            }
        if not body["has_more"]:
            return found
        cursor = body["next_cursor"]


def import_text(client: TestClient, key: IssuedKey, text: str) -> dict[str, Any]:
    response = upload(client, key, text)
    assert response.status_code == 202, response.text
    return wait(client, key, response.json()["id"])


# ---- the CSV round trip ----------------------------------------------------------------


def test_the_csv_round_trips_through_the_import(
    client: TestClient, key: IssuedKey, second_key: IssuedKey
) -> None:
    for i in range(120):
        upsert(client, key, **person(i))
    response = export(client, key)
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="contacts-') and disposition.endswith(
        '.csv"'
    )
    rows = rows_of(response.text)
    assert list(rows[0]) == [*ATTRIBUTES, *(f"fields.{n}" for n, _ in sorted(FIELDS))]
    assert len(rows) == 120
    done = import_text(client, second_key, response.text)
    assert done["counts"]["created"] == 120 and done["counts"]["rejected"] == 0, done
    original = profiles(client, key)
    assert len(original) == 120
    assert profiles(client, second_key) == original


def test_the_csv_writes_values_as_the_import_reads_them(client: TestClient, key: IssuedKey) -> None:
    upsert(
        client,
        key,
        email="ada@example.com",
        phone="0712 345678",
        name="Ada",
        tags=["vip", "KE"],
        push_tokens=["t1", "t2"],
        fields={"ltv": -12.5, "vip": False, "meta": "text", "plan": "pro"},
    )
    (row,) = rows_of(export(client, key).text)
    assert row["email"] == "ada@example.com"
    assert row["phone"] == "+254712345678"  # a number: not neutralised
    assert row["tags"] == "KE;vip" and row["push_tokens"] == "t1;t2"
    assert row["fields.ltv"] == "-12.5" and row["fields.vip"] == "false"
    assert row["fields.meta"] == '"text"'  # JSON text, as a json field is imported
    assert row["fields.plan"] == "pro" and row["fields.born"] == "" and row["whatsapp_id"] == ""


# ---- CSV injection -----------------------------------------------------------------------


def test_cells_that_would_run_as_formulas_are_neutralised(
    client: TestClient, key: IssuedKey
) -> None:
    formulas = {
        "a@example.com": '=HYPERLINK("http://evil.test","click")',
        "b@example.com": "+cmd|' /C calc'!A0",
        "c@example.com": "-2+3",
        "d@example.com": "@SUM(A1)",
        "e@example.com": "'=already quoted",
    }
    for email, name in formulas.items():
        upsert(client, key, email=email, name=name, fields={"plan": name})
    # Names are trimmed; a text field keeps a leading tab or carriage return.
    upsert(client, key, email="t@example.com", fields={"plan": "\tTabbed", "site": None})
    upsert(client, key, email="r@example.com", fields={"plan": "\r=1+1"})
    upsert(client, key, email="g@example.com", phone="+254712345678", fields={"ltv": -3})
    rows = {r["email"]: r for r in rows_of(export(client, key).text)}
    for email, name in formulas.items():
        assert rows[email]["name"] == "'" + name, email
        assert rows[email]["fields.plan"] == "'" + name, email
        assert restored(rows[email]["name"]) == name
    assert rows["t@example.com"]["fields.plan"] == "'\tTabbed"
    assert rows["r@example.com"]["fields.plan"] == "'\r=1+1"
    # Numbers are numbers to a spreadsheet, never formulas: left as they are.
    assert rows["g@example.com"]["phone"] == "+254712345678"
    assert rows["g@example.com"]["fields.ltv"] == "-3"


@given(st.text())
def test_restored_undoes_neutralised(cell: str) -> None:
    safe = neutralised(cell)
    assert restored(safe) == cell
    starts_a_formula = safe[:1] in ("=", "+", "-", "@", "\t", "\r")
    assert not starts_a_formula or safe == cell  # then a plain number, left alone
    if starts_a_formula:
        float(safe)


# ---- where=, JSON lines, errors ----------------------------------------------------------


def test_where_and_jsonl(client: TestClient, key: IssuedKey, second_key: IssuedKey) -> None:
    for i in range(9):
        upsert(client, key, **person(i))
    upsert(client, second_key, email="theirs@example.com", tags=["vip"])
    vips = rows_of(export(client, key, where='tag "vip"').text)
    # 0, 3 and 6 are tagged; 3 has an external id and no email.
    assert [(r["email"], r["external_id"]) for r in vips] == [
        ("person0@example.com", ""),
        ("", "ext-3"),
        ("person6@example.com", ""),
    ]
    response = export(client, key, format="jsonl", where='tag "vip"')
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    listed = client.get(
        "/v1/contacts", params={"where": 'tag "vip"', "limit": "100"}, headers=bearer(key)
    ).json()["data"]
    assert lines == listed  # the API's contacts, in id order
    everything = export(client, key, format="jsonl").text.splitlines()
    assert len(everything) == 9  # only this workspace's


def test_export_errors_are_problems(client: TestClient, key: IssuedKey) -> None:
    problem = assert_problem(client.get("/v1/contacts/export?where=nope", headers=bearer(key)), 422)
    assert problem["detail"].startswith("where: 1:1:")
    problem = assert_problem(
        client.get("/v1/contacts/export?format=xlsx", headers=bearer(key)), 422
    )
    assert problem["errors"][0]["pointer"] == "/format"
    problem = assert_problem(client.get("/v1/contacts/export?email=x", headers=bearer(key)), 400)
    assert "`email`" in problem["detail"]
    assert_problem(client.get("/v1/contacts/export"), 401)


# ---- nudgel export -------------------------------------------------------------------------


@pytest.fixture
def named(migrated_url: str, client: TestClient) -> Iterator[tuple[str, IssuedKey]]:
    name = f"cli_{secrets.token_hex(4)}"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        issued = create_key(conn, name, "test")
    yield name, with_fields(client, issued)
    drop_workspace(migrated_url, issued.workspace_id)


def test_the_cli_writes_what_the_api_serves(
    client: TestClient, migrated_url: str, named: tuple[str, IssuedKey], tmp_path: Path
) -> None:
    name, issued = named
    for i in range(15):
        upsert(client, issued, **person(i))
    target = tmp_path / "out.csv"
    done = nudgel(migrated_url, "export", "--workspace", name, "--test", "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert f"wrote {target}" in done.stderr
    assert target.read_bytes() == export(client, issued).content
    assert not (tmp_path / "out.csv.partial").exists()
    # To standard output, filtered, as JSON lines.
    done = nudgel(
        migrated_url,
        "export",
        "--workspace",
        name,
        "--test",
        "--where",
        'tag "vip"',
        "--format",
        "jsonl",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.encode() == export(client, issued, where='tag "vip"', format="jsonl").content


def test_the_cli_refuses_what_the_api_refuses(
    migrated_url: str, named: tuple[str, IssuedKey], tmp_path: Path
) -> None:
    name, _ = named
    target = tmp_path / "out.csv"
    bad = nudgel(
        migrated_url, "export", "--workspace", name, "--test", "--where", "nope", "-o", str(target)
    )
    assert bad.returncode == 1 and "where: 1:1: unknown attribute `nope`" in bad.stderr
    assert not target.exists() and not (tmp_path / "out.csv.partial").exists()
    live = nudgel(migrated_url, "export", "--workspace", name)
    assert live.returncode == 1 and "has no live data" in live.stderr
    unknown = nudgel(migrated_url, "export", "--workspace", "no_such_workspace")
    assert unknown.returncode == 1 and "no workspace named" in unknown.stderr


# ---- 100,000 contacts from a served process ------------------------------------------------

SEEDED = 100_000
# Each contact has about 440 bytes of CSV (a 384-character note): 44 MB in all.
SEED = """
INSERT INTO contacts (workspace_id, id, email, phone, name, fields)
SELECT %(ws)s, 'con_seed' || lpad(g::text, 9, '0'), 'p' || g || '@example.com',
       CASE WHEN g %% 2 = 0 THEN '+25471' || lpad(g::text, 7, '0') END, 'Person ' || g,
       jsonb_build_object('plan', (ARRAY['free', 'pro', 'team'])[g %% 3 + 1],
                          'ltv', (g %% 1000) - 500.25, 'note', repeat(md5(g::text), 12))
  FROM generate_series(1, %(count)s) g
"""
PROFILE = """
SELECT c.email, c.phone, c.name, c.fields, c.push_tokens,
       ARRAY(SELECT t.tag FROM contact_tags t WHERE t.contact_pk = c.pk ORDER BY t.tag)
  FROM contacts c WHERE c.workspace_id = %s
"""


def define_fields(url: str, workspace_id: int) -> None:
    with psycopg.connect(url) as conn:
        for name, type_ in [("plan", "text"), ("ltv", "number"), ("note", "text")]:
            conn.execute(
                "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, %s, %s)",
                (workspace_id, name, type_),
            )


def test_100000_contacts_stream_in_flat_memory_and_come_back_through_the_import(
    migrated_url: str,
) -> None:
    """The served process's resident memory is read before the export, every 2 MB
    while it streams, and after. Observed: it grows by about 4 MB for a 44 MB
    body, and stays flat from the first megabytes on; the bound below is 25 MB,
    several times that, and well under what holding the body (44 MB, more as
    Python rows) would take. The import of the file takes a minute or two."""
    source, target = new_key(migrated_url), new_key(migrated_url)
    try:
        for issued in (source, target):
            define_fields(migrated_url, issued.workspace_id)
        with psycopg.connect(migrated_url) as conn:
            conn.execute(SEED, {"ws": source.workspace_id, "count": SEEDED})
            conn.execute(
                "INSERT INTO contact_tags (contact_pk, tag) SELECT pk, 'vip' FROM contacts"
                " WHERE workspace_id = %s AND pk %% 3 = 0",
                (source.workspace_id,),
            )
        with (
            serving(migrated_url) as served,
            httpx.Client(base_url=served.url, timeout=120) as http,
        ):
            # Warm up: the export's code paths loaded, the pool's connections open.
            warm = http.get(
                "/v1/contacts/export",
                params={"where": 'email = "p1@example.com"'},
                headers=bearer(source),
            )
            assert warm.status_code == 200 and warm.text.count("\n") == 2, warm.text
            before = served.rss_bytes()
            received, samples = 0, []
            body = io.BytesIO()
            with http.stream("GET", "/v1/contacts/export", headers=bearer(source)) as response:
                assert response.status_code == 200
                assert "content-length" not in response.headers  # sent as it is read
                for chunk in response.iter_bytes():
                    if (received + len(chunk)) // 2_000_000 > received // 2_000_000:
                        samples.append(served.rss_bytes())
                    received += len(chunk)
                    body.write(chunk)
            samples.append(served.rss_bytes())
            assert received > 40_000_000 and len(samples) > 20
            growth = max(samples) - before
            assert growth < 25_000_000, [round((s - before) / 1e6, 1) for s in samples]
            # The same file into another workspace: the same profiles.
            started = http.post(
                "/v1/imports",
                files={"file": ("contacts.csv", body.getvalue(), "text/csv")},
                headers=bearer(target),
            )
            assert started.status_code == 202, started.text
            deadline = time.monotonic() + 600
            while True:
                job = http.get(f"/v1/imports/{started.json()['id']}", headers=bearer(target))
                if job.json()["status"] in ("succeeded", "failed"):
                    break
                assert time.monotonic() < deadline, job.json()
                time.sleep(1)
            assert job.json()["status"] == "succeeded", job.json()
            assert job.json()["counts"]["created"] == SEEDED, job.json()
        with psycopg.connect(migrated_url) as conn:
            for one, other in ((source, target), (target, source)):
                missing = conn.execute(
                    f"SELECT count(*) FROM ({PROFILE} EXCEPT ALL {PROFILE}) d",
                    (one.workspace_id, other.workspace_id),
                ).fetchone()
                assert missing == (0,)
            tagged = conn.execute(
                "SELECT count(*) FROM contact_tags t JOIN contacts c ON c.pk = t.contact_pk"
                " WHERE c.workspace_id = %s",
                (target.workspace_id,),
            ).fetchone()
            assert tagged is not None and tagged[0] > SEEDED // 4
    finally:
        for issued in (source, target):
            drop_workspace(migrated_url, issued.workspace_id)
