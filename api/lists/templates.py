"""The templates of a list: confirmation subject and body, landing page.

They are Jinja2, run in its ``ImmutableSandboxedEnvironment`` (no attribute
access to Python internals, no unsafe calls, no changing lists or dicts in
place), because workspace users write them and the service renders them. The
text templates (subject, body) are not escaped; the landing page is HTML and
autoescaped, so a contact's name with ``<script>`` in it is shown, not run.

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

This module is what runs in the render worker processes
(``nudgel.api.lists.rendering`` owns them and their time limit): it imports
Jinja2 only. :func:`start_worker` sets a worker's :class:`Limits`: the
output is cut off at ``max_output`` bytes while it is produced, and what a
template builds on the way is bounded before it is built (``"a" * 10**9``,
``10**10**8``, ``"%999999999d"``, ``"x".ljust(10**9)``, ``range(10**9)``);
the worker's address space is capped for whatever else a template finds.

:func:`check` is run on save: syntax errors, unknown names and errors of a
trial render against a sample contact (a sandbox violation, a division by
zero, a limit) are refused with the template's line.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "PAGE_NAMES",
    "TEXT_NAMES",
    "Checked",
    "Limits",
    "Rendered",
    "TemplateLimitError",
    "TemplateProblem",
    "check",
    "render",
    "start_worker",
]

TEXT_NAMES = frozenset({"contact", "fields", "list", "confirm_url", "unsubscribe_url"})
PAGE_NAMES = frozenset({"contact", "fields", "list", "unsubscribe_url"})

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
class Limits:
    """What one render may produce (the settings ``template_max_output`` and
    ``template_max_range``) and the worker's address space in bytes."""

    max_output: int
    max_range: int
    memory_bytes: int


class TemplateLimitError(SecurityError):
    """A render would exceed a limit (the message names it)."""


@dataclass(frozen=True)
class TemplateProblem:
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return where + self.message


@dataclass(frozen=True)
class Checked:
    """A template's check: why it cannot be saved (None: it can), and the names it reads."""

    problem: TemplateProblem | None
    names: frozenset[str]


@dataclass(frozen=True)
class Rendered:
    """A render's text, or why there is none."""

    text: str | None
    problem: TemplateProblem | None = None


# ---- bounded sandbox -------------------------------------------------------------------

# printf-style specs ("%-*.3f", "%(name)10s") and str.format replacement fields
# ("{0:>{width}}"): the widths and precisions they ask for.
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_FIELD = re.compile(r"\{[^{}]*:((?:[^{}]|\{[^{}]*\})*)\}")
_DIGITS = re.compile(r"\d+")
# str methods whose result grows with an int argument.
_PADDING = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_OUTPUT_SETTING = "NUDGEL_TEMPLATE_MAX_OUTPUT"


