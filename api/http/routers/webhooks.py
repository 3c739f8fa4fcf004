"""``/v1/webhooks``: endpoints that receive the workspace's events, and their deliveries.

Events are POSTed per the Standard Webhooks spec (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) by the delivery worker
(``nudgel.api.webhooks.delivery``); this module only manages subscriptions and shows
what was sent. The signing secret is returned by the create call only (and by
its idempotent replays, which must give the client what the first call did).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Path, Request, status
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router, settings_of
from nudgel.api.http.writes import PostWriter, Writer, replayable
from nudgel.api.problems import FieldError, ProblemError, problem_type
from nudgel.api.webhooks import endpoints
from nudgel.api.webhooks.outbox import EVENT_TYPES
from psycopg.rows import dict_row
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

router, OPENAPI_TAG = resource_router(
    "/webhooks",
    "Webhooks",
    "Endpoints the workspace's events are POSTed to, signed per Standard Webhooks,"
    " and the record of every delivery attempt.",
)

ALL_EVENTS = "*"
_EVENT_CHOICES = [ALL_EVENTS, *sorted(EVENT_TYPES)]


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if any(c.isspace() for c in value) or parts.username is not None:
        raise ValueError("must not contain white space or credentials")
    # The scheme in lower case (`HTTPS://` is valid, and stored as `https://`).
    return parts.scheme + value[len(parts.scheme) :]


def _check_event(value: str) -> str:
    if value != ALL_EVENTS and value not in EVENT_TYPES:
        raise ValueError(f"unknown event type; one of {', '.join(_EVENT_CHOICES)}")
    return value


def _unique(values: list[str]) -> list[str]:
    # "*" covers everything, so it stands alone; otherwise first-seen order.
    return [ALL_EVENTS] if ALL_EVENTS in values else list(dict.fromkeys(values))


WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    AfterValidator(_check_url),
    WithJsonSchema({"type": "string", "format": "uri", "maxLength": 2048}),
]
EventType = Annotated[
    str,
    AfterValidator(_check_event),
    WithJsonSchema({"type": "string", "enum": _EVENT_CHOICES}),
]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks/nudgel", "events": ["contact.created"]}]
        },
    )

    url: WebhookUrl = Field(description="Where events are POSTed: an absolute http(s) URL.")
    events: Annotated[list[EventType], AfterValidator(_unique)] = Field(
        min_length=1,
        max_length=len(_EVENT_CHOICES),
        description='Event types to send, or `["*"]` for all of them.',
    )


class Webhook(BaseModel):
    object: Literal["webhook"] = "webhook"
    id: str = Field(description="`wh_...`, time-ordered.")
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(Webhook):
    secret: str = Field(
        description="`whsec_...`: verify deliveries with it (any Standard Webhooks library)."
        " Shown only in this response: store it now."
    )


class WebhookList(ListResponse[Webhook]):
    pass


class DeletedWebhook(BaseModel):
    object: Literal["webhook"] = "webhook"
    id: str
    deleted: Literal[True] = True


class Attempt(BaseModel):
    started_at: datetime
    finished_at: datetime | None = Field(
        description="Null while the request is in flight, or when it was interrupted."
    )
    response_status: int | None = Field(description="The endpoint's HTTP status, if it answered.")
    error: str | None = Field(
        description="Why it failed, as a short class (null when delivered or in flight):"
        " `http_4xx`, `http_5xx` (any other status: `http_1xx`, `http_3xx`; redirects are"
        " not followed), `timeout`, `connection_refused`, `connection_reset`,"
        " `connection_error`, `dns_error`, `tls_error`, `protocol_error`, `blocked_address`"
        " (the host is or resolves to a non-public address), `interrupted` (the worker"
        " stopped before the answer)."
    )


class Delivery(BaseModel):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str = Field(description="`dlv_...`.")
    event_id: str = Field(description="The event's id: the `webhook-id` header, same on retries.")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    next_attempt_at: datetime | None = Field(description="When pending: the next try.")
    created_at: datetime
    finished_at: datetime | None = Field(description="When delivered or given up.")
    attempts: list[Attempt] = Field(description="Every attempt, oldest first.")


class DeliveryList(ListResponse[Delivery]):
    pass


IdParam = Annotated[str, Path(description="The webhook's id (`wh_...`).")]
_COLUMNS = endpoints.COLUMNS
_DELIVERY_ID = re.compile(r"^dlv_([1-9][0-9]{0,18})$")


def _not_found(webhook_id: str) -> ProblemError:
    return ProblemError.not_found(f"Webhook {webhook_id!r}")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Create a webhook",
    description="Events that happen from now on and match `events` are POSTed to `url`."
    " The response carries the signing `secret`, shown only this once (and to replays"
    " with the same `Idempotency-Key`). `url` must reach a public address: a host that is,"
    " or resolves to, a loopback, private, link-local, shared, multicast, reserved or"
    " cloud metadata address is refused (422, `blocked_address`), and so is every"
    " delivery to one. 404: a replay of a creation whose webhook was deleted since.",
    response_description="Created.",
    responses={**replayable(201), **problem_responses(404, 409, 422)},
)
async def create_webhook(body: WebhookCreate, writer: PostWriter, request: Request) -> object:
    async with writer.transaction() as tx:
        if tx.stored is not None:
            # The record holds no secret: it is read again from the webhook.
            webhook_id = str(tx.stored.body["id"])
            secret = await endpoints.secret_of(tx.conn, tx.workspace_id, webhook_id)
            if secret is None:
                raise ProblemError(
                    404,
                    "Not found",
                    f"Webhook {webhook_id!r}, created by the first request with this"
                    " Idempotency-Key, has been deleted since, and its secret with it."
                    " Use a new key to create another webhook.",
                    type_=problem_type("not-found"),
                )
            return tx.stored.to_response({"secret": secret})
        row = await endpoints.create(tx, body.url, body.events, settings_of(request))
        return await tx.respond(201, WebhookCreated.model_validate(row), withhold={"secret"})


@router.get(
    "",
    response_model=WebhookList,
    summary="List webhooks",
    description="The workspace's webhook endpoints (without their secrets), in id order.",
    responses=problem_responses(422),
)
async def list_webhooks(auth: Auth, conn: Conn, page: PageParams) -> WebhookList:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM webhooks"
        " WHERE workspace_id = %s AND (%s::text IS NULL OR id > %s) ORDER BY id LIMIT %s",
        (auth.workspace_id, page.starting_after, page.starting_after, page.fetch),
    )
    rows = [Webhook.model_validate(r) for r in await cur.fetchall()]
    data, has_more, cursor = page_of(rows, page, lambda w: w.id)
    return WebhookList(data=data, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{webhook_id}",
    response_model=Webhook,
    summary="Get a webhook",
    description="Without the secret, which is only shown on creation.",
    responses=problem_responses(404),
)
async def get_webhook(webhook_id: IdParam, auth: Auth, conn: Conn) -> Webhook:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM webhooks WHERE workspace_id = %s AND id = %s",
        (auth.workspace_id, webhook_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise _not_found(webhook_id)
    return Webhook.model_validate(row)


@router.delete(
    "/{webhook_id}",
    response_model=DeletedWebhook,
    summary="Delete a webhook",
    description="Nothing more is sent to it, pending retries included; its deliveries go too.",
    responses=problem_responses(404),
)
async def delete_webhook(webhook_id: IdParam, writer: Writer) -> object:
    async with writer.transaction() as tx:
        cur = await tx.conn.execute(
            "DELETE FROM webhooks WHERE workspace_id = %s AND id = %s RETURNING pk",
            (tx.workspace_id, webhook_id),
        )
        if await cur.fetchone() is None:
            raise _not_found(webhook_id)
        return await tx.respond(200, DeletedWebhook(id=webhook_id))


def _cursor_pk(starting_after: str | None) -> int | None:
    if starting_after is None:
        return None
    match = _DELIVERY_ID.match(starting_after)
    if match is None:
        detail = f"starting_after {starting_after!r} is not a delivery id (`dlv_...`)."
        raise ProblemError(
            422,
            "Invalid cursor",
            detail,
            type_=problem_type("validation"),
            errors=[
                FieldError(
                    location="query", pointer="/starting_after", detail=detail, code="invalid"
                )
            ],
        )
    return int(match.group(1))


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="List a webhook's deliveries",
    description="Newest first: one per event sent (or being sent) to the webhook, with every"
    " attempt's answer or error. `starting_after` is a delivery id.",
    responses=problem_responses(404, 422),
)
async def list_deliveries(
    webhook_id: IdParam, auth: Auth, conn: Conn, page: PageParams
) -> DeliveryList:
    after = _cursor_pk(page.starting_after)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT pk FROM webhooks WHERE workspace_id = %s AND id = %s",
        (auth.workspace_id, webhook_id),
    )
    webhook = await cur.fetchone()
    if webhook is None:
        raise _not_found(webhook_id)
    await cur.execute(
        "SELECT d.pk, o.event_id, o.event_type, d.status, d.next_attempt_at, d.created_at,"
        " d.finished_at,"
        " coalesce((SELECT json_agg(json_build_object('started_at', a.started_at,"
        "   'finished_at', a.finished_at, 'response_status', a.response_status,"
        "   'error', a.error) ORDER BY a.pk)"
        "  FROM webhook_attempts a WHERE a.delivery_pk = d.pk), '[]') AS attempts"
        " FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id"
        " WHERE d.webhook_pk = %s AND (%s::bigint IS NULL OR d.pk < %s)"
        " ORDER BY d.pk DESC LIMIT %s",
        (webhook["pk"], after, after, page.fetch),
    )
    rows = [_delivery(r) for r in await cur.fetchall()]
    data, has_more, cursor = page_of(rows, page, lambda d: d.id)
    return DeliveryList(data=data, has_more=has_more, next_cursor=cursor)


def _delivery(row: dict[str, Any]) -> Delivery:
    pending = row["status"] == "pending"
    return Delivery.model_validate(
        {
            **row,
            "id": f"dlv_{row['pk']}",
            "next_attempt_at": row["next_attempt_at"] if pending else None,
        }
    )
