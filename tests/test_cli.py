"""`rulec` as a user runs it: exit codes, output formats, eval on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOW = "2026-06-01T12:00:00Z"


def rulec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nudgel.cli.rulec", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


@pytest.fixture
def bad_rules(tmp_path: Path) -> Path:
    path = tmp_path / "bad.rules"
    path.write_text('field plan: text\nsegment s { fields.plam = "pro" }\n', encoding="utf-8")
    return path


def test_check_clean_directory_exits_0() -> None:
    result = rulec("check", str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout


def test_check_errors_exit_1_in_rustc_style(bad_rules: Path) -> None:
    result = rulec("check", str(bad_rules))
    assert result.returncode == 1
    assert f"{bad_rules}:2:13: error[E200]: unknown field `plam`" in result.stdout
    assert ' 2 | segment s { fields.plam = "pro" }' in result.stdout
    assert "^~~~~~~~~~~" in result.stdout
    assert 'help: did you mean "plan"?' in result.stdout


def test_usage_and_io_errors_exit_2(tmp_path: Path) -> None:
    missing = rulec("check", str(tmp_path / "nope.rules"))
    assert missing.returncode == 2
    assert "no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert rulec("check").returncode == 2
    assert rulec("check", str(EXAMPLES), "--format", "xml").returncode == 2


def test_undecodable_file_is_a_diagnostic(tmp_path: Path) -> None:
    path = tmp_path / "latin1.rules"
    path.write_bytes(b'segment s { name = "caf\xe9" }\n')
    result = rulec("check", str(path))
    assert result.returncode == 1
    assert "not valid UTF-8" in result.stdout


def test_json_format_matches_its_schema(bad_rules: Path) -> None:
    result = rulec("check", str(bad_rules), "--format", "json")
    document = json.loads(result.stdout)
    schema = json.loads((ROOT / "dsl" / "diagnostics.schema.json").read_text("utf-8"))
    jsonschema.validate(document, schema)
    assert document["summary"] == {"errors": 1, "warnings": 1}


def test_sarif_format_validates(bad_rules: Path) -> None:
    result = rulec("check", str(bad_rules), "--format", "sarif")
    schema = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text("utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(json.loads(result.stdout))


def test_github_format(bad_rules: Path) -> None:
    result = rulec("check", str(bad_rules), "--format", "github")
    assert f"::error file={bad_rules},line=2,col=13" in result.stdout


def test_eval_memory_prints_one_json_object() -> None:
    result = rulec(
        "eval", str(EXAMPLES), "--contacts", str(EXAMPLES / "contacts.jsonl"), "--now", NOW
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["segments"]["hot_leads"] == ["c1"]
    assert document["scores"]["engagement"] == {"c1": "75", "c2": "20", "c3": "0"}
    assert document["stages"] == {"c1": "customer", "c2": "customer", "c3": "lead"}


def test_eval_postgres_agrees_with_memory(database_url: str) -> None:
    args = ["eval", str(EXAMPLES), "--contacts", str(EXAMPLES / "contacts.jsonl"), "--now", NOW]
    memory = rulec(*args)
    postgres = rulec(*args, "--backend", "postgres", "--database-url", database_url)
    assert postgres.returncode == 0, postgres.stderr
    assert json.loads(postgres.stdout) == json.loads(memory.stdout)


def test_eval_refuses_bad_data_with_nothing_on_stdout(tmp_path: Path) -> None:
    contacts = tmp_path / "c.jsonl"
    contacts.write_text('{"id": "ok"}\n{"id": "x9", "fields": {"ltv": "12"}}\n', encoding="utf-8")
    result = rulec("eval", str(EXAMPLES), "--contacts", str(contacts), "--now", NOW)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "x9" in result.stderr and "ltv" in result.stderr and "number" in result.stderr


def test_eval_with_rule_errors_prints_diagnostics(bad_rules: Path) -> None:
    result = rulec(
        "eval", str(bad_rules), "--contacts", str(EXAMPLES / "contacts.jsonl"), "--now", NOW
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "E200" in result.stderr


def test_eval_needs_an_offset_on_now() -> None:
    result = rulec(
        "eval", str(EXAMPLES), "--contacts", str(EXAMPLES / "contacts.jsonl"), "--now", "2026-06-01"
    )
    assert result.returncode == 2 and "RFC 3339" in result.stderr


def test_compile_prints_sql_with_parameters_only() -> None:
    result = rulec("compile", str(EXAMPLES), "--segment", "big_spenders_ke")
    assert result.returncode == 0, result.stderr
    sql, _, params = result.stdout.partition("-- parameters:")
    for literal in ("KES", "purchase", "100000", "premium", "acme"):
        assert literal not in sql
        assert literal in params
    assert "%(now)s" in sql
    score = rulec("compile", str(EXAMPLES), "--score", "engagement")
    assert score.returncode == 0 and "email_open" in score.stdout.partition("-- parameters:")[2]
    assert rulec("compile", str(EXAMPLES), "--segment", "nope").returncode == 1
    assert rulec("compile", str(EXAMPLES)).returncode == 2


def test_fmt_check_and_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "a.rules"
    path.write_text('segment   s{tag "x"   and name="y"}   # why\n', encoding="utf-8")
    check = rulec("fmt", "--check", str(path))
    assert check.returncode == 1 and "would reformat" in check.stdout
    assert rulec("fmt", str(path)).returncode == 0
    formatted = path.read_text("utf-8")
    assert "# why" in formatted
    assert rulec("fmt", "--check", str(path)).returncode == 0
    assert rulec("check", str(path)).returncode == 0