def _too_large(what: str, size: int, limit: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"{what} would have {size} characters; a template's output is limited to {limit}"
        f" bytes ({_OUTPUT_SETTING})"
    )


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with what a template builds bounded by :class:`Limits`."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, limits: Limits, **options: Any) -> None:
        super().__init__(**options)
        self.limits = limits
        self.globals["range"] = self._range
        for name in ("center", "indent"):
            self.filters[name] = self._width_checked(name, self.filters[name])
        self.filters["format"] = self._format_checked(self.filters["format"])

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > self.limits.max_range:
            raise TemplateLimitError(
                f"range() would give {len(numbers)} items; templates are limited to"
                f" {self.limits.max_range} (NUDGEL_TEMPLATE_MAX_RANGE)"
            )
        return numbers

    def _check_size(self, what: str, size: int) -> None:
        if size > self.limits.max_output:
            raise _too_large(what, size, self.limits.max_output)

    def _check_widths(self, what: str, numbers: Iterable[int]) -> None:
        for number in numbers:
            self._check_size(what, number)

    def _check_format(self, pattern: str, args: Iterable[Any], printf: bool) -> None:
        """Refuse format widths (written, or taken from the arguments) beyond the limit."""
        if printf:
            specs = [group for m in _PRINTF_SPEC.finditer(pattern) for group in m.groups() if group]
        else:
            specs = _FORMAT_FIELD.findall(pattern)
        taken = any("*" in spec or "{" in spec for spec in specs)
        self._check_widths(
            "the formatted text", (int(d) for spec in specs for d in _DIGITS.findall(spec))
        )
        if taken:
            self._check_widths(
                "the formatted text", (a for a in args if isinstance(a, int) and a > 0)
            )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple | bytes) and isinstance(times, int):
                    self._check_size("the repeated value", len(seq) * times)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1:
                # Decimal digits of the result, about: bits * log10(2).
                self._check_size("the power", abs(left).bit_length() * right * 3 // 10)
        elif operator == "%" and isinstance(left, str):
            values = right.values() if isinstance(right, Mapping) else right
            args = values if isinstance(values, tuple | list) else [values]
            self._check_format(left, args, printf=True)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            numbers = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
            if name in _PADDING:
                __self._check_widths(f"str.{name}()", numbers)
            elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
                old, new = args[0], args[1]
                grown = len(owner) + (owner.count(old) + (not old)) * (len(new) - len(old))
                __self._check_size("str.replace()", grown)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        pattern = str(value.__self__)

        @wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args else kwargs
            given = [*args, *(mapping.values() if isinstance(mapping, Mapping) else ())]
            self._check_format(pattern, given, printf=False)
            return wrapper(*args, **kwargs)

        return checked

    def _width_checked(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(original)
        def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
            numbers = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
            self._check_widths(f"the {name} filter", numbers)
            return original(value, *args, **kwargs)

        return checked

    def _format_checked(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(original)
        def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
            self._check_format(str(value), [*args, *kwargs.values()], printf=True)
            return original(value, *args, **kwargs)

        return checked


# ---- the worker ----------------------------------------------------------------------

_environments: dict[bool, _BoundedEnvironment] = {}


def _make_environments(limits: Limits) -> None:
    _environments.clear()
    for html in (False, True):
        _environments[html] = _BoundedEnvironment(
            limits, autoescape=html, undefined=ChainableUndefined, keep_trailing_newline=True
        )
    _compiled.cache_clear()


# Scheduling priority of worker processes (0 normal, 19 lowest).
WORKER_NICENESS = 10


def start_worker(limits: Limits) -> None:
    """Initialise a render worker process (its pool calls this once per process)."""
    # Die at once when the pool stops this worker on a timeout, even in the
    # middle of a long C call (a Python handler would wait for it to return).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # User code yields the CPU to the server: a tenant's heavy templates slow
    # down themselves, not every other tenant's requests.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    if limits.memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    _make_environments(limits)


def _environment(html: bool) -> _BoundedEnvironment:
    if not _environments:  # rendering in this process (tests, a tool): default limits
        _make_environments(Limits(max_output=256 * 1024, max_range=10_000, memory_bytes=0))
    return _environments[html]


@lru_cache(maxsize=256)
def _compiled(source: str, html: bool) -> Template:
    return _environment(html).from_string(source)


def error_line(error: BaseException) -> int | None:
    """The template line an error was raised at (Jinja maps its frames to them)."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename == "<template>"
    ]
    return lines[-1] if lines else None


def _problem(error: BaseException) -> TemplateProblem:
    if isinstance(error, TemplateLimitError):
        return TemplateProblem(error_line(error), str(error))
    if isinstance(error, MemoryError):
        return TemplateProblem(
            error_line(error), "the render needs more memory than NUDGEL_TEMPLATE_WORKER_MEMORY_MB"
        )
    return TemplateProblem(error_line(error), f"{type(error).__name__}: {error}")


def _render_bounded(template: Template, context: Mapping[str, Any]) -> str:
    """The output, cut off as soon as it passes the limit (never held whole)."""
    environment = template.environment
    assert isinstance(environment, _BoundedEnvironment)
    limit = environment.limits.max_output
    parts, size = [], 0
    for chunk in template.generate(dict(context)):
        size += len(chunk)
        if size > limit:
            break
        parts.append(chunk)
    text = "".join(parts)
    if size > limit or len(text.encode()) > limit:
        raise TemplateLimitError(f"the output is larger than {limit} bytes ({_OUTPUT_SETTING})")
    return text


def check(source: str, html: bool, names: frozenset[str]) -> Checked:
    """Why ``source`` cannot be saved (None when it can), and the names it reads."""
    env = _environment(html)
    try:
        tree = env.parse(source)
        # Compiling also finds what parsing does not (an unknown filter or test).
        template = _compiled(source, html)
    except TemplateSyntaxError as error:
        return Checked(TemplateProblem(error.lineno, error.message or "syntax error"), frozenset())
    used = frozenset(meta.find_undeclared_variables(tree))
    unknown = used - names
    if unknown:
        name = sorted(unknown)[0]
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), None)
        return Checked(
            TemplateProblem(
                line, f"unknown name {name!r}; a template can use {', '.join(sorted(names))}"
            ),
            used,
        )
    try:
        _render_bounded(template, _SAMPLE)
    except Exception as error:  # anything a trial render raises is the template's fault
        return Checked(_problem(error), used)
    return Checked(None, used)


def render(source: str, context: Mapping[str, Any], html: bool) -> Rendered:
    """Render a checked template: its text, or the problem that stopped it."""
    try:
        return Rendered(_render_bounded(_compiled(source, html), context))
    except Exception as error:  # the template's fault, for this contact
        return Rendered(None, _problem(error))
