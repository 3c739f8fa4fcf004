"""``/v1/imports``: CSV contact imports (``nudgel.api.jobs.imports``) as jobs.

``POST /v1/imports`` takes ``multipart/form-data`` (``curl -F file=@contacts.csv``):
the upload is checked (size, UTF-8, header) and staged with COPY in the
request, so a 202 means every row is stored; the rows are applied by a
background task after the commit, with progress on the job.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
from datetime import datetime
from typing import IO, Annotated, Any, Literal

from fastapi import File, Form, Path, Request, UploadFile
from fastapi.responses import JSONResponse
from nudgel.api.contacts.models import ListName, Source, TagName
from nudgel.api.http import idempotency
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, job_host_of, resource_router, settings_of
from nudgel.api.http.writes import IdempotencyKeyHeader, RequestTransaction, replayable
from nudgel.api.jobs.imports import (
    DEFAULT_SOURCE,
    IGNORE,
    ImportRefused,
    prepare_import,
    rejected_rows,
    start_import,
)
from nudgel.api.lists import tokens
from nudgel.api.problems import FieldError, ProblemError, problem_type
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

router, OPENAPI_TAG = resource_router(
    "/imports",
    "Imports",
    "CSV contact imports: upload a file, follow its job, read the rows it rejected.",
)

IdParam = Annotated[str, Path(description="The import's id (its job's, `job_...`).")]


class ImportColumn(BaseModel):
    header: str = Field(description="The column's name in the file's header row.")
    target: str | None = Field(
        description="What it sets: an attribute (`email`, `phone`, `whatsapp_id`,"
        " `external_id`, `name`, `tags`, `push_tokens`) or `fields.NAME`; `null`: ignored."
    )


class ImportCounts(BaseModel):
    rows: int = Field(description="Data rows in the file (blank lines not counted).")
    created: int = Field(description="Rows that created a contact.")
    updated: int = Field(description="Rows that changed (or tagged) one existing contact.")
    merged: int = Field(description="Rows whose identifiers merged several contacts into one.")
    unchanged: int = Field(description="Rows that matched a contact and changed nothing.")
    rejected: int = Field(description="Rows refused, each with its reason (`/rejected`).")


class ImportOut(BaseModel):
    object: Literal["import"] = "import"
    id: str = Field(description="The import's job id: `GET /v1/jobs/{id}` shows it too.")
    status: Literal["queued", "running", "succeeded", "failed"]
    filename: str | None
    # builtins.list: the `list` member below shadows the name in this class.
    columns: builtins.list[ImportColumn]
    tags: builtins.list[str] = Field(description="Added to every contact the import writes.")
    list: str | None = Field(
        description="Every contact the import writes is subscribed to it (double opt-in:"
        " `pending` and a confirmation email)."
    )
    source: str = Field(description="The origin recorded for the values the import sets.")
    total: int = Field(description="Data rows staged.")
    done: int = Field(description="Rows processed so far.")
    progress: float = Field(description="done / total, from 0 to 1.")
    counts: ImportCounts | None = Field(description="So far while running; final once succeeded.")
    error: str | None = Field(description="Why it failed (rows applied before stay applied).")
    created_at: datetime
    finished_at: datetime | None


class RejectedRow(BaseModel):
    object: Literal["import_row"] = "import_row"
    row: int = Field(description="The row's number in the file; the header is row 1.")
    column: str | None = Field(description="The column at fault, when one is.")
    reason: str
    values: dict[str, str] = Field(description="The row's cells by header, as uploaded.")


class RejectedRowList(ListResponse[RejectedRow]):
    pass


async def _view(conn: AsyncConnection, workspace_id: int, job_id: str) -> ImportOut:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT j.id, j.status, j.total, j.done, j.result, j.error, j.created_at, j.finished_at,"
        " i.filename, i.header, i.targets, i.tags, i.source, i.list"
        " FROM imports i JOIN jobs j ON j.id = i.job_id"
        " WHERE i.workspace_id = %s AND i.job_id = %s",
        (workspace_id, job_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise ProblemError.not_found(f"Import {job_id!r}")
    finished = row["status"] == "succeeded"
    progress = 1.0 if finished else (row["done"] / row["total"] if row["total"] else 0.0)
    columns = [
        ImportColumn(header=h, target=t) for h, t in zip(row["header"], row["targets"], strict=True)
    ]
    return ImportOut(
        id=row["id"],
        status=row["status"],
        filename=row["filename"],
        columns=columns,
        tags=row["tags"],
        list=row["list"],
        source=row["source"],
        total=row["total"],
        done=row["done"],
        progress=progress,
        counts=ImportCounts.model_validate(row["result"]) if row["result"] else None,
        error=row["error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


def _form_problem(name: str, detail: str, code: str = "invalid") -> ProblemError:
    return ProblemError(
        422,
        "Invalid import",
        detail,
        type_=problem_type("validation"),
        errors=[FieldError(location="body", pointer=f"/{name}", detail=detail, code=code)],
    )


def _mapping(text: str | None) -> dict[str, str] | None:
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise _form_problem("mapping", f"mapping is not JSON: {error}", "json_invalid") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _form_problem(
            "mapping", 'mapping must be a JSON object of header: target, e.g. {"E-mail": "email"}'
        )
    return value


def _fingerprint(request: Request, binary: IO[bytes], fields: list[Any]) -> bytes:
    """What makes two uploads the same request, for Idempotency-Key: the file and the form.

    (``idempotency.fingerprint`` hashes the raw body, which a multipart
    request no longer has once the form is parsed.)"""
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, request.url.query, json.dumps(fields)):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    binary.seek(0)
    while chunk := binary.read(1 << 20):
        digest.update(chunk)
    binary.seek(0)
    return digest.digest()


def _with_location(response: JSONResponse, job_id: str) -> JSONResponse:
    response.headers["Location"] = f"/v1/imports/{job_id}"
    return response


@router.post(
    "",
    status_code=202,
    response_model=ImportOut,
    summary="Import contacts from a CSV file",
    description=(
        "`multipart/form-data` with the CSV as `file` (UTF-8, a byte-order mark allowed;"
        " comma-separated, a header row first). Each column maps to an attribute (`email`,"
        " `phone`, `whatsapp_id`, `external_id`, `name`, `tags`, `push_tokens`) or a custom"
        " field (its name or `fields.NAME`) by its header, case-insensitively; `mapping`"
        ' overrides it (`{"E-mail": "email", "Notes": "-"}`: `-` ignores a column). A column'
        " that maps to nothing refuses the file (422, listing every such column). Rows merge"
        " as `POST /v1/contacts` upserts do (same validation, merges, outbox events and rule"
        " evaluation); empty cells are missing values; `tags` and `push_tokens` cells hold"
        " several values separated by `;`. `tags` are added to every contact; `list`"
        " subscribes every contact (as `subscriptions` on `POST /v1/contacts`). The file is staged before the answer (202, with"
        " `Location`); the rows are applied in the background: follow `GET /v1/imports/{id}`."
        " A bad row is rejected with its row number (the header is row 1) and reason"
        " (`GET /v1/imports/{id}/rejected`), the rest goes on; a row is applied whole or not"
        " at all."
    ),
    responses={
        202: {
            "description": "Staged; applying in the background.",
            "headers": {
                "Location": {
                    "description": "The import: `/v1/imports/{id}`.",
                    "schema": {"type": "string"},
                },
                **replayable(202)[202]["headers"],
            },
        },
        **problem_responses(409, 413, 422),
    },
)
async def create_import(
    request: Request,
    auth: Auth,
    conn: Conn,
    file: Annotated[UploadFile, File(description="The CSV file.")],
    mapping: Annotated[
        str | None,
        Form(
            max_length=100_000,
            description='JSON object of header: target, e.g. `{"E-mail": "email",'
            f' "Plan": "fields.plan", "Notes": "{IGNORE}"}}`.',
        ),
    ] = None,
    tags: Annotated[
        list[TagName] | None,
        Form(max_length=100, description="Tags added to every contact (repeat the field)."),
    ] = None,
    source: Annotated[
        Source, Form(description="Recorded as the origin of the values the import sets.")
    ] = DEFAULT_SOURCE,
    list_name: Annotated[
        ListName | None,
        Form(
            alias="list",
            description="Subscribe every contact to this list, as `subscriptions:"
            ' {"NAME": "subscribed"}` on `POST /v1/contacts` does: on a double opt-in list,'
            " `pending` and a confirmation email (a row without email is rejected).",
        ),
    ] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> object:
    settings = settings_of(request)
    limit = settings.import_max_bytes
    if file.size is not None and file.size > limit:
        raise ProblemError(
            413,
            "File too large",
            f"The file has {file.size} bytes; an import takes at most {limit}.",
            type_=problem_type("too-large"),
        )
    columns = _mapping(mapping)
    tag_list = list(tags or [])
    # Shown back as given, but PostgreSQL text cannot hold NUL.
    filename = (file.filename or "").replace("\x00", "")[:255] or None
    binary = file.file
    if list_name is not None:
        # Outside the transaction: a signing key generated now is stored whatever
        # happens (the import's job reads it when it sends confirmation emails).
        await tokens.signing_key(request.app, conn)
    async with conn.transaction():
        tx = RequestTransaction(conn, auth.workspace_id, _key=idempotency_key)
        if idempotency_key is not None:
            request_fingerprint = await asyncio.to_thread(
                _fingerprint,
                request,
                binary,
                [mapping, tag_list, source, list_name, filename],
            )
            stored = await idempotency.claim(
                conn, auth.workspace_id, idempotency_key, request_fingerprint
            )
            if stored is not None:
                return _with_location(stored.to_response(), str(stored.body["id"]))
        try:
            job_id, _ = await prepare_import(
                conn,
                auth.workspace_id,
                binary,
                filename=filename,
                mapping=columns,
                tags=tag_list,
                source=source,
                list_name=list_name,
                lease_seconds=settings.job_lease_seconds,
            )
        except ImportRefused as error:
            raise ProblemError(
                422,
                "File cannot be imported",
                error.detail,
                type_=problem_type("import-refused"),
                errors=[
                    FieldError(location="body", pointer="/file", detail=p, code="import_refused")
                    for p in error.problems or [error.detail]
                ],
            ) from None
        response = await tx.respond(202, await _view(conn, auth.workspace_id, job_id))
    start_import(job_host_of(request), job_id)
    return _with_location(response, job_id)


@router.get(
    "/{import_id}",
    response_model=ImportOut,
    summary="Get an import",
    description="Its progress and counts (created, updated, merged, unchanged, rejected).",
    responses=problem_responses(404),
)
async def get_import(import_id: IdParam, auth: Auth, conn: Conn) -> ImportOut:
    return await _view(conn, auth.workspace_id, import_id)


@router.get(
    "/{import_id}/rejected",
    response_model=RejectedRowList,
    summary="List an import's rejected rows",
    description="In row order, each with the column at fault, the reason and the row's cells."
    " `starting_after` is a row number.",
    responses=problem_responses(404),
)
async def list_rejected(
    import_id: IdParam, auth: Auth, conn: Conn, page: PageParams
) -> RejectedRowList:
    after = 0
    if page.starting_after is not None:
        if not page.starting_after.isdigit() or len(page.starting_after) > 9:
            raise ProblemError(
                422,
                "Invalid cursor",
                "starting_after is a row number.",
                type_=problem_type("validation"),
                errors=[
                    FieldError(
                        location="query",
                        pointer="/starting_after",
                        detail="a row number",
                        code="invalid",
                    )
                ],
            )
        after = int(page.starting_after)
    await _view(conn, auth.workspace_id, import_id)  # 404 for another workspace's
    found = await rejected_rows(conn, import_id, after, page.fetch)
    rows = [
        RejectedRow(row=r.row, column=r.column, reason=r.reason, values=r.values) for r in found
    ]
    data, has_more, cursor = page_of(rows, page, lambda r: str(r.row))
    return RejectedRowList(data=data, has_more=has_more, next_cursor=cursor)
