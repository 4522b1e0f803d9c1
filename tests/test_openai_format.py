"""The OpenAI Chat Completions codec: request parsing/validation, encoding, response and chunk codecs."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import (
    Choice,
    ChunkChoice,
    FinishReason,
    ImagePart,
    InvalidRequestError,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from llm_service.core.llm.openai_format import (
    decode_chat_chunk,
    decode_chat_response,
    encode_chat_chunk,
    encode_chat_request,
    encode_chat_response,
    parse_chat_request,
)
from llm_service.core.llm.tool_ids import normalize_tool_call_id

CALL_ID = "call_q8ZkP1xV3mT6nB0rL2sW9yHc"
#: What clients see for CALL_ID issued by OpenAI (tool_ids.normalize_tool_call_id).
CLIENT_CALL_ID = normalize_tool_call_id(CALL_ID, ProviderID.OPENAI)[0]
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}

# Every known field set, in the form encode_chat_request writes back, plus unknown fields.
FULL_BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "What is in this picture and what's the weather in Oslo?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": CALL_ID,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"temp_c":4}', "tool_call_id": CALL_ID},
        {"role": "assistant", "content": "It is 4 °C.", "refusal": "partly"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER_PARAMS,
                "strict": True,
            },
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "description": "The answer",
            "schema": ANSWER_SCHEMA,
            "strict": True,
        },
    },
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 100,
    "max_completion_tokens": 256,
    "stop": ["END", "STOP"],
    "seed": 42,
    "n": 1,
    "user": "user-1",
    "stream": True,
    "stream_options": {"include_usage": True},
    "logprobs": True,
    "reasoning_effort": "low",
    "metadata": {"k": "v"},
}

FULL_REQUEST = LLMRequest(
    model="gpt-4o",
    messages=[
        Message(role=Role.DEVELOPER, content="Answer briefly."),
        Message(
            role=Role.USER,
            name="ann",
            content=[
                TextPart("What is in this picture and what's the weather in Oslo?"),
                ImagePart(url="data:image/png;base64,iVBORw0KGgo=", detail="low"),
                ImagePart(url="https://example.com/cat.png"),
            ],
        ),
        Message(
            role=Role.ASSISTANT,
            content=None,
            tool_calls=[ToolCall(id=CALL_ID, name="get_weather", arguments='{"city":"Oslo"}')],
        ),
        Message(role=Role.TOOL, content='{"temp_c":4}', tool_call_id=CALL_ID),
        Message(role=Role.ASSISTANT, content="It is 4 °C.", refusal="partly"),
    ],
    tools=[ToolDefinition(name="get_weather", description="Current weather", parameters=WEATHER_PARAMS, strict=True)],
    tool_choice=ToolChoice(mode="auto"),
    parallel_tool_calls=True,
    response_format=ResponseFormat(
        type="json_schema", name="answer", schema=ANSWER_SCHEMA, description="The answer", strict=True
    ),
    temperature=0.7,
    top_p=0.9,
    max_tokens=100,
    max_completion_tokens=256,
    stop=["END", "STOP"],
    seed=42,
    n=1,
    user="user-1",
    stream=True,
    include_usage=True,
    extra={
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "reasoning_effort": "low",
        "metadata": {"k": "v"},
    },
)


def minimal(**fields: Any) -> dict[str, Any]:
    """A valid minimal body with `fields` added or replaced."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}


# ==================================================================================================
# parse_chat_request
# ==================================================================================================


def test_parse_full_request_maps_every_field_to_the_domain():
    assert parse_chat_request(copy.deepcopy(FULL_BODY)) == FULL_REQUEST


def test_parse_minimal_request_leaves_optional_fields_unset():
    assert parse_chat_request(minimal()) == LLMRequest(
        model="gpt-4o-mini", messages=[Message(role=Role.USER, content="hi")]
    )


def test_parse_keeps_unknown_fields_in_extra_and_only_those():
    request = parse_chat_request(
        minimal(logprobs=True, reasoning_effort="high", metadata={"a": "b"}, temperature=1, stream=False)
    )

    assert request.extra == {"logprobs": True, "reasoning_effort": "high", "metadata": {"a": "b"}}


