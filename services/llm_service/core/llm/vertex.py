"""Vertex AI Gemini: generateContent and streamGenerateContent over SSE, with GCP credentials.

Reach: `{root}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
(`:streamGenerateContent?alt=sse` for streams), where root is VERTEX_BASE_URL or Google's regional
endpoint. Talk: `gemini_format` translates both ways. What the model attached to a tool call and
needs back on the next turn (Gemini 3's function-call id and `thoughtSignature`) is kept in the
`ToolCallStore` under the client-visible tool-call id, so the client never carries it.

A Gemini stream has no terminator: it is read to EOF and must have finished every candidate by then.
Google reports errors as `{"error": {"code", "message", "status"}}`, sometimes wrapped in a
one-element array or with a legacy `errors` list; mid-stream they arrive as bare JSON lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import VertexAISettings
from llm_service.core.llm.base import BaseLLMClient, ErrorDetail, StreamState, UpstreamClient
from llm_service.core.llm.gemini_format import (
    GeminiStreamTranslator,
    decode_gemini_response,
    encode_gemini_request,
)
from llm_service.core.llm.models import LLMChunk, LLMRequest, LLMResponse, ProviderNotConfiguredError
from llm_service.core.llm.tool_call_store import ProviderCallData
from llm_service.core.llm.tool_ids import tool_call_ids

_TRANSLATOR = "gemini"


def google_error_detail(raw: Any) -> ErrorDetail | None:
    """Google's error envelope: an object, a one-element array of it, or the legacy `errors` list."""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    error = raw.get("error") if isinstance(raw, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    message = error.get("message")
    legacy = error.get("errors")
    if not message and isinstance(legacy, list) and legacy and isinstance(legacy[0], dict):
        message = legacy[0].get("message")
    return ErrorDetail(
        message=str(message or ""),
        code=error.get("status") or (str(code) if code is not None else None),
        status=code if isinstance(code, int) and 400 <= code <= 599 else None,
    )


class VertexAIClient(BaseLLMClient):
    provider: ClassVar[ProviderID] = ProviderID.VERTEX_AI
    stream_ends_at_eof: ClassVar[bool] = True

    # ---------------------------------------------------------------- reach

    @override
    def _get_endpoint(self) -> str:
        settings = self.settings
        assert isinstance(settings, VertexAISettings)  # the factory pairs this client with its group
        if not settings.project:
            raise ProviderNotConfiguredError(
                f"no GCP project configured: set {settings.env_name('project')}", code="provider_not_configured"
            )
        location = quote(settings.location, safe="")
        return f"{settings.api_root()}/v1/projects/{quote(settings.project, safe='')}/locations/{location}"

    # ---------------------------------------------------------------- talk

    @override
    def _request_url(self, client: UpstreamClient, request: LLMRequest) -> str:
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        return f"{client.endpoint}/publishers/google/models/{quote(request.model, safe='')}:{method}"

    @override
    def _encode_request(self, request: LLMRequest) -> bytes:
        known: dict[str, ProviderCallData] = {}
        for call_id in tool_call_ids(request):
            data = self._tool_calls.get(call_id)
            if data is not None and data.provider in (None, self.provider):  # another's ids are not Gemini's
                known[call_id] = data
        return orjson.dumps(encode_gemini_request(request, known))

    @override
    def _decode_response(self, body: bytes, request: LLMRequest) -> LLMResponse:
        data = orjson.loads(body)
        detail = google_error_detail(data)
        if detail is not None:
            raise self.classify_error(None, detail)
        if not isinstance(data, dict) or not ("candidates" in data or "promptFeedback" in data):
            raise self.malformed("neither candidates nor promptFeedback in the response")
        return decode_gemini_response(data, self.provider, model=request.model, remember=self._tool_calls.put)

    @override
    def _decode_stream_event(self, data: bytes, state: StreamState) -> Sequence[LLMChunk]:
        obj = orjson.loads(data)
        detail = google_error_detail(obj)
        if detail is not None:
            raise self.classify_error(None, detail)
        translator = state.scratch.get(_TRANSLATOR)
        if translator is None:
            translator = GeminiStreamTranslator(self.provider, model=state.request.model, remember=self._tool_calls.put)
            state.scratch[_TRANSLATOR] = translator
        chunks = translator.feed(obj)
        state.done = translator.done
        return chunks

    @override
    def _parse_error_body(self, body: bytes) -> ErrorDetail | None:
        return google_error_detail(orjson.loads(body)) if body else None
