"""Wire formats of the fake upstreams: fixture loading, SSE framing and provider error bodies.

Everything here is pure (no sockets) so the byte-level behaviour can be reasoned about and
tested on its own. Fixture files hold the exact bytes a real provider sends; this module
only re-serialises an event when the request asks for something the fixture does not show
(OpenAI's usage fields when ``stream_options.include_usage`` was not requested).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import orjson

#: ``remote`` is a vLLM server (the ``remote`` provider's usual upstream): OpenAI's wire format with
#: vLLM's own error bodies and its ``continue_final_message`` continuation. It replays the ``openai/``
#: fixtures (:data:`FIXTURE_DIRS`).
Flavor = Literal["openai", "openrouter", "azure_openai", "remote"]
FLAVORS: tuple[Flavor, ...] = ("openai", "openrouter", "azure_openai", "remote")
#: The fixture directory each flavour replays.
FIXTURE_DIRS: dict[Flavor, str] = {
    "openai": "openai",
    "openrouter": "openrouter",
    "azure_openai": "azure_openai",
    "remote": "openai",
}
Scenario = Literal["text", "tool_call", "tool_result"]
SCENARIOS: tuple[Scenario, ...] = ("text", "tool_call", "tool_result")

# A built wheel carries the fixtures inside the package (pyproject's force-include); a source
# checkout reads them where the tests keep them: repository root -> tests/fixtures.
_PACKAGED_FIXTURES = Path(__file__).resolve().parent / "fixtures"
_SOURCE_FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
DEFAULT_FIXTURES_DIR = _PACKAGED_FIXTURES if _PACKAGED_FIXTURES.is_dir() else _SOURCE_FIXTURES

DONE = b"[DONE]"


@dataclass(frozen=True)
class SseEvent:
    """One SSE event: either a comment line (``: text``) or a ``data:`` payload."""

    comment: bytes | None = None
    data: bytes | None = None

    @property
    def is_data(self) -> bool:
        return self.data is not None

    @property
    def is_done(self) -> bool:
        return self.data == DONE

    def render(self, newline: bytes) -> bytes:
        """Serialise with the given line terminator; every event ends with an empty line."""
        if self.data is None:
            return b":" + (self.comment or b"") + newline + newline
        lines = self.data.split(b"\n")
        return b"".join(b"data: " + line + newline for line in lines) + newline


def parse_sse(raw: bytes) -> list[SseEvent]:
    """Parse a fixture stream into events (fixtures use LF, but CR/CRLF are tolerated)."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    events: list[SseEvent] = []
    for block in text.split(b"\n\n"):
        lines = [line for line in block.split(b"\n") if line]
        if not lines:
            continue
        if all(line.startswith(b":") for line in lines):
            events.extend(SseEvent(comment=line[1:]) for line in lines)
            continue
        data_lines = [line[5:] for line in lines if line.startswith(b"data:")]
        payload = b"\n".join(d[1:] if d.startswith(b" ") else d for d in data_lines)
        events.append(SseEvent(data=payload))
    return events


def strip_usage(events: list[SseEvent], *, keep_usage_chunk: bool = False) -> list[SseEvent]:
    """Drop what real OpenAI omits without ``include_usage``: the ``choices: []`` usage chunk
    (unless ``keep_usage_chunk``) and the ``"usage": null`` field of every other chunk. orjson's
    compact output matches OpenAI's own compact chunk bytes, so re-serialised events stay faithful."""
    out: list[SseEvent] = []
    for event in events:
        if event.data is None or event.is_done:
            out.append(event)
            continue
        obj = orjson.loads(event.data)
        if not isinstance(obj, dict) or "usage" not in obj:
            out.append(event)
            continue
        if obj["usage"] is not None and obj.get("choices") == []:
            if keep_usage_chunk:
                out.append(event)
            continue
        del obj["usage"]
        out.append(SseEvent(data=orjson.dumps(obj)))
    return out


def normalize_prefix(path_prefix: str) -> str:
    """``"api/x/"`` -> ``"/api/x"``; ``""`` and ``"/"`` -> ``""`` (a path prefix for routes and URLs)."""
    stripped = path_prefix.strip("/")
    return f"/{stripped}" if stripped else ""


