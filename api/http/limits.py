"""Limits before work: the request body's size, checked before authentication
and before anything parses it; and the headers a request's admission adds to
its response (``RateLimit``, set by ``nudgel.api.http.auth``).

A body is refused with 413 as soon as its ``Content-Length`` says it is too
large, or as soon as the bytes streamed in pass the cap (chunked bodies): the
application then sees the client as gone and its own answer is dropped, so at
most the cap is ever read. ``POST /v1/imports`` streams a file and has its
own, larger cap (``import_max_bytes``).
"""

from __future__ import annotations

import json
from typing import Any

from nudgel.api.problems import PROBLEM_JSON, problem_type
from nudgel.api.settings import Settings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LimitsMiddleware"]

_LARGE_UPLOAD_PATHS = ("/v1/imports",)


def _too_large(path: str, cap: int, setting: str) -> bytes:
    return json.dumps(
        {
            "type": problem_type("body-too-large"),
            "title": "Content Too Large",
            "status": 413,
            "detail": f"The request body is larger than {cap} bytes ({setting}).",
            "instance": path,
        }
    ).encode()


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _cap(self, path: str) -> tuple[int, str]:
        if path.startswith(_LARGE_UPLOAD_PATHS):
            # The file, plus room for the form's other parts; the import
            # checks the file's own size exactly.
            cap = self.settings.import_max_bytes + self.settings.max_body_bytes
            return cap, "NUDGEL_IMPORT_MAX_BYTES"
        return self.settings.max_body_bytes, "NUDGEL_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        cap, setting = self._cap(path)
        declared = _content_length(scope)
        refused = False
        started = False

        async def refuse() -> None:
            nonlocal refused
            refused = True
            if started:
                return
            body = _too_large(path, cap, setting)
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        if declared is not None and declared > cap:
            await refuse()
            return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    await refuse()
                    return {"type": "http.disconnect"}
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 went out; the application's answer is dropped
            if message["type"] == "http.response.start":
                started = True
                extra = _state_headers(scope)
                if extra:
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    headers += [
                        (name.lower().encode(), value.encode())
                        for name, value in extra.items()
                        if name.lower().encode() not in present
                    ]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, capped_receive, send_with_headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _state_headers(scope: Scope) -> dict[str, str]:
    state: Any = scope.get("state")
    if isinstance(state, dict):
        headers = state.get("response_headers")
        if isinstance(headers, dict):
            return headers
    return {}
