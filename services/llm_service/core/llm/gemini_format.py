"""The domain <-> Vertex AI Gemini `generateContent` wire format, both directions, pure (no I/O).

The Vertex client (`vertex.py`) owns the endpoint, the credentials and the `ToolCallStore`; this
module only translates. It asks `tool_call_ids()` which stored call data to fetch, hands that to
`encode_gemini_request()`, and passes a `remember` callback to the decoders, which call it for every
tool call whose provider data (upstream id, `thoughtSignature`) must go back with the next turn.

Decisions where OpenAI and Gemini differ (see provider-protocols.md sections 4, 6 and 7):

Request
- system/developer messages become `systemInstruction`, one text part per message, in order (their
  position in the conversation is lost). Only text is accepted there.
- Consecutive contents of the same role are merged; tool results and a following user message end up
  in one `user` content. Empty text parts are dropped (Vertex rejects "an empty text parameter"), so
  an assistant message with only a refusal or no content contributes nothing.
- A run of consecutive tool messages is sent in the order of the calls they answer in the preceding
  model turn, not in the order the client sent them (clients running tools concurrently send results
  as they complete): models without call ids pair `functionResponse` with `functionCall` parts by
  position and name. Results for calls of earlier turns keep their relative order, after the others.
- `functionCall.id` / `functionResponse.id` are sent only when the upstream gave the call an id: older
  models reject the field, models that issue ids want it back. `thoughtSignature` is re-attached the
  same way. Nothing is invented for calls the store does not know (e.g. after a restart).
- Images: data: URLs are inlined; gs:// and https:// URLs become `fileData` with the media type taken
  from the path's extension (Vertex needs one); any other scheme is rejected, not fetched.
- `tool_choice` auto restricted to some functions has no Gemini equivalent (`allowedFunctionNames`
  only combines with ANY or the preview-only VALIDATED): we send AUTO and declare only the allowed
  functions, which is what the client asked for. A `tool_choice` without tools is dropped.
- JSON Schema -> Gemini's OpenAPI subset: types uppercased, `["x", "null"]` and a `{"type": "null"}`
  anyOf branch become `nullable`, oneOf becomes anyOf, a one-element allOf is merged, local `$ref`s are
  inlined (recursion is rejected), `const` becomes a one-value enum, unknown keywords are dropped.
  Gemini accepts `enum` only on STRING: an enum on another type is dropped and its values are named in
  the description, so arguments keep their declared type. An enum without a type is INTEGER, NUMBER or
  BOOLEAN when all its values are, else STRING. `format` is kept only where Gemini accepts
  it (date-time/enum, int32/int64, float/double). Function parameters without properties are left
  out (Vertex rejects an OBJECT with empty properties).
- Fields in `LLMRequest.extra`: penalties and logprobs map to `generationConfig`; fields that do not
  change the answer (`_DROPPED_EXTRA`) and an empty `logit_bias` are dropped; anything else is a 400
  naming the field, rather than silently answering a different question than the one asked.

Response
- Parts marked `thought: true` (reasoning summaries) are skipped; executable code, code results and
  inline media in answers are not translated.
- Tool-call ids: the upstream id when given, otherwise `call_` + 24 base62 chars of
  sha256(responseId, candidate index, call index), so a streamed and a plain answer name a call alike.
- finishReason: STOP -> stop (tool_calls when the candidate called functions); MAX_TOKENS -> length;
  SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, IMAGE_* -> content_filter; everything else
  (MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS, LANGUAGE, OTHER, unknown) -> stop:
  the answer so far is still the model's answer, and OpenAI has no closer value.
- A blocked prompt raises `ContentFilterError`; a plain response with no candidates and no block
  reason is malformed (`ProviderConnectionError`).
- Usage counts thoughts as completion tokens, as OpenAI counts reasoning tokens.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.limits import MAX_JSON_DEPTH_CEILING
from llm_service.core.llm.gemini_schema import convert_schema, invalid, unsupported
from llm_service.core.llm.models import (
    Choice,
    ChunkChoice,
    ContentFilterError,
    ContentPart,
    FinishReason,
    ImagePart,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    OpaquePart,
    ProviderConnectionError,
    Role,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from llm_service.core.llm.request_limits import nests_deeper
from llm_service.core.llm.tool_call_store import ProviderCallData
from llm_service.core.llm.tool_ids import issue_tool_call_id, normalize_tool_call_id

Remember = Callable[[str, ProviderCallData], None]
"""Called with (client-visible tool call id, data) for every call that has data worth keeping."""

_PROVIDER = ProviderID.VERTEX_AI.value
#: The thoughtSignature Google documents for function calls the model did not produce itself.
FOREIGN_CALL_SIGNATURE = "skip_thought_signature_validator"

# Request fields that do not change the answer (or are handled elsewhere): dropped without a word.
_DROPPED_EXTRA = frozenset(
    {
        "stream_options", "user", "metadata", "store", "service_tier", "parallel_tool_calls",
        "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
# Request fields that map to generationConfig: OpenAI name -> (Gemini name, accepted JSON types).
_EXTRA_GENERATION: dict[str, tuple[str, tuple[type, ...]]] = {
    "presence_penalty": ("presencePenalty", (int, float)),
    "frequency_penalty": ("frequencyPenalty", (int, float)),
    "logprobs": ("responseLogprobs", (bool,)),
    "top_logprobs": ("logprobs", (int,)),
}
_MIME_BY_EXTENSION = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
    "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf", "txt": "text/plain",
    "wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg", "aac": "audio/aac",
    "mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm", "mpeg": "video/mpeg",
}  # fmt: skip
_AUDIO_MIME = {"mp3": "audio/mpeg"}
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
_TOOL_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}

_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    **dict.fromkeys(("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"), FinishReason.CONTENT_FILTER),
}
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# ==================================================================================================
# Request: LLMRequest -> generateContent body
# ==================================================================================================


def encode_gemini_request(request: LLMRequest, call_data: Mapping[str, ProviderCallData]) -> dict[str, Any]:
    """LLMRequest -> a generateContent body; InvalidRequestError names what cannot be translated."""
    conversation = _Conversation(call_data)
    for i, message in enumerate(request.messages):
        conversation.add_message(i, message)
    conversation.close()
    if not conversation.contents:
        raise invalid(
            "messages", f"{_PROVIDER} needs at least one user, assistant or tool message with content besides "
            "the system messages."
        )  # fmt: skip
    body: dict[str, Any] = {}
    if conversation.system:
        body["systemInstruction"] = {"parts": conversation.system}
    body["contents"] = conversation.contents
    if request.tools:
        declarations, tool_config = _encode_tools(request.tools, request.tool_choice)
        body["tools"] = [{"functionDeclarations": declarations}]
        if tool_config is not None:
            body["toolConfig"] = {"functionCallingConfig": tool_config}
    generation = _generation_config(request)
    if generation:
        body["generationConfig"] = generation
    return body


class _Conversation:
    """Messages -> `systemInstruction` parts and `contents`, merging consecutive same-role turns."""

    def __init__(self, call_data: Mapping[str, ProviderCallData]) -> None:
        self.call_data = call_data
        self.system: list[dict[str, Any]] = []
        self.contents: list[dict[str, Any]] = []
        self.call_names: dict[str, str] = {}  # tool call id -> function name, from the assistant turns so far
        self.turn_calls: dict[str, int] = {}  # tool call id -> its position among the last model turn's calls
        self.results: list[tuple[int, dict[str, Any]]] = []  # the current run of tool results, with that position

    def add_message(self, i: int, message: Message) -> None:
        path = f"messages[{i}]"
        if message.role in (Role.SYSTEM, Role.DEVELOPER):  # not in `contents`: does not end a run of results
            text = _text_only(message.content, f"{path}.content", "system instructions")
            if text:
                self.system.append({"text": text})
        elif message.role is Role.TOOL:
            part = self._function_response(message, path)
            position = self.turn_calls.get(message.tool_call_id or "", len(self.turn_calls))
            self.results.append((position, part))
        else:
            self.close()
            if message.role is Role.USER:
                self._add("user", _encode_content(message.content, f"{path}.content"))
            else:
                parts = self._assistant_parts(message, path)
                if parts and not (self.contents and self.contents[-1]["role"] == "model"):
                    self.turn_calls = {}  # a new model turn
                for call in message.tool_calls:
                    self.turn_calls.setdefault(call.id, len(self.turn_calls))
                self._add("model", parts)

    def close(self) -> None:
        """Add the pending run of tool results, ordered like the calls they answer (a stable sort)."""
        self.results.sort(key=lambda result: result[0])
        self._add("user", [part for _, part in self.results])
        self.results = []

    def _add(self, role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if self.contents and self.contents[-1]["role"] == role:
            self.contents[-1]["parts"].extend(parts)
        else:
            self.contents.append({"role": role, "parts": parts})

    def _assistant_parts(self, message: Message, path: str) -> list[dict[str, Any]]:
        content = message.content
        if isinstance(content, list):  # a refusal part, like the refusal field, is not sent
            content = [p for p in content if not (isinstance(p, OpaquePart) and p.type == "refusal")]
        parts = _encode_content(content, f"{path}.content")
        for j, call in enumerate(message.tool_calls):
            self.call_names[call.id] = call.name
            args = _call_arguments(call.arguments, f"{path}.tool_calls[{j}].function.arguments")
            function_call: dict[str, Any] = {"name": call.name, "args": args}
            part: dict[str, Any] = {"functionCall": function_call}
            known = self.call_data.get(call.id)
            if known is not None and known.provider_id:
                function_call["id"] = known.provider_id
            if known is None:
                # A call Gemini did not issue (the conversation began on another provider, or the call's
                # data expired): Gemini 3 refuses a function call without a signature, and Google
                # documents this placeholder for calls that are not the model's own.
                part["thoughtSignature"] = FOREIGN_CALL_SIGNATURE
            elif known.thought_signature:
                part["thoughtSignature"] = known.thought_signature
            parts.append(part)
        return parts

    def _function_response(self, message: Message, path: str) -> dict[str, Any]:
        call_id = message.tool_call_id
        name = self.call_names.get(call_id) if call_id is not None else None
        if call_id is None or name is None:
            raise invalid(
                f"{path}.tool_call_id",
                f"no earlier assistant message has a tool call with id {call_id!r}; {_PROVIDER} needs the "
                "function's name for each tool result.",
            )
        text = _text_only(message.content, f"{path}.content", "tool results")
        response: dict[str, Any] = {"name": name, "response": _tool_result(text)}
        known = self.call_data.get(call_id)
        if known is not None and known.provider_id:
            response["id"] = known.provider_id
        return {"functionResponse": response}


def _part_type(part: ContentPart) -> str:
    return "text" if isinstance(part, TextPart) else "image_url" if isinstance(part, ImagePart) else part.type


def _text_only(content: str | list[ContentPart] | None, path: str, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for j, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise unsupported(f"{path}[{j}].type", f"only text is accepted in {where}, not {_part_type(part)!r}.")
    return "".join(p.text for p in content if isinstance(p, TextPart))


def _tool_result(text: str) -> dict[str, Any]:
    """Gemini wants an object: the result itself when it is a JSON object (one nested too deeply to be
    written into the body goes as text), else {"output": text}."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and not nests_deeper(parsed, MAX_JSON_DEPTH_CEILING, text):
        return parsed
    return {"output": text}


