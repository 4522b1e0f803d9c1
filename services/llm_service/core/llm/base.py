"""BaseLLMClient: what every provider shares, written once.

A provider supplies "reach" through three hooks run once, lazily, by `_initialize_client()`:
`_get_endpoint()`, `_get_credentials()` and `_create_client_instance()`; and "talk" through the
translation hooks `_request_url()`, `_encode_request()`, `_decode_response()`,
`_decode_stream_event()` and `_parse_error_body()`. This class owns the HTTP exchange over the shared
aiohttp session, timeouts, error classification by status, SSE parsing, and closing the upstream
response on every exit path. (Token usage is read from the upstream's own report; the API edge
records it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar

import aiohttp

from llm_service.core.config.constants import ProviderID, RetryableStatusCodes
from llm_service.core.config.settings import ProviderSettings
from llm_service.core.llm.credentials import CredentialProvider
from llm_service.core.llm.models import (
    Choice,
    ChunkChoice,
    ContentFilterError,
    FinishReason,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    Role,
    StreamInterruptedError,
    UpstreamRequestError,
)
from llm_service.core.llm.retry import parse_rate_limit_reset, parse_retry_after
from llm_service.core.llm.sse import SSEDecoder, SSEEventTooLarge
from llm_service.core.llm.streaming import (
    CheckpointCallback,
    Checkpointer,
    Splice,
    SpliceMismatch,
    StreamCheckpoint,
    Transcript,
)
from llm_service.core.llm.tool_call_store import ToolCallStore
from llm_service.core.llm.tool_ids import tool_call_ids

_CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
#: What a body that parsed as JSON but has the wrong shape raises while being decoded.
_DECODE_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError)
#: As a plain int: `HTTPStatus.BAD_REQUEST` is looked up through a descriptor, about 0.5 µs each time.
_ERROR_STATUS = int(HTTPStatus.BAD_REQUEST)
_NOT_RETRYABLE_429_CODES = frozenset({"insufficient_quota"})
_OPENAI_CODE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
log = logging.getLogger("llm_service.upstream")


@dataclass(frozen=True, slots=True)
class UpstreamClient:
    """What `_create_client_instance()` builds once: the shared session bound to one endpoint."""

    session: aiohttp.ClientSession
    endpoint: str
    credentials: CredentialProvider
    headers: Mapping[str, str]
    timeout: aiohttp.ClientTimeout
    stream_timeout: aiohttp.ClientTimeout


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """What a provider's error body says, before classification."""

    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    #: An HTTP status the body itself states (OpenRouter's numeric code in an error inside a 200).
    status: int | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(slots=True)
class StreamState:
    """Per-stream parse state the decode hook may use; `done` marks a proper end of stream."""

    request: LLMRequest
    done: bool = False
    scratch: dict[str, Any] = field(default_factory=dict)
    #: Leading chunks that said nothing yet; None once one has (see `_hold_until_said`).
    held: list[LLMChunk] | None = field(default_factory=list)
    #: Choices seen, and those that have their finish reason: a stream cut (EOF, a dropped connection)
    #: before every choice finished is incomplete; an explicit terminator is taken at its word.
    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)

    usage_seen: bool = False

    def note(self, chunks: Sequence[LLMChunk]) -> None:
        for chunk in chunks:
            if chunk.usage is not None:
                self.usage_seen = True
            for choice in chunk.choices:
                (self.finished if choice.finish_reason is not None else self.started).add(choice.index)

    @property
    def answered(self) -> bool:
        """Every choice the stream began has its finish reason."""
        return bool(self.finished) and self.started <= self.finished


#: Headers that depend on the request (e.g. the caller's `user` for a gateway's attribution), injected
#: by the factory so that a client never needs to know who fronts its upstream.
RequestHeaders = Callable[[LLMRequest], Mapping[str, str]]


