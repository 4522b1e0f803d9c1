"""`ChatEvents`: a stream's chunks as SSE events, read by a resumable session's reader or, for a stream
that cannot resume, by `_then_done`: the same events either way, and one error event when the chunks
fail, whatever the failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from llm_service.api.access_log import AccessRecord
from llm_service.api.chat import ChatEvents, _then_done
from llm_service.api.resume import DONE_EVENT, StreamSessions
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import ChunkChoice, LLMChunk, ProviderConnectionError
from test_streaming import FakeStream


def _say(text: str) -> LLMChunk:
    return LLMChunk("chatcmpl-1", 1, "m", ProviderID.OPENAI, [ChunkChoice(index=0, content=text)])


def _access() -> AccessRecord:
    return AccessRecord(request_id="req_1", method="POST", path="/v1/chat/completions")


def _read_plain(chunks: FakeStream, access: AccessRecord) -> list[bytes]:
    async def read() -> list[bytes]:
        return [e async for e in _then_done(ChatEvents(chunks, include_usage=False, access=access, event_ids=None))]

    return asyncio.run(read())


def _read_session(chunks: FakeStream, access: AccessRecord) -> list[bytes]:
    async def read() -> list[bytes]:
        sessions = StreamSessions(ttl=60, max_streams=10, keep=100, grace=0, clock=lambda: 0.0, abandoned=b"x")
        session = sessions.start(lambda ids: ChatEvents(chunks, include_usage=False, access=access, event_ids=ids))
        events = [e async for e in session.read(-1)]
        return [e.split(b"\n", 1)[1] if e.startswith(b"id: ") else e for e in events]  # ids aside

    return asyncio.run(read())


@pytest.mark.parametrize("read", [_read_plain, _read_session], ids=["plain", "resumable"])
@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            ProviderConnectionError("upstream broke", provider=ProviderID.OPENAI, code="upstream_error"),
            "upstream_error",
        ),
        (RuntimeError("a bug"), "internal_error"),
    ],
)
def test_a_failing_stream_ends_with_one_error_event_then_done(
    read: Any, error: Exception, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    chunks, access = FakeStream([_say("Hel")], error), _access()

    with caplog.at_level(logging.ERROR, logger="llm_service.chat"):
        events = read(chunks, access)

    assert len(events) == 3 and events[-1] == DONE_EVENT
    assert orjson.loads(events[0][6:])["choices"][0]["delta"]["content"] == "Hel"
    body = orjson.loads(events[1][6:])
    assert set(body) == {"error"}
    assert access.stream_error == code
    assert chunks.closed
    if code == "internal_error":
        assert body["error"]["type"] == "server_error"
        assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [error]  # logged with its traceback


@pytest.mark.parametrize("read", [_read_plain, _read_session], ids=["plain", "resumable"])
def test_a_whole_stream_gives_its_events_then_done(read: Any) -> None:
    chunks = FakeStream([_say("Hel"), _say("lo")])

    events = read(chunks, _access())

    assert [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]] == ["Hel", "lo"]
    assert events[-1] == DONE_EVENT
    assert chunks.closed
