"""Loads the shared conformance cases (``../shared/conformance`` from the project
root) exactly as written there; they are never copied into this repository."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE_DIR = Path(
    os.environ.get("NUDGEL_CONFORMANCE_DIR", ROOT.parent / "shared" / "conformance")
)
LOCAL_CASES_DIR = ROOT / "tests" / "cases"
RULES_PATH = "case.rules"


@dataclass(frozen=True)
class Case:
    file: str
    name: str
    rules: str
    now: str
    contacts: list[dict[str, Any]]
    expect: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"

    @property
    def expects_error(self) -> bool:
        return any(str(x["code"]).startswith("E") for x in self.expect.get("diagnostics", []))


def load_cases(directory: Path = CONFORMANCE_DIR) -> list[Case]:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no conformance cases found in {directory}")
    cases = []
    for path in files:
        # YAML 1.1 would read `on`/`yes` as booleans and dates as datetimes; the
        # cases are written as plain data, so load with the base loader and keep
        # scalars as YAML typed them except timestamps.
        document = yaml.load(path.read_text("utf-8"), Loader=_Loader)
        for raw in document["cases"]:
            cases.append(
                Case(
                    file=path.name if directory == CONFORMANCE_DIR else f"local/{path.name}",
                    name=raw["name"],
                    rules=raw["rules"],
                    now=str(raw.get("now", document.get("now"))),
                    contacts=raw.get("contacts", []),
                    expect=raw.get("expect", {}),
                )
            )
    return cases


class _Loader(yaml.SafeLoader):
    pass


# Timestamps stay strings: the contact loader parses them as the spec says.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    # Numbers are exact decimals in the language: never go through a float.
    return Decimal(str(loader.construct_scalar(node)).replace("_", ""))


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)
