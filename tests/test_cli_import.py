"""`nudgel import FILE.csv` as a user runs it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from nudgel.api.keys.store import IssuedKey, create_key
from test_cli_rules import nudgel

pytestmark = pytest.mark.postgres


@pytest.fixture
def workspace(migrated_url: str) -> Iterator[tuple[str, IssuedKey]]:
    name = f"cli_{secrets.token_hex(4)}"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        issued = create_key(conn, name, "test")
        conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, 'ltv', 'number')",
            (issued.workspace_id,),
        )
    yield name, issued
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("DELETE FROM workspaces WHERE id = %s", (issued.workspace_id,))


def test_import_prints_counts_and_rejected_rows(
    migrated_url: str, tmp_path: Path, workspace: tuple[str, IssuedKey]
) -> None:
    name, issued = workspace
    csv = tmp_path / "contacts.csv"
    csv.write_text(
        "E-mail,Name,ltv,Notes\n"
        "ada@example.com,Ada,10,hi\n"
        "bad-email,Bob,1,\n"
        "cy@example.com,Cy,lots,\n"
        "ADA@example.com,Ada L,,\n",
        encoding="utf-8",
    )
    mapping = '{"E-mail": "email", "Notes": "-"}'
    done = nudgel(
        migrated_url,
        "import",
        str(csv),
        "--workspace",
        name,
        "--test",
        "--tag",
        "csv",
        "--mapping",
        mapping,
    )
    assert done.returncode == 0, done.stderr
    assert "4 rows: 1 created, 1 updated, 0 merged, 0 unchanged, 2 rejected" in done.stdout
    assert "row 3 (E-mail): 'bad-email' is not a valid email address" in done.stdout
    assert "row 4 (ltv): Field 'ltv' has type number" in done.stdout
    assert "importing" in done.stderr  # the progress bar
    with psycopg.connect(migrated_url) as conn:
        rows = conn.execute(
            "SELECT c.email, c.name, c.fields->>'ltv', array_agg(t.tag) FROM contacts c"
            " JOIN contact_tags t ON t.contact_pk = c.pk WHERE c.workspace_id = %s"
            " GROUP BY c.pk",
            (issued.workspace_id,),
        ).fetchall()
    assert rows == [("ada@example.com", "Ada L", "10", ["csv"])]


def test_a_file_that_cannot_be_imported_exits_1(
    migrated_url: str, tmp_path: Path, workspace: tuple[str, IssuedKey]
) -> None:
    name, _ = workspace
    missing = nudgel(
        migrated_url, "import", str(tmp_path / "nope.csv"), "--workspace", name, "--test"
    )
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("email,Company\na@example.com,Acme\n", encoding="utf-8")
    refused = nudgel(migrated_url, "import", str(unknown), "--workspace", name, "--test")
    assert refused.returncode == 1 and "'Company'" in refused.stderr
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email,name\nzoe@example.com,Zo\xeb\n".encode("latin-1"))
    refused = nudgel(migrated_url, "import", str(latin1), "--workspace", name, "--test")
    assert refused.returncode == 1 and "not UTF-8" in refused.stderr
    csv = tmp_path / "ok.csv"
    csv.write_text("email\na@example.com\n", encoding="utf-8")
    no_list = nudgel(
        migrated_url, "import", str(csv), "--workspace", name, "--test", "--list", "nope"
    )
    assert no_list.returncode == 1 and "no list 'nope'" in no_list.stderr
    nobody = nudgel(migrated_url, "import", str(unknown), "--workspace", "no-such-workspace")
    assert nobody.returncode == 1 and "no workspace" in nobody.stderr
