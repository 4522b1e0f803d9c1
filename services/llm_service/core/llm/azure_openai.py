"""Azure OpenAI: the OpenAI wire format at a deployment URL with an `api-version`.

Reach: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`, the model name
being the deployment; the credentials (an `api-key` header or an Entra ID bearer token) are injected
by the factory. Talk is the shared OpenAI codec; Azure's additions are handled here:

- the annotation-only first stream chunk (`"id":""`, `"choices":[]`, `prompt_filter_results`) and
  choices that carry only `content_filter_results` are skipped: they hold nothing a client renders;
- `prompt_filter_results` / `content_filter_results` on plain responses pass through as extra fields;
- a blocked prompt (HTTP 400, code `content_filter`) becomes a ContentFilterError (400,
  `content_filter`) through the shared classification;
- a completion the filter blocked before it said anything (every choice `finish_reason:
  "content_filter"` with no content and no tool calls) is the same clear ContentFilterError rather
  than an empty 200 a client could take for an answer; a partly written completion keeps its text and
  OpenAI's own signal, `finish_reason: "content_filter"`, as does a stream (whose text is already out).
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import AzureOpenAISettings
from llm_service.core.llm.base import StreamState, UpstreamClient
from llm_service.core.llm.models import (
    Choice,
    ChunkChoice,
    ContentFilterError,
    FinishReason,
    LLMChunk,
    LLMRequest,
    LLMResponse,
)
from llm_service.core.llm.openai_compat import OpenAICompatibleClient


class AzureOpenAIClient(OpenAICompatibleClient):
    provider: ClassVar[ProviderID] = ProviderID.AZURE_OPENAI

    @override
    def _request_url(self, client: UpstreamClient, request: LLMRequest) -> str:
        settings = self.settings
        assert isinstance(settings, AzureOpenAISettings)  # the factory pairs this client with its group
        deployment = quote(request.model, safe="")
        return f"{client.endpoint}/openai/deployments/{deployment}/chat/completions?api-version={settings.api_version}"

    @override
    def _decode_response(self, body: bytes, request: LLMRequest) -> LLMResponse:
        response = super()._decode_response(body, request)
        if response.choices and all(map(_blocked, response.choices)):
            raise ContentFilterError(
                f"{self.provider.value}'s content filter blocked the completion",
                provider=self.provider,
                code="content_filter",
            )
        return response

    @override
    def _decode_stream_event(self, data: bytes, state: StreamState) -> LLMChunk | None:
        chunk = super()._decode_stream_event(data, state)
        if chunk is not None and chunk.usage is None and not any(map(_renders, chunk.choices)):
            return None
        return chunk


def _blocked(choice: Choice) -> bool:
    reply = choice.message
    return choice.finish_reason is FinishReason.CONTENT_FILTER and not (reply.text() or reply.tool_calls)


def _renders(choice: ChunkChoice) -> bool:
    return bool(choice.role or choice.content or choice.tool_calls or choice.refusal or choice.finish_reason)
