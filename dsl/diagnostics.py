"""Diagnostics are data: a code from the registry, a severity, a message, a span
and an optional help line. Every code and its message template lives here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nudgel.dsl.span import Span


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    severity: Severity
    title: str
    template: str

    def __call__(self, span: Span, help: str | None = None, **args: Any) -> Diagnostic:
        return Diagnostic(self.code, self.severity, self.template.format(**args), span, help)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    help: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.file, self.span.line, self.span.column, self.code)


E, W = Severity.ERROR, Severity.WARNING

# The registry: the one place where codes, titles and messages are defined.
SYNTAX = Code("E100", E, "syntax error", "{message}")
UNKNOWN_NAME = Code("E200", E, "unknown name", "unknown {kind} `{name}`")
DUPLICATE_NAME = Code("E201", E, "duplicate name", "duplicate {kind} `{name}`")
TYPE_MISMATCH = Code("E210", E, "type mismatch", "{message}")
BAD_TIME_LITERAL = Code("E220", E, "invalid date or timestamp literal", "{message}")
BAD_REGEX = Code("E221", E, "regular expression outside the portable subset", "{message}")
CYCLE = Code("E230", E, "reference cycle", "reference cycle: {cycle}")
CONTACT_IN_EVENT_FILTER = Code(
    "E240",
    E,
    "contact data inside an event filter",
    "{what} cannot be used inside an event `where`",
)
BAD_SCORE_NUMBER = Code("E250", E, "invalid number in a score", "{message}")
BAD_DURATION = Code("E260", E, "duration out of range", "{message}")
NEVER_OR_ALWAYS = Code("W300", W, "condition never or always holds", "{message}")
UNUSED_FIELD = Code(
    "W301", W, "declared field never used", "field `{name}` is declared but never used"
)
EMAIL_CAPITALS = Code(
    "W302",
    W,
    "email compared with capitals",
    "email is stored lower-cased, so {literal} never matches",
)
# Deploying rules to the service: declarations checked against the
# workspace's field definitions (POST /v1/fields).
FIELD_NOT_DEFINED = Code(
    "E270",
    E,
    "field not defined in the workspace",
    "field `{name}` is not defined in this workspace",
)
FIELD_TYPE_DIFFERS = Code(
    "E271",
    E,
    "field declared with another type",
    "field `{name}` is declared `{declared}` here but is `{defined}` in this workspace",
)

REGISTRY: dict[str, Code] = {
    c.code: c
    for c in (
        SYNTAX,
        UNKNOWN_NAME,
        DUPLICATE_NAME,
        TYPE_MISMATCH,
        BAD_TIME_LITERAL,
        BAD_REGEX,
        CYCLE,
        CONTACT_IN_EVENT_FILTER,
        BAD_SCORE_NUMBER,
        BAD_DURATION,
        NEVER_OR_ALWAYS,
        UNUSED_FIELD,
        EMAIL_CAPITALS,
        FIELD_NOT_DEFINED,
        FIELD_TYPE_DIFFERS,
    )
}


class InternalError(Exception):
    """A bug in rulec itself (never a user error): the CLI exits 2 with a traceback."""
