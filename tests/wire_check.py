"""The check behind `LLMChunk.wire` / `LLMResponse.wire`: an upstream's bytes passed to the client as they
are must say what encoding the decoded chunk or response would say. And behind `LLMRequest.wire`: the
client's body relayed to an upstream must be the body the request's fields would write.

OpenAI's own chunks and bodies spell out nulls the encoder leaves out (`"refusal":null`) and the
other way round (`"logprobs":null`), and JSON clients read a null and a missing key alike: both sides
are compared with their null-valued keys taken out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from llm_service.core.llm.models import LLMChunk, LLMRequest, LLMResponse
from llm_service.core.llm.openai_format import encode_chat_chunk, encode_chat_request, encode_chat_response


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


def assert_request_wire_matches(request: LLMRequest, relayed: dict[str, Any], *, always_include_usage: bool) -> None:
    """`relayed`, written from the client's body (`request.wire`), is what the request's fields write: also
    once the request went through the service (a field changed in place after parsing would show here)."""
    assert request.wire is not None
    written = encode_chat_request(dataclasses.replace(request), always_include_usage=always_include_usage)
    assert relayed == written
