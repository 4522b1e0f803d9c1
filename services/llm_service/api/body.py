"""Reading a request's body from ASGI `receive`, up to a limit: for the chat route and for the key check
that looks at the model before it (auth.py)."""

from __future__ import annotations

from enum import Enum

from starlette.types import Receive


class BodyEnd(Enum):
    COMPLETE = "complete"
    TOO_LARGE = "too_large"  # reading stopped past the limit
    DISCONNECTED = "disconnected"  # the client went away first


async def read_body(receive: Receive, limit: int) -> tuple[bytes, BodyEnd]:
    """The body as far as it was read, and how reading ended."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body, BodyEnd.DISCONNECTED
        body += message.get("body", b"")
        if len(body) > limit:
            return body, BodyEnd.TOO_LARGE
        if not message.get("more_body", False):
            return body, BodyEnd.COMPLETE
