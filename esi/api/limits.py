"""Request-body size limit as plain ASGI middleware.

Why not rely on the server: uvicorn has no body limit, and a limit checked in the endpoint comes too
late (FastAPI has already buffered the body and turns read errors into a generic 400). This
middleware answers 413 before the app runs: at once when ``Content-Length`` is over the limit, and,
for chunked bodies without a length, as soon as the bytes read so far pass it. Bodies within the
limit are buffered (at most ``max_bytes``) and replayed to the app unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with a JSON 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive; got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, received: int | None) -> None:
        size = f"{received} bytes" if received is not None else "the body"
        body = json.dumps({
            "detail": f"request body too large: {size} exceeds the limit of {self.max_bytes} bytes"
        }).encode()
        await send({
            "type": "http.response.start", "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                body = b'{"detail": "invalid Content-Length header"}'
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            if length > self.max_bytes:
                await self._reject(send, length)
                return
            if length == 0:
                await self.app(scope, receive, send)
                return
        # Buffer the body (bounded by max_bytes), then replay it as one message.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(send, None if declared is None else received)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
