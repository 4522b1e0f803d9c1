"""The OpenAI Chat Completions wire format <-> the domain, both directions, in one place.

The API edge reads requests and writes responses in this format; the OpenAI-family providers
(openai, openrouter, remote, azure_openai) write requests and read responses in it. Keeping both
directions here means one codec, tested once, and no second copy of the same field table.

Reading a client's request validates as it goes and names the offending field in
`InvalidRequestError.param` (`messages[2].tool_calls[0].function.name`). Fields the domain does
not model are kept in `LLMRequest.extra` and passed through to OpenAI-family providers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.limits import RequestLimitSettings
from llm_service.core.llm.models import (
    NO_FIELDS,
    Choice,
    ChunkChoice,
    ContentPart,
    FinishReason,
    ImagePart,
    InvalidRequestError,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    OpaquePart,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from llm_service.core.llm.request_limits import RequestCheck, quoted
from llm_service.core.llm.tool_ids import Remember, issue_tool_call_id

# Scalar request fields copied as they are between the wire and LLMRequest.
_SCALAR_FIELDS = (
    "parallel_tool_calls", "temperature", "top_p", "max_tokens", "max_completion_tokens",
    "stop", "seed", "n", "user",
)  # fmt: skip
# `stream_options` stays in `extra` whole (include_obfuscation, ...); include_usage is also read out of it.
_KNOWN_FIELDS = frozenset({"model", "messages", "tools", "tool_choice", "response_format", "stream", *_SCALAR_FIELDS})
# Known fields the domain writes back in a form of its own (tools, choices, formats as it models them).
_REWRITTEN = frozenset({"tools", "tool_choice", "response_format"})
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
# Response-side fields the domain models; everything else is carried in `extra` and written back.
_RESPONSE_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage", "system_fingerprint"})
_REPLY_FIELDS = frozenset({"role", "content", "refusal", "tool_calls"})
_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
# The fields of a choice the domain keeps (of a response's, of a chunk's); a chunk's delta keeps the rest.
_CHOICE_FIELDS = frozenset({"index", "message", "logprobs", "finish_reason"})
_CHUNK_CHOICE_FIELDS = frozenset({"index", "delta", "logprobs", "finish_reason"})
_MESSAGE_WRITTEN = frozenset({"role", "content", "refusal"})  # what encode_chat_response always writes
_ROLES = {r.value: r for r in Role}
_NOTHING: dict[str, Any] = {}  # read only
_FINISH = {f.value: f for f in FinishReason}
#: How a chunk's `"usage":null` the client did not ask for is taken out of the upstream's event (`_wire_chunk`),
#: in the order tried: after another field, else before one.
NULL_USAGE_FORMS = (b',"usage":null', b'"usage":null,')
#: How a chunk ends with the `"usage":null` a client that asked for usage gets in every chunk, as OpenAI
#: writes it, when its upstream left it out (OpenRouter).
NULL_USAGE_END = b',"usage":null}'


# ==================================================================================================
# Reading a client's request (API edge)
# ==================================================================================================


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str, *, required: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidRequestError(
                f"Missing required parameter: '{path}'.", param=path, code="missing_required_parameter"
            )
        return None
    return _typed(value, kind, path)


def _typed(value: Any, kind: type | tuple[type, ...], path: str) -> Any:
    # bool is an int in Python; JSON true is not a number.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise _bad(path, f"expected {_kind_name(kind)}, got {type(value).__name__}.")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _number(low: float, high: float) -> Callable[[Any, str], float]:
    def read(value: Any, key: str) -> float:
        if not low <= _typed(value, (int, float), key) <= high:
            raise _bad(key, f"must be between {low:g} and {high:g}.")
        return float(value)

    return read


def _of(kind: type) -> Callable[[Any, str], Any]:
    return lambda value, key: _typed(value, kind, key)


def _positive_int(value: Any, key: str) -> int:
    if _typed(value, int, key) < 1:
        raise _bad(key, "must be at least 1.")
    return cast(int, value)


def _stop(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
        raise _bad(key, "expected a string or an array of strings.")
    return value


#: How each optional scalar field of a request is read (its value is not null): by field name, so that a
#: request is read in one pass over the fields it has rather than a look-up of every field it might have.
_OPTIONS: dict[str, Callable[[Any, str], Any]] = {
    "parallel_tool_calls": _of(bool),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _positive_int,
    "max_completion_tokens": _positive_int,
    "stop": _stop,
    "seed": _of(int),
    "n": _positive_int,
    "user": _of(str),
    "stream": _of(bool),
}


def parse_chat_request(body: Any, limits: RequestLimitSettings | None = None) -> LLMRequest:
    """A client's Chat Completions body -> LLMRequest (with `model` as the client wrote it), within `limits`
    (`request_limits.py`; None: the defaults). A body that is what `encode_chat_request` would write of the
    request is kept as its `wire` form."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    model, messages, tools = _head(body)
    check = RequestCheck(limits)
    check.start(model, messages, tools)
    options, extra, relayed = _fields(body)
    read = []
    for i, m in enumerate(messages):
        message = _plain_message(m)
        if message is None:  # anything but role and text: read the whole way, and checked
            relayed = False
            message = check.message(_parse_message(m, f"messages[{i}]"), i)
        read.append(message)  # a plain one has nothing `check.message` looks at
    request = LLMRequest(
        model=model,
        messages=read,
        tools=[_parse_tool(t, f"tools[{i}]") for i, t in enumerate(tools)] if tools else [],
        extra=extra,
        **options,
    )
    if relayed:
        request.wire = body
    return check.finish(request)