class BaseLLMClient(ABC):
    provider: ClassVar[ProviderID]
    #: Whether a stream ends at EOF (Gemini) rather than at an explicit terminator event: then the
    #: stream is read to its end, and must have set `state.done` (a finish reason) by then.
    stream_ends_at_eof: ClassVar[bool] = False
    #: Without its own credentials (API key, token) the provider cannot be used.
    api_key_required: ClassVar[bool] = True
    #: Request fields that ask the provider to continue a final assistant message rather than answer it.
    continuation_fields: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        *,
        settings: ProviderSettings,
        credentials: CredentialProvider,
        session: aiohttp.ClientSession,
        request_headers: RequestHeaders | None = None,
        tool_calls: ToolCallStore | None = None,
        checkpoint_every: int = 20,
    ) -> None:
        self.settings = settings
        #: Chunks between the checkpoints `generate_stream` hands to its callback.
        self.checkpoint_every = checkpoint_every
        self._credentials = credentials
        self._session = session
        self._request_headers = request_headers
        #: Provider data that belongs to a tool call (Gemini's id and thoughtSignature), by client-visible id.
        self._tool_calls = tool_calls if tool_calls is not None else ToolCallStore()
        self._client: UpstreamClient | None = None
        self._init_lock = asyncio.Lock()

    # ---------------------------------------------------------------- reach: the template method

    async def _initialize_client(self) -> UpstreamClient:
        """Build the upstream client once; concurrent first calls wait for one initialisation.

        A failed initialisation (e.g. a missing key) is not cached: the next request tries again.
        """
        client = self._client
        if client is not None:
            return client
        async with self._init_lock:
            if self._client is None:
                endpoint = self._get_endpoint()
                credentials = self._get_credentials()
                await credentials.auth_headers()  # fail now, naming the setting, if unusable
                self._client = self._create_client_instance(endpoint, credentials)
            return self._client

    @abstractmethod
    def _get_endpoint(self) -> str:
        """The provider's base URL; raise ConfigurationError naming the setting if missing."""

    def _get_credentials(self) -> CredentialProvider:
        """The credential provider that authenticates every request (the one the factory injected)."""
        return self._credentials

    def _create_client_instance(self, endpoint: str, credentials: CredentialProvider) -> UpstreamClient:
        """Bind the shared session to `endpoint` with the static headers and timeouts."""
        timeout, stream_timeout = self._timeouts()
        headers = {"Content-Type": "application/json", **self._static_headers()}
        return UpstreamClient(self._session, endpoint, credentials, headers, timeout, stream_timeout)

    def _static_headers(self) -> Mapping[str, str]:
        """Headers sent on every request besides Content-Type and the credentials."""
        return {}

    def _timeouts(self) -> tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]:
        """(whole-call timeout, stream timeout): a stream has no total limit, only read gaps."""
        s = self.settings
        plain = aiohttp.ClientTimeout(total=s.timeout_total, connect=s.timeout_connect, sock_read=s.timeout_read)
        stream = aiohttp.ClientTimeout(total=None, connect=s.timeout_connect, sock_read=s.timeout_read)
        return plain, stream

    # ---------------------------------------------------------------- talk: translation hooks

    @abstractmethod
    def _request_url(self, client: UpstreamClient, request: LLMRequest) -> str: ...

    @abstractmethod
    def _encode_request(self, request: LLMRequest) -> bytes: ...

    @abstractmethod
    def _decode_response(self, body: bytes, request: LLMRequest) -> LLMResponse: ...

    @abstractmethod
    def _decode_stream_event(self, data: bytes, state: StreamState) -> LLMChunk | Sequence[LLMChunk] | None:
        """One SSE data payload -> a chunk, several, or None to skip; raise ProviderError for error events."""

    @abstractmethod
    def _parse_error_body(self, body: bytes) -> ErrorDetail | None:
        """The message/code/param in a provider error body, or None when it is not one."""

    # ---------------------------------------------------------------- the exchange

    async def generate(self, request: LLMRequest) -> LLMResponse:
        client = await self._initialize_client()
        if self._tool_calls.shared is not None:
            await self._tool_calls.fetch(tool_call_ids(request))  # calls another replica answered
        try:
            async with client.session.post(
                self._request_url(client, request),
                data=self._encode_request(request),
                headers=await self._headers(client, request),
                timeout=client.timeout,
            ) as resp:
                if resp.status >= _ERROR_STATUS:
                    raise self._http_error(resp.status, await _error_body(resp), resp.headers)
                # The header itself, not aiohttp's `content_length` (a Python property: a call a request).
                headers = resp.headers
                length = headers.get("Content-Length")
                if length is None or _COMPRESSED in headers:
                    body = await self._capped_answer(resp)  # its length unknown until read
                elif int(length) <= MAX_ANSWER_BYTES:
                    body = await resp.read()  # the usual answer: its length said, and not absurd
                else:
                    raise self._too_long()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        try:
            response = self._decode_response(body, request)
        except ProviderError:
            raise
        except _DECODE_ERRORS as exc:
            raise self.malformed(f"unreadable response: {exc}") from exc
        if response.choices and all(map(_filtered_before_saying_anything, response.choices)):
            # An empty 200 would pass for an answer; a partly written completion keeps its text and
            # `finish_reason: "content_filter"`, as OpenAI reports it.
            raise self._filtered_completion()
        return response

    async def _capped_answer(self, resp: aiohttp.ClientResponse) -> bytes:
        """A body without a length (chunked), or compressed (its length is not what it unpacks to), read
        up to `MAX_ANSWER_BYTES`; a longer one is a malformed answer (a broken upstream must not fill the
        service's memory)."""
        body = await _read_at_most(resp, MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            raise self._too_long()
        return body

    def _too_long(self) -> ProviderConnectionError:
        return self.malformed(f"an answer of more than {MAX_ANSWER_BYTES} bytes")

    def generate_stream(
        self, request: LLMRequest, checkpoint_callback: CheckpointCallback | None = None
    ) -> AsyncIterator[LLMChunk]:
        """Chunks as they arrive. Errors before the first chunk raise on the first `__anext__`.

        With `checkpoint_callback`, the chunks so far are handed to it every `checkpoint_every` chunks
        and at the end of the stream (a stream that fails is not checkpointed at its end).
        """
        stream = self._stream(request)
        if checkpoint_callback is None:
            return stream
        return _checkpointed(stream, Checkpointer(checkpoint_callback, self.checkpoint_every))

    def resume_from_checkpoint(self, checkpoint: StreamCheckpoint, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        """The checkpoint's chunks, then the rest of the answer from the provider: the request is sent
        again and its answer joined to the checkpoint (`Splice`), which it must reproduce; a different
        answer raises `StreamInterruptedError` rather than join two answers."""
        return _resumed(checkpoint, self._stream(request) if not checkpoint.done else None, self.provider)

    def continuation(self, request: LLMRequest, prefix: str) -> LLMRequest:
        """`request` asking the provider to continue the partial answer `prefix`: a final assistant
        message holding it, plus the provider's `continuation_fields` (used only on deployments declared
        to accept an assistant prefix)."""
        messages = [*request.messages, Message(role=Role.ASSISTANT, content=prefix)]
        return dataclasses.replace(request, messages=messages, extra={**request.extra, **self.continuation_fields})

    async def _stream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        client = await self._initialize_client()
        if self._tool_calls.shared is not None:
            await self._tool_calls.fetch(tool_call_ids(request))
        state = StreamState(request)
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await client.session.post(
                self._request_url(client, request),
                data=self._encode_request(request),
                headers=await self._headers(client, request),
                timeout=client.stream_timeout,
            )
            if resp.status >= _ERROR_STATUS:
                raise self._http_error(resp.status, await _error_body(resp), resp.headers)
            decoder = SSEDecoder()
            read_to_eof = self.stream_ends_at_eof
            async for data in resp.content.iter_any():
                for event in decoder.feed(data):
                    for chunk in self._decode_event(event, state):
                        yield chunk
                if state.done and not read_to_eof:
                    break
            for chunk in self._end_of_stream(decoder, state):
                yield chunk
        except SSEEventTooLarge as exc:
            raise self.malformed(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not self._whole(state):
                raise self._transport_error(exc) from exc
            # Every choice has its finish reason: the connection broke where only the terminator (and
            # perhaps the usage) was left. The answer is whole.
            self._ended_without_terminator(f"{type(exc).__name__}")
            state.done = True
        finally:
            if resp is not None:
                _let_go(resp, read_to_its_end=state.done)

    def _decode_event(self, event: bytes, state: StreamState) -> Sequence[LLMChunk]:
        try:
            decoded = self._decode_stream_event(event, state)
        except ProviderError:
            raise
        except _DECODE_ERRORS as exc:
            raise self.malformed(f"unreadable stream event: {exc}", retryable=True) from exc
        if decoded is None:
            return ()
        chunks = (decoded,) if isinstance(decoded, LLMChunk) else decoded
        state.note(chunks)
        return chunks if state.held is None else self._hold_until_said(chunks, state)

    def _end_of_stream(self, decoder: SSEDecoder, state: StreamState) -> list[LLMChunk]:
        """What is left when the stream stopped: the undispatched tail at EOF, held chunks of a stream
        that never said anything; a stream that stopped before its terminator is an error."""
        chunks: list[LLMChunk] = []
        if not state.done or self.stream_ends_at_eof:  # at EOF, not stopped at the terminator
            for event in decoder.flush():
                chunks += self._decode_event(event, state)
        if not state.done:
            if not self._whole(state):
                raise self.malformed("stream ended before its answer finished", retryable=True)
            # Every choice has its finish reason: only the terminator (and perhaps usage) is missing.
            # The answer is whole; end it now rather than as an error.
            self._ended_without_terminator("eof")
            state.done = True
        return chunks + (state.held or [])

    def _whole(self, state: StreamState) -> bool:
        """Whether a stream that stopped short of its terminator still holds the whole answer: every
        choice finished, and the usage there if it was asked for (a replay brings it)."""
        return state.answered and (state.usage_seen or not self.stream_reports_usage(state.request))

    def stream_reports_usage(self, request: LLMRequest) -> bool:
        """Whether this provider's stream for `request` ends with a usage report after the finish reason."""
        return False

    def _ended_without_terminator(self, how: str) -> None:
        log.warning(
            "upstream stream ended after its finish reason without its terminator",
            extra={"fields": {"provider": self.provider.value, "ended_by": how}},
        )

    def _hold_until_said(self, chunks: Sequence[LLMChunk], state: StreamState) -> Sequence[LLMChunk]:
        """Leading chunks that say nothing (a role, empty text) are held back until one says something,
        so that a completion the content filter blocks before its first word is the same clear error
        as in `generate()`, raised before the first byte goes out, instead of an empty stream."""
        held = state.held
        assert held is not None
        for i, chunk in enumerate(chunks):
            if chunk.usage is None and not any(map(_says_something, chunk.choices)):
                held.append(chunk)
                continue
            if chunk.choices and all(c.finish_reason is FinishReason.CONTENT_FILTER for c in chunk.choices):
                raise self._filtered_completion()
            state.held = None
            return [*held, *chunks[i:]]
        return ()

    def _filtered_completion(self) -> ContentFilterError:
        return ContentFilterError(
            f"{self.provider.value}'s content filter blocked the completion",
            provider=self.provider,
            code="content_filter",
        )

    async def _headers(self, client: UpstreamClient, request: LLMRequest) -> dict[str, str]:
        headers = dict(client.headers)
        headers.update(await client.credentials.auth_headers())
        if self._request_headers is not None:
            headers.update(self._request_headers(request))
        return headers

    # ---------------------------------------------------------------- error classification

    def malformed(self, what: str, *, retryable: bool = False) -> ProviderConnectionError:
        return ProviderConnectionError(
            f"{self.provider.value} sent a malformed response: {what}",
            provider=self.provider,
            retryable=retryable,
            code="upstream_malformed_response",
        )

    def _transport_error(self, exc: BaseException) -> ProviderError:
        name = self.provider.value
        if isinstance(exc, TimeoutError):
            return ProviderTimeoutError(
                f"{name} did not answer in time",
                provider=self.provider,
                retryable=True,
                code="upstream_timeout",
            )
        return ProviderConnectionError(
            f"could not reach {name}: {type(exc).__name__}",
            provider=self.provider,
            retryable=True,
            code="upstream_connection_error",
        )

    def _http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        try:
            detail = self._parse_error_body(body)
        except _DECODE_ERRORS:
            detail = None
        return self.classify_error(status, detail, headers)

    def _is_content_filter(self, status: int | None, detail: ErrorDetail | None) -> bool:
        """Whether the provider blocked the content; providers with their own signals extend this."""
        return detail is not None and detail.code in _CONTENT_FILTER_CODES

    def classify_error(
        self, status: int | None, detail: ErrorDetail | None, headers: Mapping[str, str] | None = None
    ) -> ProviderError:
        """Our error type for an upstream failure: by status first, by the provider's code last.

        `status` is None for an error inside a 200 response or stream; then a status stated in the
        body counts. An upstream `x-should-retry` header (sent by another instance of this service)
        has the last word on retrying.
        """
        headers = headers or {}
        if status is None and detail is not None:
            status = detail.status
        error = self._error_for(status, detail, headers)
        should_retry = headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            error.retryable = should_retry == "true"
        return error

    def _error_for(self, status: int | None, detail: ErrorDetail | None, headers: Mapping[str, str]) -> ProviderError:
        name = self.provider.value
        raw_code = detail.code if detail else None
        code = _openai_code(raw_code)
        said = f"{name} returned an error: {_capped(detail.message) if detail and detail.message else f'HTTP {status}'}"
        common: dict[str, Any] = {
            "provider": self.provider,
            "status": status,
            "retry_after": parse_retry_after(headers),
        }
        if self._is_content_filter(status, detail):
            return ContentFilterError(said, code="content_filter", **common)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            # The upstream's message may quote part of our key: say who refused, not what it said.
            return ProviderAuthError(
                f"{name} rejected the service's credentials (HTTP {status})", code="upstream_auth_error", **common
            )
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            # Its text names the service's own organisation and limits: not the caller's business.
            common["retry_after"] = common["retry_after"] or parse_rate_limit_reset(headers)
            kind = f" ({_capped(str(detail.type), _MAX_PARAM)})" if detail and detail.type else ""
            retryable = raw_code not in _NOT_RETRYABLE_429_CODES
            message = f"{name} is rate limiting this service{kind}"
            return RateLimitError(message, code=code or "rate_limit_exceeded", retryable=retryable, **common)
        if status == HTTPStatus.REQUEST_TIMEOUT:
            return ProviderTimeoutError(said, code=code or "upstream_timeout", retryable=True, **common)
        if status is None or status in RetryableStatusCodes:
            return ProviderError(said, code=code or "upstream_error", retryable=True, **common)
        if status == HTTPStatus.NOT_FOUND:
            # On the chat endpoint: the model or deployment (Azure's DeploymentNotFound, Google's NOT_FOUND).
            code = code or "model_not_found"
        if (
            HTTPStatus.BAD_REQUEST <= status < HTTPStatus.INTERNAL_SERVER_ERROR
            and status != HTTPStatus.PAYMENT_REQUIRED
        ):
            param = detail.param if detail and isinstance(detail.param, str) else None
            return UpstreamRequestError(said, code=code, param=param and _capped(param, _MAX_PARAM), **common)
        if status == HTTPStatus.PAYMENT_REQUIRED:  # OpenRouter: the service's credits are spent
            code = code or "insufficient_quota"
        return ProviderError(said, code=code or "upstream_error", **common)


#: The largest answer read from an upstream (a non-streaming body): far above any real completion.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: How much of an error body is read: any real one is a few hundred bytes; the rest is left unread.
MAX_ERROR_BYTES = 64 * 1024
_COMPRESSED = "Content-Encoding"


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to `limit` bytes (all of it when shorter); what follows is left unread (the
    connection is then closed, not reused)."""
    pieces: list[bytes] = []
    size = 0
    while size < limit:
        piece = await resp.content.read(limit - size)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    """An error response's body, up to `MAX_ERROR_BYTES` (cut short, it does not parse: the status speaks)."""
    return await _read_at_most(resp, MAX_ERROR_BYTES)


#: How much of an upstream's error text reaches the caller and the log: enough for any real message
#: (OpenAI's longest run to a few hundred characters), not a proxy's whole HTML page or a runaway body.
_MAX_MESSAGE = 2000
_MAX_PARAM = 200


def _capped(text: str, limit: int = _MAX_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _openai_code(code: str | None) -> str | None:
    """A provider's error code when it is in OpenAI's vocabulary (snake_case words such as
    `context_length_exceeded`, `insufficient_quota`), else None, so that the same failure has the same
    code whichever provider had it: numbers (OpenRouter, vLLM), gRPC status names (Google) and CamelCase
    (Azure) say nothing an OpenAI client understands."""
    return code if code is not None and len(code) <= _MAX_PARAM and _OPENAI_CODE.fullmatch(code) else None


def _let_go(resp: aiohttp.ClientResponse, *, read_to_its_end: bool) -> None:
    """A stream's connection back to the pool; dropped rather than returned half-read when the stream was
    not read to its end (error, disconnect, cancellation)."""
    if read_to_its_end:
        resp.release()
    else:
        resp.close()


def _filtered_before_saying_anything(choice: Choice) -> bool:
    reply = choice.message
    return choice.finish_reason is FinishReason.CONTENT_FILTER and not (reply.text() or reply.tool_calls)


def _says_something(choice: ChunkChoice) -> bool:
    return bool(choice.content or choice.tool_calls or choice.refusal or choice.finish_reason)


async def _checkpointed(stream: AsyncIterator[LLMChunk], checkpointer: Checkpointer) -> AsyncIterator[LLMChunk]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            checkpointer.add(chunk)
            yield chunk
    checkpointer.finish()


async def _resumed(
    checkpoint: StreamCheckpoint, rest: AsyncIterator[LLMChunk] | None, provider: ProviderID
) -> AsyncIterator[LLMChunk]:
    for chunk in checkpoint.chunks:
        yield chunk
    if rest is None:
        return
    splice = Splice(Transcript.of(checkpoint.chunks))
    pinned = (checkpoint.chunks[0].id, checkpoint.chunks[0].created) if checkpoint.chunks else None
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        async for chunk in rest:
            try:
                joined = splice.feed(chunk)
            except SpliceMismatch as exc:
                raise StreamInterruptedError(
                    f"The stream could not be resumed from its checkpoint: {exc}.", provider=provider
                ) from None
            for out in joined:
                if pinned is not None:
                    out.id, out.created = pinned  # one completion, as the checkpoint began it
                yield out