def test_parse_stop_string_becomes_a_one_element_list():
    assert parse_chat_request(minimal(stop="END")).stop == ["END"]


def test_parse_integer_temperature_becomes_float():
    request = parse_chat_request(minimal(temperature=1, top_p=0))

    assert request.temperature == 1.0
    assert isinstance(request.temperature, float)
    assert request.top_p == 0.0


@pytest.mark.parametrize(
    ("stream", "stream_options", "expected_stream", "expected_usage"),
    [
        pytest.param(True, {"include_usage": True}, True, True, id="stream-with-usage"),
        pytest.param(True, {"include_usage": False}, True, False, id="stream-usage-false"),
        pytest.param(True, None, True, False, id="stream-no-options"),
        pytest.param(False, None, False, False, id="no-stream"),
        pytest.param(None, {}, False, False, id="stream-absent"),
    ],
)
def test_parse_stream_and_include_usage(stream, stream_options, expected_stream, expected_usage):
    body = minimal()
    if stream is not None:
        body["stream"] = stream
    if stream_options is not None:
        body["stream_options"] = stream_options

    request = parse_chat_request(body)

    assert (request.stream, request.include_usage) == (expected_stream, expected_usage)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("none", ToolChoice(mode="none"), id="none"),
        pytest.param("auto", ToolChoice(mode="auto"), id="auto"),
        pytest.param("required", ToolChoice(mode="required"), id="required"),
        pytest.param(
            {"type": "function", "function": {"name": "get_weather"}},
            ToolChoice(mode="required", functions=("get_weather",)),
            id="named-function",
        ),
        pytest.param(
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [
                        {"type": "function", "function": {"name": "a"}},
                        {"type": "function", "function": {"name": "b"}},
                    ],
                },
            },
            ToolChoice(mode="auto", functions=("a", "b")),
            id="allowed-tools-auto",
        ),
        pytest.param(
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "a"}}],
                },
            },
            ToolChoice(mode="required", functions=("a",)),
            id="allowed-tools-required",
        ),
    ],
)
def test_parse_tool_choice_variants(raw, expected):
    assert parse_chat_request(minimal(tool_choice=raw)).tool_choice == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"type": "text"}, ResponseFormat(type="text"), id="text"),
        pytest.param({"type": "json_object"}, ResponseFormat(type="json_object"), id="json-object"),
        pytest.param(
            {"type": "json_schema", "json_schema": {"name": "n"}},
            ResponseFormat(type="json_schema", name="n"),
            id="json-schema-name-only",
        ),
    ],
)
def test_parse_response_format_variants(raw, expected):
    assert parse_chat_request(minimal(response_format=raw)).response_format == expected


def test_parse_assistant_message_with_tool_calls_and_no_content_is_valid():
    request = parse_chat_request(
        minimal(
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
                },
            ]
        )
    )

    assert request.messages[1] == Message(
        role=Role.ASSISTANT, content=None, tool_calls=[ToolCall(id="c1", name="f", arguments="")]
    )


def _user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

