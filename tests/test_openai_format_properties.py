"""Properties of the OpenAI wire codec (`openai_format.py`), over generated requests, responses and chunks.

What the codec claims: a client's request read into the domain and written to an OpenAI-family upstream
is the request the client sent (fields the domain does not model ride along in `extra`); an upstream's
response or chunk read into the domain and written to the client is what the upstream sent, but for the
tool-call ids, which are normalised (`tool_ids.py`), the provider's own kept for the next turn. The
generators produce each message in the one form the codec writes back (`stop` as a list, no `null` for
an absent field); the forms it normalises have their own tests in test_openai_format.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import FinishReason, Role
from llm_service.core.llm.openai_format import (
    decode_chat_chunk,
    decode_chat_response,
    encode_chat_chunk,
    encode_chat_request,
    encode_chat_response,
    parse_chat_request,
)
from llm_service.core.llm.tool_call_store import ProviderCallData
from llm_service.core.llm.tool_ids import normalize_tool_call_id

PROPERTIES = settings(max_examples=150, deadline=None)
PROVIDER = ProviderID.OPENROUTER

text = st.text(max_size=12)
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
names = st.text(_ALNUM + "_-", min_size=1, max_size=16)
ids = st.text(_ALNUM, min_size=1, max_size=20).map("call_".__add__)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8
)
json_objects = st.dictionaries(text, json_values, max_size=3)


def extra_fields(known: frozenset[str] | set[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Fields the codec does not know, passed through as they are."""
    return st.dictionaries(names.filter(lambda k: k not in known), json_values, max_size=2)


def optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.just({}) | values.map(lambda value: {key: value})


# ---------------------------------------------------------------------------------- client requests

