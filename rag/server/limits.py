"""The request body limit, an ASGI middleware: it runs before routing, so no handler ever
reads an oversized body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError

MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """Refuses request bodies over `limit` bytes under `prefix` with 413, before any handler
    reads them; the UI's uploads elsewhere keep their own, larger limit."""

    def __init__(self, app: ASGIApp, *, limit: int, prefix: str = "/v1") -> None:
        self.app = app
        self.limit = limit
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413,
            f"the request body is over the limit of {self.limit} bytes",
            code="request_too_large",
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await ApiError(400, "bad Content-Length header", code="invalid_request").response()(
                        scope, receive, send
                    )
                    return
                if declared > self.limit:
                    await too_large.response()(scope, receive, send)
                    return
        # Chunked bodies declare no length: read up to the limit, then replay what was read.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await too_large.response()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
