"""The front end never crashes: ``check_sources`` on any text (random unicode,
random bytes decoded leniently, broken variants of valid rule files) returns
diagnostics that point into the text, and ``rulec check`` exits 0 or 1 without
a traceback. Also the shared generators' own contracts: generated rule sets
check without errors and generated contacts load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nudgel.dsl.checker import check_sources
from nudgel.dsl.diagnostics import Diagnostic
from nudgel.runtime.contact import load_contacts
from strategies import (
    TOKENS,
    RuleSet,
    contacts,
    mutated,
    now_instants,
    rule_sets,
    rule_sets_with_comments,
)

# ---- text to throw at the front end -----------------------------------------------------


def _decoded(errors: str) -> st.SearchStrategy[str]:
    return st.binary(max_size=300).map(lambda data: data.decode("utf-8", errors))


def arbitrary_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=300),
        st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join),
        _decoded("replace"),
        _decoded("surrogateescape"),
        rule_sets_with_comments().flatmap(lambda rule_set: mutated(rule_set.source)),
        rule_sets(layout="tidy").flatmap(lambda rule_set: mutated(rule_set.source)),
    )


# Pathological inputs, tried first every run.
_EXTREMES = {
    "deep not": "segment s { " + "not " * 3000 + "true }",
    "deep parens": "segment s { " + "(" * 3000 + "true" + ")" * 3000 + " }",
    "deep unclosed": "segment s { " + "(" * 3000,
    "long chain": "segment s { " + ' and '.join(['tag "a"'] * 3000) + " }",
    "nesting past the limit": "segment s { " + "not (" * 100 + "true" + ")" * 100 + " }",
    "huge duration": "segment s { event * within 99999999999999999999999d }",
    "huge offset": "segment s { now - 99999999999999999999w > created_at }",
    "offset sum": "segment s { now" + " - 90000d" * 3 + " > created_at }",
    "huge number": "score e { +1" + "0" * 5000 + " when true clamp 0..1" + "0" * 5000 + " }",
    "lone surrogate": 'segment s { name = "\udc80" }',
    "escaped surrogate": 'segment s { name = "\\udc80" }',
    "nul": 'segment s { name = "\\u0000" }\x00',
    "bom": '\ufeffsegment s { true }',
    "cr only": "field a: text\rsegment s {\rtrue\r}",
    "only a comment": "# x",
    "empty": "",
}  # fmt: skip


# ---- check_sources never raises --------------------------------------------------------------


def assert_points_into(diagnostic: Diagnostic, sources: dict[str, str]) -> None:
    span = diagnostic.span
    assert span.file in sources, diagnostic
    lines = sources[span.file].split("\n")
    assert 1 <= span.line <= len(lines), diagnostic
    assert 1 <= span.column <= len(lines[span.line - 1]) + 1, diagnostic
    assert (span.end_line, span.end_column) >= (span.line, span.column), diagnostic
    assert span.end_line <= len(lines), diagnostic
    assert diagnostic.message, diagnostic


def check_never_raises(sources: dict[str, str]) -> None:
    result = check_sources(sources)
    for diagnostic in result.diagnostics:
        assert_points_into(diagnostic, sources)
    if result.has_errors:
        assert result.rules is None
    else:
        assert result.rules is not None


@pytest.mark.parametrize("name", list(_EXTREMES))
def test_extreme_inputs(name: str) -> None:
    check_never_raises({"x.rules": _EXTREMES[name]})


@given(arbitrary_text())
@example('segment s { name = "a" }')
@example('field a: text\nsegment s { fields.a matches "(" }')
def test_any_text_checks_without_raising(text: str) -> None:
    check_never_raises({"x.rules": text})


@given(st.lists(arbitrary_text(), min_size=1, max_size=3))
def test_any_rule_set_of_several_files_checks_without_raising(texts: list[str]) -> None:
    check_never_raises({f"dir/f{index}.rules": text for index, text in enumerate(texts)})


# ---- rulec check never crashes ------------------------------------------------------------------


def rulec() -> list[str]:
    script = shutil.which("rulec")
    return [script] if script else [sys.executable, "-m", "nudgel.cli.rulec"]


def run_check(paths: list[Path], output_format: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*rulec(), "check", *map(str, paths), "--format", output_format],
        capture_output=True,
        timeout=120,
        check=False,
    )


_FORMATS = st.sampled_from(["human", "json", "github", "sarif"])


@pytest.mark.parametrize("name", ["deep parens", "nul", "bom", "huge number", "lone surrogate"])
def test_rulec_check_on_extreme_files(name: str, tmp_path: Path) -> None:
    path = tmp_path / "x.rules"
    path.write_bytes(_EXTREMES[name].encode("utf-8", "surrogatepass"))
    done = run_check([path], "human")
    assert done.returncode in (0, 1), done.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in done.stderr


# Each example starts a process: far fewer of them than the in-process properties.
@settings(
    max_examples=max(5, settings.default.max_examples // 15),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(
    st.lists(arbitrary_text(), min_size=1, max_size=4),
    st.binary(max_size=200),
    _FORMATS,
)
def test_rulec_check_exits_0_or_1_without_traceback(
    tmp_path_factory: pytest.TempPathFactory, texts: list[str], data: bytes, output_format: str
) -> None:
    folder = tmp_path_factory.mktemp("rules")
    paths = []
    for index, text in enumerate(texts):
        path = folder / f"f{index}.rules"
        # As an editor would save it; lone surrogates become the bytes they
        # stood for (invalid UTF-8, which rulec must report, not crash on).
        path.write_bytes(text.encode("utf-8", "surrogateescape" if _escapable(text) else "replace"))
        paths.append(path)
    raw = folder / "raw.rules"
    raw.write_bytes(data)
    paths.append(raw)
    done = run_check(paths, output_format)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode in (0, 1), stderr
    assert "Traceback" not in stderr, stderr


def _escapable(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


# ---- the generators' own contracts --------------------------------------------------------


@given(rule_sets_with_comments())
def test_generated_rule_sets_check_without_errors(rule_set: RuleSet) -> None:
    result = check_sources(rule_set.sources)
    errors = [d for d in result.diagnostics if d.is_error]
    assert not errors, (errors, rule_set.source)
    assert result.rules is not None
    assert set(result.rules.segments) == set(rule_set.segments)
    assert set(result.rules.scores) == set(rule_set.scores)
    assert result.rules.stage_names == rule_set.stage_names
    assert {name: f.type_name for name, f in result.rules.fields.items()} == dict(rule_set.fields)


# Contacts are costly to draw, and the backend suites draw plenty of them.
@settings(max_examples=max(10, settings.default.max_examples // 3))
@given(st.data())
def test_generated_contacts_load(data: st.DataObject) -> None:
    rule_set = data.draw(rule_sets(layout="tidy"))
    now = data.draw(now_instants())
    records = data.draw(
        contacts(rule_set.field_types, rule_set.stage_names, now=now, durations=rule_set.durations)
    )
    loaded = load_contacts(records, rule_set.field_types, rule_set.stage_names)
    assert [c.id for c in loaded] == [r["id"] for r in records]
    assert not any(isinstance(v, float) for r in records for v in _leaves(r))


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
