"""Provider-neutral domain types and the service's one error hierarchy.

The OpenAI wire format is the API's language, not the domain's: `api/` translates between the two,
and each provider translates the domain to its own wire format. Plain slotted dataclasses keep the
per-request and per-chunk cost low.

Errors::

    LLMServiceError
     ├── InvalidRequestError          the caller's request is wrong (field named in `param`)
     ├── ModelNotFoundError           unknown model, alias or provider
     ├── RequestTooLargeError         body over the configured limit
     ├── ConfigurationError           the service is missing a setting (names the env var)
     │    └── ProviderNotConfiguredError   a provider without its key or URL
     ├── OverloadedError              no capacity now and the wait queue is full or timed out (429)
     ├── DeploymentsUnavailableError  every deployment of the model is open-circuited (503)
     └── ProviderError                an upstream failed (provider, status, retryable, retry_after)
          ├── RateLimitError          upstream 429 (retry_after from its headers)
          ├── ProviderTimeoutError    connect/read/total timeout, upstream 408
          ├── ProviderConnectionError connection refused/reset, malformed or truncated response
          ├── ProviderAuthError       upstream 401/403: the service's credentials were rejected
          ├── UpstreamRequestError    upstream 4xx blaming the request (context length, bad param)
          ├── ContentFilterError      the provider's content filter blocked prompt or answer
          └── CredentialError         no token could be obtained for the provider (names the kind)
               └── CredentialUnavailableError  the token endpoint is down or unreachable (retryable)

The API edge (`api/errors.py`) maps these to HTTP statuses and OpenAI's error body in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from typing_extensions import override

from llm_service.core.config.constants import ProviderID


class Role(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    FUNCTION_CALL = "function_call"


@dataclass(slots=True)
class TextPart:
    text: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. cache_control


@dataclass(slots=True)
class ImagePart:
    """An image by URL: `https://...`, `gs://...` or a `data:image/...;base64,...` URL."""

    url: str
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class OpaquePart:
    """A content part the domain does not model (`input_audio`, `file`, ...), kept as the caller sent it.

    OpenAI-family providers pass it through unchanged; other providers reject it clearly.
    """

    type: str
    data: dict[str, Any]


ContentPart = TextPart | ImagePart | OpaquePart


@dataclass(slots=True)
class ToolCall:
    """A complete function call made by the model.

    `id` is the ID the client sees; `provider_id` the ID the issuing provider gave it (None when the
    provider gives none). `arguments` is the JSON text of the arguments, as OpenAI sends it.
    """

    id: str
    name: str
    arguments: str
    provider_id: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call; `index` is its position within the message."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None
    provider_id: str | None = None


@dataclass(slots=True)
class Message:
    """One conversation turn. `content` keeps the caller's form: a string or a list of parts."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    refusal: str | None = None
    #: Message fields the domain does not model; passed through to OpenAI-family providers.
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The message's text parts joined, for providers and logs that want plain text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart) for p in self.content)


@dataclass(slots=True)
class ToolDefinition:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # tool-level fields, e.g. cache_control


@dataclass(slots=True)
class ToolChoice:
    """`mode` none/auto/required; `functions` restricts the choice to those names (empty: all)."""

    mode: Literal["none", "auto", "required"]
    functions: tuple[str, ...] = ()


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class LLMRequest:
    """A chat request addressed to one provider's upstream `model`.

    `extra` holds request fields the domain does not model; OpenAI-family providers pass them
    through unchanged, other providers ignore them.
    """

    model: str
    messages: list[Message]
    tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    n: int | None = None
    user: str | None = None
    stream: bool = False
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: The client's body (read only), when it is what `openai_format.encode_chat_request` would write of
    #: this request but for `model` and `stream` (and a stream's `stream_options`), which it writes over it:
    #: an OpenAI-family upstream is sent the client's request, not one built again field by field (about
    #: 10 µs a request). Set by `parse_chat_request` only; `dataclasses.replace` does not copy it
    #: (init=False), so a request changed by a copy is written from its fields. A field changed in place
    #: other than these must set it to None. Equality and repr ignore it.
    wire: dict[str, Any] | None = field(default=None, init=False, compare=False, repr=False)

    def for_model(self, model: str) -> LLMRequest:
        """This request addressed to `model` (a copy; its `wire` kept, since the model is written over it)."""
        copy = dataclasses.replace(self, model=model)
        copy.wire = self.wire
        return copy


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    #: What else the upstream reported (token details, cost), passed on to OpenAI-format clients.
    extra: dict[str, Any] = field(default_factory=dict)


