"""The service's layout as docs/architecture.md and issue #10 describe it.

The import direction itself is checked by ``lint-imports`` in ``.ci/lint``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "api"
DOC = ROOT / "docs" / "architecture.md"


def test_few_modules_directly_under_api() -> None:
    modules = sorted(p.name for p in API.glob("*.py"))
    assert len(modules) <= 6, modules


@pytest.mark.parametrize(
    "package", sorted(p.name for p in API.iterdir() if (p / "__init__.py").exists())
)
def test_each_capability_says_what_it_owns_in_two_lines(package: str) -> None:
    tree = ast.parse((API / package / "__init__.py").read_text())
    doc = ast.get_docstring(tree)
    assert doc, f"api/{package}/__init__.py has no docstring"
    assert len(doc.strip().splitlines()) <= 2, doc


def _defined_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    f"{node.name}.{item.name}" for item in node.body if hasattr(item, "name")
                )
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_module_the_architecture_names_exists() -> None:
    text = DOC.read_text()
    named = re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)(?::([A-Za-z_.]+))?`", text)
    assert len(named) > 20, "the page names the modules of each step"
    for path, name in named:
        file = ROOT / path
        assert file.is_file(), f"{path} named in docs/architecture.md does not exist"
        if name:
            assert name in _defined_names(file), f"{path} has no {name}"
    for folder in re.findall(r"`((?:[a-z_]+/)+)`", text):
        assert (ROOT / folder).is_dir(), folder
