"""`LLMChunk.wire` / `LLMResponse.wire`: an OpenAI-compatible upstream's own bytes go to the client as they
are when they already say what encoding the decoded chunk would, and never otherwise.

Which chunks keep their bytes (plain content) and which are encoded again (tool calls: their ids are
translated; finish reasons: mapped; usage: accounted; anything multi-line or oddly formed), that a client
that did not ask for usage gets no `usage` key, and that whatever changes a chunk after decoding drops
its bytes (a replay's pinned id, a splice). `conftest._wire_forms_checked` checks every wire form made
anywhere in the suite against encoding; the end-to-end tests here check the bytes a client receives.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import httpx
import orjson
import pytest

from conftest import MODELS, QUESTION
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import ChunkChoice, LLMChunk
from llm_service.core.llm.openai_format import decode_chat_chunk, decode_chat_response
from llm_service.core.llm.retry import ReplayingStream
from llm_service.core.llm.streaming import Splice, Transcript
from sse_client import FIXTURES
from wire_check import assert_chunk_wire_matches, assert_response_wire_matches

OPENAI = ProviderID.OPENAI
HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini"'
CONTENT = HEAD + b',"choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}]'


def decoded(event: bytes, *, include_usage: bool = False) -> LLMChunk:
    return decode_chat_chunk(orjson.loads(event), OPENAI, event=event, include_usage=include_usage)


# ------------------------------------------------------------------------------------------ chunks


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_plain_content_chunk_keeps_its_event_bytes(include_usage: bool) -> None:
    """A client that asked for usage gets `"usage":null` in every chunk, as from OpenAI: added at the end of
    an event that has none (OpenRouter's)."""
    event = CONTENT + b"}"
    chunk = decoded(event, include_usage=include_usage)
    assert chunk.wire == (CONTENT + b',"usage":null}' if include_usage else event)
    assert_chunk_wire_matches(chunk, include_usage=include_usage)
    assert orjson.loads(chunk.wire).get("usage", "absent") == (None if include_usage else "absent")


def test_the_role_chunk_keeps_its_bytes_and_extra_fields_ride_along() -> None:
    event = HEAD + (
        b',"service_tier":"default","obfuscation":"xyz","choices":[{"index":0,"delta":{"role":"assistant",'
        b'"content":"","refusal":null,"reasoning":"hmm"},"logprobs":null,"finish_reason":null}]}'
    )
    chunk = decoded(event)
    assert chunk.wire == event
    assert_chunk_wire_matches(chunk, include_usage=False)


@pytest.mark.parametrize(
    ("event", "without"),
    [
        pytest.param(CONTENT + b',"usage":null}', CONTENT + b"}", id="usage-last"),
        pytest.param(b'{"usage":null,' + CONTENT[1:] + b"}", CONTENT + b"}", id="usage-first"),
        pytest.param(  # a text that is only the word: no key (found by test_text_chunks' property)
            CONTENT.replace(b'"Hel"', b'"usage"') + b',"usage":null}',
            CONTENT.replace(b'"Hel"', b'"usage"') + b"}",
            id="usage-as-the-text",
        ),
    ],
)
def test_usage_null_is_taken_out_for_a_client_that_did_not_ask(event: bytes, without: bytes) -> None:
    chunk = decoded(event, include_usage=False)
    assert chunk.wire == without
    assert_chunk_wire_matches(chunk, include_usage=False)
    assert decoded(event, include_usage=True).wire == event  # asked for: as OpenAI sends it


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(CONTENT + b',"usage": null}', id="usage-null-spaced"),
        pytest.param(
            HEAD + b',"choices":[{"index":0,"delta":{"content":"usage"},"finish_reason":null}],"usage":null}',
            id="usage-also-in-the-text",
        ),
        pytest.param(CONTENT + b',"meta":{"usage":1},"usage":null}', id="a-usage-key-elsewhere"),
        # The one `"usage":null` found is not the top-level key (spelt otherwise): taking it out would drop
        # the text, keep the usage, or break the JSON.
        pytest.param(
            CONTENT.replace(b'{"content":"Hel"}', b'{"k\\"usage":null,"content":"secret"}') + b',"usage" :null}',
            id="a-nested-key-ending-in-usage",
        ),
        pytest.param(
            CONTENT.replace(b'{"content":"Hel"}', b'{"k\\"usage":null, "content":"secret"}') + b',"usage" :null}',
            id="would-break-the-json",
        ),
        pytest.param(
            CONTENT.replace(b'{"content":"Hel"}', b'{"content":"x","usage":null}') + b',"usage" :null}',
            id="a-nested-usage-null",
        ),
        pytest.param(
            CONTENT + b',"usage" :{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"usage":null}',
            id="a-duplicate-usage-key",
        ),
    ],
)
def test_usage_null_that_cannot_be_taken_out_safely_means_encoding(event: bytes) -> None:
    chunk = decoded(event, include_usage=False)
    assert chunk.wire is None
    assert chunk.choices and chunk.usage is None


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(
            HEAD + b',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc","type":"function",'
            b'"function":{"name":"f","arguments":""}}]},"finish_reason":null}]}',
            id="tool-call",
        ),
        pytest.param(HEAD + b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', id="finish"),
        pytest.param(HEAD + b',"choices":[{"index":0,"delta":{},"finish_reason":"eos"}]}', id="unknown-finish"),
        pytest.param(
            HEAD + b',"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
            id="usage",
        ),
        pytest.param(HEAD + b',"choices":[{"delta":{"content":"x"},"finish_reason":null}]}', id="no-index"),
        pytest.param(HEAD + b',"choices":[{"index":0,"delta":{"role":"tool","content":"x"}}]}', id="odd-role"),
        pytest.param(
            HEAD + b',"choices":[{"index":0,"delta":{"role":"","content":"x"},"logprobs":null,"finish_reason":null}]}',
            id="empty-role",
        ),
        pytest.param(CONTENT.replace(b'"object":"chat.completion.chunk",', b"") + b"}", id="no-object"),
        pytest.param(
            HEAD + b',"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null,'
            b'"content_filter_results":{}}]}',
            id="choice-extra-field",
        ),
        pytest.param(
            HEAD + b',"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}', id="no-logprobs"
        ),
        pytest.param(CONTENT.replace(b"1750000000", b'"1750000000"') + b"}", id="created-as-text"),
        pytest.param(CONTENT.replace(b'"id":"chatcmpl-1"', b'"id":""') + b"}", id="empty-id"),
        pytest.param(CONTENT.replace(b',"choices"', b',\n"choices"') + b"}", id="two-lines"),
    ],
)
def test_a_chunk_the_client_gets_in_another_form_is_encoded_again(event: bytes) -> None:
    assert decoded(event, include_usage=True).wire is None


