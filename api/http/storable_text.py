"""Text PostgreSQL cannot store is refused at the door: NUL and unpaired surrogates.

JSON can carry ``"\\u0000"`` and a lone ``"\\ud800"``, and Python strings can
hold them, but PostgreSQL ``text`` and ``jsonb`` cannot: psycopg refuses the
first, the server the escapes in ``jsonb``, the UTF-8 encoder the second. Left
alone, each becomes a 500 deep in whichever capability first stores the
value (a push token, a tag, a field value, an event property's key).

:func:`refuse_unstorable_text` runs on every ``/v1`` route (a dependency of
``resource_router``, after authentication) and checks, once, every string of
the request a handler could store: the JSON body's values *and* keys at any
depth, form fields, path and query parameters, and the ``Idempotency-Key``
header. Any such character is a 422 naming where it is, before validation
and before any query. Nothing a person would want to keep is lost: these
characters have no printed form.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from nudgel.api.http.idempotency import HEADER as IDEMPOTENCY_HEADER
from nudgel.api.problems import FieldError, ProblemError, problem_type
from starlette.exceptions import HTTPException

__all__ = ["UNSTORABLE", "refuse_unstorable_text", "unstorable_in_json"]

# NUL, and UTF-16 surrogates, which only appear in a str unpaired (json.loads
# joins a valid pair into one character).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
DETAIL = (
    "must not contain NUL (\\u0000) or unpaired surrogate (\\ud800-\\udfff) characters,"
    " which cannot be stored"
)
CODE = "unstorable_characters"
_MAX_REPORTED = 10


def _pointer(parts: list[str | int]) -> str:
    # RFC 6901; a key that is itself unstorable is not repeated in the answer
    # (an unpaired surrogate cannot even be encoded in it): its object is named.
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def unstorable_in_json(document: Any) -> list[str]:
    """JSON pointers of the strings (values, or keys: their object's pointer) in
    ``document`` that hold an unstorable character; the first few only."""
    found: list[str] = []
    # Iterative: a document json.loads accepted may be nested deeper than the
    # Python stack would allow a recursive walk.
    stack: list[tuple[list[str | int], Any]] = [([], document)]
    while stack and len(found) < _MAX_REPORTED:
        path, value = stack.pop()
        if isinstance(value, str):
            if UNSTORABLE.search(value):
                found.append(_pointer(path))
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if UNSTORABLE.search(key):
                    found.append(_pointer(path))
                else:
                    stack.append(([*path, key], item))
        elif isinstance(value, list):
            stack.extend(([*path, index], item) for index, item in reversed(list(enumerate(value))))
    return found


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type in ("", "application/json") or content_type.endswith("+json")


async def _body_errors(request: Request) -> list[FieldError]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            form = await request.form()  # parsed by FastAPI already (cached)
        except HTTPException:
            return []  # not a form after all: FastAPI's validation answers that
        return [
            FieldError(location="body", pointer=_pointer([name]), detail=DETAIL, code=CODE)
            for name, value in form.multi_items()
            if isinstance(value, str) and UNSTORABLE.search(value)
        ]
    if not _is_json(request) or not await request.body():
        return []
    try:
        document = await request.json()  # parsed by FastAPI already (cached)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []  # not JSON: FastAPI's validation answers that
    return [
        FieldError(location="body", pointer=pointer, detail=DETAIL, code=CODE)
        for pointer in unstorable_in_json(document)
    ]


async def refuse_unstorable_text(request: Request) -> None:
    """A 422 problem if any input of the request holds text PostgreSQL cannot store."""
    errors = [
        FieldError(location=location, pointer=_pointer([name]), detail=DETAIL, code=CODE)
        for location, items in (
            ("path", request.path_params.items()),
            ("query", request.query_params.multi_items()),
            ("header", [(IDEMPOTENCY_HEADER, request.headers.get(IDEMPOTENCY_HEADER, ""))]),
        )
        for name, value in items
        if isinstance(value, str) and UNSTORABLE.search(value)
    ]
    errors += await _body_errors(request)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ProblemError(
            422,
            "Invalid request",
            f"{first.location}{first.pointer}: {first.detail}{more}",
            type_=problem_type("validation"),
            errors=errors,
        )
