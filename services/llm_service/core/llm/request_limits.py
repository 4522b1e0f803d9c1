"""The bounds of one chat request (`RequestLimitSettings`), checked while the request is parsed.

`openai_format.parse_chat_request` calls a `RequestCheck` at three points: `start()` with the raw
arrays before reading them (so a million messages are refused before one is parsed), `message()` for
each message as it is read, and `finish()` with the whole request. Together they refuse, as a 400
naming the field in `param`, before anything is sent upstream:

- arrays past their limit: messages, a message's content parts, tools (`array_above_max_length`);
- model names, function names, tool-call ids, participant names and part types past
  `max_name_length` (`string_above_max_length`): these go into logs, headers, metrics and error
  messages, so they are bounded, unlike prompt text, which only the body's size bounds;
- `max_tokens` / `max_completion_tokens` past `max_output_tokens`, and `n` past OpenAI's 128
  (`integer_above_max_value`);
- free-form values (tool parameters, response schemas, fields passed through) nested deeper than
  `max_json_depth` (`nesting_above_max_depth`): every upstream body is written by orjson, which
  refuses past 254 levels, and the Gemini schema translation recurses;
- image URLs other than https://, http://, gs:// and data: (`invalid_image_url`): nothing else is
  something a provider can fetch, and file: or ftp: is never a client's image;
- a tool result whose `tool_call_id` no earlier assistant message called (`invalid_value`).

The checks touch lengths, types and the first bytes of URLs only: no text is read twice. Error
messages quote nothing the caller sent except a short, cut prefix (`quoted()`).

The API edge hands the parser the service's configured limits; without them the defaults apply.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_service.core.config.limits import RequestLimitSettings
from llm_service.core.llm.models import ImagePart, InvalidRequestError, LLMRequest, Message, OpaquePart, ToolDefinition

#: OpenAI's documented range for `n`, the number of choices.
MAX_CHOICES = 128
#: How much of a caller's value an error message may quote.
QUOTE_CHARS = 40
_IMAGE_SCHEMES = ("https:", "http:", "gs:", "data:")
_DEFAULTS = RequestLimitSettings()
_A = {"array": "an", "string": "a"}


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """A caller's value quoted for an error message, cut to `limit` characters: it may be megabytes."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _too_long(kind: str, param: str, limit: int, length: int) -> InvalidRequestError:
    """OpenAI's wording and code for an array or a string past its limit."""
    return InvalidRequestError(
        f"Invalid '{param}': {kind} too long. Expected {_A[kind]} {kind} with maximum length {limit}, but got "
        f"{_A[kind]} {kind} with length {length} instead.",
        param=param,
        code=f"{kind}_above_max_length",
    )


def _array_too_long(param: str, limit: int, length: int) -> InvalidRequestError:
    return _too_long("array", param, limit, length)


def _string_too_long(param: str, limit: int, length: int) -> InvalidRequestError:
    return _too_long("string", param, limit, length)


def _check_at_most(value: int | None, limit: int, param: str) -> None:
    if value is not None and value > limit:
        raise InvalidRequestError(
            f"Invalid '{param}': integer above maximum value. Expected a value less than or equal to {limit}, "
            f"but got {value} instead.",
            param=param,
            code="integer_above_max_value",
        )


