"""What each provider can take, as data: the cross-provider tests skip or expect a rejection from here only.

A flag describes the provider as the service reaches it with the default test models (`conftest.MODELS`,
`conftest.LIVE_MODELS`), not what some other model behind the same API could do. Where a provider cannot
take something, the service must refuse it itself with a 400 naming the field, before calling upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llm_service.core.config.constants import ProviderID

#: The forms of an `image_url` part the tests send, by the name a capability lists them under.
IMAGE_URLS = {
    "data": "data:image/png;base64,iVBORw0KGgo=",
    "https": "https://example.com/cat.png",
    "https-without-extension": "https://example.com/images/cat",
    "http": "http://example.com/cat.png",
}
_ALL_IMAGE_URLS = frozenset(IMAGE_URLS)


@dataclass(frozen=True)
class Capabilities:
    #: Several tool calls in one answer (OpenAI's `parallel_tool_calls`; Gemini returns several
    #: functionCall parts unasked, the field itself is dropped).
    parallel_tool_calls: bool
    #: The `image_url` forms (keys of IMAGE_URLS) the service sends on; any other is a 400 naming
    #: `messages[i].content[j].image_url.url`.
    image_urls: frozenset[str]
    #: Whether the provider's tool calls carry its own id (which must go back to it unchanged).
    issues_tool_call_ids: bool


# OpenAI, Azure and OpenRouter forward image parts as they are: the upstream fetches URLs itself.
_OPENAI_LIKE = Capabilities(parallel_tool_calls=True, image_urls=_ALL_IMAGE_URLS, issues_tool_call_ids=True)

CAPABILITIES: dict[ProviderID, Capabilities] = {
    ProviderID.OPENAI: _OPENAI_LIKE,
    ProviderID.OPENROUTER: _OPENAI_LIKE,
    ProviderID.AZURE_OPENAI: _OPENAI_LIKE,
    # gemini_format: data: URLs become inlineData; https:// (and gs://) URLs become fileData, which needs a
    # media type, told from the path's extension; plain http:// is not fetched (provider-protocols.md 6.1).
    # gemini-2.5-flash gives its function calls no id (Gemini 3-class models do: FakeVertex(function_call_ids)).
    ProviderID.VERTEX_AI: Capabilities(
        parallel_tool_calls=True, image_urls=frozenset({"data", "https"}), issues_tool_call_ids=False
    ),
    # A vLLM server: parts are forwarded as they are (the served model decides what it sees), but vLLM's
    # llama-3.1 tool parsers return one call per answer.
    ProviderID.REMOTE: Capabilities(parallel_tool_calls=False, image_urls=_ALL_IMAGE_URLS, issues_tool_call_ids=True),
}


def require(provider: ProviderID, capability: str) -> None:
    """Skip the running test unless `provider` is declared with `capability` (a boolean flag)."""
    if not getattr(CAPABILITIES[provider], capability):
        pytest.skip(f"{provider.value} is declared without {capability} (tests/capabilities.py)")