INVALID_BODIES = [
    pytest.param(minimal(model=None), "model", id="missing-model"),
    pytest.param({"messages": [_user("hi")]}, "model", id="model-absent"),
    pytest.param(minimal(model=""), "model", id="empty-model"),
    pytest.param(minimal(model=4), "model", id="model-not-string"),
    pytest.param({"model": "m"}, "messages", id="missing-messages"),
    pytest.param(minimal(messages="hi"), "messages", id="messages-not-a-list"),
    pytest.param(minimal(messages={"role": "user"}), "messages", id="messages-an-object"),
    pytest.param(minimal(messages=[]), "messages", id="messages-empty"),
    pytest.param(minimal(messages=["hi"]), "messages[0]", id="message-not-an-object"),
    pytest.param(minimal(messages=[{"content": "hi"}]), "messages[0].role", id="role-missing"),
    pytest.param(
        minimal(messages=[_user("hi"), {"role": "robot", "content": "x"}]),
        "messages[1].role",
        id="role-invalid",
    ),
    pytest.param(
        minimal(messages=[{"role": "function", "content": "x"}]),
        "messages[0].role",
        id="role-legacy-function",
    ),
    pytest.param(minimal(messages=[{"role": "user"}]), "messages[0].content", id="user-content-missing"),
    pytest.param(minimal(messages=[_user(5)]), "messages[0].content", id="content-a-number"),
    pytest.param(minimal(messages=[_user(["hi"])]), "messages[0].content[0]", id="content-part-not-object"),
    pytest.param(
        minimal(messages=[_user([{"type": "text", "text": "hi"}, {"input_audio": {}}])]),
        "messages[0].content[1].type",
        id="content-part-without-type",
    ),
    pytest.param(minimal(messages=[_user([{"type": "text"}])]), "messages[0].content[0].text", id="text-part-no-text"),
    pytest.param(
        minimal(messages=[_user([{"type": "image_url", "image_url": {"detail": "low"}}])]),
        "messages[0].content[0].image_url.url",
        id="image-part-no-url",
    ),
    pytest.param(
        minimal(messages=[_user([{"type": "image_url", "image_url": "https://x/y.png"}])]),
        "messages[0].content[0].image_url",
        id="image-url-a-string",
    ),
    pytest.param(
        minimal(messages=[{"role": "user", "content": "x", "name": 1}]),
        "messages[0].name",
        id="name-not-string",
    ),
    pytest.param(
        minimal(messages=[_user("hi"), {"role": "tool", "content": "42"}]),
        "messages[1].tool_call_id",
        id="tool-message-no-tool-call-id",
    ),
    pytest.param(
        minimal(messages=[{"role": "tool", "tool_call_id": "c1"}]),
        "messages[0].content",
        id="tool-message-no-content",
    ),
    pytest.param(
        minimal(messages=[{"role": "assistant", "tool_calls": "x"}]),
        "messages[0].tool_calls",
        id="tool-calls-not-a-list",
    ),
    pytest.param(
        minimal(messages=[{"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": {"arguments": "{}"}}]}]),
        "messages[0].tool_calls[0].function.name",
        id="tool-call-no-name",
    ),
    pytest.param(
        minimal(messages=[{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]),
        "messages[0].tool_calls[0].id",
        id="tool-call-no-id",
    ),
    pytest.param(
        minimal(messages=[{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}]),
        "messages[0].tool_calls[0].function",
        id="tool-call-no-function",
    ),
    pytest.param(
        minimal(messages=[{"role": "assistant", "tool_calls": [TOOL_CALL], "refusal": 1}]),
        "messages[0].refusal",
        id="refusal-not-string",
    ),
    pytest.param(minimal(temperature=3), "temperature", id="temperature-above-2"),
    pytest.param(minimal(temperature=-0.1), "temperature", id="temperature-negative"),
    pytest.param(minimal(temperature=True), "temperature", id="temperature-bool"),
    pytest.param(minimal(temperature="0.5"), "temperature", id="temperature-string"),
    pytest.param(minimal(top_p=1.5), "top_p", id="top-p-above-1"),
    pytest.param(minimal(max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(minimal(max_tokens=1.5), "max_tokens", id="max-tokens-float"),
    pytest.param(minimal(max_tokens=True), "max_tokens", id="max-tokens-bool"),
    pytest.param(minimal(max_completion_tokens=-1), "max_completion_tokens", id="max-completion-tokens-negative"),
    pytest.param(minimal(n=0), "n", id="n-zero"),
    pytest.param(minimal(seed="7"), "seed", id="seed-string"),
    pytest.param(minimal(seed=False), "seed", id="seed-bool"),
    pytest.param(minimal(stop=5), "stop", id="stop-number"),
    pytest.param(minimal(stop=["a", 1]), "stop", id="stop-list-with-number"),
    pytest.param(minimal(user=5), "user", id="user-not-string"),
    pytest.param(minimal(stream="yes"), "stream", id="stream-string"),
    pytest.param(minimal(stream=1), "stream", id="stream-int"),
    pytest.param(minimal(stream_options=True), "stream_options", id="stream-options-not-object"),
    pytest.param(
        minimal(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        id="include-usage-string",
    ),
    pytest.param(minimal(parallel_tool_calls="true"), "parallel_tool_calls", id="parallel-tool-calls-string"),
    pytest.param(minimal(tools={"type": "function"}), "tools", id="tools-not-a-list"),
    pytest.param(minimal(tools=[{"type": "function", "function": {}}]), "tools[0].function.name", id="tool-no-name"),
    pytest.param(minimal(tools=[{"type": "function"}]), "tools[0].function", id="tool-no-function"),
    pytest.param(minimal(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type", id="tool-type-custom"),
    pytest.param(minimal(tools=["f"]), "tools[0].type", id="tool-not-object"),
    pytest.param(
        minimal(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
        "tools[0].function.parameters",
        id="tool-parameters-string",
    ),
    pytest.param(minimal(tool_choice="sometimes"), "tool_choice", id="tool-choice-garbage-string"),
    pytest.param(minimal(tool_choice=1), "tool_choice", id="tool-choice-number"),
    pytest.param(minimal(tool_choice={"type": "function"}), "tool_choice", id="tool-choice-function-no-body"),
    pytest.param(
        minimal(tool_choice={"type": "function", "function": {}}),
        "tool_choice.function.name",
        id="tool-choice-function-no-name",
    ),
    pytest.param(
        minimal(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": []}}),
        "tool_choice",
        id="allowed-tools-mode-none",
    ),
    pytest.param(
        minimal(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}),
        "tool_choice.allowed_tools.tools",
        id="allowed-tools-no-tools",
    ),
    pytest.param(
        minimal(
            tool_choice={
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": "f"}]},
            }
        ),
        "tool_choice.allowed_tools.tools[0].function",
        id="allowed-tools-function-not-object",
    ),
    pytest.param(
        minimal(
            tool_choice={
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]},
            }
        ),
        "tool_choice.allowed_tools.tools[0].function",
        id="allowed-tools-tool-without-name",
    ),
    pytest.param(minimal(response_format="json"), "response_format", id="response-format-string"),
    pytest.param(minimal(response_format={"type": "xml"}), "response_format.type", id="response-format-type"),
    pytest.param(
        minimal(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        id="json-schema-missing",
    ),
    pytest.param(
        minimal(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        id="json-schema-no-name",
    ),
]


@pytest.mark.parametrize(("body", "param"), INVALID_BODIES)
def test_invalid_body_raises_invalid_request_error_naming_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body)

    assert caught.value.param == param
    assert caught.value.code in ("invalid_value", "missing_required_parameter")
    assert param in caught.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(minimal(model=None), "missing_required_parameter", id="missing"),
        pytest.param(minimal(temperature=3), "invalid_value", id="invalid"),
    ],
)
def test_invalid_body_error_code_distinguishes_missing_from_invalid(body, code):
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body)

    assert caught.value.code == code


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="array"),
        pytest.param("hello", id="string"),
        pytest.param(None, id="null"),
        pytest.param(42, id="number"),
    ],
)
def test_body_that_is_not_an_object_is_rejected_without_param(body):
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body)

    assert caught.value.param is None
    assert caught.value.code == "invalid_json"


