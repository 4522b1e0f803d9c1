"""The domain <-> Vertex Gemini codec: request encoding and rejections, schema conversion, responses, streams."""

from __future__ import annotations

from typing import Any

import pytest

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.gemini_format import (
    FOREIGN_CALL_SIGNATURE,
    GeminiStreamTranslator,
    decode_gemini_response,
    encode_gemini_request,
    stable_call_id,
)
from llm_service.core.llm.gemini_schema import convert_schema
from llm_service.core.llm.models import (
    ChunkChoice,
    ContentFilterError,
    FinishReason,
    ImagePart,
    InvalidRequestError,
    LLMChunk,
    LLMRequest,
    Message,
    OpaquePart,
    ProviderConnectionError,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from llm_service.core.llm.tool_call_store import ProviderCallData
from llm_service.core.llm.tool_ids import normalize_tool_call_id, tool_call_ids

VERTEX = ProviderID.VERTEX_AI
MODEL = "gemini-2.5-flash"
CREATE_TIME = "2025-01-01T10:00:00.123456Z"
CREATED = 1735725600
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
GEMINI_WEATHER_PARAMS = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}
WEATHER = ToolDefinition(name="get_weather", description="Current weather", parameters=WEATHER_PARAMS)
TIME = ToolDefinition(name="get_time", parameters={"type": "object", "properties": {"tz": {"type": "string"}}})
HI = Message(role=Role.USER, content="Hi")


def user(content: Any) -> Message:
    return Message(role=Role.USER, content=content)


def request(*messages: Message, **fields: Any) -> LLMRequest:
    return LLMRequest(model=MODEL, messages=list(messages), **fields)


def encode(req: LLMRequest, call_data: dict[str, ProviderCallData] | None = None) -> dict[str, Any]:
    return encode_gemini_request(req, call_data or {})


