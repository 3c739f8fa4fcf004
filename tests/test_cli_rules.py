"""`nudgel rules apply` and `nudgel rules verify` as a user runs them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from nudgel.api.keys.store import create_key

pytestmark = pytest.mark.postgres


def nudgel(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "nudgel.cli.nudgel", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_apply_backfills_and_verify_finds_drift(migrated_url: str, tmp_path: Path) -> None:
    workspace = f"cli_{secrets.token_hex(4)}"
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        issued = create_key(conn, workspace, "test")
        conn.execute(
            "INSERT INTO field_definitions (workspace_id, name, type) VALUES (%s, 'plan', 'text')",
            (issued.workspace_id,),
        )
        for number in range(5):
            conn.execute(
                "INSERT INTO contacts (workspace_id, id, email, fields) VALUES (%s, %s, %s, %s)",
                (
                    issued.workspace_id,
                    f"c{number}",
                    f"c{number}@example.com",
                    '{"plan": "pro"}' if number % 2 else '{"plan": "free"}',
                ),
            )
    try:
        rules = tmp_path / "rules"
        (rules / "sub").mkdir(parents=True)
        (rules / "a.rules").write_text('segment pro "Pro" { fields.plan = "pro" }\n')
        (rules / "sub" / "b.rules").write_text("segment everyone { email is set }\n")

        bad = tmp_path / "bad.rules"
        bad.write_text("segment broken { fields.plam = 1 }\n")
        refused = nudgel(
            migrated_url, "rules", "apply", str(bad), "--workspace", workspace, "--test"
        )
        assert refused.returncode == 1, refused.stderr
        assert "bad.rules:1:18: error[E200]: unknown field `plam`" in refused.stderr

        applied = nudgel(
            migrated_url, "rules", "apply", str(rules), "--workspace", workspace, "--test"
        )
        assert applied.returncode == 0, applied.stderr
        assert "deployed version 1" in applied.stdout
        again = nudgel(
            migrated_url, "rules", "apply", str(rules), "--workspace", workspace, "--test"
        )
        assert again.returncode == 0 and "already in force" in again.stdout

        with psycopg.connect(migrated_url) as conn:
            files = conn.execute(
                "SELECT files FROM rule_sets WHERE workspace_id = %s", (issued.workspace_id,)
            ).fetchone()
            members = conn.execute(
                "SELECT segment, count(*) FROM segment_members WHERE workspace_id = %s"
                " GROUP BY segment ORDER BY segment",
                (issued.workspace_id,),
            ).fetchall()
        assert files is not None and sorted(files[0]) == ["a.rules", "sub/b.rules"]
        assert members == [("everyone", 5), ("pro", 2)]

        clean = nudgel(migrated_url, "rules", "verify", "--workspace", workspace, "--test")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "0 differences" in clean.stderr

        with psycopg.connect(migrated_url, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM segment_members m USING contacts c WHERE c.pk = m.contact_pk"
                " AND c.id = 'c1' AND m.workspace_id = %s AND m.segment = 'pro'",
                (issued.workspace_id,),
            )
        drifted = nudgel(migrated_url, "rules", "verify", "--workspace", workspace, "--test")
        assert drifted.returncode == 1
        assert drifted.stdout.strip() == "c1: segment pro: stored False, expected True"

        unknown = nudgel(migrated_url, "rules", "verify", "--workspace", "nope")
        assert unknown.returncode != 0 and "no workspace named 'nope'" in unknown.stderr
    finally:
        with psycopg.connect(migrated_url, autocommit=True) as conn:
            conn.execute("DELETE FROM workspaces WHERE id = %s", (issued.workspace_id,))
