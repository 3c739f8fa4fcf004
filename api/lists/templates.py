"""The templates of a list: confirmation subject and body, landing page.

They are Jinja2, run in its ``SandboxedEnvironment`` (no attribute access to
Python internals, no unsafe calls), because workspace users write them and
the service renders them. The text templates (subject, body) are not
escaped; the landing page is HTML and autoescaped, so a contact's name with
``<script>`` in it is shown, not run.

Names a template can use (:data:`TEXT_NAMES`, :data:`PAGE_NAMES`):

- ``contact``: ``id``, ``email``, ``phone``, ``whatsapp_id``, ``external_id``,
  ``name`` and ``fields`` (the custom field values);
- ``fields``: the same custom field values, for short;
- ``list``: ``name`` and ``title``;
- ``confirm_url`` (emails only) and ``unsubscribe_url``.

Undefined policy: a name not in that list is refused when the list is saved
(a typo would otherwise render as nothing in every email); a missing
attribute or field value of a known name renders as empty text
(``{{ fields.company }}`` for a contact without a company), since contacts
differ in what they carry: write ``{{ contact.name or "there" }}``.

:func:`check` is run on save: syntax errors, unknown names and errors of a
trial render against a sample contact (a sandbox violation, a division by
zero) are refused with the template's line.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "PAGE_NAMES",
    "TEXT_NAMES",
    "TemplateProblem",
    "check",
    "error_line",
    "names_used",
    "render",
]

TEXT_NAMES = frozenset({"contact", "fields", "list", "confirm_url", "unsubscribe_url"})
PAGE_NAMES = frozenset({"contact", "fields", "list", "unsubscribe_url"})

_ENVIRONMENTS = {
    html: SandboxedEnvironment(
        autoescape=html, undefined=ChainableUndefined, keep_trailing_newline=True
    )
    for html in (False, True)
}
_SAMPLE: dict[str, Any] = {
    "contact": {
        "id": "con_sample",
        "email": "ada@example.com",
        "phone": "+254712345678",
        "whatsapp_id": None,
        "external_id": None,
        "name": "Ada",
        "fields": {},
    },
    "fields": {},
    "list": {"name": "newsletter", "title": "Newsletter"},
    "confirm_url": "https://example.com/confirm/token",
    "unsubscribe_url": "https://example.com/unsubscribe/token",
}


@dataclass(frozen=True)
class TemplateProblem:
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return where + self.message


@lru_cache(maxsize=256)
def _compiled(source: str, html: bool) -> Template:
    return _ENVIRONMENTS[html].from_string(source)


def error_line(error: BaseException) -> int | None:
    """The template line an error was raised at (Jinja maps its frames to them)."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename == "<template>"
    ]
    return lines[-1] if lines else None


def check(source: str, *, html: bool, names: frozenset[str]) -> TemplateProblem | None:
    """Why ``source`` cannot be saved, or None when it can."""
    env = _ENVIRONMENTS[html]
    try:
        tree = env.parse(source)
        # Compiling also finds what parsing does not (an unknown filter or test).
        template = _compiled(source, html)
    except TemplateSyntaxError as error:
        return TemplateProblem(error.lineno, error.message or "syntax error")
    unknown = meta.find_undeclared_variables(tree) - names
    if unknown:
        name = sorted(unknown)[0]
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), None)
        return TemplateProblem(
            line, f"unknown name {name!r}; a template can use {', '.join(sorted(names))}"
        )
    try:
        template.render(_SAMPLE)
    except Exception as error:  # anything a trial render raises is the template's fault
        return TemplateProblem(error_line(error), f"{type(error).__name__}: {error}")
    return None


def names_used(source: str) -> set[str]:
    """The names a (syntactically valid) template reads."""
    return set(meta.find_undeclared_variables(_ENVIRONMENTS[False].parse(source)))


def render(source: str, context: Mapping[str, Any], *, html: bool) -> str:
    """Render a checked template. Raises what the template raises (callers decide)."""
    return _compiled(source, html).render(dict(context))