def _fields(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """A request's options (LLMRequest's fields but for model, messages and tools), the fields the domain
    does not model (`extra`), and whether they are as `encode_chat_request` writes them."""
    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    relayed = True
    for key, value in body.items():
        read = _OPTIONS.get(key)
        if read is not None:
            if value is not None:
                options[key] = read(value, key)
            else:
                relayed = False  # written without it
        elif key not in _KNOWN_FIELDS:
            extra[key] = value
        elif key in _REWRITTEN:
            relayed = False
    stream_options = body.get("stream_options")
    if stream_options is not None and type(stream_options) is not dict:
        stream_options = _get(body, "stream_options", dict, "stream_options")
    if stream_options:
        include_usage = _get(stream_options, "include_usage", bool, "stream_options.include_usage")
        options["include_usage"] = bool(include_usage)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        options["tool_choice"] = _parse_tool_choice(tool_choice)
    response_format = body.get("response_format")
    if response_format is not None and type(response_format) is not dict:
        response_format = _get(body, "response_format", dict, "response_format")
    if response_format is not None:
        options["response_format"] = _parse_response_format(response_format)
    return options, extra, relayed and type(body.get("stop")) is not str  # one stop string is written as a list


def _head(body: dict[str, Any]) -> tuple[str, list[Any], list[Any]]:
    """A request's model, messages and tools (empty when none). Each is read as it usually is, and
    through `_get` (which names what is wrong) only when it is not: two calls less per field."""
    model = body.get("model")
    if type(model) is not str:
        model = _get(body, "model", str, "model", required=True)
    if not model:
        raise _bad("model", "must not be empty.")
    messages = body.get("messages")
    if type(messages) is not list:
        messages = _get(body, "messages", list, "messages", required=True)
    if not messages:
        raise _bad("messages", "must contain at least one message.")
    tools = body.get("tools")
    if tools is not None and type(tools) is not list:
        tools = _get(body, "tools", list, "tools")
    return model, messages, tools or []


def _rest(raw: dict[str, Any], known: tuple[str, ...] | frozenset[str]) -> dict[str, Any]:
    """The fields of `raw` not in `known`, in their order: kept so they can be written back unchanged."""
    extra = raw.keys() - known
    if len(extra) == 1:  # the usual case (OpenAI's `service_tier`), without a comprehension: its own call
        (key,) = extra
        return {key: raw[key]}
    if not extra:
        return {}
    # A copy less the known fields there: a step per known field, where a comprehension took one per
    # field, in a call of its own (usage's token details: 52 -> about 15 bytecodes).
    rest = dict(raw)
    for key in raw.keys() & known:
        del rest[key]
    return rest


_PLAIN_ROLES = {r.value: r for r in Role if r is not Role.TOOL}  # a tool message needs its tool_call_id
_PLAIN_FIELDS = frozenset({"role", "content"})


def _plain_message(raw: Any) -> Message | None:
    """The usual message, `{"role": "system" | "user" | "assistant" | ..., "content": "<text>"}`, read without
    spelling out field paths for errors it cannot have (about 3 µs a message less); None for any other."""
    if type(raw) is not dict or not raw.keys() <= _PLAIN_FIELDS:
        return None
    role, content = raw.get("role"), raw.get("content")
    if type(role) is not str or type(content) is not str:
        return None
    found = _PLAIN_ROLES.get(role)
    return Message(role=found, content=content) if found is not None else None


def _parse_message(raw: Any, path: str) -> Message:
    if not isinstance(raw, dict):
        raise _bad(path, "expected an object.")
    role_name = _get(raw, "role", str, f"{path}.role", required=True)
    role = _ROLES.get(role_name)
    if role is None:
        raise _bad(f"{path}.role", f"unsupported role {quoted(role_name)}; expected one of {', '.join(_ROLES)}.")
    message = Message(role=role, content=_parse_content(raw.get("content"), f"{path}.content"))
    message.name = _get(raw, "name", str, f"{path}.name")
    message.extra = _rest(raw, _MESSAGE_FIELDS)
    if role is Role.ASSISTANT:
        calls = _get(raw, "tool_calls", list, f"{path}.tool_calls") or []
        message.tool_calls = [_parse_tool_call(c, f"{path}.tool_calls[{i}]") for i, c in enumerate(calls)]
        message.refusal = _get(raw, "refusal", str, f"{path}.refusal")
    elif role is Role.TOOL:
        message.tool_call_id = _get(raw, "tool_call_id", str, f"{path}.tool_call_id", required=True)
    if message.content is None and not message.tool_calls and role is not Role.ASSISTANT:
        raise InvalidRequestError(
            f"Missing required parameter: '{path}.content'.",
            param=f"{path}.content",
            code="missing_required_parameter",
        )
    return message


def _parse_content(raw: Any, path: str) -> str | list[ContentPart] | None:
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise _bad(path, "expected a string or an array of content parts.")
    parts: list[ContentPart] = []
    for i, part in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(part, dict):
            raise _bad(where, "expected an object.")
        kind = part.get("type")
        if kind == "text":
            text = _get(part, "text", str, f"{where}.text", required=True)
            parts.append(TextPart(text, extra=_rest(part, ("type", "text"))))
        elif kind == "image_url":
            image = _get(part, "image_url", dict, f"{where}.image_url", required=True)
            url = _get(image, "url", str, f"{where}.image_url.url", required=True)
            detail = _get(image, "detail", str, f"{where}.image_url.detail")
            parts.append(ImagePart(url=url, detail=detail, extra=_rest(part, ("type", "image_url"))))
        elif isinstance(kind, str) and kind:
            parts.append(OpaquePart(type=kind, data=part))
        else:
            raise _bad(f"{where}.type", "expected the content part's type as a string.")
    return parts


def _parse_tool_call(raw: Any, path: str) -> ToolCall:
    if not isinstance(raw, dict):
        raise _bad(path, "expected an object.")
    function = _get(raw, "function", dict, f"{path}.function", required=True)
    return ToolCall(
        id=_get(raw, "id", str, f"{path}.id", required=True),
        name=_get(function, "name", str, f"{path}.function.name", required=True),
        arguments=_get(function, "arguments", str, f"{path}.function.arguments") or "",
    )


def _parse_tool(raw: Any, path: str) -> ToolDefinition:
    if not isinstance(raw, dict) or raw.get("type", "function") != "function":
        raise _bad(f"{path}.type", "only tools of type 'function' are supported.")
    function = _get(raw, "function", dict, f"{path}.function", required=True)
    return ToolDefinition(
        name=_get(function, "name", str, f"{path}.function.name", required=True),
        description=_get(function, "description", str, f"{path}.function.description"),
        parameters=_get(function, "parameters", dict, f"{path}.function.parameters"),
        strict=_get(function, "strict", bool, f"{path}.function.strict"),
        extra=_rest(raw, ("type", "function")),
    )


def _parse_tool_choice(raw: Any) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("none", "auto", "required"):
        return ToolChoice(mode=raw)
    if isinstance(raw, dict):
        if raw.get("type") == "function" and isinstance(raw.get("function"), dict):
            name = _get(raw["function"], "name", str, "tool_choice.function.name", required=True)
            return ToolChoice(mode="required", functions=(name,))
        allowed = raw.get("allowed_tools")
        if (
            raw.get("type") == "allowed_tools"
            and isinstance(allowed, dict)
            and allowed.get("mode") in ("auto", "required")
        ):
            tools = _get(allowed, "tools", list, "tool_choice.allowed_tools.tools", required=True)
            return ToolChoice(mode=allowed["mode"], functions=tuple(_allowed_tool_names(tools)))
    raise _bad("tool_choice", "expected 'none', 'auto', 'required', a function choice or an allowed_tools choice.")


def _allowed_tool_names(tools: list[Any]) -> list[str]:
    names = []
    for i, tool in enumerate(tools):
        path = f"tool_choice.allowed_tools.tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(path, "expected an object.")
        function = _get(tool, "function", dict, f"{path}.function", required=True)
        names.append(_get(function, "name", str, f"{path}.function.name", required=True))
    return names


def _parse_response_format(raw: dict[str, Any] | None) -> ResponseFormat | None:
    if raw is None:
        return None
    kind = raw.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)
    if kind == "json_schema":
        spec = _get(raw, "json_schema", dict, "response_format.json_schema", required=True)
        return ResponseFormat(
            type="json_schema",
            name=_get(spec, "name", str, "response_format.json_schema.name", required=True),
            schema=_get(spec, "schema", dict, "response_format.json_schema.schema"),
            description=_get(spec, "description", str, "response_format.json_schema.description"),
            strict=_get(spec, "strict", bool, "response_format.json_schema.strict"),
        )
    raise _bad("response_format.type", "expected 'text', 'json_object' or 'json_schema'.")