# ==================================================================================================
# encode_chat_request
# ==================================================================================================


def test_encode_of_parsed_full_request_reproduces_the_body():
    body = copy.deepcopy(FULL_BODY)

    encoded = encode_chat_request(parse_chat_request(body), always_include_usage=False)

    assert encoded == FULL_BODY
    assert json.loads(json.dumps(encoded)) == FULL_BODY  # JSON-serialisable as is


def test_encode_minimal_request_writes_only_set_fields():
    encoded = encode_chat_request(parse_chat_request(minimal()), always_include_usage=False)

    assert encoded == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "tool_choice",
    [
        pytest.param("none", id="none"),
        pytest.param("required", id="required"),
        pytest.param({"type": "function", "function": {"name": "get_weather"}}, id="named-function"),
        pytest.param(
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [
                        {"type": "function", "function": {"name": "a"}},
                        {"type": "function", "function": {"name": "b"}},
                    ],
                },
            },
            id="allowed-tools-auto",
        ),
        pytest.param(
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [
                        {"type": "function", "function": {"name": "a"}},
                        {"type": "function", "function": {"name": "b"}},
                    ],
                },
            },
            id="allowed-tools-required",
        ),
    ],
)
def test_encode_round_trips_tool_choice(tool_choice):
    encoded = encode_chat_request(parse_chat_request(minimal(tool_choice=tool_choice)), always_include_usage=False)

    assert encoded["tool_choice"] == tool_choice


