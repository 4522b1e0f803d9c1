"""Azure OpenAI through the service: its URL and api-version, content filtering, its stream quirks,
and Entra ID (Azure AD) tokens fetched by the real azure-identity from a TLS fake authority."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import KEYS, MODELS, QUESTION, fake_settings
from harness import ManualClock, ServiceThread, burst
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import FakeUpstream, FakeUpstreamThread, Fault, ServerThread
from llm_service.fakes.token_endpoints import FakeEntraID
from llm_service.main import create_app
from sse_client import FIXTURES, fixture_json, stream_events, streamed_text

AZURE = ProviderID.AZURE_OPENAI
TENANT, CLIENT_ID, CLIENT_SECRET = "11111111-2222-3333-4444-555555555555", "app-client-id", "entra-s3cret-value"
AAD_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-aad-token"


def chat(http: httpx.Client, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": MODELS[AZURE], "messages": QUESTION, **extra})


# ------------------------------------------------------------------------------------- the wire


def test_request_goes_to_the_deployment_url_with_api_version_and_api_key(client: httpx.Client, upstreams) -> None:
    fake = upstreams[AZURE]
    response = chat(client)

    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == KEYS[AZURE]
    assert "authorization" not in sent.headers
    assert response.headers["x-llm-provider"] == "azure_openai"
    # Azure's own fields pass through without breaking anything: the response's, and each choice's.
    assert "prompt_filter_results" in response.json()
    recorded = fixture_json("azure_openai", "chat_text.json")
    choice = response.json()["choices"][0]
    assert choice["content_filter_results"] == recorded["choices"][0]["content_filter_results"]


def test_each_streamed_choice_keeps_its_content_filter_results(client: httpx.Client) -> None:
    events = stream_events(client, {"model": MODELS[AZURE], "messages": QUESTION, "stream": True})

    recorded = [
        json.loads(line[6:])
        for line in (FIXTURES / "azure_openai" / "chat_text.sse").read_text().splitlines()
        if line.startswith("data: {")
    ]
    choices = [e["choices"][0] for e in recorded if e["choices"]]
    rendered = [c for c in choices if c.get("delta") or c.get("finish_reason")]  # not the annotations
    received = [e for e in events[:-1] if e["choices"]]
    assert [c["choices"][0].get("content_filter_results") for c in received] == [
        c.get("content_filter_results") for c in rendered
    ]
    assert any(c["choices"][0].get("content_filter_results") for c in received)


def test_stream_skips_the_annotation_only_first_chunk(client: httpx.Client) -> None:
    events = stream_events(client, {"model": MODELS[AZURE], "messages": QUESTION, "stream": True})

    assert events[-1] == "[DONE]"
    assert all(e["id"] and e["choices"] for e in events[:-1])
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(events[:-1]) == "The capital of France is Paris — famous for its cafés."


def test_asynchronous_filter_annotations_mid_stream_are_skipped(client: httpx.Client, upstreams) -> None:
    """With asynchronous filtering, Azure interleaves choices that carry only content_filter_results and
    content_filter_offsets, with no delta (protocol reference 2.3, quirk 2)."""
    raw = (FIXTURES / "azure_openai" / "chat_text.sse").read_bytes()
    events = raw.split(b"\n\n")
    annotation = {
        "choices": [
            {
                "index": 0,
                "finish_reason": None,
                "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
                "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 14},
            }
        ],
        "created": 1750000000,
        "id": "chatcmpl-BkU9bMs4oXq2UjN6rYa0vEd5fLk3I",
        "model": "gpt-4o-mini-2024-07-18",
        "object": "chat.completion.chunk",
    }
    events[3:3] = [b"data: " + json.dumps(annotation).encode()]
    upstreams[AZURE].inject(Fault(status=200, body=b"\n\n".join(events)))
    received = stream_events(client, {"model": MODELS[AZURE], "messages": QUESTION, "stream": True})

    assert streamed_text(received[:-1]) == "The capital of France is Paris — famous for its cafés."
    assert all(c["choices"][0]["delta"] or c["choices"][0]["finish_reason"] for c in received[:-1])


def test_blocked_prompt_is_a_400_content_filter_error(client: httpx.Client, upstreams) -> None:
    upstreams[AZURE].inject(Fault(status=400, fixture="error_400_content_filter"))
    response = chat(client)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_filter"
    assert error["type"] == "invalid_request_error"
    assert "azure_openai" in error["message"]
    assert len(upstreams[AZURE].requests) == 1  # not retried


def test_a_completion_blocked_before_any_text_is_a_400_content_filter_error(client: httpx.Client, upstreams) -> None:
    upstreams[AZURE].inject(Fault(fixture="chat_content_filter"))
    response = chat(client)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"
    assert "azure_openai" in response.json()["error"]["message"]


def test_a_partly_filtered_completion_keeps_its_text_and_finish_reason(client: httpx.Client, upstreams) -> None:
    body = fixture_json("azure_openai", "chat_content_filter.json")
    body["choices"][0]["message"]["content"] = "Here is the start of"
    upstreams[AZURE].inject(Fault(status=200, body=json.dumps(body).encode()))
    response = chat(client)

    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Here is the start of", "content_filter")


def test_a_stream_blocked_before_any_text_is_a_400_content_filter_error(client: httpx.Client, upstreams) -> None:
    events = (FIXTURES / "azure_openai" / "chat_content_filter.sse").read_bytes().split(b"\n\n")
    without_text = [e for e in events if b'"content":"' not in e or b'"content":""' in e]
    upstreams[AZURE].inject(Fault(status=200, body=b"\n\n".join(without_text)))
    response = client.post("/v1/chat/completions", json={"model": MODELS[AZURE], "messages": QUESTION, "stream": True})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_filter"


def test_a_filtered_stream_ends_with_the_content_filter_finish_reason(client: httpx.Client, upstreams) -> None:
    upstreams[AZURE].inject(Fault(fixture="chat_content_filter"))
    events = stream_events(client, {"model": MODELS[AZURE], "messages": QUESTION, "stream": True})

    assert events[-1] == "[DONE]"
    finishes = [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"][0]["finish_reason"]]
    assert finishes == ["content_filter"]


def test_unknown_deployment_is_a_404(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", json={"model": "azure_openai/no-such-deployment", "messages": QUESTION}
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"  # Azure's DeploymentNotFound, in OpenAI's terms


def test_missing_endpoint_names_the_setting(start_service) -> None:
    service = start_service(azure_openai={"base_url": None})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        error = chat(http).json()["error"]
    assert error["code"] == "provider_not_configured"
    assert "AZURE_OPENAI_ENDPOINT" in error["message"]


# ------------------------------------------------------------------------------------- Entra ID


@pytest.fixture
def entra() -> Iterator[FakeEntraID]:
    fake = FakeEntraID(tenant_id=TENANT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, access_token=AAD_TOKEN)
    with ServerThread(fake):
        yield fake


@pytest.fixture
def azure_ad_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("azure_openai", api_key="unused-key", bearer_token=AAD_TOKEN)
    with FakeUpstreamThread(fake):
        yield fake


def ad_group(
    upstream: FakeUpstream, authority: str, ca_file: str | None, secret: str = CLIENT_SECRET
) -> dict[str, Any]:
    return {
        "base_url": upstream.url,
        "api_key": None,
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": secret,
        "authority_host": authority,
        "authority_ca_file": ca_file,
    }


def ad_service(
    upstreams, upstream: FakeUpstream, entra: FakeEntraID, clock: ManualClock | None = None, secret: str = CLIENT_SECRET
) -> ServiceThread:
    group = ad_group(upstream, entra.authority, entra.ca_file, secret)
    settings = fake_settings(upstreams, azure_openai=group)
    return ServiceThread(app=create_app(settings, clock=clock or time.time))


def test_fifty_concurrent_requests_on_a_cold_service_fetch_one_token(upstreams, azure_ad_upstream, entra) -> None:
    entra.delay = 0.3  # the token request is still in flight while the others arrive
    with ad_service(upstreams, azure_ad_upstream, entra) as service:
        statuses = asyncio.run(burst(service.url, {"model": MODELS[AZURE], "messages": QUESTION}, 50))

    assert statuses == [200] * 50
    assert entra.tokens_issued == 1
    assert {r.headers["authorization"] for r in azure_ad_upstream.requests} == {f"Bearer {AAD_TOKEN}"}


def test_the_token_is_refreshed_after_it_expires(upstreams, azure_ad_upstream, entra) -> None:
    clock = ManualClock()
    with ad_service(upstreams, azure_ad_upstream, entra, clock) as service, httpx.Client(base_url=service.url) as http:
        assert chat(http).status_code == 200
        assert chat(http).status_code == 200
        assert entra.tokens_issued == 1
        clock.now += entra.expires_in + 1
        assert chat(http).status_code == 200

    assert entra.tokens_issued == 2


def test_a_dead_token_endpoint_is_a_clear_503_that_leaks_nothing(upstreams, azure_ad_upstream, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{probe.getsockname()[1]}"
    group = ad_group(azure_ad_upstream, dead, None)
    settings = fake_settings(upstreams, azure_openai=group)
    with ServiceThread(settings) as service, httpx.Client(base_url=service.url, timeout=30) as http:
        response = chat(http)

    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert "azure_openai" in error["message"]
    assert "Azure AD" in error["message"]
    assert CLIENT_SECRET not in response.text
    assert CLIENT_SECRET not in caplog.text
    assert azure_ad_upstream.requests == []


def test_a_failing_token_endpoint_is_503_and_a_rejected_secret_502(upstreams, azure_ad_upstream, entra) -> None:
    entra.fail_with = 503
    wrong = "not-the-right-secret"
    with ad_service(upstreams, azure_ad_upstream, entra) as service, httpx.Client(base_url=service.url) as http:
        unavailable = chat(http)
    requested_while_down = entra.tokens_requested
    entra.fail_with = None
    with (
        ad_service(upstreams, azure_ad_upstream, entra, secret=wrong) as service,
        httpx.Client(base_url=service.url) as http,
    ):
        rejected = chat(http)

    assert unavailable.status_code == 503
    # The dispatcher's retries meet the remembered failure instead of the token endpoint again.
    assert requested_while_down == 1
    assert rejected.status_code == 502, rejected.text
    for response in (unavailable, rejected):
        assert "Azure AD" in response.json()["error"]["message"]
        assert CLIENT_SECRET not in response.text and wrong not in response.text
    assert "AADSTS" not in rejected.text
    assert azure_ad_upstream.requests == []