# ==================================================================================================
# Writing a request to an OpenAI-family upstream (providers)
# ==================================================================================================


def encode_chat_request(request: LLMRequest, *, always_include_usage: bool) -> dict[str, Any]:
    """LLMRequest -> an OpenAI Chat Completions body; `extra` fields pass through untouched.

    With `always_include_usage`, streams ask for the usage chunk even when the client did not, so
    the service can account tokens; the API edge drops that chunk for such clients.
    """
    wire = request.wire
    if wire is not None:  # the client's body already is this one, but for the fields written here
        body = dict(wire)
        body["model"] = request.model
        if not request.stream:
            body.pop("stream", None)  # false, as sent
            return body
    else:
        body = _encoded_fields(request)
    if request.stream:
        body["stream"] = True
        if request.include_usage or always_include_usage:
            body["stream_options"] = {**(request.extra.get("stream_options") or {}), "include_usage": True}
    return body


def _encoded_fields(request: LLMRequest) -> dict[str, Any]:
    """The body of `request` but for `stream`."""
    body: dict[str, Any] = dict(request.extra)
    body["model"] = request.model
    body["messages"] = [_encode_message(m) for m in request.messages]
    if request.tools:
        body["tools"] = [_encode_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _encode_tool_choice(request.tool_choice)
    if request.response_format is not None:
        body["response_format"] = _encode_response_format(request.response_format)
    for key in _SCALAR_FIELDS:
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    return body


def _encode_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {**message.extra, "role": str(message.role)}
    content = message.content
    if isinstance(content, list):
        out["content"] = [_encode_part(p) for p in content]
    else:
        out["content"] = content
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.refusal is not None:
        out["refusal"] = message.refusal
    return out


def _encode_part(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text, **part.extra}
    if isinstance(part, OpaquePart):
        return part.data
    image: dict[str, Any] = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image, **part.extra}


