"""``/v1/keys``: the workspace's API keys, managed like Stripe's.

Keys are per mode: an ``sk_test_`` key lists and makes test keys, an
``sk_live_`` key live ones. Only a full key (no scopes) may manage keys. The
secret of a new key is in the creation response only; listings show its
prefix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import Path, status
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router
from nudgel.api.http.writes import PostWriter, Writer, replayable
from nudgel.api.keys import store
from nudgel.api.keys.store import KeyInfo, KeyMode, Scope
from nudgel.api.problems import FieldError, ProblemError, problem_type
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

router, OPENAPI_TAG = resource_router(
    "/keys",
    "Keys",
    "API keys of this workspace and mode: list, create (restricted, expiring), rotate, revoke.",
)

_KEY_ID = re.compile(r"^key_([1-9][0-9]{0,17})$")
KeyIdParam = Annotated[str, Path(description="The key's id (`key_...`).")]


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "warehouse sync", "scopes": ["read"]}]},
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="A label to tell keys apart."
    )
    scopes: list[Scope] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Restrict the key: `read` (GET only), `write` (everything but keys),"
        " `ingest` (POST /v1/contacts and /v1/events only). Omit for a full key.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the key stops working (RFC 3339); omit: never."
    )


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_hours: float = Field(
        default=24,
        ge=0,
        le=24 * 90,
        description="How long the old key keeps working beside the new one.",
    )


class Key(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    mode: KeyMode
    prefix: str = Field(description="The start of the key, to recognise it: `sk_live_abcd`.")
    name: str | None
    scopes: list[Scope] | None = Field(description="null: a full key.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute.")
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(Key):
    secret: str | None = Field(
        description="The key itself: shown this once, never again. null on an idempotent"
        " replay: the secret is never stored, so a retried creation whose first answer was"
        " lost should revoke that key and create another."
    )


class KeyList(ListResponse[Key]):
    pass


def _key(info: KeyInfo) -> Key:
    return Key(
        id=store.key_id_text(info.id),
        mode=info.mode,
        prefix=info.prefix,
        name=info.name,
        scopes=list(info.scopes) if info.scopes else None,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
    )


def _created(issued: store.IssuedKey) -> KeyCreated:
    info = KeyInfo(
        issued.id,
        issued.mode,
        issued.prefix,
        issued.name,
        issued.scopes,
        datetime.now(UTC),
        None,
        issued.expires_at,
        None,
    )
    return KeyCreated(**_key(info).model_dump(), secret=issued.secret)


def _key_number(text: str | None, pointer: str, location: str = "path") -> int | None:
    if text is None:
        return None
    match = _KEY_ID.match(text)
    if match is None:
        if location == "path":
            raise ProblemError.not_found(f"Key {text!r}")
        raise ProblemError.invalid(
            "Invalid cursor",
            f"{text!r} is not a key id (`key_...`).",
            location=location,
            pointer=pointer,
            code="invalid",
        )
    return int(match.group(1))


@router.get(
    "",
    response_model=KeyList,
    summary="List keys",
    description="This workspace's keys of the calling key's mode, revoked and expired ones included: prefix, name, scopes, created, last used (to the minute), expiry, revocation. Never the secret. Full keys only.",
    responses=problem_responses(422),
)
async def list_keys(auth: Auth, conn: Conn, page: PageParams) -> KeyList:
    after = _key_number(page.starting_after, "/starting_after", "query")
    rows = [_key(k) for k in await store.list_keys(conn, auth.workspace_id, after, page.fetch)]
    data, has_more, cursor = page_of(rows, page, lambda k: k.id)
    return KeyList(data=data, has_more=has_more, next_cursor=cursor)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Create a key",
    description="A new key of this workspace, in the mode of the key making it. The response"
    " holds the secret; it is never shown again.",
    responses={**replayable(201), **problem_responses(422)},
)
async def create_key(body: KeyCreate, auth: Auth, writer: PostWriter) -> object:
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        detail = "expires_at is in the past: give a future instant, or omit it."
        raise ProblemError(
            422,
            "Invalid request",
            detail,
            type_=problem_type("validation"),
            errors=[FieldError(location="body", pointer="/expires_at", detail=detail, code="past")],
        )
    async with writer.transaction() as tx:
        if tx.stored is not None:
            return tx.stored.to_response({"secret": None})
        issued = await store.create_key_async(
            tx.conn,
            tx.workspace_id,
            auth.mode,
            name=body.name,
            scopes=body.scopes,
            expires_at=body.expires_at,
        )
        return await tx.respond(201, _created(issued), withhold={"secret"})


@router.post(
    "/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Rotate a key",
    description="A new key with the same mode, name and scopes; the old key keeps working for"
    " `overlap_hours` (default 24), then expires.",
    responses={**replayable(201), **problem_responses(404, 422)},
)
async def rotate_key(key_id: KeyIdParam, body: KeyRotate, writer: PostWriter) -> object:
    number = _key_number(key_id, "/key_id")
    assert number is not None
    async with writer.transaction() as tx:
        if tx.stored is not None:
            return tx.stored.to_response({"secret": None})
        issued = await store.rotate_key(
            tx.conn, tx.workspace_id, number, timedelta(hours=body.overlap_hours)
        )
        if issued is None:
            raise ProblemError.not_found(f"Active key {key_id!r}")
        return await tx.respond(201, _created(issued), withhold={"secret"})


@router.delete(
    "/{key_id}",
    response_model=Key,
    summary="Revoke a key",
    description="Requests with the key get 401 from now on. Revoking a revoked key is a no-op.",
    responses=problem_responses(404),
)
async def revoke_key(key_id: KeyIdParam, writer: Writer) -> object:
    number = _key_number(key_id, "/key_id")
    assert number is not None
    async with writer.transaction() as tx:
        info = await store.revoke_key_by_id(tx.conn, tx.workspace_id, number)
        if info is None:
            raise ProblemError.not_found(f"Key {key_id!r}")
        return await tx.respond(200, _key(info))
