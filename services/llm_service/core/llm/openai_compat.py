"""The OpenAI-compatible client: the "talk" half shared by openai, openrouter, remote and Azure.

It speaks Chat Completions through `openai_format`; a provider subclass only says where the
upstream is (`_get_endpoint`) and which static headers it wants (`header_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from typing_extensions import override

from llm_service.core.llm.base import BaseLLMClient, ErrorDetail, StreamState, UpstreamClient
from llm_service.core.llm.models import LLMChunk, LLMRequest, LLMResponse, ProviderNotConfiguredError
from llm_service.core.llm.openai_format import (
    decode_chat_chunk,
    decode_chat_response,
    encode_chat_request,
)
from llm_service.core.llm.text_chunks import TextChunkTemplate
from llm_service.core.llm.tool_ids import outbound_tool_call_id, with_outbound_ids

_DONE = b"[DONE]"
#: Where a stream's `TextChunkTemplate` is kept in its `StreamState.scratch`, and how often one was made.
_TEXT_CHUNKS = "text_chunks"
_TEMPLATE_TRIED = "text_chunk_templates_tried"
#: Text chunks a template is made from, at most, in one stream (the template a miss leaves is kept).
_TEMPLATE_TRIES = 3


def error_detail(raw: Any) -> ErrorDetail | None:
    """OpenAI's `{"error": {...}}` (numeric or string code), or a bare `{"error": "text"}`."""
    error = raw.get("error") if isinstance(raw, dict) else None
    if isinstance(error, str):
        return ErrorDetail(message=error)
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    metadata = error.get("metadata")
    stated = code if isinstance(code, int) and 400 <= code <= 599 else None  # OpenRouter: code is the status
    return ErrorDetail(
        message=str(error.get("message") or ""),
        code=str(code) if code is not None else None,
        param=error.get("param"),
        type=error.get("type"),
        status=stated,
        metadata=metadata if isinstance(metadata, dict) else None,
    )


class OpenAICompatibleClient(BaseLLMClient):
    #: Ask for the usage chunk on every stream so tokens are always accounted.
    always_include_usage: ClassVar[bool] = True
    #: Static request headers: header name -> the settings field that holds its value.
    header_settings: ClassVar[Mapping[str, str]] = {}

    # ---------------------------------------------------------------- reach

    @override
    def _get_endpoint(self) -> str:
        if not self.settings.base_url:
            raise ProviderNotConfiguredError(
                f"no base URL configured: set {self.settings.env_name('base_url')}",
                code="provider_not_configured",
            )
        return self.settings.base_url

    @override
    def _static_headers(self) -> Mapping[str, str]:
        """Static headers from `header_settings`: those whose setting has a value."""
        values = ((header, getattr(self.settings, field)) for header, field in self.header_settings.items())
        return {header: value for header, value in values if value}

    # ---------------------------------------------------------------- talk

    @override
    def _request_url(self, client: UpstreamClient, request: LLMRequest) -> str:
        return f"{client.endpoint}/chat/completions"

    @override
    def _encode_request(self, request: LLMRequest) -> bytes:
        if request.wire is None:  # a relayed request's messages are role and text only: no tool-call ids
            request = with_outbound_ids(request, self._outbound_id)
        return orjson.dumps(encode_chat_request(request, always_include_usage=self.always_include_usage))

    @override
    def stream_reports_usage(self, request: LLMRequest) -> bool:
        return self.always_include_usage or request.include_usage

    def _outbound_id(self, call_id: str) -> str:
        return outbound_tool_call_id(call_id, self.provider, self._tool_calls.get, self.settings.tool_call_id_format)

    @override
    def _decode_response(self, body: bytes, request: LLMRequest) -> LLMResponse:
        data = orjson.loads(body)
        # OpenRouter (and some proxies) report a failure inside a 200 body.
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            raise self.classify_error(None, error_detail(data))
        return decode_chat_response(data, self.provider, self._tool_calls.put, body=body)

    @override
    def _decode_stream_event(self, data: bytes, state: StreamState) -> LLMChunk | None:
        scratch = state.scratch
        template: TextChunkTemplate | None = scratch.get(_TEXT_CHUNKS)
        if template is not None:
            chunk = template.read(data)  # most of a stream: its text chunks, without parsing each whole
            if chunk is not None:
                return chunk
        if data == _DONE:
            state.done = True
            return None
        chunk = self._decode_whole(data, state.request.include_usage)
        if chunk.choices and chunk.choices[0].content and (template is None or not template.reads):
            # A text chunk the stream's template (if any) did not read, and has read none: the template is
            # made from it instead, a few times at most (a first text chunk unlike the others). One that
            # reads is kept: a chunk unlike the others later on is decoded the whole way.
            tried = scratch.get(_TEMPLATE_TRIED, 0)
            if tried < _TEMPLATE_TRIES:
                made = TextChunkTemplate.of(
                    chunk, data, lambda event: self._decode_whole(event, state.request.include_usage)
                )
                scratch[_TEMPLATE_TRIED] = tried + 1
                if made is not None:
                    scratch[_TEXT_CHUNKS] = made
        return chunk

    def _decode_whole(self, data: bytes, include_usage: bool) -> LLMChunk:
        obj = orjson.loads(data)
        if "error" in obj:
            raise self.classify_error(None, error_detail(obj))
        return decode_chat_chunk(obj, self.provider, self._tool_calls.put, event=data, include_usage=include_usage)

    @override
    def _parse_error_body(self, body: bytes) -> ErrorDetail | None:
        return error_detail(orjson.loads(body)) if body else None
