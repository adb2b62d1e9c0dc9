"""Request body size limit as plain ASGI middleware: an oversized body is answered 413 before any route sees it.

A declared ``Content-Length`` above the limit is refused at once; a body without one (chunked) is counted while it
streams and refused as soon as it passes the limit, so a route never gets a truncated body to store.
"""

from __future__ import annotations

import json

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the limit (the app maps it to 413)."""

    def __init__(self, limit: int, received: int):
        self.limit, self.received = limit, received
        super().__init__(f"request body of {received} bytes or more exceeds the limit of {limit} bytes")


class BodySizeLimit:
    def __init__(self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(send, 400, "Content-Length is not a number")
                    return
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send, 413, self._message(declared))
            return

        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes, received)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, 413, self._message(received))

    def _message(self, size: int) -> str:
        return f"request body of {size} bytes or more exceeds the limit of {self.max_body_bytes} bytes"

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


__all__ = ["BodySizeLimit", "BodyTooLarge", "DEFAULT_MAX_BODY_BYTES"]