def _encode_tool(tool: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function, **tool.extra}


def _encode_tool_choice(choice: ToolChoice) -> Any:
    if not choice.functions:
        return choice.mode
    if choice.mode == "required" and len(choice.functions) == 1:
        return {"type": "function", "function": {"name": choice.functions[0]}}
    tools = [{"type": "function", "function": {"name": name}} for name in choice.functions]
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": tools}}


def _encode_response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec: dict[str, Any] = {"name": fmt.name}
    for key in ("description", "schema", "strict"):
        value = getattr(fmt, key)
        if value is not None:
            spec[key] = value
    return {"type": "json_schema", "json_schema": spec}


# ==================================================================================================
# Reading an OpenAI-family upstream's response (providers)
# ==================================================================================================


def _finish(raw: Any) -> FinishReason | None:
    return _FINISH.get(raw) if isinstance(raw, str) else None


def decode_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    prompt, completion = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
        cached_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
        extra=_rest(raw, _USAGE_COUNTS),
    )


def _decode_tool_call(raw: dict[str, Any], provider: ProviderID, remember: Remember | None) -> ToolCall:
    function = raw["function"]
    call_id, original = issue_tool_call_id(raw["id"], provider, remember)
    return ToolCall(id=call_id, name=function["name"], arguments=function.get("arguments") or "", provider_id=original)