@pytest.mark.parametrize(
    "response_format",
    [
        pytest.param({"type": "text"}, id="text"),
        pytest.param({"type": "json_object"}, id="json-object"),
        pytest.param({"type": "json_schema", "json_schema": {"name": "n", "schema": {}}}, id="json-schema"),
    ],
)
def test_encode_round_trips_response_format(response_format):
    encoded = encode_chat_request(
        parse_chat_request(minimal(response_format=response_format)), always_include_usage=False
    )

    assert encoded["response_format"] == response_format


def test_encode_keeps_extra_fields_and_known_fields_win():
    request = parse_chat_request(minimal(logprobs=True, top_logprobs=2, service_tier="flex"))
    request.extra["model"] = "smuggled"  # a known name in extra must not override the real field

    encoded = encode_chat_request(request, always_include_usage=False)

    assert encoded["logprobs"] is True
    assert encoded["top_logprobs"] == 2
    assert encoded["service_tier"] == "flex"
    assert encoded["model"] == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("stream", "include_usage", "always", "expected_options"),
    [
        pytest.param(True, False, True, {"include_usage": True}, id="stream-always-adds-usage"),
        pytest.param(True, True, False, {"include_usage": True}, id="stream-client-asked"),
        pytest.param(True, True, True, {"include_usage": True}, id="stream-both"),
        pytest.param(True, False, False, None, id="stream-nobody-asked"),
        pytest.param(False, False, True, None, id="no-stream-always-ignored"),
        pytest.param(False, True, True, None, id="no-stream-client-option-dropped"),
    ],
)
def test_encode_stream_options(stream, include_usage, always, expected_options):
    request = LLMRequest(
        model="m",
        messages=[Message(role=Role.USER, content="hi")],
        stream=stream,
        include_usage=include_usage,
    )

    encoded = encode_chat_request(request, always_include_usage=always)

    assert encoded.get("stream_options") == expected_options
    assert encoded.get("stream") is (True if stream else None)


# ==================================================================================================
# The client's body relayed (LLMRequest.wire)
# ==================================================================================================


def test_a_plain_body_is_kept_and_sent_as_the_client_wrote_it_but_for_the_model():
    body = minimal(temperature=1, max_tokens=5, user="u", stream=False, metadata={"team": "agents"})
    sent = copy.deepcopy(body)

    request = parse_chat_request(body)
    encoded = encode_chat_request(request.for_model("upstream-model"), always_include_usage=True)

    assert request.wire is body
    del sent["stream"]  # false: written as the fields would be, without it
    assert encoded == {**sent, "model": "upstream-model"}
    assert type(encoded["temperature"]) is int  # as the client wrote it (the fields hold 1.0)
    assert body == {**sent, "stream": False}  # the client's body itself is not changed


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"tools": [{"type": "function", "function": {"name": "f"}}]}, id="tools"),
        pytest.param({"tools": []}, id="empty-tools"),
        pytest.param({"tool_choice": "auto"}, id="tool-choice"),
        pytest.param({"response_format": {"type": "text"}}, id="response-format"),
        pytest.param({"tool_choice": None}, id="null-tool-choice"),
        pytest.param({"temperature": None}, id="null-option"),
        pytest.param({"stop": "\n"}, id="one-stop-string"),
        pytest.param({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, id="message-name"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, id="parts"),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "4"},
                ]
            },
            id="tool-calls",
        ),
    ],
)
def test_a_body_the_fields_would_be_written_otherwise_is_not_kept(fields):
    request = parse_chat_request(minimal(**fields))

    assert request.wire is None
    assert encode_chat_request(request, always_include_usage=False) == encode_chat_request(
        dataclasses.replace(request), always_include_usage=False
    )


