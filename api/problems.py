"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the service returns has ``type``, ``title``, ``status``, ``detail``
and ``instance`` (the request path); validation errors add ``errors``, one per
invalid input with where it is (``body``, ``query``, ``header``, ``path``), a
JSON pointer into it, and a message. Plain HTTP errors (404 for an unknown
route, 405 ...) use ``type: about:blank`` with the status phrase as title, as
the RFC asks; the service's own problems have their own ``type`` URI.

Code at any layer raises :class:`ProblemError`; the HTTP layer's handlers
(``nudgel.api.http.problems``) render it, ``HTTPException`` and request
validation errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PROBLEM_JSON",
    "FieldError",
    "Problem",
    "ProblemError",
    "problem_type",
]

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://nudgel.dev/problems/"


def problem_type(slug: str) -> str:
    """The ``type`` URI of one of the service's problems (``conflict``, ``validation`` ...)."""
    return _TYPE_BASE + slug


class FieldError(BaseModel):
    """One invalid input."""

    location: str = Field(description="Where the input is: body, query, header, path or cookie.")
    pointer: str = Field(
        description="JSON pointer (RFC 6901) to the input within its location, e.g. `/name`."
    )
    detail: str = Field(description="What is wrong with it.")
    code: str = Field(description="Machine-readable reason, e.g. `missing`, `string_too_long`.")


class Problem(BaseModel):
    """An error, per RFC 9457."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(default="about:blank", description="URI identifying the problem type.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong this time.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = Field(
        default=None, description="Validation problems only: each invalid input."
    )


class ProblemError(Exception):
    """Raise to answer with a problem; ``extra`` adds members to the body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_ or "about:blank"
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.extra = extra

    @classmethod
    def not_found(cls, what: str) -> ProblemError:
        return cls(404, "Not found", f"{what} does not exist.", type_=problem_type("not-found"))

    @classmethod
    def conflict(cls, detail: str) -> ProblemError:
        return cls(409, "Conflict", detail, type_=problem_type("conflict"))

    @classmethod
    def invalid(
        cls,
        title: str,
        detail: str,
        *,
        location: str,
        pointer: str,
        code: str,
        kind: str = "validation",
    ) -> ProblemError:
        """A 422 about one input: ``detail`` is also its ``errors`` entry; ``kind``
        names the problem type."""
        return cls(
            422,
            title,
            detail,
            type_=problem_type(kind),
            errors=[FieldError(location=location, pointer=pointer, detail=detail, code=code)],
        )
