"""The chat routes' request body and responses as the OpenAPI document describes them.

The routes read their raw body themselves (`openai_format.parse_chat_request`, for speed and for
OpenAI's error messages), so FastAPI cannot derive a schema from them; these are declared on the
route decorators (`openapi_extra`) without changing how a request is read. They describe what the
parser accepts with the default request limits (`RequestLimitSettings`): an optional field may be null
(read as absent, as OpenAI does), fields not listed are passed on. And what the service answers: a
completion, its server-sent events (each `data` a chunk, an error, or `[DONE]`), or OpenAI's error body.
"""

from __future__ import annotations

from typing import Any

from llm_service.core.config.limits import RequestLimitSettings
from llm_service.core.llm.models import FinishReason, Role
from llm_service.core.llm.request_limits import MAX_CHOICES

_DEFAULTS = RequestLimitSettings()
_EXAMPLE_MODEL = "openai/gpt-4o-mini"

_STRING: dict[str, Any] = {"type": "string"}
_INTEGER: dict[str, Any] = {"type": "integer"}
_BOOLEAN: dict[str, Any] = {"type": "boolean"}
_NAME: dict[str, Any] = {"type": "string", "maxLength": _DEFAULTS.max_name_length}
_TOKENS: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": _DEFAULTS.max_output_tokens}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    """An object of the answer: its optional fields are absent, not null, unless they say so."""
    return {"type": "object", "required": required, "properties": properties}


def _lenient(required: list[str], **properties: Any) -> dict[str, Any]:
    """An object of the request: its optional fields may also be null."""
    return _object(required, **{k: v if k in required else _nullable(v) for k, v in properties.items()})


def _array(items: dict[str, Any], **bounds: int) -> dict[str, Any]:
    return {"type": "array", "items": items, **bounds}


# ---------------------------------------------------------------------------------- the request

_TEXT_PART = _lenient(["type", "text"], type={"const": "text"}, text=_STRING)
_IMAGE_URL = {
    "type": "string",
    "pattern": "^(https?://|gs://|data:)",
    "description": "https://, http://, gs:// or data:",
}
_IMAGE_PART = _lenient(
    ["type", "image_url"],
    type={"const": "image_url"},
    image_url=_lenient(["url"], url=_IMAGE_URL, detail={"enum": ["auto", "low", "high"]}),
)
_OTHER_PART = {
    **_object(["type"], type={**_NAME, "minLength": 1, "not": {"enum": ["text", "image_url"]}}),
    "description": "input_audio, file, ...: passed on to the providers that take them",
}
_TEXT_CONTENT = {"anyOf": [_STRING, _array(_TEXT_PART, maxItems=_DEFAULTS.max_content_parts)]}
_CONTENT = {
    "anyOf": [_STRING, _array({"anyOf": [_TEXT_PART, _IMAGE_PART, _OTHER_PART]}, maxItems=_DEFAULTS.max_content_parts)]
}
_CALLED = _lenient(
    ["id", "function"],
    id=_NAME,
    type={"const": "function"},
    function=_lenient(["name"], name=_NAME, arguments={"type": "string", "description": "JSON text"}),
)
_SYSTEM = _lenient(
    ["role", "content"], role={"enum": [Role.SYSTEM.value, Role.DEVELOPER.value]}, content=_TEXT_CONTENT, name=_NAME
)
_USER = _lenient(["role", "content"], role={"const": Role.USER.value}, content=_CONTENT, name=_NAME)
_ASSISTANT = _lenient(
    ["role"],
    role={"const": Role.ASSISTANT.value},
    content=_TEXT_CONTENT,
    refusal=_STRING,
    tool_calls=_array(_CALLED),
    name=_NAME,
)
_TOOL_RESULT = {
    **_lenient(
        ["role", "tool_call_id", "content"], role={"const": Role.TOOL.value}, tool_call_id=_NAME, content=_TEXT_CONTENT
    ),
    "description": "answers a tool call of an earlier assistant message",
}
_TOOL = _lenient(
    ["function"],
    type={"const": "function"},
    function=_lenient(["name"], name=_NAME, description=_STRING, parameters={"type": "object"}, strict=_BOOLEAN),
)
_FUNCTION_NAME = _object(["name"], name=_NAME)
_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        _object(["type", "function"], type={"const": "function"}, function=_FUNCTION_NAME),
        _object(
            ["type", "allowed_tools"],
            type={"const": "allowed_tools"},
            allowed_tools=_object(
                ["mode", "tools"],
                mode={"enum": ["auto", "required"]},
                tools=_array(_object(["function"], type={"const": "function"}, function=_FUNCTION_NAME)),
            ),
        ),
    ]
}
_RESPONSE_FORMAT = {
    "anyOf": [
        _object(["type"], type={"enum": ["text", "json_object"]}),
        _object(
            ["type", "json_schema"],
            type={"const": "json_schema"},
            json_schema=_lenient(["name"], name=_NAME, schema={"type": "object"}, description=_STRING, strict=_BOOLEAN),
        ),
    ]
}
CHAT_REQUEST: dict[str, Any] = {
    **_lenient(
        ["model", "messages"],
        model={**_NAME, "minLength": 1, "description": "<provider>/<model> or an alias", "examples": [_EXAMPLE_MODEL]},
        messages=_array(
            {"anyOf": [_SYSTEM, _USER, _ASSISTANT, _TOOL_RESULT]}, minItems=1, maxItems=_DEFAULTS.max_messages
        ),
        tools=_array(_TOOL, maxItems=_DEFAULTS.max_tools),
        tool_choice=_TOOL_CHOICE,
        parallel_tool_calls=_BOOLEAN,
        response_format=_RESPONSE_FORMAT,
        temperature={"type": "number", "minimum": 0, "maximum": 2},
        top_p={"type": "number", "minimum": 0, "maximum": 1},
        max_tokens=_TOKENS,
        max_completion_tokens=_TOKENS,
        stop={"anyOf": [_STRING, _array(_STRING)]},
        seed=_INTEGER,
        n={"type": "integer", "minimum": 1, "maximum": MAX_CHOICES},
        user=_STRING,
        stream=_BOOLEAN,
        stream_options=_lenient([], include_usage=_BOOLEAN),
    ),
    "description": "OpenAI's Chat Completions request; fields not listed are passed on to OpenAI-family providers",
    "examples": [{"model": _EXAMPLE_MODEL, "messages": [{"role": "user", "content": "Hello!"}]}],
}

# ---------------------------------------------------------------------------------- the answer

_TOOL_CALL = _object(
    ["id", "type", "function"],
    id=_STRING,
    type={"const": "function"},
    function=_object(["name", "arguments"], name=_STRING, arguments=_STRING),
)
_USAGE = _object(
    ["prompt_tokens", "completion_tokens", "total_tokens"],
    prompt_tokens=_INTEGER,
    completion_tokens=_INTEGER,
    total_tokens=_INTEGER,
)
_FINISH = {"enum": [*(f.value for f in FinishReason), None]}
# Nullable where OpenAI itself sends null (and an upstream's own bytes may reach the client: LLMChunk.wire).
_COMMON = {"id": _STRING, "created": _INTEGER, "model": _STRING, "system_fingerprint": _nullable(_STRING)}


def _choices(key: str, reply: dict[str, Any]) -> dict[str, Any]:
    """A completion's choices (`key` "message") or a chunk's (`key` "delta")."""
    return _array(
        _object(
            ["index", key, "logprobs", "finish_reason"],
            index=_INTEGER,
            logprobs={},
            finish_reason=_FINISH,
            **{key: reply},
        )
    )


CHAT_COMPLETION: dict[str, Any] = _object(
    ["id", "object", "created", "model", "choices", "usage"],
    object={"const": "chat.completion"},
    choices=_choices(
        "message",
        _object(
            ["role", "content", "refusal"],
            role={"const": Role.ASSISTANT.value},
            content=_nullable(_STRING),
            refusal=_nullable(_STRING),
            tool_calls=_array(_TOOL_CALL),
        ),
    ),
    usage=_nullable(_USAGE),
    **_COMMON,
)
_DELTA_CALL = _object(
    ["index"],
    index=_INTEGER,
    id=_STRING,
    type={"const": "function"},
    function=_object([], name=_STRING, arguments=_STRING),
)
CHAT_CHUNK: dict[str, Any] = _object(
    ["id", "object", "created", "model", "choices"],
    object={"const": "chat.completion.chunk"},
    choices=_choices(
        "delta",
        _object(
            [],
            role={"enum": [r.value for r in Role]},
            content=_nullable(_STRING),
            refusal=_nullable(_STRING),
            tool_calls=_array(_DELTA_CALL),
        ),
    ),
    usage=_nullable(_USAGE),
    **_COMMON,
)
ERROR_BODY: dict[str, Any] = _object(
    ["error"],
    error=_object(
        ["message", "type", "param", "code"],
        message=_STRING,
        type=_STRING,
        param=_nullable(_STRING),
        code=_nullable(_STRING),
    ),
)
#: One server-sent event: a chunk, the one error that ends a failed stream, or the closing `[DONE]`.
_EVENT = _object(
    ["data"],
    id={**_STRING, "description": "`<stream id>:<index>` when the stream can be resumed"},
    data={
        "anyOf": [
            {"const": "[DONE]"},
            {"contentMediaType": "application/json", "contentSchema": {"anyOf": [CHAT_CHUNK, ERROR_BODY]}},
        ]
    },
)
_EVENTS = {"text/event-stream": {"schema": _EVENT}}
_ERRORS = {"default": {"description": "OpenAI's error body", "content": {"application/json": {"schema": ERROR_BODY}}}}
_BODY = {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST}}}

#: `openapi_extra` of POST /v1/chat/completions.
CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": _BODY,
    "responses": {
        "200": {
            "description": "A chat completion; with `stream: true`, its chunks as server-sent events",
            "content": {"application/json": {"schema": CHAT_COMPLETION}, **_EVENTS},
        },
        **_ERRORS,
    },
}
#: `openapi_extra` of POST /v1/chat/completions/stream, which always streams.
CHAT_STREAM_OPENAPI: dict[str, Any] = {
    "requestBody": _BODY,
    "responses": {
        "200": {"description": "The completion's chunks as server-sent events", "content": _EVENTS},
        **_ERRORS,
    },
}
#: `openapi_extra` of GET /v1/chat/completions/{stream_id}/stream.
RESUME_OPENAPI: dict[str, Any] = {
    "responses": {
        "200": {"description": "The stream's events after the one the client names, then the rest", "content": _EVENTS},
        **_ERRORS,
    },
}