def test_a_chunk_decoded_without_its_event_has_no_wire_form() -> None:
    assert decode_chat_chunk(orjson.loads(CONTENT + b"}"), OPENAI).wire is None


# ------------------------------------------------------------------------- changed after decoding


async def _stream(*chunks: LLMChunk) -> Any:
    for chunk in chunks:
        yield chunk


async def _no_reopen(sent: Transcript, error: Exception) -> Any:
    raise AssertionError("not reopened")


def test_a_chunk_whose_id_a_replay_pins_loses_its_bytes_and_one_that_matches_keeps_them() -> None:
    first, same, other = (decoded(CONTENT + b"}") for _ in range(3))
    other.id = "chatcmpl-2"  # a re-established attempt's own id
    stream = ReplayingStream(_stream(first, same, other), _no_reopen, max_buffer_chunks=10, max_replays=1)

    async def read() -> list[LLMChunk]:
        return [chunk async for chunk in stream]

    got = asyncio.run(read())

    assert [c.id for c in got] == ["chatcmpl-1"] * 3
    assert got[0].wire is not None and got[1].wire is not None
    assert got[2].wire is None


def test_a_spliced_chunk_loses_its_bytes() -> None:
    sent = Transcript.of([LLMChunk("chatcmpl-1", 1, "m", OPENAI, [ChunkChoice(index=0, content="He")])])
    again = decoded(CONTENT + b"}")  # "Hel": "He" was sent, "l" is new
    assert again.wire is not None

    (joined,) = Splice(sent).feed(again)

    assert joined.choices[0].content == "l"
    assert joined.wire is None


# ------------------------------------------------------------------------------------------ bodies

BODY: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1750000000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris.", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {}},
    "service_tier": "default",
}


def test_a_plain_body_keeps_its_bytes_pretty_printed_as_openai_sends_it() -> None:
    body = orjson.dumps(BODY, option=orjson.OPT_INDENT_2) + b"\n"
    response = decode_chat_response(orjson.loads(body), OPENAI, body=body)
    assert response.wire == body
    assert_response_wire_matches(response)


