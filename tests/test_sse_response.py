"""`SSEResponse` at the ASGI level: the messages a streamed answer becomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Message

from llm_service.api.resume import DONE_EVENT
from llm_service.api.sse import SSEResponse


async def _events(*events: bytes) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def _sent(body: AsyncIterator[bytes]) -> list[Message]:
    sent: list[Message] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await done.wait()  # the client stays until the response is complete, as uvicorn's does
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    async def run() -> None:
        await SSEResponse(body, {})({"type": "http"}, receive, send)

    asyncio.run(run())
    return sent


def test_done_ends_the_body_in_the_same_message() -> None:
    sent = _sent(_events(b"data: 1\n\n", DONE_EVENT))

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True}
    assert sent[2] == {"type": "http.response.body", "body": DONE_EVENT, "more_body": False}


def test_a_body_without_done_is_ended_by_an_empty_message() -> None:
    sent = _sent(_events(b"data: 1\n\n"))

    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert sum(1 for m in sent if m["type"] == "http.response.body") == 2
