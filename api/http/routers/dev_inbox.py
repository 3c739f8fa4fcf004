"""``GET /v1/dev/inbox``: with no SMTP server, the emails the workspace would have sent.

Read with the workspace's own key (``nudgel.api.lists.dev_inbox``): a workspace
never sees another's emails, and nobody sees them without a key.
"""

from __future__ import annotations

from fastapi import Request
from nudgel.api.http.auth import Auth
from nudgel.api.http.pagination import ListResponse, PageParams, page_of
from nudgel.api.http.problems import problem_responses
from nudgel.api.http.routers.common import Conn, resource_router, settings_of
from nudgel.api.lists.dev_inbox import KeptMessage, kept_messages

router, OPENAPI_TAG = resource_router(
    "/dev",
    "Dev inbox",
    "With no SMTP server configured (`NUDGEL_SMTP_URL`), the emails the service would have"
    " sent, kept per workspace to try double opt-in without a mail server.",
)


class KeptMessagePage(ListResponse[KeptMessage]):
    pass


@router.get(
    "/inbox",
    response_model=KeptMessagePage,
    summary="Read the dev inbox",
    description="The workspace's emails, newest first, with their headers, text and links"
    " (the newest `dev_inbox_max_messages` are kept; each text is cut to"
    " `dev_inbox_max_message_bytes`). 404 when an SMTP server is configured: emails then go"
    " out and nothing is kept.",
    responses=problem_responses(404),
)
async def read_dev_inbox(
    auth: Auth, conn: Conn, page: PageParams, request: Request
) -> KeptMessagePage:
    rows = await kept_messages(
        conn, settings_of(request), auth.workspace_id, page.fetch, page.starting_after
    )
    data, has_more, cursor = page_of(rows, page, lambda message: message.id)
    return KeptMessagePage(data=data, has_more=has_more, next_cursor=cursor)