def decode_chat_response(
    data: dict[str, Any], provider: ProviderID, remember: Remember | None = None, *, body: bytes | None = None
) -> LLMResponse:
    """An upstream's Chat Completions body -> LLMResponse; tool-call ids normalised (`tool_ids.py`), the
    originals handed to `remember`. Given the `body` it was read from, the response keeps it as its
    `wire` form when that already is the body the client is to get (as `decode_chat_chunk` does)."""
    # Fields are looked at only when present, leftovers gathered only when there are any (as for chunks).
    choices = []
    plain = body is not None  # nothing in it the client's body would say differently
    for position, raw in enumerate(data["choices"]):
        msg = raw.get("message") or _NOTHING
        content = msg.get("content")
        message = Message(role=Role.ASSISTANT, content=content, refusal=msg.get("refusal"))
        calls = msg.get("tool_calls")
        if calls:
            message.tool_calls = [_decode_tool_call(c, provider, remember) for c in calls]
        if not msg.keys() <= _REPLY_FIELDS:
            message.extra = _rest(msg, _REPLY_FIELDS)
        finish = raw.get("finish_reason")
        finish_reason = _finish(finish) if finish else None
        keys = raw.keys()
        own = NO_FIELDS if keys <= _CHOICE_FIELDS else _rest(raw, _CHOICE_FIELDS)  # native_finish_reason, ...
        if calls or (finish is not None and finish_reason is None) or msg.get("role") != "assistant":
            plain = False  # tool-call ids are translated, finish reasons mapped, the role filled in
        elif not keys >= _CHOICE_FIELDS or not msg.keys() >= _MESSAGE_WRITTEN:
            plain = False  # the fields the encoder always writes (the index among them) must be there
        elif content is not None and type(content) is not str:
            plain = False  # content parts are joined into one text
        choices.append(Choice(raw.get("index", position), message, finish_reason, raw.get("logprobs"), own))
    created = data.get("created")
    response = LLMResponse(
        data.get("id") or "",
        created if type(created) is int else int(created or 0),
        data.get("model") or "",
        provider,
        choices,
        decode_usage(data.get("usage")),
        data.get("system_fingerprint"),
        {} if data.keys() <= _RESPONSE_FIELDS else _rest(data, _RESPONSE_FIELDS),
    )
    if plain and _plain_top(data, "chat.completion"):
        response.wire = body
    return response


def _plain_top(data: dict[str, Any], kind: str) -> bool:
    """Whether the top-level fields of an upstream's body (or chunk, `kind` its object) are the ones
    `encode_chat_response` (`encode_chat_chunk`) writes; usage, if any, with its three counts whole."""
    if data.get("object") != kind or not data.get("id") or type(data.get("model")) is not str:
        return False
    if type(data.get("created")) is not int:
        return False  # the decoder makes a number of it
    if "choices" not in data or ("usage" not in data and kind == "chat.completion"):
        return False  # written always (`usage` into a body; a chunk's only for a client that asked)
    fingerprint = data.get("system_fingerprint")
    if fingerprint is not None and type(fingerprint) is not str:
        return False
    usage = data.get("usage")
    if usage is None:
        return True
    if not isinstance(usage, dict):
        return False
    # Spelled out rather than all() over a generator: a call per count less, on every body.
    get = usage.get
    prompt, completion, total = get("prompt_tokens"), get("completion_tokens"), get("total_tokens")
    return type(prompt) is int and type(completion) is int and type(total) is int