def _call_arguments(arguments: str, param: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise invalid(param, f"is not valid JSON; {_PROVIDER} needs the arguments as a JSON object.") from None
    if not isinstance(parsed, dict):
        raise invalid(param, f"must be a JSON object for {_PROVIDER}, got a JSON {type(parsed).__name__}.")
    if nests_deeper(parsed, MAX_JSON_DEPTH_CEILING, arguments):
        raise invalid(param, f"nests objects and arrays more than {MAX_JSON_DEPTH_CEILING} levels deep.")
    return parsed


def _encode_content(content: str | list[ContentPart] | None, path: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, part in enumerate(content):
        where = f"{path}[{j}]"
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_encode_image(part.url, f"{where}.image_url.url"))
        else:
            parts.append(_encode_opaque(part, where))
    return parts


def _encode_image(url: str, param: str) -> dict[str, Any]:
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "data":
        return {"inlineData": _inline_data(url, param)}
    if scheme not in ("gs", "https"):
        got = f"{scheme}: URLs" if scheme else "URLs without a scheme"
        raise unsupported(param, f"{_PROVIDER} takes images as data:, gs:// or https:// URLs, not {got}.")
    path = urlsplit(url).path
    extension = path.rpartition(".")[2].lower() if "." in path.rpartition("/")[2] else ""
    mime = _MIME_BY_EXTENSION.get(extension)
    if mime is None:
        raise unsupported(
            param,
            f"{_PROVIDER} needs the media type of a URL and it cannot be told from this URL's path; send the "
            "image as a data: URL or use a URL whose path ends in a known extension (.png, .jpg, .webp, .pdf, ...).",
        )
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _inline_data(url: str, param: str) -> dict[str, str]:
    header, comma, data = url.partition(",")
    mime = header[len("data:") :].partition(";")[0]
    if not comma or not header.endswith(";base64") or "/" not in mime:
        raise unsupported(param, f"{_PROVIDER} needs data: URLs of the form data:<media type>;base64,<data>.")
    return {"mimeType": mime, "data": data}


def _encode_opaque(part: OpaquePart, path: str) -> dict[str, Any]:
    if part.type == "input_audio":
        audio = part.data.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        audio_format = audio.get("format") if isinstance(audio, dict) else None
        if not isinstance(data, str) or not isinstance(audio_format, str) or not audio_format:
            raise invalid(f"{path}.input_audio", "expected an object with the base64 `data` and its `format`.")
        return {"inlineData": {"mimeType": _AUDIO_MIME.get(audio_format, f"audio/{audio_format}"), "data": data}}
    if part.type == "file":
        file = part.data.get("file")
        file_data = file.get("file_data") if isinstance(file, dict) else None
        if not isinstance(file_data, str) or not file_data.startswith("data:"):
            raise unsupported(
                f"{path}.file.file_data",
                f"{_PROVIDER} needs the file inline as a base64 data: URL in file.file_data; file ids are not "
                "supported.",
            )
        return {"inlineData": _inline_data(file_data, f"{path}.file.file_data")}
    raise unsupported(f"{path}.type", f"content parts of type {part.type!r} cannot be sent to {_PROVIDER}.")


def _encode_tools(
    tools: list[ToolDefinition], choice: ToolChoice | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    declarations = [_declaration(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if choice is None:
        return declarations, None
    declared = {d["name"] for d in declarations}
    for name in choice.functions:
        if name not in declared:
            raise invalid("tool_choice", f"names the function {name!r}, which is not among the tools.")
    config: dict[str, Any] = {"mode": _TOOL_MODES[choice.mode]}
    if choice.functions and choice.mode == "required":
        config["allowedFunctionNames"] = list(choice.functions)
    elif choice.functions and choice.mode == "auto":  # see the module docstring
        declarations = [d for d in declarations if d["name"] in choice.functions]
    return declarations, config


def _declaration(tool: ToolDefinition, path: str) -> dict[str, Any]:
    name = tool.name
    if _FUNCTION_NAME.fullmatch(name) is None:
        raise unsupported(
            f"{path}.function.name",
            f"{_PROVIDER} function names must start with a letter or an underscore, contain only letters, digits, "
            f"'_', '.', ':' and '-', and be at most 128 characters long; got {name!r}.",
        )
    declaration: dict[str, Any] = {"name": name}
    if tool.description is not None:
        declaration["description"] = tool.description
    if tool.parameters is not None:
        parameters = _function_parameters(tool.parameters, f"{path}.function.parameters")
        if parameters is not None:
            declaration["parameters"] = parameters
    return declaration


def _function_parameters(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    converted = convert_schema(schema, path)
    if converted.get("type", "OBJECT") != "OBJECT":
        raise invalid(f"{path}.type", "function parameters must be a JSON Schema of type 'object'.")
    if not converted.get("properties"):
        return None
    return {"type": "OBJECT", **converted}


def _generation_config(request: LLMRequest) -> dict[str, Any]:
    fields = (
        ("temperature", request.temperature),
        ("topP", request.top_p),
        ("maxOutputTokens", request.max_completion_tokens or request.max_tokens),
        ("stopSequences", request.stop or None),
        ("seed", request.seed),
        ("candidateCount", request.n),
    )
    config: dict[str, Any] = {key: value for key, value in fields if value is not None}
    config.update(_extra_generation(request.extra))
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            config["responseSchema"] = convert_schema(fmt.schema, "response_format.json_schema.schema")
    return config


def _extra_generation(extra: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in extra.items():
        if key in _EXTRA_GENERATION:
            target, kinds = _EXTRA_GENERATION[key]
            if value is None:
                continue
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise invalid(key, f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}.")
            config[target] = value
        elif key == "logit_bias":
            if value:  # token ids belong to OpenAI's tokenizers; an empty bias changes nothing
                raise unsupported(key, f"{_PROVIDER} has no token biasing.")
        elif key not in _DROPPED_EXTRA:
            raise unsupported(key, f"{_PROVIDER} does not support the '{key}' parameter; remove it to use this model.")
    return config


# ==================================================================================================
# Response: generateContent body / stream events -> domain
# ==================================================================================================


def decode_gemini_response(
    data: dict[str, Any], provider: ProviderID, *, model: str, remember: Remember
) -> LLMResponse:
    """A generateContent response -> LLMResponse; `model` is used when the body has no modelVersion."""
    candidates = data.get("candidates") or []
    if not candidates:
        _raise_if_blocked(data, provider)
        raise ProviderConnectionError(f"{provider.value} returned a response without candidates", provider=provider)
    response_id = data.get("responseId") or _random_id()
    choices = []
    for position, candidate in enumerate(candidates):
        index = candidate.get("index", position)
        text, calls = _read_parts(candidate, response_id, index, 0, remember)
        message = Message(role=Role.ASSISTANT, content=text, tool_calls=calls)
        finish = _finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(Choice(index, message, finish, logprobs=_logprobs(candidate)))
    return LLMResponse(
        id=f"chatcmpl-{response_id}",
        created=_created(data),
        model=data.get("modelVersion") or model,
        provider=provider,
        choices=choices,
        usage=_usage(data.get("usageMetadata")),
    )


@dataclass(slots=True)
class _CandidateState:
    role_sent: bool = False
    calls: int = 0  # function calls seen so far: the next call's index
    finished: bool = False


class GeminiStreamTranslator:
    """Turns the events of `streamGenerateContent?alt=sse` into domain chunks, one event at a time."""

    def __init__(self, provider: ProviderID, *, model: str, remember: Remember) -> None:
        self._provider = provider
        self._model = model
        self._remember = remember
        self._started = False
        self._response_id = ""
        self._created = 0
        self._candidates: dict[int, _CandidateState] = {}
        self._usage: Usage | None = None
        self._usage_sent = False
        self._blocked = False

    @property
    def done(self) -> bool:
        """True once every candidate seen has had a finishReason (or the prompt was blocked)."""
        states = self._candidates.values()
        return self._blocked or (bool(states) and all(s.finished for s in states))

    def feed(self, data: dict[str, Any]) -> list[LLMChunk]:
        """One parsed SSE event (a GenerateContentResponse) -> 0..n domain chunks."""
        if not self._started:
            self._started = True
            self._response_id = data.get("responseId") or _random_id()
            self._created = _created(data)
            self._model = data.get("modelVersion") or self._model
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self._blocked = True
            _raise_if_blocked(data, self._provider)
        usage = data.get("usageMetadata")
        if isinstance(usage, dict) and usage.get("promptTokenCount") is not None:
            self._usage = _usage(usage)
        chunks = []
        for position, candidate in enumerate(candidates):
            chunks.extend(self._candidate(candidate, position))
        if self.done and not self._usage_sent and self._usage is not None:
            self._usage_sent = True
            chunks.append(self._chunk([], self._usage))
        return chunks

    def _candidate(self, candidate: dict[str, Any], position: int) -> list[LLMChunk]:
        index = candidate.get("index", position)
        state = self._candidates.setdefault(index, _CandidateState())
        if state.finished:
            return []
        text, calls = _read_parts(candidate, self._response_id, index, state.calls, self._remember)
        chunks = []
        if text or calls:
            deltas = [
                ToolCallDelta(state.calls + k, id=c.id, name=c.name, arguments=c.arguments, provider_id=c.provider_id)
                for k, c in enumerate(calls)
            ]
            state.calls += len(calls)
            choice = ChunkChoice(index, content=text or None, tool_calls=deltas, logprobs=_logprobs(candidate))
            chunks.append(self._choice_chunk(state, choice))
        reason = candidate.get("finishReason")
        if reason:
            state.finished = True
            finish = _finish_reason(reason, state.calls > 0)
            chunks.append(self._choice_chunk(state, ChunkChoice(index, finish_reason=finish)))
        return chunks

    def _choice_chunk(self, state: _CandidateState, choice: ChunkChoice) -> LLMChunk:
        if not state.role_sent:
            state.role_sent = True
            choice.role = Role.ASSISTANT
        return self._chunk([choice], None)

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None) -> LLMChunk:
        return LLMChunk(
            id=f"chatcmpl-{self._response_id}",
            created=self._created,
            model=self._model,
            provider=self._provider,
            choices=choices,
            usage=usage,
        )


def _raise_if_blocked(data: dict[str, Any], provider: ProviderID) -> None:
    reason = (data.get("promptFeedback") or {}).get("blockReason")
    if reason:
        raise ContentFilterError(
            f"{provider.value} blocked the prompt ({reason})", provider=provider, code="content_filter"
        )


def _read_parts(
    candidate: dict[str, Any], response_id: str, index: int, first_call: int, remember: Remember
) -> tuple[str | None, list[ToolCall]]:
    """A candidate's answer text (None when it has no text part) and function calls, thoughts skipped."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            continue
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        function_call = part.get("functionCall")
        if isinstance(function_call, dict):
            call_index = first_call + len(calls)
            calls.append(_tool_call(function_call, part, _position(response_id, index, call_index), remember))
    return ("".join(texts) if texts else None), calls


def _tool_call(function_call: dict[str, Any], part: dict[str, Any], position: str, remember: Remember) -> ToolCall:
    upstream = function_call.get("id")
    signature = part.get("thoughtSignature")
    client_id, provider_id = issue_tool_call_id(
        upstream if isinstance(upstream, str) else None,
        ProviderID.VERTEX_AI,
        remember,
        position=position,
        thought_signature=signature if isinstance(signature, str) and signature else None,
        always=True,  # even with nothing to send back, a call known as Gemini's gets no placeholder signature
    )
    return ToolCall(
        id=client_id,
        name=function_call.get("name") or "",
        arguments=orjson.dumps(function_call.get("args") or {}).decode(),
        provider_id=provider_id,
    )


def _position(response_id: str, candidate_index: int, call_index: int) -> str:
    """Where a call sits in an answer: what names a call Gemini gave no id, equal in streamed and plain answers."""
    return f"{response_id}:{candidate_index}:{call_index}"


def stable_call_id(response_id: str, candidate_index: int, call_index: int) -> str:
    """The normalised id of the call at this position when Gemini gave it no id."""
    return normalize_tool_call_id(
        None, ProviderID.VERTEX_AI, position=_position(response_id, candidate_index, call_index)
    )[0]


def _random_id() -> str:
    return uuid.uuid4().hex


def _finish_reason(raw: Any, has_calls: bool) -> FinishReason:
    if isinstance(raw, str) and raw.startswith("IMAGE_"):
        return FinishReason.CONTENT_FILTER
    reason = _FINISH.get(raw, FinishReason.STOP) if isinstance(raw, str) else FinishReason.STOP
    return FinishReason.TOOL_CALLS if reason is FinishReason.STOP and has_calls else reason


def _created(data: dict[str, Any]) -> int:
    raw = data.get("createTime")
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
    return int(time.time())


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("promptTokenCount") or 0)
    thoughts = raw.get("thoughtsTokenCount")
    completion = int(raw.get("candidatesTokenCount") or 0) + int(thoughts or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("totalTokenCount") or prompt + completion),
        cached_tokens=raw.get("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _logprobs(candidate: dict[str, Any]) -> dict[str, Any] | None:
    """Gemini's `logprobsResult` -> OpenAI's choice `logprobs` ({"content": [...], "refusal": None})."""
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for k, chosen in enumerate(result.get("chosenCandidates") or ()):
        alternatives: Iterable[dict[str, Any]] = (tops[k].get("candidates") or ()) if k < len(tops) else ()
        content.append({**_logprob(chosen), "top_logprobs": [_logprob(t) for t in alternatives]})
    return {"content": content, "refusal": None}


def _logprob(token: dict[str, Any]) -> dict[str, Any]:
    text = token.get("token") or ""
    return {"token": text, "logprob": token.get("logProbability", 0.0), "bytes": list(text.encode())}