class _NoFields(Mapping[str, Any]):
    """An empty mapping that cannot be changed and hashes (a dataclass default may not be a dict)."""

    __slots__ = ()

    @override
    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    @override
    def __iter__(self) -> Iterator[str]:
        return iter(())

    @override
    def __len__(self) -> int:
        return 0

    @override
    def __hash__(self) -> int:
        return 0

    @override
    def __repr__(self) -> str:
        return "{}"


#: No fields of a choice's own: the default of `Choice.extra` and `ChunkChoice.choice_extra`, shared.
NO_FIELDS: Mapping[str, Any] = _NoFields()


@dataclass(slots=True)
class Choice:
    index: int
    message: Message
    finish_reason: FinishReason | None
    logprobs: Any = None
    #: Fields of the choice itself the domain does not model (OpenRouter's `native_finish_reason`,
    #: Azure's `content_filter_results`), passed on to OpenAI-format clients. Read only: replaced, not changed.
    extra: Mapping[str, Any] = NO_FIELDS


@dataclass(slots=True)
class LLMResponse:
    id: str
    created: int
    model: str
    provider: ProviderID
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    #: Top-level response fields the domain does not model (service_tier, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The response already in the client's OpenAI form (its JSON body), as `LLMChunk.wire`.
    wire: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class ChunkChoice:
    index: int
    role: Role | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    logprobs: Any = None
    #: Delta fields the domain does not model (reasoning, audio, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Fields of the choice itself the domain does not model, as `Choice.extra` (read only).
    choice_extra: Mapping[str, Any] = NO_FIELDS


@dataclass(slots=True)
class LLMChunk:
    """One streamed event. A usage-only chunk has no choices and a `usage`."""

    id: str
    created: int
    model: str
    provider: ProviderID
    choices: list[ChunkChoice] = field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The chunk already in the client's OpenAI form (the JSON of its `data:` line), when an
    #: OpenAI-compatible upstream sent it so: the API edge sends these bytes instead of encoding the chunk
    #: again (about 15 µs a chunk of the benchmark's). A cache of the encoding, not a second truth: what
    #: changes a chunk after decoding drops it (`retry.ReplayingStream`, `streaming.Splice`); equality
    #: and repr ignore it. This is where the domain departs from "the wire format is not the domain's".
    wire: bytes | None = field(default=None, compare=False, repr=False)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class LLMServiceError(Exception):
    """Base of every error the service raises on purpose. `message` is safe to show a client."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class InvalidRequestError(LLMServiceError):
    pass


class ModelNotFoundError(LLMServiceError):
    pass


class RequestTooLargeError(LLMServiceError):
    pass


class ConfigurationError(LLMServiceError):
    pass


class ProviderNotConfiguredError(ConfigurationError):
    """A known provider this deployment has no credentials or URL for: unavailable to callers."""


class OverloadedError(LLMServiceError):
    """The service has no capacity for the request now; come back after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float, code: str = "rate_limit_exceeded") -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class DeploymentsUnavailableError(LLMServiceError):
    """Every deployment that could serve the model is open-circuited for `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code="deployments_unavailable")
        self.retry_after = retry_after


class ProviderError(LLMServiceError):
    """An upstream failed. `status` is the upstream HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        provider: ProviderID,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class RateLimitError(ProviderError):
    pass


class ProviderTimeoutError(ProviderError):
    pass


class ProviderConnectionError(ProviderError):
    pass


class ProviderAuthError(ProviderError):
    pass


class UpstreamRequestError(ProviderError):
    #: The alias the refusing deployment names for requests too long for it (set by the dispatcher).
    context_fallback: str | None = None


class StreamInterruptedError(ProviderError):
    """A stream broke after its first chunk and could not be continued without a seam: the client gets
    this as the stream's one error event instead of a silent splice of two answers."""

    def __init__(self, message: str, *, provider: ProviderID) -> None:
        super().__init__(message, provider=provider, code="stream_interrupted")


class ContentFilterError(ProviderError):
    pass


class CredentialError(ProviderError):
    """The service could not obtain a credential for `provider`: the token endpoint refused it.

    The message names the provider and the credential kind (`Azure AD client secret`, `GCP service
    account`, ...), never a secret or what the token endpoint said about it.
    """


class CredentialUnavailableError(CredentialError):
    """The token endpoint could not be reached or failed (5xx, timeout): worth another attempt."""