def nests_deeper(value: Any, levels: int, json_text: str | None = None) -> bool:
    """Whether `value` nests objects and arrays more than `levels` deep (a scalar is 0 deep, `{}` 1).

    A value without containers inside is one deep. Else, one whose JSON has at most `levels` brackets
    cannot be deeper: that count, taken in C over `json_text` (the JSON `value` was read from, when at
    hand) or over the value written by orjson, spares the walk for nearly every tool schema.
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return False
    for child in value.values() if kind is dict else value:
        kind = type(child)
        if kind is dict or kind is list:
            break
    else:
        return levels < 1
    if json_text is not None:
        brackets = json_text.count("{") + json_text.count("[")
    else:
        try:
            written = orjson.dumps(value)
        except orjson.JSONEncodeError:  # past orjson's own limit, 254 levels
            return _walk_deeper(value, levels)
        brackets = written.count(b"{") + written.count(b"[")
    return brackets > levels and _walk_deeper(value, levels)


def _walk_deeper(value: Any, levels: int) -> bool:
    if levels < 1:
        return True
    levels -= 1
    for child in value.values() if type(value) is dict else value:
        kind = type(child)
        if (kind is dict or kind is list) and _walk_deeper(child, levels):
            return True
    return False


def _too_deep(param: str, limit: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid '{param}': nested too deeply. Expected objects and arrays nested at most {limit} levels.",
        param=param,
        code="nesting_above_max_depth",
    )


def _image_url_error(url: str, param: str) -> InvalidRequestError:
    scheme, colon, _ = url[:QUOTE_CHARS].partition(":")
    got = f"a {quoted(scheme)} URL" if colon and scheme else "a URL without a scheme"
    return InvalidRequestError(
        f"Invalid '{param}': expected an https:// or http:// URL, a gs:// URL or a data: URL, got {got}.",
        param=param,
        code="invalid_image_url",
    )


class RequestCheck:
    """The checks of one request, fed by the parser as it goes (see the module docstring). A field's
    path is spelled out only when it is refused: the checks of a valid request format no strings."""

    __slots__ = ("_called", "_depth", "_names", "limits")

    def __init__(self, limits: RequestLimitSettings | None = None) -> None:
        self.limits = limits = limits if limits is not None else _DEFAULTS
        self._names = limits.max_name_length
        self._depth = limits.max_json_depth
        self._called: set[str] = set()  # ids of the tool calls the assistant messages so far made

    def start(self, model: str, messages: list[Any], tools: list[Any]) -> None:
        """Before the request is read: its model name and the lengths of its arrays."""
        limits = self.limits
        if len(model) > self._names:
            raise _string_too_long("model", self._names, len(model))
        if len(messages) > limits.max_messages:
            raise _array_too_long("messages", limits.max_messages, len(messages))
        if len(tools) > limits.max_tools:
            raise _array_too_long("tools", limits.max_tools, len(tools))

    def message(self, message: Message, index: int) -> Message:
        """One message, once read; returned as it is, so the parser can check it in passing."""
        names = self._names
        if message.name is not None and len(message.name) > names:
            raise _string_too_long(f"messages[{index}].name", names, len(message.name))
        if message.extra:
            self._fields(message.extra, f"messages[{index}].")
        if type(message.content) is list:
            self._content(message.content, index)
        if message.tool_calls:  # only an assistant's
            for j, call in enumerate(message.tool_calls):
                if len(call.id) > names:
                    raise _string_too_long(f"messages[{index}].tool_calls[{j}].id", names, len(call.id))
                if len(call.name) > names:
                    raise _string_too_long(f"messages[{index}].tool_calls[{j}].function.name", names, len(call.name))
                self._called.add(call.id)
        elif message.tool_call_id is not None and message.tool_call_id not in self._called:  # only a tool's
            raise self._unanswerable(message.tool_call_id, f"messages[{index}].tool_call_id")
        return message

    def _unanswerable(self, call_id: str, param: str) -> InvalidRequestError:
        if len(call_id) > self._names:
            return _string_too_long(param, self._names, len(call_id))
        return InvalidRequestError(
            f"Invalid '{param}': no earlier assistant message has a tool call with id {quoted(call_id)}; a "
            "tool message answers a tool call of the conversation.",
            param=param,
            code="invalid_value",
        )

    def _content(self, parts: list[Any], index: int) -> None:
        limit = self.limits.max_content_parts
        if len(parts) > limit:
            raise _array_too_long(f"messages[{index}].content", limit, len(parts))
        for j, part in enumerate(parts):
            kind = type(part)
            if kind is OpaquePart:
                if len(part.type) > self._names:
                    raise _string_too_long(f"messages[{index}].content[{j}].type", self._names, len(part.type))
                if nests_deeper(part.data, self._depth):
                    raise _too_deep(f"messages[{index}].content[{j}]", self._depth)
                continue
            if kind is ImagePart and not part.url[:6].lower().startswith(_IMAGE_SCHEMES):
                raise _image_url_error(part.url, f"messages[{index}].content[{j}].image_url.url")
            if part.extra:
                self._fields(part.extra, f"messages[{index}].content[{j}].")

    def _fields(self, fields: dict[str, Any], prefix: str) -> None:
        """Fields passed through as the caller sent them: bounded names, bounded nesting."""
        for key, value in fields.items():
            if len(key) > self._names:
                param = f"{prefix}{key[:QUOTE_CHARS]}..."
                raise InvalidRequestError(
                    f"Invalid '{param}': field name too long. Expected a name of at most {self._names} characters, "
                    f"but got one of {len(key)} instead.",
                    param=param,
                    code="string_above_max_length",
                )
            if nests_deeper(value, self._depth):
                raise _too_deep(prefix + key, self._depth)

    def finish(self, request: LLMRequest) -> LLMRequest:
        """The whole request, once read: tools, tool choice, response format, numbers and extra fields."""
        limits = self.limits
        if request.tools:
            self._tools(request.tools)
        if request.tool_choice is not None:
            self._tool_choice(request.tool_choice.functions)
        response_format = request.response_format
        if response_format is not None:
            if response_format.name is not None and len(response_format.name) > self._names:
                raise _string_too_long("response_format.json_schema.name", self._names, len(response_format.name))
            if nests_deeper(response_format.schema, self._depth):
                raise _too_deep("response_format.json_schema.schema", self._depth)
        tokens = limits.max_output_tokens
        if (request.max_tokens or 0) > tokens or (request.max_completion_tokens or 0) > tokens:
            _check_at_most(request.max_tokens, tokens, "max_tokens")
            _check_at_most(request.max_completion_tokens, tokens, "max_completion_tokens")
        _check_at_most(request.n, MAX_CHOICES, "n")
        if request.extra:
            self._fields(request.extra, "")
        return request

    def _tools(self, tools: list[ToolDefinition]) -> None:
        names, depth = self._names, self._depth
        for i, tool in enumerate(tools):
            if len(tool.name) > names:
                raise _string_too_long(f"tools[{i}].function.name", names, len(tool.name))
            if nests_deeper(tool.parameters, depth):
                raise _too_deep(f"tools[{i}].function.parameters", depth)
            if tool.extra:
                self._fields(tool.extra, f"tools[{i}].")

    def _tool_choice(self, functions: tuple[str, ...]) -> None:
        limit = self.limits.max_tools
        if len(functions) > limit:
            raise _array_too_long("tool_choice.allowed_tools.tools", limit, len(functions))
        for name in functions:
            if len(name) > self._names:
                raise _string_too_long("tool_choice", self._names, len(name))
