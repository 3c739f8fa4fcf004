"""Rules as code (issue #12): the rule files' field declarations are the
workspace's schema, a deploy creates what they declare, and `nudgel rules
pull` writes files that `rulec check` checks against what a deploy will see."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey, create_key
from nudgel.api.settings import Settings
from test_api_foundation import assert_problem, bearer, outbox_types
from workspaces import drop_workspace, new_key

pytestmark = pytest.mark.postgres

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def client(migrated_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=migrated_url, run_worker=False))) as c:
        yield c


@pytest.fixture
def key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


def _example_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(EXAMPLES.glob("*.rules"))}


def _fields(client: TestClient, key: IssuedKey) -> dict[str, str]:
    return {
        f["name"]: f["type"] for f in client.get("/v1/fields", headers=bearer(key)).json()["data"]
    }


def test_the_examples_deploy_on_a_fresh_workspace_creating_their_fields(
    client: TestClient, key: IssuedKey, migrated_url: str
) -> None:
    answer = client.put("/v1/rules", json={"files": _example_files()}, headers=bearer(key))
    assert answer.status_code in (200, 201, 202), answer.text
    assert _fields(client, key) == {"ltv": "number", "plan": "text"}
    assert outbox_types(migrated_url, key.workspace_id).count("field.created") == 2


def test_a_declaration_of_another_type_refuses_the_deploy_before_anything_changes(
    client: TestClient, key: IssuedKey
) -> None:
    client.post("/v1/fields", json={"name": "plan", "type": "text"}, headers=bearer(key))
    files = {
        "a.rules": "field plan: number\nfield seats: number\nsegment s { fields.plan > 1 and fields.seats > 2 }\n"
    }
    problem = assert_problem(
        client.put("/v1/rules", json={"files": files}, headers=bearer(key)), 422
    )
    assert [d["code"] for d in problem["diagnostics"]] == ["E271"]
    assert _fields(client, key) == {"plan": "text"}  # seats was not created
    assert_problem(client.get("/v1/rules", headers=bearer(key)), 404)


def _nudgel(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nudgel.cli.nudgel", *args],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pulled_files_check_clean_with_rulec(
    client: TestClient, migrated_url: str, tmp_path: Path
) -> None:
    name = f"pull_{secrets.token_hex(4)}"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        issued = create_key(conn, name, "test")
    try:
        h = bearer(issued)
        # Fields created by writes, read by rules that do not declare them.
        client.post(
            "/v1/contacts",
            json={"email": "a@example.com", "fields": {"company": "Acme", "seats": 3, "note": "x"}},
            headers=h,
        )
        files = {"team.rules": 'segment big { fields.seats > 2 and fields.company = "Acme" }\n'}
        assert client.put("/v1/rules", json={"files": files}, headers=h).status_code in (200, 202)

        pulled = _nudgel(
            migrated_url, "rules", "pull", str(tmp_path), "--workspace", name, "--test"
        )
        assert pulled.returncode == 0, pulled.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "team.rules",
            "workspace_fields.rules",
        ]
        schema = (tmp_path / "workspace_fields.rules").read_text()
        assert "field company: text\nfield seats: number\n" in schema
        assert "# field note: text" in schema
        checked = subprocess.run(
            [sys.executable, "-m", "nudgel.cli.rulec", "check", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "warning" not in checked.stdout + checked.stderr
        # Without the pulled schema, the rules do not check: the loop matters.
        (tmp_path / "workspace_fields.rules").unlink()
        unchecked = subprocess.run(
            [sys.executable, "-m", "nudgel.cli.rulec", "check", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unchecked.returncode == 1 and "E200" in unchecked.stdout
    finally:
        drop_workspace(migrated_url, issued.workspace_id)
