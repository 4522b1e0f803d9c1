"""Fuzzing the request path below HTTP (hypothesis): any JSON a client sends is either a request every
provider translation can write, or an InvalidRequestError naming a field; never another exception.

The bodies are loose: the keys a Chat Completions body has, usually holding a value of the right kind and
now and then any JSON value, so that generation reaches the nested fields (messages, parts, tool calls,
tools, schemas) with wrong types, missing keys and odd values. What comes out must also be writable by
orjson, as every upstream body is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_service.core.llm.gemini_format import encode_gemini_request
from llm_service.core.llm.models import InvalidRequestError, LLMRequest
from llm_service.core.llm.openai_format import encode_chat_request, parse_chat_request
from llm_service.core.llm.request_limits import nests_deeper

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=8)
#: Integers as orjson reads them: i64 to u64 (beyond, a number is read as a float).
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | text
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)


def loose(keys: list[str], special: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of `keys`, each holding a value from `special` or any JSON value."""
    return st.dictionaries(st.sampled_from(keys), special | json_values, max_size=len(keys))


words = st.sampled_from(
    ["text", "image_url", "input_audio", "file", "function", "allowed_tools", "json_schema", "json_object",
     "user", "assistant", "tool", "system", "developer", "none", "auto", "required", "object", "string",
     "data:image/png;base64,AAAA", "gs://b/x.png", "https://h/x.jpg", "ftp://h/x", '{"a": 1}', "[1]", ""]
)  # fmt: skip
schemas = st.recursive(
    loose(["type", "description", "enum", "const", "nullable"], words | st.lists(words, max_size=3)),
    lambda inner: loose(
        ["type", "properties", "items", "anyOf", "oneOf", "allOf", "$ref", "$defs", "required"],
        st.dictionaries(text, inner, max_size=2) | st.lists(inner, max_size=2) | inner
        | st.sampled_from(["#/$defs/a", "#/$defs/b", "#/definitions/a", "http://x"]),
    ),
    max_leaves=6,
)  # fmt: skip
roles = st.sampled_from(["user", "assistant", "tool", "system", "developer"])


def usually(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value from `right` nine times in ten, any JSON value the tenth."""
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda right_kind: right if right_kind else json_values)


def mostly(keys: dict[str, st.SearchStrategy[Any]], **optional: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Objects with `keys` and some of `optional`, their values `usually()` of the right kind."""
    return st.fixed_dictionaries(
        {k: usually(v) for k, v in keys.items()}, optional={k: usually(v) for k, v in optional.items()}
    )


functions = mostly({"name": words}, arguments=words, description=words, parameters=schemas, strict=st.booleans())
tool_calls = mostly({"id": words, "function": functions}, type=words)
parts = mostly({"type": words}, text=words, image_url=mostly({"url": words}, detail=words), input_audio=json_values)
messages = mostly(
    {"role": roles, "content": words | st.lists(parts, max_size=3)},
    name=words,
    tool_calls=st.lists(tool_calls, max_size=2),
    tool_call_id=words,
    refusal=words,
)
tools = mostly({"type": st.just("function"), "function": functions})
bodies = mostly(
    {"model": st.text(min_size=1, max_size=5), "messages": st.lists(messages, min_size=1, max_size=4)},
    tools=st.lists(tools, max_size=2),
    tool_choice=words | mostly({"type": words, "function": functions, "allowed_tools": json_values}),
    response_format=mostly({"type": words}, json_schema=mostly({"name": words}, schema=schemas)),
    temperature=st.floats(0, 2),
    max_tokens=st.integers(1, 2**21),
    n=st.integers(1, 200),
    stop=st.lists(words, max_size=5),
    stream=st.booleans(),
    stream_options=mostly({}, include_usage=st.booleans()),
    seed=st.integers(-(2**63), 2**64 - 1),
    logit_bias=st.dictionaries(words, st.integers(-100, 100), max_size=2),
    presence_penalty=st.floats(-2, 2),
    logprobs=st.booleans(),
)


def _refusal(write: Callable[[], object]) -> InvalidRequestError | None:
    try:
        write()
    except InvalidRequestError as refused:
        return refused
    return None


@FUZZ
@given(bodies)
def test_any_body_is_a_request_every_translation_writes_or_an_error_naming_a_field(body: dict[str, Any]) -> None:
    parsed: list[LLMRequest] = []
    refused = _refusal(lambda: parsed.append(parse_chat_request(body)))
    if refused is not None:
        assert refused.message
        return
    (request,) = parsed
    orjson.dumps(encode_chat_request(request, always_include_usage=True))
    refused = _refusal(lambda: orjson.dumps(encode_gemini_request(request, {})))
    assert refused is None or refused.param, refused


def _depth(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max(map(_depth, children), default=0)


@FUZZ
@given(json_values, st.integers(0, 6))
def test_nesting_is_measured_alike_from_the_value_and_from_its_json(value: Any, levels: int) -> None:
    deeper = _depth(value) > levels
    assert nests_deeper(value, levels) is deeper
    assert nests_deeper(value, levels, orjson.dumps(value).decode()) is deeper
