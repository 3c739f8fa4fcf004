"""Query parameters a route does not take are refused: a 400 problem naming them.

A misspelt or guessed parameter (``GET /v1/contacts?email=ada@example.com``)
would otherwise be ignored, and the client would get every contact back as
if it had filtered them. :func:`reject_unknown_query` is a dependency of every
resource router (``routers.common.resource_router``); it compares the
request's parameter names with those the matched route declares, its
dependencies' included (``limit``, ``starting_after``), as FastAPI resolved
them, so a parameter added to a route is known without a list to keep.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from nudgel.api.problems import FieldError, ProblemError, problem_type

__all__ = ["declared_query_params", "reject_unknown_query"]


def declared_query_params(route: APIRoute) -> frozenset[str]:
    """The query parameter names ``route`` takes (by their aliases, as sent).

    Walked per request: a handful of dependants, cheaper than keeping a cache
    keyed by routes (which are not hashable)."""
    return frozenset(_query_aliases(route.dependant))


def _query_aliases(dependant: Dependant) -> set[str]:
    found = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        found |= _query_aliases(sub)
    return found


async def reject_unknown_query(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = declared_query_params(route)
    unknown = sorted({name for name in request.query_params if name not in known})
    if not unknown:
        return
    takes = ", ".join(f"`{name}`" for name in sorted(known)) or "none"
    listed = ", ".join(f"`{name}`" for name in unknown)
    raise ProblemError(
        400,
        "Unknown query parameter",
        f"This operation does not take {listed} (it takes: {takes}).",
        type_=problem_type("unknown-query-parameter"),
        errors=[
            FieldError(
                location="query",
                pointer="/" + name.replace("~", "~0").replace("/", "~1"),
                detail=f"not a parameter of {request.method} {route.path}",
                code="unknown_parameter",
            )
            for name in unknown
        ],
    )