def test_a_request_changed_by_a_copy_is_written_from_its_fields():
    request = parse_chat_request(minimal())
    changed = dataclasses.replace(request, messages=[*request.messages, Message(role=Role.ASSISTANT, content="Par")])

    encoded = encode_chat_request(changed, always_include_usage=False)

    assert changed.wire is None
    assert encoded["messages"][-1] == {"role": "assistant", "content": "Par"}


@pytest.mark.parametrize("always", [True, False])
def test_a_kept_body_made_a_stream_is_sent_as_one(always):
    # The /stream route streams a body that did not ask to: the relayed body says so, as the fields would.
    request = parse_chat_request(minimal(stream_options={"include_usage": False, "include_obfuscation": False}))
    request.stream = True

    encoded = encode_chat_request(request, always_include_usage=always)

    assert encoded == encode_chat_request(dataclasses.replace(request), always_include_usage=always)
    assert encoded["stream"] is True
    assert encoded["stream_options"] == {"include_usage": always, "include_obfuscation": False}


# ==================================================================================================
# decode_chat_response / decode_chat_chunk (shapes from provider-protocols.md §1.4 / §1.5)
# ==================================================================================================

RESPONSE_JSON: dict[str, Any] = {
    "id": "chatcmpl-7TqR2mN9xK4bV1cZ8wL0pJ3s",
    "object": "chat.completion",
    "created": 1733140800,
    "model": "gpt-4o-2024-08-06",
    "service_tier": "default",
    "system_fingerprint": "fp_5a1c9e0b2d",
    "choices": [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
        }
    ],
    "usage": {
        "prompt_tokens": 91,
        "completion_tokens": 18,
        "total_tokens": 109,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}

RESPONSE = LLMResponse(
    id="chatcmpl-7TqR2mN9xK4bV1cZ8wL0pJ3s",
    created=1733140800,
    model="gpt-4o-2024-08-06",
    provider=ProviderID.OPENAI,
    choices=[
        Choice(
            index=0,
            message=Message(
                role=Role.ASSISTANT,
                content=None,
                tool_calls=[
                    ToolCall(id=CLIENT_CALL_ID, name="get_weather", arguments='{"city":"Oslo"}', provider_id=CALL_ID)
                ],
                extra={"annotations": []},
            ),
            finish_reason=FinishReason.TOOL_CALLS,
        )
    ],
    usage=Usage(
        prompt_tokens=91,
        completion_tokens=18,
        total_tokens=109,
        cached_tokens=0,
        reasoning_tokens=0,
        extra={
            "prompt_tokens_details": RESPONSE_JSON["usage"]["prompt_tokens_details"],
            "completion_tokens_details": RESPONSE_JSON["usage"]["completion_tokens_details"],
        },
    ),
    system_fingerprint="fp_5a1c9e0b2d",
    extra={"service_tier": "default"} if "service_tier" in RESPONSE_JSON else {},
)

TEXT_RESPONSE_JSON: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1733140801,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            "logprobs": None,
            "finish_reason": "length",
        },
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def test_decode_chat_response_with_tool_call():
    assert decode_chat_response(copy.deepcopy(RESPONSE_JSON), ProviderID.OPENAI) == RESPONSE


def test_decode_chat_response_with_text_and_refusal_choices():
    response = decode_chat_response(copy.deepcopy(TEXT_RESPONSE_JSON), ProviderID.OPENROUTER)

    assert response == LLMResponse(
        id="chatcmpl-1",
        created=1733140801,
        model="gpt-4o-mini-2024-07-18",
        provider=ProviderID.OPENROUTER,
        choices=[
            Choice(
                index=0,
                message=Message(role=Role.ASSISTANT, content="Hello!", extra={"annotations": []}),
                finish_reason=FinishReason.STOP,
            ),
            Choice(
                index=1,
                message=Message(role=Role.ASSISTANT, content=None, refusal="I can't help with that."),
                finish_reason=FinishReason.LENGTH,
            ),
        ],
        usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
    )


def test_decode_usage_computes_missing_total():
    data = {**TEXT_RESPONSE_JSON, "usage": {"prompt_tokens": 5, "completion_tokens": 2}}

    assert decode_chat_response(data, ProviderID.OPENAI).usage == Usage(5, 2, 7)


