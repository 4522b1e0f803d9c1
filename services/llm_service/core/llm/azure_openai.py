"""Azure OpenAI: the OpenAI wire format at a deployment URL with an `api-version`.

Reach: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`, the model name
being the deployment; the credentials (an `api-key` header or an Entra ID bearer token) are injected
by the factory. Talk is the shared OpenAI codec; Azure's additions are handled here:

- the annotation-only first stream chunk (`"id":""`, `"choices":[]`, `prompt_filter_results`) and
  choices that carry only `content_filter_results` are skipped: they hold nothing a client renders;
- `prompt_filter_results` on plain responses passes through as an extra field, and the per-choice
  `content_filter_results` as the choice's own (`Choice.extra`, `ChunkChoice.choice_extra`);
- a blocked prompt (HTTP 400, code `content_filter`) becomes a ContentFilterError (400,
  `content_filter`) through the shared classification;
- a completion the filter blocked before it said anything is a ContentFilterError too (the base
  client's rule for every provider); a partly written one keeps `finish_reason: "content_filter"`.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import AzureOpenAISettings
from llm_service.core.llm.base import StreamState, UpstreamClient
from llm_service.core.llm.models import ChunkChoice, LLMChunk, LLMRequest
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
    def _decode_stream_event(self, data: bytes, state: StreamState) -> LLMChunk | None:
        chunk = super()._decode_stream_event(data, state)
        if chunk is not None and chunk.usage is None and not any(map(_renders, chunk.choices)):
            return None
        return chunk


def _renders(choice: ChunkChoice) -> bool:
    return bool(choice.role or choice.content or choice.tool_calls or choice.refusal or choice.finish_reason)
