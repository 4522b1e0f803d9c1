"""The check behind `LLMChunk.wire` / `LLMResponse.wire`: an upstream's bytes passed to the client as they
are must say what encoding the decoded chunk or response would say.

OpenAI's own chunks and bodies spell out nulls the encoder leaves out (`"refusal":null`) and the
other way round (`"logprobs":null`), and JSON clients read a null and a missing key alike: both sides
are compared with their null-valued keys taken out.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_service.core.llm.models import LLMChunk, LLMResponse
from llm_service.core.llm.openai_format import encode_chat_chunk, encode_chat_response


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def assert_chunk_wire_matches(chunk: LLMChunk, *, include_usage: bool) -> None:
    assert chunk.wire is not None
    sent = orjson.loads(chunk.wire)
    assert without_nulls(sent) == without_nulls(encode_chat_chunk(chunk, include_usage=include_usage))
    if not include_usage:
        assert "usage" not in sent  # a client that did not ask sees no usage key, as from OpenAI


def assert_response_wire_matches(response: LLMResponse) -> None:
    assert response.wire is not None
    assert without_nulls(orjson.loads(response.wire)) == without_nulls(encode_chat_response(response))