def test_decode_unknown_finish_reason_becomes_none():
    data = copy.deepcopy(TEXT_RESPONSE_JSON)
    data["choices"][0]["finish_reason"] = "error"

    assert decode_chat_response(data, ProviderID.OPENAI).choices[0].finish_reason is None


def _chunk_json(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9a",
        "object": "chat.completion.chunk",
        "created": 1733140800,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_5a1c9e0b2d",
        "choices": choices,
        "usage": usage,
    }


def _chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> LLMChunk:
    return LLMChunk(
        id="chatcmpl-9a",
        created=1733140800,
        model="gpt-4o-2024-08-06",
        provider=ProviderID.OPENAI,
        choices=choices,
        usage=usage,
        system_fingerprint="fp_5a1c9e0b2d",
    )


TOOL_STREAM = [
    pytest.param(
        _chunk_json(
            [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": CALL_ID,
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        ),
        _chunk(
            [
                ChunkChoice(
                    index=0,
                    role=Role.ASSISTANT,
                    tool_calls=[
                        ToolCallDelta(index=0, id=CLIENT_CALL_ID, name="get_weather", arguments="", provider_id=CALL_ID)
                    ],
                )
            ]
        ),
        id="first-tool-fragment",
    ),
    pytest.param(
        _chunk_json(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        ),
        _chunk([ChunkChoice(index=0, tool_calls=[ToolCallDelta(index=0, arguments='{"ci')])]),
        id="argument-fragment",
    ),
    pytest.param(
        _chunk_json(
            [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 1, "function": {"arguments": '"}'}}]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        ),
        _chunk([ChunkChoice(index=0, tool_calls=[ToolCallDelta(index=1, arguments='"}')])]),
        id="second-parallel-call-fragment",
    ),
    pytest.param(
        _chunk_json([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]),
        _chunk([ChunkChoice(index=0, finish_reason=FinishReason.TOOL_CALLS)]),
        id="closing-chunk",
    ),
    pytest.param(
        _chunk_json([], usage={"prompt_tokens": 91, "completion_tokens": 18, "total_tokens": 109}),
        _chunk([], usage=Usage(prompt_tokens=91, completion_tokens=18, total_tokens=109)),
        id="usage-only-chunk",
    ),
    pytest.param(
        _chunk_json(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        ),
        _chunk([ChunkChoice(index=0, role=Role.ASSISTANT, content="")]),
        id="text-first-chunk-empty-content",
    ),
    pytest.param(
        _chunk_json([{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}]),
        _chunk([ChunkChoice(index=0, content="Hel")]),
        id="text-content",
    ),
]


@pytest.mark.parametrize(("data", "expected"), TOOL_STREAM)
def test_decode_chat_chunk(data, expected):
    assert decode_chat_chunk(copy.deepcopy(data), ProviderID.OPENAI) == expected


def test_decode_chat_chunk_keeps_unknown_fields_for_the_client():
    data = _chunk_json([{"index": 0, "delta": {"content": "x", "reasoning": "hmm"}, "finish_reason": None}])
    data.update(provider="OpenAI", obfuscation="abc", service_tier="default")

    chunk = decode_chat_chunk(data, ProviderID.OPENAI)
    assert chunk.choices == [ChunkChoice(index=0, content="x", extra={"reasoning": "hmm"})]
    assert chunk.extra == {"provider": "OpenAI", "obfuscation": "abc", "service_tier": "default"}
    encoded = encode_chat_chunk(chunk, include_usage=False)
    assert encoded["provider"] == "OpenAI" and encoded["choices"][0]["delta"] == {"content": "x", "reasoning": "hmm"}


def test_response_side_fields_the_domain_does_not_model_reach_the_client():
    data = copy.deepcopy(TEXT_RESPONSE_JSON)
    data["service_tier"] = "default"
    data["choices"][0]["logprobs"] = {"content": [{"token": "Hello", "logprob": -0.1}]}
    data["usage"]["cost"] = 0.0012

    encoded = encode_chat_response(decode_chat_response(data, ProviderID.OPENAI))
    assert encoded["service_tier"] == "default"
    assert encoded["choices"][0]["logprobs"] == data["choices"][0]["logprobs"]
    assert encoded["choices"][0]["message"]["annotations"] == []
    assert encoded["usage"]["cost"] == 0.0012


