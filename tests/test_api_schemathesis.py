"""Every operation the app serves, fuzzed from its own OpenAPI document.

Schemathesis reads ``/openapi.json`` of the real app (migrated test database,
a throwaway workspace, a valid bearer key) and sends generated requests to
every operation it lists, so routes added later (webhooks, rules, ...) are
covered without editing this file. Each response must:

- not be a server error (``not_a_server_error``): no 5xx for any input;
- have a status code the operation documents (``status_code_conformance``);
- have a documented content type (``content_type_conformance``: JSON for
  successes, ``application/problem+json`` for errors);
- match the documented schema for that status (``response_schema_conformance``);
- carry the documented response headers (``response_headers_conformance``).

Excluded, with the reason:

- ``negative_data_rejection``: expects a 4xx for every request that breaks
  the schema, but the service deliberately accepts some such requests (an
  unknown header is ignored (an unknown query parameter is a 400), ``Idempotency-Key`` is
  optional so a broken one combined with an otherwise valid body is rare to
  tell apart), so it reports intended leniency, not bugs;
- ``positive_data_acceptance``: expects a 2xx for every schema-valid request,
  but valid-looking requests are refused by rules the schema cannot state
  (an event names exactly one identifier, a phone must be a real number,
  ``where`` must be a rule that checks, unknown ids are 404, a test clock
  needs a test key);
- ``use_after_free``, ``ensure_resource_availability``,
  ``object_level_authorization`` and ``unsupported_method``: stateful or
  cross-request checks whose assumptions (links between operations, a
  second user) the single-key fuzzing here does not set up; the stateful
  behaviour is tested by ``test_api_stateful.py``;
- ``ignored_auth``: runs extra unauthenticated requests per case;
  authentication of every route is tested exhaustively in
  ``test_api_foundation.py``;
- ``max_response_time``: timing, not correctness, on a shared CI machine.

Budget: ``MAX_EXAMPLES`` generated cases per operation in the fuzzing phase
(deadline off), which keeps the file around a minute or two on two cores;
``HYPOTHESIS_PROFILE=long`` multiplies it, ``SCHEMATHESIS_EXAMPLES=N`` sets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from nudgel.api.app import create_app
from nudgel.api.keys.store import IssuedKey
from nudgel.api.settings import Settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api_contacts import drop_workspace, new_key
from test_api_foundation import assert_problem, bearer

pytestmark = pytest.mark.postgres

# ci: 25 per operation. SCHEMATHESIS_EXAMPLES=200 for a long run (before a
# release, after a change to the API's inputs); CI keeps the smaller count.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES") or 0) or max(
    10, settings().max_examples // 6
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzz_key(migrated_url: str) -> Iterator[IssuedKey]:
    issued = new_key(migrated_url)  # a test-mode key: the test clock answers it
    yield issued
    drop_workspace(migrated_url, issued.workspace_id)


@pytest.fixture(scope="module")
def api_schema(migrated_url: str) -> Iterator[Any]:
    # No delivery worker: fuzzed webhooks must not send requests anywhere.
    app = create_app(Settings(database_url=migrated_url, run_worker=False))
    # Loading starts the app's lifespan (migrations, pool) for the requests.
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_its_schema(case: Any, fuzz_key: IssuedKey) -> None:
    case.call_and_validate(headers=bearer(fuzz_key), checks=CHECKS)


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{", b'{"email": "\xe9@example.com"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["not-utf8", "latin1-text", "nested-too-deep"],
)
def test_a_body_that_cannot_be_decoded_is_a_422_problem(
    migrated_url: str, fuzz_key: IssuedKey, body: bytes
) -> None:
    # Found by the fuzzing above: FastAPI's bare 400, which no route documents.
    app = create_app(Settings(database_url=migrated_url, run_worker=False))
    with TestClient(app) as client:
        response = client.post(
            "/v1/contacts",
            content=body,
            headers=bearer(fuzz_key, **{"Content-Type": "application/json"}),
        )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["location"] == "body"
    assert problem["errors"][0]["code"] == "json_invalid"


def test_a_multipart_body_that_cannot_be_parsed_is_a_422_problem(
    migrated_url: str, fuzz_key: IssuedKey
) -> None:
    # Found by the fuzzing above at 200 examples: Starlette's bare 400.
    boundary = "9cc651cd2c8d168349f50fede4c361ac"
    app = create_app(Settings(database_url=migrated_url, run_worker=False))
    with TestClient(app) as client:
        response = client.post(
            "/v1/imports",
            content=f"--{boundary}\r\nFalse--{boundary}--\r\n".encode(),
            headers=bearer(
                fuzz_key, **{"Content-Type": f"multipart/form-data; boundary={boundary}"}
            ),
        )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["code"] == "form_invalid"


@pytest.mark.parametrize(
    ("method", "path", "location", "pointer"),
    [
        ("GET", "/v1/contacts/%00", "path", "/contact_id"),
        ("DELETE", "/v1/contacts/con_%00/tags/vip", "path", "/contact_id"),
        ("GET", "/v1/tags/a%00b", "path", "/name"),
        ("GET", "/v1/fields?starting_after=%00", "query", "/starting_after"),
        ("GET", "/v1/contacts?starting_after=con_%00", "query", "/starting_after"),
    ],
)
def test_a_nul_in_an_id_is_a_422_problem(
    migrated_url: str, fuzz_key: IssuedKey, method: str, path: str, location: str, pointer: str
) -> None:
    # Found by the fuzzing above: psycopg refuses text with NUL, which was a 500.
    app = create_app(Settings(database_url=migrated_url, run_worker=False))
    with TestClient(app) as client:
        response = client.request(method, path, headers=bearer(fuzz_key))
    problem = assert_problem(response, 422)
    assert {"location": location, "pointer": pointer} in [
        {"location": e["location"], "pointer": e["pointer"]} for e in problem["errors"]
    ]