def split_for_writes(data: bytes) -> list[bytes]:
    """Cut one rendered event into 2-3 pieces, preferring a cut inside a multi-byte UTF-8
    character so the client's decoder must carry partial characters across reads."""
    if len(data) < 3:
        return [data]
    lead = next((i for i, byte in enumerate(data) if byte >= 0xC0), None)
    first_cut = lead + 1 if lead is not None else len(data) // 3
    cuts = sorted({c for c in (first_cut, (2 * len(data)) // 3) if 0 < c < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class FixtureSet:
    """The canned responses of one provider, read once from ``<root>/<name>/``.

    Answers are keyed by the file stem without ``chat_``: the three scenarios, plus any other
    ``chat_<name>.json`` (with its ``.sse`` twin) that a ``Fault(fixture="chat_<name>")`` selects.
    """

    def __init__(self, name: str, root: Path) -> None:
        directory = root / name
        if not directory.is_dir():
            raise FileNotFoundError(f"fake upstream fixtures not found: {directory}")
        self.root = root
        self.directory = directory
        self.completions: dict[str, bytes] = {}
        self.streams: dict[str, list[SseEvent]] = {}
        self.ids: dict[str, str] = {}
        stems = {f"chat_{scenario}" for scenario in SCENARIOS}
        stems.update(path.stem for path in directory.glob("chat_*.json") if path.with_suffix(".sse").is_file())
        for stem in sorted(stems):
            answer = stem.removeprefix("chat_")
            completion = (directory / f"{stem}.json").read_bytes()
            self.completions[answer] = completion
            self.streams[answer] = parse_sse((directory / f"{stem}.sse").read_bytes())
            self.ids[answer] = str(orjson.loads(completion).get("id", ""))
        self.errors = {path.stem: path.read_bytes() for path in directory.glob("error_*.json")}
        models = directory / "models.json"
        self.models = models.read_bytes() if models.is_file() else b'{"object":"list","data":[]}'

    def answer_for(self, scenario: Scenario, fixture: str | None) -> str:
        """The answer to serve: the request's scenario, unless a fault named a success fixture."""
        if fixture is None:
            return scenario
        answer = fixture.removeprefix("chat_")
        if not fixture.startswith("chat_") or answer not in self.completions:
            raise ValueError(f"no success fixture {fixture!r} in {self.directory}")
        return answer

    def first_chunk(self, scenario: str) -> dict[str, Any]:
        """The first JSON chunk of a stream: source of id/model/created for synthetic events."""
        for event in self.streams[scenario]:
            if event.data is not None and not event.is_done:
                chunk = orjson.loads(event.data)
                if isinstance(chunk, dict):
                    return chunk
        return {}


def choose_scenario(body: dict[str, Any]) -> Scenario:
    """Pick the canned answer the way a model would behave for this request. A continuation
    (:func:`continuation_prefix`) continues the answer to the conversation before its prefix."""
    messages = body.get("messages")
    if isinstance(messages, list) and continuation_prefix(body) is not None:
        messages = messages[:-1]
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        return "tool_result"
    tools = body.get("tools")
    if isinstance(tools, list) and tools and body.get("tool_choice") != "none":
        return "tool_call"
    return "text"


def wants_usage(body: dict[str, Any], flavor: Flavor = "openai") -> bool:
    options = body.get("stream_options")
    if flavor == "remote":
        # vLLM's StreamOptions.include_usage defaults to true once stream_options is given.
        return isinstance(options, dict) and options.get("include_usage", True) is not False
    return isinstance(options, dict) and options.get("include_usage") is True


# --------------------------------------------------------------------------- continuation

# Fields only vLLM (and SGLang) know: asking to continue the final assistant message.
CONTINUATION_FIELDS = ("continue_final_message", "add_generation_prompt")
VLLM_BOTH_SET = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
# What transformers' apply_chat_template raises (vLLM answers 400 with it) when add_generation_prompt is
# left at vLLM's default, true.
VLLM_TEMPLATE_CONFLICT = (
    "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message when you "
    "want the model to continue the final message, and add_generation_prompt when you want to add a header "
    "that will prompt it to start a new assistant message instead."
)


def message_text(message: Any) -> str | None:
    """A message's text: its string content, or its text parts joined; None when it has neither."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "".join(text for text in texts if isinstance(text, str))
    return None


def ends_with_assistant(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    return isinstance(messages, list) and bool(messages) and _role(messages[-1]) == "assistant"


def continuation_prefix(body: dict[str, Any]) -> str | None:
    """The text to continue when the request asks vLLM to continue its final assistant message
    (``continue_final_message: true`` and the last message an assistant's), else None."""
    if body.get("continue_final_message") is not True or not ends_with_assistant(body):
        return None
    return message_text(body["messages"][-1]) or ""


def continuation_rejection(body: dict[str, Any]) -> bytes | None:
    """vLLM's 400 for ``continue_final_message`` with ``add_generation_prompt`` true: explicitly (its
    request validator), or left at its default (the chat template refuses)."""
    if body.get("continue_final_message") is not True:
        return None
    if body.get("add_generation_prompt") is True:
        return vllm_error(400, VLLM_BOTH_SET)
    if "add_generation_prompt" not in body:
        return vllm_error(400, VLLM_TEMPLATE_CONFLICT)
    return None


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


# --------------------------------------------------------------------------- errors

_OPENAI_GENERIC: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "Incorrect API key provided."),
    403: ("invalid_request_error", "You are not allowed to sample from this model"),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it."),
    408: ("server_error", "Request timed out."),
    409: ("server_error", "Conflict."),
    429: ("requests", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
    504: ("server_error", "Gateway timeout."),
}

_OPENROUTER_GENERIC: dict[int, str] = {
    400: "Bad Request",
    401: "User not found.",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Your input was flagged by the moderation model",
    408: "Request timed out",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No allowed providers are available for the selected model.",
}

# Azure's gateway answers with {"error":{"code":<status as a string, or a name>,"message":...}}
# (reference section 2.5). The names and texts of statuses without a captured body are [U].
_AZURE_GENERIC: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad Request"),
    403: ("403", "Access denied due to Virtual Network/Firewall rules."),
    408: ("Timeout", "The operation was timeout."),
    429: ("429", "Rate limit is exceeded. Try again in 6 seconds."),
    502: ("502", "Bad gateway."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request. Please try again later."),
    504: ("504", "Gateway timeout."),
}

# Bodies Azure's API gateway sends itself, captured byte for byte (compact, no trailing newline).
AZURE_RESOURCE_NOT_FOUND = b'{"error":{"code":"404","message": "Resource not found"}}'
AZURE_ACCESS_DENIED = (
    b'{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. '
    b"Make sure to provide a valid key for an active subscription and use a correct regional API endpoint "
    b'for your resource."}}'
)
# An Authorization: Bearer token Azure cannot accept gets this different shape (no "error" envelope).
AZURE_TOKEN_REJECTED = (
    b'{ "statusCode": 401, "message": "Unauthorized. Access token is missing, invalid, audience is incorrect '
    b'(https://cognitiveservices.azure.com), or have expired." }'
)
AZURE_DEPLOYMENT_NOT_FOUND = (
    b'{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. '
    b'If you created the deployment within the last 5 minutes, please wait a moment and try again."}}'
)


def openai_error(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    # OpenAI's error bodies are pretty-printed with 4-space indents and a trailing newline.
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return (json.dumps(body, indent=4, ensure_ascii=False) + "\n").encode()


def azure_error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def azure_backend_error(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    # Errors raised behind Azure's gateway keep OpenAI's fields, pretty-printed with 2 spaces.
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(body, indent=2, ensure_ascii=False).encode()


def openrouter_error(status: int, message: str, metadata: dict[str, Any] | None = None) -> bytes:
    # OpenRouter: compact JSON, numeric ``code`` equal to the HTTP status.
    error: dict[str, Any] = {"message": message, "code": status}
    if metadata is not None:
        error["metadata"] = metadata
    return orjson.dumps({"error": error})


# vLLM's error types by status (its create_error_response err_type) [U except 400, 404 and 500].
_VLLM_TYPES: dict[int, str] = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


def vllm_error(status: int, message: str, type_: str | None = None, param: str | None = None) -> bytes:
    """vLLM's ErrorResponse (since 0.10): OpenAI's envelope with the HTTP status as a numeric ``code``,
    compact as FastAPI's JSONResponse writes it."""
    error = {"message": message, "type": type_ or _VLLM_TYPES.get(status, "BadRequestError"), "param": param}
    return orjson.dumps({"error": {**error, "code": status}})


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def generic_error(flavor: Flavor, status: int) -> bytes:
    """An error body for a status that has no fixture file."""
    phrase = status_phrase(status)
    if flavor == "openrouter":
        return openrouter_error(status, _OPENROUTER_GENERIC.get(status, phrase))
    if flavor == "azure_openai":
        code, message = _AZURE_GENERIC.get(status, (str(status), phrase))
        return azure_error(code, message)
    if flavor == "remote":
        return vllm_error(status, phrase)
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    type_, message = _OPENAI_GENERIC.get(status, (default_type, phrase))
    return openai_error(message, type_)


def midstream_error_event(flavor: Flavor, first_chunk: dict[str, Any]) -> bytes:
    """The data payload a provider sends when generation fails after the stream started."""
    if flavor == "remote":
        # vLLM's create_streaming_error_response; [DONE] still follows it (FakeUpstream adds it).
        return vllm_error(500, "Internal server error", "InternalServerError")
    if flavor in ("openai", "azure_openai"):
        return orjson.dumps(
            {
                "error": {
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
    # OpenRouter (reference 5.4): still a chunk, string error code, finish_reason "error".
    return orjson.dumps(
        {
            "id": first_chunk.get("id", "gen-0"),
            "object": "chat.completion.chunk",
            "created": first_chunk.get("created", 0),
            "model": first_chunk.get("model", ""),
            "provider": first_chunk.get("provider", ""),
            "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    )


def mask_key(key: str) -> str:
    """Mask a key the way OpenAI's 401 message does (short keys are echoed as they are)."""
    if len(key) <= 12:
        return key
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def unauthorized_body(flavor: Flavor, presented: str | None) -> bytes:
    if flavor == "remote":
        return b'{"error":"Unauthorized"}'  # vLLM's --api-key middleware, whatever was presented
    if flavor == "openrouter":
        message = "No auth credentials found" if not presented else "User not found."
        return openrouter_error(401, message)
    if not presented:
        return openai_error(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
            "blank username) if you're accessing the API from your browser and are prompted for a "
            "username and password. You can obtain an API key from "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
        )
    return openai_error(
        f"Incorrect API key provided: {mask_key(presented)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        code="invalid_api_key",
    )


def bad_request(flavor: Flavor, message: str, param: str | None = None, code: str | None = None) -> bytes:
    if flavor == "openrouter":
        return openrouter_error(400, message)
    if flavor == "azure_openai":
        return azure_backend_error(message, "invalid_request_error", param, code)
    if flavor == "remote":
        return vllm_error(400, message, param=param)
    return openai_error(message, "invalid_request_error", param, code)


def invalid_json_body(flavor: Flavor) -> bytes:
    return bad_request(
        flavor,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
        "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
        "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
        "help center at help.openai.com.)",
    )


def validate_chat_body(flavor: Flavor, body: dict[str, Any]) -> bytes | None:
    """Return a 400 body for requests the real service would reject, else None. Tool-call ids are
    :mod:`.tool_call_rules`' business."""
    # OpenRouter falls back to the account's default model, Azure takes the deployment from the
    # URL; OpenAI insists on one.
    if flavor == "openai" and (not isinstance(body.get("model"), str) or not body["model"]):
        return bad_request(flavor, "you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        return bad_request(flavor, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        return bad_request(
            flavor,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    stream_options = body.get("stream_options")
    if flavor != "openrouter" and stream_options is not None and body.get("stream") is not True:
        if flavor == "remote":
            return bad_request(flavor, "Stream options can only be defined when `stream=True`.")
        return bad_request(
            flavor,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    if flavor == "remote":
        return continuation_rejection(body)
    if flavor in ("openai", "azure_openai"):
        # OpenAI refuses any argument it does not know; these are the vLLM-only ones a gateway may send.
        unknown = next((name for name in CONTINUATION_FIELDS if name in body), None)
        if unknown is not None:
            return bad_request(flavor, f"Unrecognized request argument supplied: {unknown}")
    return None