def _decode_tool_call_delta(fragment: dict[str, Any], provider: ProviderID, remember: Remember | None) -> ToolCallDelta:
    function = fragment.get("function") or {}
    raw_id = fragment.get("id")
    call_id, original = issue_tool_call_id(raw_id, provider, remember) if raw_id else (None, None)
    return ToolCallDelta(
        index=fragment.get("index", 0),
        id=call_id,
        name=function.get("name"),
        arguments=function.get("arguments"),
        provider_id=original,
    )


def decode_chat_chunk(
    data: dict[str, Any],
    provider: ProviderID,
    remember: Remember | None = None,
    *,
    event: bytes | None = None,
    include_usage: bool = False,
) -> LLMChunk:
    """An upstream's `chat.completion.chunk` -> LLMChunk. Given the `event` it was read from (and whether
    the client asked for `include_usage`), the chunk keeps it as its `wire` form when that already is
    the chunk the client is to get (`_wire_chunk`)."""
    # Once per streamed chunk, so written for the common chunk (one choice, a little content, no field
    # the domain does not know): fields are looked at only when present, and the leftovers gathered only
    # when there are any (a comprehension is a function call). About half the time of the plain version.
    choices = []
    plain = event is not None  # nothing in it the client's chunk would say differently
    raw_choices = data.get("choices")
    if raw_choices:
        for position, raw in enumerate(raw_choices):
            delta = raw.get("delta") or _NOTHING
            role = delta.get("role")
            fragments = delta.get("tool_calls")
            finish = raw.get("finish_reason")
            keys = raw.keys()
            if fragments or finish is not None or (role is not None and role != "assistant"):
                plain = False  # tool-call ids are translated, finish reasons mapped
            elif not keys >= _CHUNK_CHOICE_FIELDS:
                plain = False  # the fields the encoder always writes (the index among them) must be there
            choices.append(
                ChunkChoice(
                    raw.get("index", position),
                    _ROLES.get(role) if role else None,
                    delta.get("content"),
                    delta.get("refusal"),
                    [_decode_tool_call_delta(f, provider, remember) for f in fragments] if fragments else [],
                    _finish(finish) if finish is not None else None,
                    raw.get("logprobs"),
                    {} if delta.keys() <= _REPLY_FIELDS else _rest(delta, _REPLY_FIELDS),
                    # The choice's own fields (OpenRouter's native_finish_reason, Azure's content_filter_results)
                    NO_FIELDS if keys <= _CHUNK_CHOICE_FIELDS else _rest(raw, _CHUNK_CHOICE_FIELDS),
                )
            )
    raw_usage = data.get("usage")
    usage = decode_usage(raw_usage) if raw_usage is not None else None
    if usage is not None and all(_is_empty(c) for c in choices):
        choices = []  # OpenRouter's usage chunk carries an empty choice; OpenAI's has none
    created = data.get("created")
    chunk = LLMChunk(
        data.get("id") or "",
        created if type(created) is int else int(created or 0),
        data.get("model") or "",
        provider,
        choices,
        usage,
        data.get("system_fingerprint"),
        {} if data.keys() <= _RESPONSE_FIELDS else _rest(data, _RESPONSE_FIELDS),
    )
    if plain and raw_usage is None:
        assert event is not None
        chunk.wire = _wire_chunk(data, event, include_usage)
    return chunk


def _wire_chunk(data: dict[str, Any], event: bytes, include_usage: bool) -> bytes | None:
    """The upstream's event as the client's chunk, when only its form would differ: one line (an SSE
    data line), with the top-level fields `encode_chat_chunk` writes, and no `usage` the client did not
    ask for (OpenAI puts `"usage":null` in every chunk of a stream asked for usage: taken out when it is
    the only `"usage"` key in the event, written the compact way; otherwise no wire form). A client that asked
    gets its `"usage":null` in every chunk, as from OpenAI: added at the end where the upstream left it out."""
    if b"\n" in event or b"\r" in event or not _plain_top(data, "chat.completion.chunk"):
        return None
    if "usage" not in data:
        if not include_usage:
            return event
        return event[:-1] + NULL_USAGE_END if event.endswith(b"}") else None
    if include_usage:
        return event
    # `"usage":` with its quotes unescaped is a key (a string holding it escapes them); a text that is
    # only the word ("content":"usage") is no key, and leaves the chunk its wire form.
    if event.count(b'"usage":') != 1:
        return None
    for form in NULL_USAGE_FORMS:
        stripped = event.replace(form, b"", 1)
        if len(stripped) < len(event):
            return stripped if _without_usage(stripped, data) else None
    return None