def _changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("native_finish_reason", "stop", id="openrouter"),
        pytest.param("content_filter_results", {"hate": {"filtered": False, "severity": "safe"}}, id="azure"),
    ],
)
def test_a_choices_own_fields_ride_along_in_the_bytes_and_in_the_encoding(field: str, value: Any) -> None:
    """OpenRouter's `native_finish_reason`, Azure's `content_filter_results`: the client gets them, in the
    upstream's bytes or, when those cannot go, in the encoding."""
    body = orjson.dumps(_changed(("choices", 0, field), value))
    response = decode_chat_response(orjson.loads(body), OPENAI, body=body)
    assert response.choices[0].extra == {field: value}
    assert response.wire == body
    assert_response_wire_matches(response)

    event = HEAD + b',"choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null,'
    chunk = decoded(event + orjson.dumps({field: value})[1:-1] + b"}]}")
    assert chunk.choices[0].choice_extra == {field: value}
    assert chunk.wire is not None
    assert_chunk_wire_matches(chunk, include_usage=False)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            _changed(
                ("choices", 0, "message", "tool_calls"),
                [{"id": "call_abc", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            ),
            id="tool-call",
        ),
        pytest.param(_changed(("choices", 0, "finish_reason"), "eos"), id="unknown-finish"),
        pytest.param(_changed(("choices", 0, "finish_reason"), ""), id="empty-finish"),
        pytest.param(_changed(("choices", 0, "message", "role"), KeyError), id="no-role"),
        pytest.param(
            _changed(("choices", 0, "message", "content"), [{"type": "text", "text": "Paris."}]), id="content-parts"
        ),
        pytest.param(_changed(("usage", "total_tokens"), KeyError), id="usage-without-total"),
        pytest.param(_changed(("object",), KeyError), id="no-object"),
        pytest.param(_changed(("choices", 0, "message", "refusal"), KeyError), id="no-refusal"),
        pytest.param(_changed(("usage",), KeyError), id="no-usage"),
        pytest.param(_changed(("choices", 0, "index"), KeyError), id="no-index"),
    ],
)
def test_a_body_the_client_gets_in_another_form_is_encoded_again(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    assert decode_chat_response(orjson.loads(raw), OPENAI, body=raw).wire is None


# ------------------------------------------------------------------------------ through the service


def _data_lines(text: str) -> list[bytes]:
    return [line[6:].encode() for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_client_receives_the_upstreams_content_chunks_byte_for_byte(
    client: httpx.Client, include_usage: bool
) -> None:
    body: dict[str, Any] = {"model": MODELS[OPENAI], "messages": QUESTION, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        received = _data_lines(response.read().decode())
    upstream = _data_lines((FIXTURES / "openai" / "chat_text.sse").read_text())  # what the fake replays

    content = [line for line in upstream if b'"content":"' in line and b'"finish_reason":null' in line]
    assert content, "the fixture has content chunks"
    expected = content if include_usage else [line.replace(b',"usage":null', b"") for line in content]
    assert all(line in received for line in expected)


@pytest.mark.parametrize("provider", [OPENAI, ProviderID.OPENROUTER], ids=lambda p: p.value)
def test_a_client_receives_the_upstreams_plain_body_byte_for_byte(client: httpx.Client, provider: ProviderID) -> None:
    response = client.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION})
    assert response.status_code == 200
    assert response.content == (FIXTURES / provider.value / "chat_text.json").read_bytes()


@pytest.mark.parametrize("include_usage", [False, True], ids=["usage not asked", "usage asked"])
def test_an_openrouter_stream_reaches_the_client_byte_for_byte(client: httpx.Client, include_usage: bool) -> None:
    """Every text event of OpenRouter's recorded stream, `native_finish_reason` and `provider` included, is
    what the client gets (not its usage chunk: OpenRouter sends usage whether asked or not); a client that
    asked for usage gets `"usage":null` at the end of each, as from OpenAI."""
    body: dict[str, Any] = {"model": MODELS[ProviderID.OPENROUTER], "messages": QUESTION, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        received = _data_lines(response.read().decode())
    upstream = _data_lines((FIXTURES / "openrouter" / "chat_text.sse").read_text())
    texts = [line for line in upstream if b'"finish_reason":null' in line and b'"usage"' not in line]
    assert len(texts) > 2 and all(b'"native_finish_reason":null' in line for line in texts)
    expected = [line[:-1] + b',"usage":null}' for line in texts] if include_usage else texts
    assert [line for line in received if b'"finish_reason":null' in line and b'"usage":{' not in line] == expected
