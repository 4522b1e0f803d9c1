"""Schemathesis against the service's own OpenAPI document (/openapi.json), over HTTP, fakes behind it.

Every operation gets generated requests, valid and invalid by its schema; each answer must not be a 5xx
and must match the document: a documented status, content type and body (a completion, each event of a
stream, OpenAI's error body). Requests the document calls invalid but the service takes are not failures:
the parser is lenient where OpenAI's clients are (a null optional field, a tool call's `type`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from conftest import MODELS, fake_settings
from harness import ServiceThread
from llm_service.core.config.settings import Settings
from llm_service.main import create_app

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"max-examples": 40, "mode": "all"},
        "phases": {"coverage": {"enabled": False}},
        "checks": {"negative_data_rejection": {"enabled": False}, "positive_data_acceptance": {"enabled": False}},
    }
)
DOCUMENT = create_app(Settings(demo_mode="off")).openapi()
#: /metrics answers Prometheus' text format while its route documents JSON (see the xfail below).
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path="/metrics")


def _served(body: dict[str, Any], model: str | None) -> dict[str, Any]:
    if model is None:
        return body
    messages = body.get("messages")
    if isinstance(messages, list):  # a tool result needs a call before it, which a schema cannot say
        kept = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "tool")]
        body = {**body, "messages": kept or [{"role": "user", "content": "Hello!"}]}
    return {**body, "model": model}


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Half the chat requests name a model the fakes serve (and keep no tool result), so that they reach an
    upstream and come back as completions and streams, not only as a 404 for a made-up model."""
    if not (isinstance(body, dict) and isinstance(body.get("model"), str)):
        return st.just(body)
    return st.sampled_from([None, *MODELS.values()]).map(lambda model: _served(body, model))


@pytest.fixture(scope="module")
def service(upstreams: dict[Any, Any]) -> Iterator[ServiceThread]:
    with ServiceThread(fake_settings(upstreams)) as running:
        yield running


def test_the_document_tested_is_the_one_the_service_serves(service: ServiceThread) -> None:
    assert httpx.get(f"{service.url}/openapi.json").json() == DOCUMENT


@schema.parametrize()
def test_the_service_keeps_to_its_openapi_document(case: Any, service: ServiceThread) -> None:
    case.call_and_validate(base_url=service.url)


def test_metrics_are_documented_as_the_text_they_are() -> None:
    assert "text/plain" in DOCUMENT["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