def _without_usage(stripped: bytes, data: dict[str, Any]) -> bool:
    """Whether `stripped` is the chunk `data` less its top-level `usage`: the one `"usage":null` found may be
    another (a nested key, the top-level one spelt `"usage" :null` or escaped, a duplicate key), and taking
    it out would change what the chunk says, or break its JSON. Read again to be sure: only chunks decoded
    whole pay it (not the text chunks a template reads), for a client that did not ask for usage."""
    try:
        again = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return False
    return type(again) is dict and "usage" not in again and again == {k: v for k, v in data.items() if k != "usage"}


def _is_empty(choice: ChunkChoice) -> bool:
    return not (choice.content or choice.tool_calls or choice.refusal or choice.finish_reason or choice.extra)


# ==================================================================================================
# Writing the response to the client (API edge)
# ==================================================================================================


def encode_usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        **usage.extra,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens is not None and "prompt_tokens_details" not in out:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens is not None and "completion_tokens_details" not in out:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def _encode_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def encode_chat_response(response: LLMResponse) -> dict[str, Any]:
    """LLMResponse -> the client's `chat.completion` body (`model` is the upstream's resolved name)."""
    choices = []
    for choice in response.choices:
        reply = choice.message
        content = reply.text() if isinstance(reply.content, list) else reply.content
        message: dict[str, Any] = {**reply.extra, "role": "assistant", "content": content, "refusal": reply.refusal}
        if reply.tool_calls:
            message["tool_calls"] = _encode_tool_calls(reply.tool_calls)
        finish = str(choice.finish_reason) if choice.finish_reason else None
        written = {"index": choice.index, "message": message, "logprobs": choice.logprobs, "finish_reason": finish}
        choices.append({**choice.extra, **written} if choice.extra else written)
    body: dict[str, Any] = {
        **response.extra,
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": response.model,
        "choices": choices,
        "usage": encode_usage(response.usage) if response.usage else None,
    }
    if response.system_fingerprint is not None:
        body["system_fingerprint"] = response.system_fingerprint
    return body


def encode_chat_chunk(chunk: LLMChunk, *, include_usage: bool) -> dict[str, Any]:
    """LLMChunk -> one `chat.completion.chunk`; `usage` appears only for clients that asked."""
    choices = []
    for choice in chunk.choices:
        delta: dict[str, Any] = dict(choice.extra)
        if choice.role is not None:
            delta["role"] = str(choice.role)
        if choice.content is not None:
            delta["content"] = choice.content
        if choice.refusal is not None:
            delta["refusal"] = choice.refusal
        if choice.tool_calls:
            delta["tool_calls"] = [_encode_tool_call_delta(d) for d in choice.tool_calls]
        finish = str(choice.finish_reason) if choice.finish_reason else None
        written = {"index": choice.index, "delta": delta, "logprobs": choice.logprobs, "finish_reason": finish}
        choices.append({**choice.choice_extra, **written} if choice.choice_extra else written)
    body: dict[str, Any] = {
        **chunk.extra,
        "id": chunk.id,
        "object": "chat.completion.chunk",
        "created": chunk.created,
        "model": chunk.model,
        "choices": choices,
    }
    if chunk.system_fingerprint is not None:
        body["system_fingerprint"] = chunk.system_fingerprint
    if include_usage:
        body["usage"] = encode_usage(chunk.usage) if chunk.usage else None
    return body


def _encode_tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"index": delta.index}
    if delta.id is not None:
        out["id"] = delta.id
        out["type"] = "function"
    function: dict[str, Any] = {}
    if delta.name is not None:
        function["name"] = delta.name
    if delta.arguments is not None:
        function["arguments"] = delta.arguments
    if function:
        out["function"] = function
    return out