class Recorder:
    """A `remember` callback that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ProviderCallData]] = []

    def __call__(self, call_id: str, data: ProviderCallData) -> None:
        self.calls.append((call_id, data))


# ==================================================================================================
# Request: conversation
# ==================================================================================================


def test_system_messages_go_to_system_instruction_and_same_role_turns_merge():
    req = request(
        Message(role=Role.SYSTEM, content="Answer briefly."),
        Message(role=Role.USER, content="Hello", name="ann"),
        Message(role=Role.DEVELOPER, content=[TextPart("Be "), TextPart("kind.")]),
        Message(role=Role.USER, content=[TextPart("What is 2+2?")]),
        Message(role=Role.ASSISTANT, content="4."),
        Message(role=Role.ASSISTANT, content=[TextPart("Anything else?")], refusal="no"),
        Message(role=Role.USER, content="No."),
    )
    assert encode(req) == {
        "systemInstruction": {"parts": [{"text": "Answer briefly."}, {"text": "Be kind."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}, {"text": "What is 2+2?"}]},
            {"role": "model", "parts": [{"text": "4."}, {"text": "Anything else?"}]},
            {"role": "user", "parts": [{"text": "No."}]},
        ],
    }


def test_refusal_only_and_empty_assistant_messages_contribute_nothing():
    req = request(
        user("Hi"),
        Message(role=Role.ASSISTANT, content=None, refusal="I can't."),
        Message(role=Role.ASSISTANT, content=""),
        Message(role=Role.ASSISTANT, content=[OpaquePart("refusal", {"type": "refusal", "refusal": "No."})]),
        user([TextPart(""), TextPart("Again")]),
    )
    assert encode(req) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}, {"text": "Again"}]}]}


def parallel_call_conversation() -> LLMRequest:
    return request(
        Message(role=Role.SYSTEM, content="Use the tools."),
        user("Weather and time in Oslo?"),
        Message(
            role=Role.ASSISTANT,
            content="Let me check.",
            tool_calls=[
                ToolCall(id="call_A", name="get_weather", arguments='{"city": "Oslo"}'),
                ToolCall(id="call_B", name="get_time", arguments=""),
            ],
        ),
        Message(role=Role.TOOL, content='{"temp_c": 4}', tool_call_id="call_A"),
        Message(role=Role.TOOL, content=[TextPart("10:"), TextPart("42")], tool_call_id="call_B"),
        Message(role=Role.ASSISTANT, content="4 °C and 10:42."),
        user("Thanks. And tomorrow?"),
        tools=[WEATHER, TIME],
    )


def test_parallel_tool_calls_and_results_reattach_known_ids_and_signatures():
    call_data = {"call_A": ProviderCallData(provider_id="fc-1", thought_signature="c2lnQQ==")}
    assert encode(parallel_call_conversation(), call_data) == {
        "systemInstruction": {"parts": [{"text": "Use the tools."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather and time in Oslo?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me check."},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "fc-1"},
                        "thoughtSignature": "c2lnQQ==",
                    },
                    # A call Gemini is not known to have issued: Google's placeholder signature.
                    {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": FOREIGN_CALL_SIGNATURE},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 4}, "id": "fc-1"}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "10:42"}}},
                ],
            },
            {"role": "model", "parts": [{"text": "4 °C and 10:42."}]},
            {"role": "user", "parts": [{"text": "Thanks. And tomorrow?"}]},
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {"name": "get_weather", "description": "Current weather", "parameters": GEMINI_WEATHER_PARAMS},
                    {"name": "get_time", "parameters": {"type": "OBJECT", "properties": {"tz": {"type": "STRING"}}}},
                ]
            }
        ],
    }


def test_signature_without_provider_id_sends_no_id():
    call_data = {"call_B": ProviderCallData(thought_signature="c2lnQg==")}
    contents = encode(parallel_call_conversation(), call_data)["contents"]
    assert contents[1]["parts"][2] == {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "c2lnQg=="}
    assert contents[2]["parts"][1] == {"functionResponse": {"name": "get_time", "response": {"output": "10:42"}}}


def _weather_and_time_turn(*results: Message, then: tuple[Message, ...] = ()) -> LLMRequest:
    calls = [
        ToolCall(id="a", name="get_weather", arguments='{"city": "Oslo"}'),
        ToolCall(id="b", name="get_time", arguments='{"tz": "Europe/Paris"}'),
    ]
    return request(HI, Message(role=Role.ASSISTANT, tool_calls=calls), *results, *then, tools=[WEATHER, TIME])


def test_tool_results_sent_in_completion_order_go_in_the_order_of_the_calls():
    results = (
        Message(role=Role.TOOL, content="14:05", tool_call_id="b"),
        Message(role=Role.TOOL, content='{"temp_c": 4}', tool_call_id="a"),
    )
    call_data = {"b": ProviderCallData(provider_id="fc-b")}
    contents = encode(_weather_and_time_turn(*results, then=(user("Thanks"),)), call_data)["contents"]
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 4}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "14:05"}, "id": "fc-b"}},
            {"text": "Thanks"},
        ],
    }


def test_tool_result_order_follows_the_latest_model_turn_and_a_system_message_does_not_split_the_run():
    later_turn = Message(role=Role.ASSISTANT, tool_calls=[ToolCall(id="c", name="get_time", arguments="{}")])
    req = _weather_and_time_turn(
        Message(role=Role.TOOL, content="2", tool_call_id="b"),
        Message(role=Role.SYSTEM, content="Be brief."),
        Message(role=Role.TOOL, content="1", tool_call_id="a"),
        then=(
            Message(role=Role.ASSISTANT, content="More?"),
            later_turn,
            Message(role=Role.TOOL, content="late a", tool_call_id="a"),  # answers an earlier turn: goes last
            Message(role=Role.TOOL, content="3", tool_call_id="c"),
        ),
    )
    contents = encode(req)["contents"]
    outputs = [[p["functionResponse"]["response"]["output"] for p in c["parts"]] for c in contents[2::2]]
    assert outputs == [["1", "2"], ["3", "late a"]]


def test_tool_call_ids_lists_every_assistant_call_in_order():
    assert tool_call_ids(parallel_call_conversation()) == ["call_A", "call_B"]
    assert tool_call_ids(request(HI)) == []


@pytest.mark.parametrize(
    ("content", "response"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("[1, 2]", {"output": "[1, 2]"}),
        ("42", {"output": "42"}),
        ("plain text", {"output": "plain text"}),
        ("", {"output": ""}),
        (None, {"output": ""}),
    ],
)
def test_tool_result_is_the_json_object_or_wrapped_in_output(content, response):
    req = request(
        HI,
        Message(role=Role.ASSISTANT, tool_calls=[ToolCall(id="c1", name="f", arguments="{}")]),
        Message(role=Role.TOOL, content=content, tool_call_id="c1"),
    )
    assert encode(req)["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "f", "response": response}}],
    }


# ==================================================================================================
# Request: content parts
# ==================================================================================================


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        (ImagePart("data:image/png;base64,iVBORw0KGgo=", detail="high"),
         {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}),
        (ImagePart("gs://bucket/cats/cat.JPG"), {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cats/cat.JPG"}}),
        (ImagePart("https://example.com/a/b.webp?sig=1#x"),
         {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a/b.webp?sig=1#x"}}),
        (ImagePart("https://example.com/doc.pdf"), {"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/doc.pdf"}}),
        (ImagePart("gs://b/photo.heic"), {"fileData": {"mimeType": "image/heic", "fileUri": "gs://b/photo.heic"}}),
        (OpaquePart("input_audio", {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
         {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}),
        (OpaquePart("input_audio", {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}),
         {"inlineData": {"mimeType": "audio/mpeg", "data": "SUQz"}}),
        (OpaquePart("file", {"type": "file", "file": {"filename": "a.pdf",
                                                       "file_data": "data:application/pdf;base64,JVBE"}}),
         {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}),
    ],
)  # fmt: skip
def test_content_parts_become_inline_or_file_data(part, expected):
    assert encode(request(user([TextPart("Look:"), part])))["contents"] == [
        {"role": "user", "parts": [{"text": "Look:"}, expected]}
    ]


# ==================================================================================================
# Request: tools, tool_choice, response_format, generation config
# ==================================================================================================


@pytest.mark.parametrize(
    ("choice", "config", "declared"),
    [
        (ToolChoice("none"), {"mode": "NONE"}, ["get_weather", "get_time"]),
        (ToolChoice("auto"), {"mode": "AUTO"}, ["get_weather", "get_time"]),
        (ToolChoice("required"), {"mode": "ANY"}, ["get_weather", "get_time"]),
        (ToolChoice("required", ("get_time",)), {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
         ["get_weather", "get_time"]),
        (ToolChoice("auto", ("get_time",)), {"mode": "AUTO"}, ["get_time"]),
    ],
)  # fmt: skip
def test_tool_choice_maps_to_function_calling_config(choice, config, declared):
    body = encode(request(HI, tools=[WEATHER, TIME], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == declared


def test_tool_choice_without_tools_is_dropped():
    assert encode(request(HI, tool_choice=ToolChoice("none"))) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}]
    }


@pytest.mark.parametrize(
    "parameters", [None, {}, {"type": "object"}, {"type": "object", "properties": {}, "additionalProperties": False}]
)
def test_tool_without_parameters_has_no_parameters_key(parameters):
    tool = ToolDefinition(name="ping", parameters=parameters, strict=True, extra={"cache_control": {}})
    assert encode(request(HI, tools=[tool]))["tools"] == [{"functionDeclarations": [{"name": "ping"}]}]


@pytest.mark.parametrize("name", ["get_weather", "_x", "ns.tool:v1-2", "a" * 128])
def test_valid_tool_names_pass(name):
    tool = ToolDefinition(name=name)
    assert encode(request(HI, tools=[tool]))["tools"] == [{"functionDeclarations": [{"name": name}]}]


@pytest.mark.parametrize(
    ("fmt", "config"),
    [
        (ResponseFormat("text"), None),
        (ResponseFormat("json_object"), {"responseMimeType": "application/json"}),
        (ResponseFormat("json_schema", name="a", schema={"type": "object", "properties": {"n": {"type": "integer"}}},
                        strict=True),
         {"responseMimeType": "application/json",
          "responseSchema": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}}}),
        (ResponseFormat("json_schema", name="a"), {"responseMimeType": "application/json"}),
    ],
)  # fmt: skip
def test_response_format_maps_to_mime_type_and_schema(fmt, config):
    assert encode(request(HI, response_format=fmt)).get("generationConfig") == config


def test_generation_config_takes_every_sampling_field_and_known_extras():
    req = request(
        HI,
        temperature=0.2,
        top_p=0.95,
        max_tokens=100,
        max_completion_tokens=256,
        stop=["END"],
        seed=7,
        n=2,
        user="u-1",
        parallel_tool_calls=False,
        extra={
            "presence_penalty": 0.5,
            "frequency_penalty": -1,
            "logprobs": True,
            "top_logprobs": 3,
            "stream_options": {"include_usage": True},
            "metadata": {"k": "v"},
            "store": False,
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "safety_identifier": "s",
            "logit_bias": {},
        },
    )
    assert encode(req)["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.95,
        "maxOutputTokens": 256,
        "stopSequences": ["END"],
        "seed": 7,
        "candidateCount": 2,
        "presencePenalty": 0.5,
        "frequencyPenalty": -1,
        "responseLogprobs": True,
        "logprobs": 3,
    }


def test_max_tokens_is_used_when_max_completion_tokens_is_absent():
    assert encode(request(HI, max_tokens=64, stop=[]))["generationConfig"] == {"maxOutputTokens": 64}


# ==================================================================================================
# Request: rejections
# ==================================================================================================


def _call_turn(arguments: str) -> Message:
    return Message(role=Role.ASSISTANT, tool_calls=[ToolCall(id="c1", name="f", arguments=arguments)])


def _recursive_schema() -> dict[str, Any]:
    node = {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/Node"}}, "$defs": {"Node": node}}


def _tool(parameters: dict[str, Any], name: str = "f") -> ToolDefinition:
    return ToolDefinition(name=name, parameters=parameters)


UNSUPPORTED = "unsupported_for_provider"
INVALID = "invalid_value"
PARAMS = "tools[0].function.parameters"
ARGS = "messages[1].tool_calls[0].function.arguments"
URL = "messages[0].content[0].image_url.url"
NAME = "tools[0].function.name"

REJECTED: list[tuple[str, LLMRequest, str, str]] = [
    ("only system", request(Message(role=Role.SYSTEM, content="S")), "messages", INVALID),
    ("image in system",
     request(Message(role=Role.SYSTEM, content=[TextPart("S"), ImagePart("gs://b/a.png")]), HI),
     "messages[0].content[1].type", UNSUPPORTED),
    ("arguments not JSON", request(HI, _call_turn("{city: Oslo}")), ARGS, INVALID),
    ("arguments not an object", request(HI, _call_turn("[1]")), ARGS, INVALID),
    ("unknown tool_call_id",
     request(HI, _call_turn("{}"), Message(role=Role.TOOL, content="x", tool_call_id="nope")),
     "messages[2].tool_call_id", INVALID),
    ("tool result before its call",
     request(HI, Message(role=Role.TOOL, content="x", tool_call_id="c1"), _call_turn("{}")),
     "messages[1].tool_call_id", INVALID),
    ("image in tool result",
     request(HI, _call_turn("{}"), Message(role=Role.TOOL, content=[ImagePart("gs://b/a.png")], tool_call_id="c1")),
     "messages[2].content[0].type", UNSUPPORTED),
    ("http image", request(user([ImagePart("http://example.com/a.png")])), URL, UNSUPPORTED),
    ("ftp image", request(user([ImagePart("ftp://example.com/a.png")])), URL, UNSUPPORTED),
    ("URL without a scheme", request(user([ImagePart("cat.png")])), URL, UNSUPPORTED),
    ("https without extension", request(user([ImagePart("https://example.com/image?id=3")])),
     URL, UNSUPPORTED),
    ("https unknown extension", request(user([ImagePart("https://example.com/a.xyz")])),
     URL, UNSUPPORTED),
    ("data URL not base64", request(user([ImagePart("data:image/svg+xml,<svg/>")])),
     URL, UNSUPPORTED),
    ("data URL without media type", request(user([ImagePart("data:;base64,AAAA")])),
     URL, UNSUPPORTED),
    ("unknown part type", request(user([OpaquePart("video_url", {"type": "video_url"})])),
     "messages[0].content[0].type", UNSUPPORTED),
    ("file by id", request(user([OpaquePart("file", {"type": "file", "file": {"file_id": "file-1"}})])),
     "messages[0].content[0].file.file_data", UNSUPPORTED),
    ("audio without format",
     request(user([OpaquePart("input_audio", {"type": "input_audio", "input_audio": {"data": "AA"}})])),
     "messages[0].content[0].input_audio", INVALID),
    ("tool name starts with a digit", request(HI, tools=[_tool(WEATHER_PARAMS, "1tool")]), NAME, UNSUPPORTED),
    ("tool name with a space", request(HI, tools=[_tool(WEATHER_PARAMS, "get weather")]), NAME, UNSUPPORTED),
    ("tool name too long", request(HI, tools=[_tool(WEATHER_PARAMS, "a" * 129)]), NAME, UNSUPPORTED),
    ("tool_choice names an undeclared function",
     request(HI, tools=[WEATHER], tool_choice=ToolChoice("required", ("nope",))), "tool_choice", INVALID),
    ("recursive $ref", request(HI, tools=[_tool(_recursive_schema())]),
     f"{PARAMS}.properties.root.properties.child.$ref", UNSUPPORTED),
    ("remote $ref", request(HI, tools=[_tool({"type": "object", "properties": {"a": {"$ref": "https://x/s.json"}}})]),
     f"{PARAMS}.properties.a.$ref", UNSUPPORTED),
    ("undefined $ref", request(HI, tools=[_tool({"type": "object", "properties": {"a": {"$ref": "#/$defs/Gone"}}})]),
     f"{PARAMS}.properties.a.$ref", INVALID),
    ("allOf of two", request(HI, tools=[_tool({"type": "object", "properties": {"a": {"allOf": [{}, {}]}}})]),
     f"{PARAMS}.properties.a.allOf", UNSUPPORTED),
    ("tuple items",
     request(HI, tools=[_tool({"type": "object", "properties": {"a": {"type": "array", "items": [{}]}}})]),
     f"{PARAMS}.properties.a.items", UNSUPPORTED),
    ("unknown type", request(HI, tools=[_tool({"type": "object", "properties": {"a": {"type": "date"}}})]),
     f"{PARAMS}.properties.a.type", INVALID),
    ("parameters not an object", request(HI, tools=[_tool({"type": "string"})]), f"{PARAMS}.type", INVALID),
    ("boolean subschema", request(HI, tools=[_tool({"type": "object", "properties": {"a": True}})]),
     f"{PARAMS}.properties.a", UNSUPPORTED),
    ("recursive response schema",
     request(HI, response_format=ResponseFormat("json_schema", name="n", schema=_recursive_schema())),
     "response_format.json_schema.schema.properties.root.properties.child.$ref", UNSUPPORTED),
    ("unknown extra field", request(HI, extra={"reasoning_effort": "low"}), "reasoning_effort", UNSUPPORTED),
    ("legacy functions", request(HI, extra={"functions": []}), "functions", UNSUPPORTED),
    ("logit_bias with entries", request(HI, extra={"logit_bias": {"50256": -100}}), "logit_bias", UNSUPPORTED),
    ("penalty not a number", request(HI, extra={"presence_penalty": "high"}), "presence_penalty", INVALID),
    ("logprobs not a boolean", request(HI, extra={"logprobs": 1}), "logprobs", INVALID),
    ("top_logprobs a boolean", request(HI, extra={"top_logprobs": True}), "top_logprobs", INVALID),
]  # fmt: skip


@pytest.mark.parametrize(("req", "param", "code"), [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_untranslatable_request_is_rejected_naming_the_field(req, param, code):
    with pytest.raises(InvalidRequestError) as caught:
        encode(req)
    assert (caught.value.param, caught.value.code) == (param, code)
    assert param in caught.value.message


def test_rejections_say_why():
    with pytest.raises(InvalidRequestError, match="vertex_ai does not support the 'reasoning_effort' parameter"):
        encode(request(HI, extra={"reasoning_effort": "low"}))
    with pytest.raises(InvalidRequestError, match=r"data: URL or use a URL whose path ends in a known extension"):
        encode(request(user([ImagePart("https://example.com/image")])))
    with pytest.raises(InvalidRequestError, match="recursive"):
        encode(request(HI, tools=[_tool(_recursive_schema())]))


# ==================================================================================================
# JSON Schema -> Gemini Schema
# ==================================================================================================

SCHEMAS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("types uppercased", {"type": "array", "items": {"type": "number"}},
     {"type": "ARRAY", "items": {"type": "NUMBER"}}),
    ("nullable from type list", {"type": ["string", "null"]}, {"type": "STRING", "nullable": True}),
    ("several types become anyOf", {"type": ["string", "integer"]},
     {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}),
    ("Optional via anyOf null", {"anyOf": [{"type": "integer"}, {"type": "null"}], "description": "n"},
     {"type": "INTEGER", "nullable": True, "description": "n"}),
    ("oneOf becomes anyOf", {"oneOf": [{"type": "string"}, {"type": "boolean"}]},
     {"anyOf": [{"type": "STRING"}, {"type": "BOOLEAN"}]}),
    ("const becomes enum", {"const": "fixed"}, {"type": "STRING", "enum": ["fixed"]}),
    ("enum values as strings, null makes nullable", {"type": "string", "enum": ["a", None]},
     {"type": "STRING", "enum": ["a"], "nullable": True}),
    ("enum without type is a string enum", {"enum": ["x", 1, True]}, {"type": "STRING", "enum": ["x", "1", "true"]}),
    ("untyped integer enum is INTEGER", {"enum": [1, 2]}, {"type": "INTEGER", "description": "One of: 1, 2."}),
    ("untyped number enum is NUMBER", {"enum": [1, 2.5], "description": "Scale"},
     {"type": "NUMBER", "description": "Scale (One of: 1, 2.5.)"}),
    ("untyped boolean enum is BOOLEAN", {"enum": [True, False]},
     {"type": "BOOLEAN", "description": "One of: true, false."}),
    ("untyped integer enum with null", {"enum": [0, None]},
     {"type": "INTEGER", "nullable": True, "description": "One of: 0."}),
    ("untyped integer const is INTEGER", {"const": 3}, {"type": "INTEGER", "description": "One of: 3."}),
    ("untyped integers and booleans stay STRING", {"enum": [1, True]}, {"type": "STRING", "enum": ["1", "true"]}),
    ("untyped numbers and strings stay STRING", {"enum": [1.5, "2"]}, {"type": "STRING", "enum": ["1.5", "2"]}),
    ("enum on integer moves to the description", {"type": "integer", "enum": [1, 2], "description": "Level"},
     {"type": "INTEGER", "description": "Level (One of: 1, 2.)"}),
    ("kept keywords", {"type": "string", "description": "d", "title": "t", "minLength": 1, "maxLength": 9,
                       "pattern": "^a", "default": "a", "example": "ab", "nullable": True},
     {"type": "STRING", "description": "d", "title": "t", "minLength": 1, "maxLength": 9, "pattern": "^a",
      "default": "a", "example": "ab", "nullable": True}),
    ("numeric bounds kept", {"type": "integer", "minimum": 0, "maximum": 9, "exclusiveMinimum": 0},
     {"type": "INTEGER", "minimum": 0, "maximum": 9}),
    ("array bounds kept", {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3,
                           "uniqueItems": True},
     {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 1, "maxItems": 3}),
    ("dropped keywords", {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "type": "object",
                          "properties": {"a": {"type": "string", "examples": ["q"], "$comment": "c"}},
                          "additionalProperties": False, "strict": True, "required": ["a"],
                          "propertyOrdering": ["a"]},
     {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["a"], "propertyOrdering": ["a"]}),
    ("supported formats kept", {"type": "object", "properties": {
        "at": {"type": "string", "format": "date-time"}, "n": {"type": "integer", "format": "int64"},
        "x": {"type": "number", "format": "double"}}},
     {"type": "OBJECT", "properties": {"at": {"type": "STRING", "format": "date-time"},
                                       "n": {"type": "INTEGER", "format": "int64"},
                                       "x": {"type": "NUMBER", "format": "double"}}}),
    ("unsupported formats dropped", {"type": "string", "format": "uri"}, {"type": "STRING"}),
    ("$defs ref inlined with sibling description", {
        "type": "object", "properties": {"p": {"$ref": "#/$defs/Point", "description": "where"}},
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "description": "a point"}}},
     {"type": "OBJECT", "properties": {"p": {"type": "OBJECT", "properties": {"x": {"type": "NUMBER"}},
                                             "description": "where"}}}),
    ("definitions ref inlined, twice is not recursion", {
        "type": "object", "properties": {"a": {"$ref": "#/definitions/S"}, "b": {"$ref": "#/definitions/S"}},
        "definitions": {"S": {"type": "string"}}},
     {"type": "OBJECT", "properties": {"a": {"type": "STRING"}, "b": {"type": "STRING"}}}),
    ("one-element allOf merged", {"allOf": [{"$ref": "#/$defs/E"}], "description": "pick",
                                  "$defs": {"E": {"type": "string", "enum": ["r", "g"]}}},
     {"type": "STRING", "enum": ["r", "g"], "description": "pick"}),
    ("Optional ref", {"anyOf": [{"$ref": "#/$defs/E"}, {"type": "null"}], "$defs": {"E": {"enum": ["r"]}}},
     {"type": "STRING", "enum": ["r"], "nullable": True}),
]  # fmt: skip


@pytest.mark.parametrize(("schema", "expected"), [c[1:] for c in SCHEMAS], ids=[c[0] for c in SCHEMAS])
def test_json_schema_converts_to_gemini_schema(schema, expected):
    assert convert_schema(schema, "s") == expected


def test_tool_parameters_use_the_converted_schema_and_get_object_type():
    tool = ToolDefinition(name="f", parameters={"properties": {"a": {"type": ["integer", "null"]}}})
    assert encode(request(HI, tools=[tool]))["tools"][0]["functionDeclarations"][0]["parameters"] == {
        "type": "OBJECT",
        "properties": {"a": {"type": "INTEGER", "nullable": True}},
    }


# ==================================================================================================
# Response
# ==================================================================================================

RESPONSE_ID = "kP3sZ9qLBuW2nvgPq7mW0Ac"


def response(*candidates: dict[str, Any], **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "candidates": list(candidates),
        "modelVersion": "gemini-2.5-flash-001",
        "createTime": CREATE_TIME,
        "responseId": RESPONSE_ID,
    }
    body.update(top)
    return body


def candidate(*parts: dict[str, Any], finish: str | None = "STOP", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, **fields}
    if finish is not None:
        out["finishReason"] = finish
    return out


def decode(data: dict[str, Any], remember: Recorder | None = None):
    return decode_gemini_response(data, VERTEX, model=MODEL, remember=remember or Recorder())


def test_text_response_decodes_with_id_created_model_and_usage():
    data = response(
        candidate({"text": "thinking...", "thought": True}, {"text": "Oslo is "}, {"text": "cold."}, index=0),
        usageMetadata={"promptTokenCount": 95, "candidatesTokenCount": 12, "thoughtsTokenCount": 40,
                       "totalTokenCount": 147, "trafficType": "ON_DEMAND"},
    )  # fmt: skip
    decoded = decode(data)
    assert (decoded.id, decoded.created, decoded.model, decoded.provider) == (
        f"chatcmpl-{RESPONSE_ID}",
        CREATED,
        "gemini-2.5-flash-001",
        VERTEX,
    )
    (choice,) = decoded.choices
    assert (choice.index, choice.finish_reason) == (0, FinishReason.STOP)
    assert choice.message == Message(role=Role.ASSISTANT, content="Oslo is cold.")
    assert decoded.usage == Usage(
        prompt_tokens=95, completion_tokens=52, total_tokens=147, cached_tokens=None, reasoning_tokens=40
    )


def test_model_falls_back_and_id_is_generated_when_the_body_has_none():
    decoded = decode({"candidates": [candidate({"text": "x"})]})
    assert decoded.model == MODEL
    assert decoded.id.startswith("chatcmpl-") and len(decoded.id) > len("chatcmpl-")
    assert decoded.created > CREATED
    assert decoded.usage is None


def test_function_calls_get_stable_generated_ids_and_signatures_are_remembered():
    data = response(
        candidate(
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo", "days": [1, 2]}},
             "thoughtSignature": "U0lH"},
            {"functionCall": {"name": "get_time", "args": {}}},
        )
    )  # fmt: skip
    remember = Recorder()
    (choice,) = decode(data, remember).choices
    first, second = stable_call_id(RESPONSE_ID, 0, 0), stable_call_id(RESPONSE_ID, 0, 1)
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.message.content == "Checking."
    assert choice.message.tool_calls == [
        ToolCall(id=first, name="get_weather", arguments='{"city":"Oslo","days":[1,2]}'),
        ToolCall(id=second, name="get_time", arguments="{}"),
    ]
    assert remember.calls == [  # every call is known as Gemini's own, the first with its signature
        (first, ProviderCallData(thought_signature="U0lH", provider=VERTEX)),
        (second, ProviderCallData(provider=VERTEX)),
    ]
    assert decode(data).choices[0].message.tool_calls[0].id == first  # deterministic


def test_stable_call_id_looks_like_an_openai_id_and_depends_on_position():
    ids = {stable_call_id(RESPONSE_ID, c, k) for c in range(3) for k in range(3)} | {stable_call_id("other", 0, 0)}
    assert len(ids) == 10
    for call_id in ids:
        assert call_id.startswith("call_") and len(call_id) == 29 and call_id[5:].isalnum()


def test_upstream_function_call_ids_are_normalised_and_remembered():
    data = response(
        candidate({"functionCall": {"id": "fc-9", "name": "f", "args": {"a": 1}}, "thoughtSignature": "U0lH"})
    )
    remember = Recorder()
    (choice,) = decode(data, remember).choices
    client_id = normalize_tool_call_id("fc-9", VERTEX)[0]
    assert choice.message.tool_calls == [ToolCall(id=client_id, name="f", arguments='{"a":1}', provider_id="fc-9")]
    assert choice.message.content is None
    assert remember.calls == [
        (client_id, ProviderCallData(provider_id="fc-9", thought_signature="U0lH", provider=VERTEX))
    ]


def test_two_candidates_become_two_choices():
    data = response(candidate({"text": "A"}, index=0), candidate({"text": "B"}, finish="MAX_TOKENS", index=1))
    decoded = decode(data)
    assert [(c.index, c.message.content, c.finish_reason) for c in decoded.choices] == [
        (0, "A", FinishReason.STOP),
        (1, "B", FinishReason.LENGTH),
    ]


@pytest.mark.parametrize(
    ("gemini", "calls", "expected"),
    [
        ("STOP", False, FinishReason.STOP),
        ("STOP", True, FinishReason.TOOL_CALLS),
        (None, True, FinishReason.TOOL_CALLS),
        ("MAX_TOKENS", False, FinishReason.LENGTH),
        ("MAX_TOKENS", True, FinishReason.LENGTH),
        *[
            (r, False, FinishReason.CONTENT_FILTER)
            for r in ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER")
        ],
        *[
            (r, False, FinishReason.STOP)
            for r in ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "LANGUAGE", "OTHER",
                      "FINISH_REASON_UNSPECIFIED", "SOMETHING_NEW", None)
        ],
    ],
)  # fmt: skip
def test_finish_reason_mapping(gemini, calls, expected):
    parts = [{"functionCall": {"name": "f", "args": {}}}] if calls else [{"text": "x"}]
    assert decode(response(candidate(*parts, finish=gemini))).choices[0].finish_reason is expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}, Usage(10, 5, 15)),
        ({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "cachedContentTokenCount": 4,
          "toolUsePromptTokenCount": 3, "totalTokenCount": 25}, Usage(10, 12, 25, cached_tokens=4, reasoning_tokens=7)),
        ({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 2},
         Usage(10, 7, 17, reasoning_tokens=2)),
        ({"promptTokenCount": 10}, Usage(10, 0, 10)),
        ({"trafficType": "ON_DEMAND"}, Usage(0, 0, 0)),
    ],
)  # fmt: skip
def test_usage_mapping(usage, expected):
    assert decode(response(candidate({"text": "x"}), usageMetadata=usage)).usage == expected


def test_blocked_prompt_raises_content_filter_error():
    data = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 3}}
    with pytest.raises(ContentFilterError) as caught:
        decode(data)
    error = caught.value
    assert (error.message, error.provider, error.code) == (
        "vertex_ai blocked the prompt (PROHIBITED_CONTENT)",
        VERTEX,
        "content_filter",
    )


def test_response_without_candidates_or_block_reason_is_malformed():
    with pytest.raises(ProviderConnectionError):
        decode({"usageMetadata": {"promptTokenCount": 3}})


def test_logprobs_result_maps_to_openai_logprobs():
    logprobs = {
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "!", "logProbability": -0.5}],
        "topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.1},
                                          {"token": "Yo", "logProbability": -2.0}]}],
    }  # fmt: skip
    choice = decode(response(candidate({"text": "Hi!"}, logprobsResult=logprobs))).choices[0]
    assert choice.logprobs == {
        "content": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
                {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                {"token": "Yo", "logprob": -2.0, "bytes": [89, 111]}]},
            {"token": "!", "logprob": -0.5, "bytes": [33], "top_logprobs": []},
        ],
        "refusal": None,
    }  # fmt: skip


# ==================================================================================================
# Stream
# ==================================================================================================


def chunk(*choices: ChunkChoice, usage: Usage | None = None, model: str = "gemini-2.5-flash") -> LLMChunk:
    return LLMChunk(f"chatcmpl-{RESPONSE_ID}", CREATED, model, VERTEX, choices=list(choices), usage=usage)


def event(*candidates: dict[str, Any], **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "candidates": list(candidates),
        "usageMetadata": {"trafficType": "ON_DEMAND"},
        "modelVersion": "gemini-2.5-flash",
        "createTime": CREATE_TIME,
        "responseId": RESPONSE_ID,
    }
    body.update(top)
    return body


FINAL_USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 6, "totalTokenCount": 18, "trafficType": "ON_DEMAND"}


def translate(events: list[dict[str, Any]], remember: Recorder | None = None) -> tuple[list[LLMChunk], bool]:
    translator = GeminiStreamTranslator(VERTEX, model=MODEL, remember=remember or Recorder())
    out: list[LLMChunk] = []
    for data in events:
        out.extend(translator.feed(data))
    return out, translator.done


def test_text_stream_translates_to_role_content_finish_and_usage_chunks():
    events = [
        event(candidate({"text": "Oslo is "}, finish=None)),
        event(candidate({"text": "thinking", "thought": True}, finish=None)),
        event(candidate({"text": "cold today."}, finish="STOP"), usageMetadata=FINAL_USAGE),
    ]
    assert translate(events) == (
        [
            chunk(ChunkChoice(0, role=Role.ASSISTANT, content="Oslo is ")),
            chunk(ChunkChoice(0, content="cold today.")),
            chunk(ChunkChoice(0, finish_reason=FinishReason.STOP)),
            chunk(usage=Usage(12, 6, 18)),
        ],
        True,
    )


def test_function_call_stream_gives_one_complete_delta_per_call_with_ids_equal_to_plain_decoding():
    call_a = {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "U0lH"}
    call_b = {"functionCall": {"name": "get_time", "args": {"tz": "CET"}}}
    events = [
        event(candidate({"text": "Checking."}, finish=None)),
        event(candidate(call_a, finish=None)),
        event(candidate(call_b, {"text": ""}, finish="STOP"), usageMetadata=FINAL_USAGE),
    ]
    remember = Recorder()
    chunks, done = translate(events, remember)
    first, second = stable_call_id(RESPONSE_ID, 0, 0), stable_call_id(RESPONSE_ID, 0, 1)
    assert done
    assert chunks == [
        chunk(ChunkChoice(0, role=Role.ASSISTANT, content="Checking.")),
        chunk(ChunkChoice(0, tool_calls=[ToolCallDelta(0, id=first, name="get_weather", arguments='{"city":"Oslo"}')])),
        chunk(ChunkChoice(0, tool_calls=[ToolCallDelta(1, id=second, name="get_time", arguments='{"tz":"CET"}')])),
        chunk(ChunkChoice(0, finish_reason=FinishReason.TOOL_CALLS)),
        chunk(usage=Usage(12, 6, 18)),
    ]
    assert remember.calls == [  # every call is known as Gemini's own, the first with its signature
        (first, ProviderCallData(thought_signature="U0lH", provider=VERTEX)),
        (second, ProviderCallData(provider=VERTEX)),
    ]
    plain = decode(response(candidate({"text": "Checking."}, call_a, call_b)))
    assert [c.id for c in plain.choices[0].message.tool_calls] == [first, second]


def test_stream_normalises_upstream_call_ids_as_plain_decoding_does():
    events = [event(candidate({"functionCall": {"id": "fc-1", "name": "f", "args": {}}}), usageMetadata=FINAL_USAGE)]
    remember = Recorder()
    chunks, _ = translate(events, remember)
    client_id = normalize_tool_call_id("fc-1", VERTEX)[0]
    delta = ToolCallDelta(0, id=client_id, name="f", arguments="{}", provider_id="fc-1")
    assert chunks[0] == chunk(ChunkChoice(0, role=Role.ASSISTANT, tool_calls=[delta]))
    assert remember.calls == [(client_id, ProviderCallData(provider_id="fc-1", provider=VERTEX))]


def test_two_candidate_stream_tracks_each_candidate_and_ends_when_both_finish():
    translator = GeminiStreamTranslator(VERTEX, model=MODEL, remember=Recorder())
    first = translator.feed(event(candidate({"text": "A1"}, finish=None, index=0),
                                  candidate({"text": "B1"}, finish=None, index=1)))  # fmt: skip
    second = translator.feed(event(candidate({"text": "A2"}, finish="STOP", index=0),
                                   candidate({"text": "B2"}, finish=None, index=1),
                                   usageMetadata={"promptTokenCount": 5, "totalTokenCount": 9}))  # fmt: skip
    assert not translator.done
    third = translator.feed(event(candidate({"functionCall": {"name": "f", "args": {}}}, finish="STOP", index=1),
                                  usageMetadata=FINAL_USAGE))  # fmt: skip
    assert translator.done
    assert first == [
        chunk(ChunkChoice(0, role=Role.ASSISTANT, content="A1")),
        chunk(ChunkChoice(1, role=Role.ASSISTANT, content="B1")),
    ]
    assert second == [
        chunk(ChunkChoice(0, content="A2")),
        chunk(ChunkChoice(0, finish_reason=FinishReason.STOP)),
        chunk(ChunkChoice(1, content="B2")),
    ]
    call = ToolCallDelta(0, id=stable_call_id(RESPONSE_ID, 1, 0), name="f", arguments="{}")
    assert third == [
        chunk(ChunkChoice(1, tool_calls=[call])),
        chunk(ChunkChoice(1, finish_reason=FinishReason.TOOL_CALLS)),
        chunk(usage=Usage(12, 6, 18)),
    ]


def test_stream_usage_comes_from_the_last_event_with_a_prompt_count_and_is_sent_once():
    translator = GeminiStreamTranslator(VERTEX, model=MODEL, remember=Recorder())
    translator.feed(event(candidate({"text": "a"}, finish=None), usageMetadata={"promptTokenCount": 12}))
    finish = translator.feed(event(candidate(finish="STOP"), usageMetadata={"trafficType": "ON_DEMAND"}))
    assert finish == [chunk(ChunkChoice(0, finish_reason=FinishReason.STOP)), chunk(usage=Usage(12, 0, 12))]
    assert translator.feed(event(usageMetadata=FINAL_USAGE)) == []


def test_stream_first_chunk_carries_the_role_even_when_it_only_finishes():
    chunks, done = translate([event(candidate(finish="SAFETY"))])
    assert (chunks, done) == (
        [chunk(ChunkChoice(0, role=Role.ASSISTANT, finish_reason=FinishReason.CONTENT_FILTER))],
        True,
    )


def test_stream_chunks_share_the_first_events_id_created_and_model():
    translator = GeminiStreamTranslator(VERTEX, model=MODEL, remember=Recorder())
    first = translator.feed({"candidates": [candidate({"text": "a"}, finish=None)]})
    later = translator.feed(event(candidate({"text": "b"})))
    assert {(c.id, c.created, c.model) for c in first + later} == {(first[0].id, first[0].created, MODEL)}
    assert first[0].id.startswith("chatcmpl-")


def test_stream_blocked_prompt_raises_and_is_done():
    translator = GeminiStreamTranslator(VERTEX, model=MODEL, remember=Recorder())
    assert not translator.done
    with pytest.raises(ContentFilterError, match=r"vertex_ai blocked the prompt \(SAFETY\)"):
        translator.feed({"promptFeedback": {"blockReason": "SAFETY"}, "responseId": RESPONSE_ID})
    assert translator.done
