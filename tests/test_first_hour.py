"""The README as a new user runs it (issue #12): every shell block, in order, with
its curl and CLI steps, against a served instance and a fresh workspace.

Blocks that install, run the test suite or run benchmarks are left out, and so is
the line that starts the server (the test serves its own). The only changes to
the commands are the server's address and the workspace's name; `curl` fails on
an HTTP error, so every request must succeed.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import psycopg
import pytest
from served import serving

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("pip install", "python bench/", "python -m pytest")


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    return [b for b in blocks if not any(s in b for s in SKIPPED)]


def test_the_readme_runs_as_written(migrated_url: str, tmp_path: Path) -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 8, "the README lost its walk-through"
    workspace = f"acme_{secrets.token_hex(4)}"
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    with serving(migrated_url) as served:
        lines = []
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("nudgel serve"):
                    continue
                line = line.replace("http://127.0.0.1:8000", served.url)
                lines.append(re.sub(r"\bacme\b", workspace, line))
        script = "\n".join(
            [
                "set -euo pipefail",
                # Every request must succeed: curl fails on HTTP errors here.
                'curl() { command curl --fail-with-body -sS "$@"; echo; }',
                *lines,
            ]
        )
        try:
            ran = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env={**os.environ, "DATABASE_URL": migrated_url},
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            # The database is shared by the session: tests that count rows of
            # the storage tables (test_migrations) must not see these contacts.
            with psycopg.connect(migrated_url, autocommit=True) as conn:
                conn.execute("DELETE FROM workspaces WHERE name = %s", (workspace,))
    assert ran.returncode == 0, f"{ran.stdout[-4000:]}\n{ran.stderr[-4000:]}"
    out = ran.stdout
    assert '"created_fields":[{"object":"field","name":"company"' in out  # fields just work
    assert '"status":"pending"' in out  # the double opt-in subscription
    assert "0 differences" in ran.stderr  # rules verify
    assert "2 rows: 2 created" in out  # the CLI import
