"""Problems over HTTP: the exception handlers that render every error as
``application/problem+json``, and the OpenAPI entries that document them.

The problems themselves (:class:`~nudgel.api.problems.ProblemError`) are
raised by any layer; only this module knows about responses.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nudgel.api.contacts.search import Q_PATTERN
from nudgel.api.contacts.sorting import SORT_PATTERN
from nudgel.api.problems import PROBLEM_JSON, FieldError, ProblemError, problem_type
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

__all__ = ["install_problem_handlers", "problem_response", "problem_responses", "validation_errors"]

log = logging.getLogger(__name__)


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    errors: Sequence[FieldError] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = [e.model_dump() for e in errors]
    if extra:
        body.update(extra)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


def _pointer(parts: Sequence[int | str]) -> str:
    # RFC 6901 escaping: "~" then "/".
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# Patterns of the API's string types, in words: a person reads the detail, not
# the regular expression.
_PATTERN_WORDS = {
    r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$": (
        "must be printable text, without control characters or spaces at either end"
    ),
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$": (
        "must start with a letter or digit and hold only letters, digits, `_`, `.` and `-`"
    ),
    r"^[a-z_][a-z0-9_]*$": (
        "must be a lower-case identifier: letters, digits and `_`, not starting with a digit"
    ),
    r"^#[0-9a-fA-F]{6}$": "must be a colour written `#rrggbb`, e.g. `#ff8800`",
    Q_PATTERN: "must hold some printable text, without control characters",
    SORT_PATTERN: (
        "must be `created_at`, `updated_at`, `name`, `email` or `score.NAME`, with `-` first"
        " for descending"
    ),
}


def _json_position(body: Any, offset: int) -> str:
    """``line L, column C`` of a character offset in the request body, when known."""
    if not isinstance(body, bytes | str):
        return f"character {offset + 1}"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return f"line {line}, column {column}"


def _message(err: Mapping[str, Any], body: Any) -> tuple[str, list[int | str]]:
    """The error's words and where it is (a JSON pointer's parts), as a person can act on."""
    loc = list(err.get("loc", ()))[1:]
    kind = str(err.get("type", ""))
    message = str(err.get("msg", "invalid"))
    context = err.get("ctx") or {}
    if kind == "json_invalid":
        # FastAPI puts the character offset where a pointer goes: say where it is.
        offset = loc[0] if loc and isinstance(loc[0], int) else 0
        reason = context.get("error", "not valid JSON")
        return f"the body is not valid JSON: {reason} at {_json_position(body, offset)}", []
    if kind in ("model_attributes_type", "dict_type") and not loc:
        if body is None or isinstance(body, bytes | str):  # not parsed: not sent as JSON
            return (
                "send the body as a JSON object, with the header `Content-Type: application/json`",
                [],
            )
        if isinstance(body, list):
            return "the body must be a JSON object, not an array", []
    if kind == "string_pattern_mismatch":
        pattern = str(context.get("pattern", ""))
        return _PATTERN_WORDS.get(pattern, "has characters that are not allowed here"), loc
    # Pydantic prefixes our own validators' messages; the rest reads as is.
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, "), loc


def validation_errors(raw: Sequence[Any], body: Any = None) -> list[FieldError]:
    """Pydantic/FastAPI error dicts as :class:`FieldError`."""
    out = []
    for err in raw:
        loc = list(err.get("loc", ()))
        location = str(loc[0]) if loc else "body"
        detail, where = _message(err, body)
        out.append(
            FieldError(
                location=location,
                pointer=_pointer(where),
                detail=detail,
                code=str(err.get("type", "invalid")),
            )
        )
    return out


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        exc.status,
        exc.title,
        exc.detail,
        type_=exc.type,
        headers=exc.headers,
        errors=exc.errors,
        extra=exc.extra,
    )


def _invalid_body(request: Request, reason: str, code: str) -> JSONResponse:
    return problem_response(
        request,
        422,
        "Invalid request",
        f"body: {reason}",
        type_=problem_type("validation"),
        errors=[FieldError(location="body", pointer="", detail=reason, code=code)],
    )


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, (UnicodeDecodeError, RecursionError)):
        # FastAPI answers a JSON body it cannot decode (not UTF-8, nested too
        # deep) with a bare 400, but malformed JSON with a 422: both are a
        # body that is not JSON, so both are the documented 422 problem.
        return _invalid_body(
            request, f"The body is not valid JSON: {exc.__cause__}", "json_invalid"
        )
    if exc.status_code == 400 and isinstance(exc.__context__, MultiPartException):
        # Starlette answers a multipart body it cannot parse with a bare 400
        # (found by schemathesis on POST /v1/imports): an invalid body, 422.
        reason = f"The body is not valid multipart/form-data: {exc.__context__.message}"
        return _invalid_body(request, reason, "form_invalid")
    phrase = http.HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    return problem_response(
        request, exc.status_code, phrase, detail, headers=getattr(exc, "headers", None)
    )


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors(), exc.body)
    first = errors[0] if errors else None
    detail = (
        f"{first.location}{first.pointer or ''}: {first.detail}"
        if first is not None
        else "The request is invalid."
    )
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem_response(
        request,
        422,
        "Invalid request",
        detail,
        type_=problem_type("validation"),
        errors=errors,
    )


def _nul_inputs(request: Request) -> list[FieldError]:
    detail = "must not contain NUL characters"
    found = [
        FieldError(location=location, pointer=_pointer([name]), detail=detail, code="invalid")
        for location, params in (("path", request.path_params), ("query", request.query_params))
        for name, value in params.items()
        if isinstance(value, str) and "\x00" in value
    ]
    return found or [FieldError(location="body", pointer="", detail=detail, code="invalid")]


async def _on_data_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, psycopg.DataError)
    # psycopg refuses, before sending anything, text with a NUL character
    # (PostgreSQL text cannot hold one): an id, name or cursor sent by the
    # client that can name nothing. Such an error has no SQLSTATE; any other
    # data error (from the server) goes on to the unexpected-error handler.
    if exc.sqlstate is not None or "NUL" not in str(exc):
        raise exc
    errors = _nul_inputs(request)
    first = errors[0]
    return problem_response(
        request,
        422,
        "Invalid request",
        f"{first.location}{first.pointer}: {first.detail}",
        type_=problem_type("validation"),
        errors=errors,
    )


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The pool had no connection in time, or the database went away (a
    # restart): the client retries; the pool reconnects on its own.
    if isinstance(exc, psycopg.errors.QueryCanceled):
        detail = (
            "The request's query ran longer than the service allows"
            " (NUDGEL_STATEMENT_TIMEOUT_MS); retry, or ask for less."
        )
    elif isinstance(exc, PoolTimeout):
        detail = "Every database connection is busy; retry shortly."
    else:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        detail = "The database cannot be reached; retry shortly."
    return problem_response(
        request,
        503,
        "Service Unavailable",
        detail,
        type_=problem_type("unavailable"),
        headers={"Retry-After": "1"},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Logged with its traceback; the client learns nothing about internals.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, 500, "Internal Server Error", "An unexpected error occurred; it has been logged."
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(psycopg.DataError, _on_data_error)
    app.add_exception_handler(PoolTimeout, _on_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _on_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)


_DESCRIPTIONS = {
    400: "Malformed request: a query parameter the operation does not take (each named in"
    " `errors`), or an invalid Idempotency-Key.",
    401: "Missing, malformed, unknown or revoked API key.",
    404: "The object does not exist in this workspace.",
    409: "Conflict: the object exists already, or a request with this Idempotency-Key is still in flight.",
    403: "The key is restricted (read, write or ingest scopes) and this operation is outside them.",
    413: "The request body is larger than the service accepts (`NUDGEL_MAX_BODY_BYTES`).",
    422: "Invalid request: `errors` lists each invalid input; also an Idempotency-Key reused with other parameters.",
    429: "Rate limited: this key sent too many requests; `Retry-After` says when to retry.",
    503: "Busy or the database is unreachable: retry after `Retry-After` seconds.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses, as problem+json.

    The schema is referenced by name; ``nudgel.api.app`` adds ``Problem`` to
    the document's components.
    """
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, http.HTTPStatus(status).phrase),
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }
