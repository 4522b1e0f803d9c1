"""What a fake upstream received, read in provider-neutral terms, whatever the provider's wire format."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from conftest import MODELS
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import RecordedRequest


def upstream_model(provider: ProviderID) -> str:
    return MODELS[provider].split("/", 1)[1]


def sent_credential(provider: ProviderID, sent: RecordedRequest) -> str:
    """The key or token the request presented."""
    if provider is ProviderID.AZURE_OPENAI and "api-key" in sent.headers:
        return sent.headers["api-key"]
    scheme, _, token = sent.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def sent_model(provider: ProviderID, sent: RecordedRequest) -> str:
    """The model (Azure: the deployment) the request addressed."""
    if provider is ProviderID.AZURE_OPENAI:
        return unquote(sent.path.split("/openai/deployments/", 1)[1].split("/", 1)[0])
    if provider is ProviderID.VERTEX_AI:
        return unquote(sent.path.rsplit("/models/", 1)[1].split(":", 1)[0])
    return str(sent.json["model"])


def sent_user_content(provider: ProviderID, sent: RecordedRequest) -> list[Any]:
    """The text of each user turn."""
    if provider is ProviderID.VERTEX_AI:
        return [
            "".join(p.get("text", "") for p in c["parts"])
            for c in sent.json["contents"]
            if c["role"] == "user" and not any("functionResponse" in p for p in c["parts"])
        ]
    return [m["content"] for m in sent.json["messages"] if m["role"] == "user"]


def sent_tool_results(provider: ProviderID, sent: RecordedRequest) -> list[tuple[str, str]]:
    """(function name, result as JSON text) of each tool result, in order."""
    if provider is ProviderID.VERTEX_AI:
        return [
            (p["functionResponse"]["name"], json.dumps(p["functionResponse"]["response"]))
            for c in sent.json["contents"]
            for p in c["parts"]
            if "functionResponse" in p
        ]
    messages = sent.json["messages"]
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}
    return [(names[m["tool_call_id"]], m["content"]) for m in messages if m["role"] == "tool"]