# ==================================================================================================
# encode_chat_chunk / encode_chat_response
# ==================================================================================================


# Chunks without null-valued delta keys, which the encoder leaves out.
ROUND_TRIP_CHUNKS = {
    "argument-fragment",
    "second-parallel-call-fragment",
    "closing-chunk",
    "usage-only-chunk",
    "text-content",
}


@pytest.mark.parametrize(("raw", "chunk"), [p for p in TOOL_STREAM if p.id in ROUND_TRIP_CHUNKS])
def test_encode_chat_chunk_reproduces_the_openai_chunk(raw, chunk):
    assert encode_chat_chunk(chunk, include_usage=True) == raw


def test_encode_chat_chunk_first_tool_fragment_shape():
    chunk = _chunk(
        [
            ChunkChoice(
                index=0,
                role=Role.ASSISTANT,
                tool_calls=[ToolCallDelta(index=0, id=CALL_ID, name="get_weather", arguments="")],
            )
        ]
    )

    assert encode_chat_chunk(chunk, include_usage=False) == {
        "id": "chatcmpl-9a",
        "object": "chat.completion.chunk",
        "created": 1733140800,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_5a1c9e0b2d",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": CALL_ID,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


@pytest.mark.parametrize(
    ("chunk", "include_usage", "expected_usage"),
    [
        pytest.param(_chunk([ChunkChoice(index=0, content="x")]), False, "absent", id="normal-no-usage-asked"),
        pytest.param(_chunk([ChunkChoice(index=0, content="x")]), True, None, id="normal-usage-asked-is-null"),
        pytest.param(
            _chunk([], usage=Usage(3, 4, 7, cached_tokens=1, reasoning_tokens=2)),
            True,
            {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "total_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 1},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
            id="usage-chunk-usage-asked",
        ),
        pytest.param(_chunk([], usage=Usage(3, 4, 7)), False, "absent", id="usage-chunk-not-asked"),
    ],
)
def test_encode_chat_chunk_usage_key(chunk, include_usage, expected_usage):
    body = encode_chat_chunk(chunk, include_usage=include_usage)

    if expected_usage == "absent":
        assert "usage" not in body
    else:
        assert "usage" in body
        assert body["usage"] == expected_usage


def test_encode_chat_chunk_omits_system_fingerprint_when_unknown():
    chunk = LLMChunk(id="c", created=1, model="m", provider=ProviderID.OPENAI, choices=[ChunkChoice(index=0)])

    assert encode_chat_chunk(chunk, include_usage=False) == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}],
    }


def test_encode_chat_response_reproduces_the_upstream_body_exactly_but_the_normalised_tool_call_ids():
    expected = copy.deepcopy(RESPONSE_JSON)
    expected["choices"][0]["message"]["tool_calls"][0]["id"] = CLIENT_CALL_ID
    assert encode_chat_response(decode_chat_response(copy.deepcopy(RESPONSE_JSON), ProviderID.OPENAI)) == expected


def test_encode_chat_response_text_answer_without_usage():
    response = LLMResponse(
        id="r",
        created=2,
        model="m",
        provider=ProviderID.REMOTE,
        choices=[
            Choice(
                index=0,
                message=Message(role=Role.ASSISTANT, content=[TextPart("Hel"), TextPart("lo")]),
                finish_reason=FinishReason.STOP,
            ),
            Choice(index=1, message=Message(role=Role.ASSISTANT, content="x"), finish_reason=None),
        ],
    )

    assert encode_chat_response(response) == {
        "id": "r",
        "object": "chat.completion",
        "created": 2,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "x", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            },
        ],
        "usage": None,
    }


def test_unmodelled_content_parts_and_message_fields_pass_through_unchanged():
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    file_part = {"type": "file", "file": {"file_id": "file-abc"}}
    body = minimal(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "hear this"}, audio, file_part]},
            {"role": "assistant", "content": "ok", "audio": {"id": "audio_1"}},
        ]
    )
    request = parse_chat_request(body)

    encoded = encode_chat_request(request, always_include_usage=False)
    assert encoded["messages"] == body["messages"]