image_urls = st.sampled_from(
    ["https://example.com/cat.png", "http://h/x.jpg", "gs://b/o.webp", "data:image/png;base64,iVBO"]
)
text_parts = st.builds(lambda t, x: {"type": "text", "text": t, **x}, text, extra_fields({"type", "text"}))
image_parts = st.builds(
    lambda url, detail, x: {"type": "image_url", "image_url": {"url": url, **detail}, **x},
    image_urls,
    optional("detail", st.sampled_from(["auto", "low", "high"])),
    extra_fields({"type", "image_url"}),
)
opaque_parts = st.builds(lambda d: {"type": "input_audio", "input_audio": d}, json_objects)
contents = text | st.lists(text_parts | image_parts | opaque_parts, max_size=3)
message_extra = extra_fields({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Messages of every role; each tool message answers a call an earlier assistant message made."""
    messages: list[dict[str, Any]] = []
    called: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        role = draw(
            st.sampled_from(["system", "developer", "user", "assistant", "tool"] if called else ["user", "assistant"])
        )
        message: dict[str, Any] = {"role": role, **draw(optional("name", names)), **draw(message_extra)}
        if role == "assistant":
            calls = draw(st.lists(ids, max_size=3, unique=True))
            arguments = st.builds(lambda n, a: {"name": n, "arguments": a}, names, text)
            message["content"] = draw(st.none() | text)
            if calls:
                message["tool_calls"] = [{"id": c, "type": "function", "function": draw(arguments)} for c in calls]
            message |= draw(optional("refusal", text))
            called += calls
        elif role == "tool":
            message |= {
                "tool_call_id": draw(st.sampled_from(called)),
                "content": draw(text | st.lists(text_parts, max_size=2)),
            }
        else:
            message["content"] = draw(contents)
        messages.append(message)
    return messages


tools = st.builds(
    lambda name, function, x: {"type": "function", "function": {"name": name, **function}, **x},
    names,
    st.fixed_dictionaries({}, optional={"description": text, "parameters": json_objects, "strict": st.booleans()}),
    extra_fields({"type", "function"}),
)
tool_choices = (
    st.sampled_from(["none", "auto", "required"])
    | names.map(lambda n: {"type": "function", "function": {"name": n}})
    | st.builds(
        lambda mode, functions: {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": mode,
                "tools": [{"type": "function", "function": {"name": n}} for n in functions],
            },
        },
        st.just("auto"),
        st.lists(names, min_size=1, max_size=3),
    )
)
response_formats = st.sampled_from([{"type": "text"}, {"type": "json_object"}]) | st.builds(
    lambda name, rest: {"type": "json_schema", "json_schema": {"name": name, **rest}},
    names,
    st.fixed_dictionaries({}, optional={"schema": json_objects, "description": text, "strict": st.booleans()}),
)
request_fields = st.fixed_dictionaries(
    {},
    optional={
        "tools": st.lists(tools, min_size=1, max_size=3),
        "tool_choice": tool_choices,
        "response_format": response_formats,
        "parallel_tool_calls": st.booleans(),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 1_000_000),
        "max_completion_tokens": st.integers(1, 1_000_000),
        "stop": st.lists(text, max_size=4),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "n": st.integers(1, 128),
        "user": text,
        "stream": st.just(True),
        "stream_options": st.builds(lambda u, x: {"include_usage": u, **x}, st.booleans(), json_objects),
    },
)
top_level_extra = extra_fields(
    {"model", "messages", "tools", "tool_choice", "response_format", "stream", "stream_options", "parallel_tool_calls",
     "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "user"}
)  # fmt: skip


@PROPERTIES
@given(st.text(min_size=1, max_size=40), conversations(), request_fields, top_level_extra)
def test_a_request_read_and_written_upstream_is_the_request_the_client_sent(
    model: str, messages: list[dict[str, Any]], fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    body = {"model": model, "messages": messages, **fields, **extra}
    assert encode_chat_request(parse_chat_request(body), always_include_usage=False) == body


plain_conversations = st.lists(
    st.builds(
        lambda role, content: {"role": role, "content": content},
        st.sampled_from(["system", "developer", "user", "assistant"]),
        text,
    ),
    min_size=1,
    max_size=4,
)
# Options alone (no tools, choices or formats): bodies that can be relayed as they are.
plain_fields = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.integers(0, 2) | st.floats(0, 2),
        "max_tokens": st.integers(1, 1_000_000),
        "user": text,
        "stream": st.booleans(),
        "stream_options": st.builds(lambda u, x: {"include_usage": u, **x}, st.booleans(), json_objects),
    },
)
# What the codec would write otherwise: a null option, one stop string.
rewritten_fields: st.SearchStrategy[dict[str, Any]] = st.just({}) | st.fixed_dictionaries(
    {}, optional={"temperature": st.none(), "seed": st.none(), "stop": text}
)


@PROPERTIES
@given(
    st.text(min_size=1, max_size=40),
    plain_conversations | conversations(),
    plain_fields | request_fields,
    rewritten_fields,
    top_level_extra,
    st.booleans(),
    st.booleans(),
)
def test_a_request_sent_as_the_client_wrote_it_is_the_request_its_fields_would_write(
    model: str,
    messages: list[dict[str, Any]],
    fields: dict[str, Any],
    rewritten: dict[str, Any],
    extra: dict[str, Any],
    made_a_stream: bool,
    always_include_usage: bool,
) -> None:
    # The client's body relayed (LLMRequest.wire) against the request written field by field (a copy: no wire),
    # addressed to another model, streamed when the /stream route makes it one.
    request = parse_chat_request({"model": model, "messages": messages, **fields, **rewritten, **extra})
    request.stream = request.stream or made_a_stream
    upstream = request.for_model("upstream-model")
    written = dataclasses.replace(upstream)

    assert written.wire is None
    assert encode_chat_request(upstream, always_include_usage=always_include_usage) == encode_chat_request(
        written, always_include_usage=always_include_usage
    )


# ---------------------------------------------------------------------------------- upstream responses

finish_reasons = st.none() | st.sampled_from([f.value for f in FinishReason])
usages = st.builds(
    lambda p, c, x: {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c, **x},
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 100)}),
            "completion_tokens_details": st.fixed_dictionaries({"reasoning_tokens": st.integers(0, 100)}),
            "cost": st.floats(0, 1),
        },
    ),
)
tool_calls = st.lists(
    st.builds(lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}}, ids, names, text),
    max_size=3,
    unique_by=lambda call: call["id"],
)
replies = st.builds(
    lambda content, refusal, calls, x: {
        **x, "role": "assistant", "content": content, "refusal": refusal, **({"tool_calls": calls} if calls else {})
    },
    st.none() | text,
    st.none() | text,
    tool_calls,
    extra_fields({"role", "content", "refusal", "tool_calls"}),
)  # fmt: skip
response_extra = extra_fields({"id", "object", "created", "model", "choices", "usage", "system_fingerprint"})


#: A choice's own fields the codec does not know (OpenRouter's native_finish_reason, Azure's content_filter_results).
choice_extra = extra_fields({"index", "message", "delta", "logprobs", "finish_reason"})
Choices = list[tuple[dict[str, Any], str | None, Any, dict[str, Any]]]


def _upstream(kind: str, key: str, choices: Choices, usage: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """An upstream's completion (`key` "message") or chunk (`key` "delta") body."""
    listed = [
        {**own, "index": i, key: reply, "logprobs": logprobs, "finish_reason": finish}
        for i, (reply, finish, logprobs, own) in enumerate(choices)
    ]
    return {**fields, "object": kind, "choices": listed, "usage": usage}


def _normalised(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**c, "id": normalize_tool_call_id(c["id"], PROVIDER)[0]} for c in calls]


@PROPERTIES
@given(
    st.lists(st.tuples(replies, finish_reasons, st.none() | json_objects, choice_extra), min_size=1, max_size=3),
    st.none() | usages,
    st.fixed_dictionaries(
        {"id": text, "created": st.integers(0, 2**40), "model": text}, optional={"system_fingerprint": text}
    ),
    response_extra,
)
def test_a_response_read_and_written_to_the_client_is_what_the_upstream_sent(
    choices: Choices, usage: Any, top: dict[str, Any], extra: dict[str, Any]
) -> None:
    upstream = _upstream("chat.completion", "message", choices, usage, top | extra)
    originals = {c["id"] for message, _, _, _ in choices for c in message.get("tool_calls", ())}
    remembered: dict[str, ProviderCallData] = {}

    written = encode_chat_response(decode_chat_response(upstream, PROVIDER, remembered.__setitem__))

    for choice in upstream["choices"]:
        if "tool_calls" in choice["message"]:
            choice["message"]["tool_calls"] = _normalised(choice["message"]["tool_calls"])
    assert written == upstream
    assert {data.provider_id for data in remembered.values()} == originals


delta_tool_calls = st.lists(
    st.builds(
        lambda index, start, function: {
            "index": index,
            **({"id": start, "type": "function"} if start else {}),
            **({"function": function} if function else {}),
        },
        st.integers(0, 5),
        st.none() | ids,
        st.fixed_dictionaries({}, optional={"name": names, "arguments": text}),
    ),
    max_size=2,
)  # fmt: skip
deltas = st.builds(
    lambda fields, calls, x: {**x, **fields, **({"tool_calls": calls} if calls else {})},
    st.fixed_dictionaries(
        {}, optional={"role": st.sampled_from([r.value for r in Role]), "content": text, "refusal": text}
    ),
    delta_tool_calls,
    extra_fields({"role", "content", "refusal", "tool_calls"}),
)


chunk_choices = st.lists(
    st.tuples(deltas, finish_reasons, st.none() | json_objects, choice_extra), min_size=1, max_size=2
)


@PROPERTIES
@given(
    # A usage chunk has no choices (OpenRouter's empty choice beside it is dropped: test_openai_format.py).
    st.tuples(chunk_choices, st.none()) | st.tuples(st.just([]), usages),
    st.fixed_dictionaries(
        {"id": text, "created": st.integers(0, 2**40), "model": text}, optional={"system_fingerprint": text}
    ),
    response_extra,
)
def test_a_chunk_read_and_written_to_the_client_is_what_the_upstream_sent(
    choices_and_usage: tuple[Choices, Any],
    top: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    choices, usage = choices_and_usage
    upstream = _upstream("chat.completion.chunk", "delta", choices, usage, top | extra)

    written = encode_chat_chunk(decode_chat_chunk(upstream, PROVIDER), include_usage=True)

    for choice in upstream["choices"]:
        for call in choice["delta"].get("tool_calls", ()):
            if "id" in call:
                call["id"] = normalize_tool_call_id(call["id"], PROVIDER)[0]
    assert written == upstream
