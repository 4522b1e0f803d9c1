"""Provider-specific wire behaviour, end to end through the service."""

from __future__ import annotations

import httpx
import pytest

from conftest import MODELS, QUESTION
from harness import ServiceThread
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import FakeUpstream, FakeUpstreamThread, Fault
from log_records import fields_of
from sse_client import fixture_text, read_events, stream_events, streamed_text


def test_remote_without_a_key_sends_no_authorization(start_service) -> None:
    with FakeUpstreamThread(FakeUpstream("openai", api_key=None)) as keyless:
        service = start_service(remote={"base_url": keyless.url, "api_key": None})
        with httpx.Client(base_url=service.url, timeout=20) as http:
            response = http.post("/v1/chat/completions", json={"model": "remote/qwen2.5", "messages": QUESTION})

        assert response.status_code == 200, response.text
        sent = keyless.requests[-1]
        assert "authorization" not in sent.headers
        assert sent.json["model"] == "qwen2.5"


@pytest.mark.parametrize(("crlf", "split_writes"), [(True, False), (False, True), (True, True)])
def test_streams_with_crlf_and_events_split_across_writes_arrive_whole(start_service, crlf, split_writes) -> None:
    with FakeUpstreamThread(FakeUpstream("openrouter", api_key="k", crlf=crlf, split_writes=split_writes)) as odd:
        service = start_service(openrouter={"base_url": odd.url, "api_key": "k"})
        with (
            httpx.Client(base_url=service.url, timeout=20) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": MODELS[ProviderID.OPENROUTER], "messages": QUESTION, "stream": True},
            ) as response,
        ):
            events = read_events(response)

    assert events[-1] == "[DONE]"
    assert streamed_text(events[:-1]) == fixture_text("openrouter", "text")


def test_openrouter_error_inside_a_200_body_is_an_error(client: httpx.Client, upstreams) -> None:
    body = b'{"error": {"code": 502, "message": "Provider returned error", "metadata": {"provider_name": "X"}}}'
    upstreams[ProviderID.OPENROUTER].inject(Fault(status=200, body=body, times=3))
    response = client.post("/v1/chat/completions", json={"model": MODELS[ProviderID.OPENROUTER], "messages": QUESTION})

    assert response.status_code == 502
    assert "Provider returned error" in response.json()["error"]["message"]


def test_a_stream_failing_before_its_first_chunk_is_retried(client: httpx.Client, provider, fake) -> None:
    fake.inject(Fault(status=503, times=1))
    events = stream_events(client, {"model": MODELS[provider], "messages": QUESTION, "stream": True})

    assert events[-1] == "[DONE]"
    assert len(fake.requests) == 2
    assert not any("error" in e for e in events[:-1])


def test_prompt_text_is_logged_only_when_enabled(upstreams, caplog: pytest.LogCaptureFixture) -> None:
    from conftest import fake_settings

    caplog.set_level("INFO", logger="llm_service.access")
    with ServiceThread(fake_settings(upstreams, telemetry={"log_prompts": True})) as service:
        httpx.post(
            f"{service.url}/v1/chat/completions",
            json={
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": "tell me a secret"}],
            },
            headers={"x-request-id": "with-prompt"},
            timeout=20,
        )
    records = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "with-prompt"]
    assert records
    assert "tell me a secret" in fields_of(records[0])["prompt"]


@pytest.mark.parametrize(
    ("code", "times", "status", "calls"),
    [(400, 1, 400, 1), (429, 3, 429, 3), (502, 1, 200, 2)],
    ids=["bad-request", "rate-limited", "transient-then-ok"],
)
def test_openrouter_error_in_a_200_body_uses_the_status_it_states(
    client, upstreams, code, times, status, calls
) -> None:
    fake = upstreams[ProviderID.OPENROUTER]
    body = b'{"error": {"code": %d, "message": "upstream said no"}}' % code
    fake.inject(Fault(status=200, body=body, times=times))
    response = client.post("/v1/chat/completions", json={"model": MODELS[ProviderID.OPENROUTER], "messages": QUESTION})

    assert response.status_code == status, response.text
    assert len(fake.requests) == calls


def test_openrouter_moderation_403_is_a_content_filter_error(client, upstreams) -> None:
    metadata = b'{"reasons": ["violence"], "flagged_input": "x"}'
    body = b'{"error": {"code": 403, "message": "Input flagged", "metadata": %s}}' % metadata
    upstreams[ProviderID.OPENROUTER].inject(Fault(status=403, body=body))
    response = client.post("/v1/chat/completions", json={"model": MODELS[ProviderID.OPENROUTER], "messages": QUESTION})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
