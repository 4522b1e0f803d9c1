"""Failover across an alias's deployments, and what /metrics and the response headers say about it."""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import QUESTION
from harness import wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import Fault
from sse_client import fixture_json, read_events, streamed_text

OPENAI, OPENROUTER = ProviderID.OPENAI, ProviderID.OPENROUTER
ALIASES = {
    "resilient": [
        {"provider": "openai", "model": "gpt-4o-mini"},
        {"provider": "openrouter", "model": "openai/gpt-4o-mini"},
    ]
}


@pytest.fixture
def service(start_service):
    return start_service(aliases=ALIASES)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " ") and not labels:
            return float(line.rsplit(" ", 1)[1])
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.index("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_failing_first_deployment_fails_over_to_the_second(service, upstreams, stream) -> None:
    upstreams[OPENAI].inject(Fault(status=503))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json={"model": "resilient", "messages": QUESTION, "stream": stream}
        ) as response:
            assert response.status_code == 200, response.read()
            headers = response.headers
            text = streamed_text(read_events(response)[:-1]) if stream else response.read().decode()
        exposition = http.get("/metrics").text

    assert "Paris" in text
    assert headers["x-llm-provider"] == "openrouter"
    assert headers["x-llm-deployment"] == "openrouter/openai/gpt-4o-mini"
    assert len(upstreams[OPENAI].requests) == 1
    assert len(upstreams[OPENROUTER].requests) == 1
    failovers = metric(
        exposition,
        "llm_gateway_failovers_total",
        from_deployment="openai/gpt-4o-mini",
        to_deployment="openrouter/openai/gpt-4o-mini",
    )
    assert failovers == 1


def test_a_request_error_is_attempted_once_and_not_failed_over(service, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(status=400, fixture="error_400_context_length"))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "resilient", "messages": QUESTION})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert len(upstreams[OPENAI].requests) == 1
    assert upstreams[OPENROUTER].requests == []


def test_when_every_deployment_fails_the_last_error_is_returned_after_bounded_attempts(service, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(status=500, times=5))
    upstreams[OPENROUTER].inject(Fault(status=500, times=5))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "resilient", "messages": QUESTION})

    assert response.status_code == 502
    # max_retries 2 -> 3 attempts: openai, openrouter, then openai again after the backoff.
    assert (len(upstreams[OPENAI].requests), len(upstreams[OPENROUTER].requests)) == (2, 1)


def test_a_long_retry_after_moves_on_to_the_next_deployment_at_once(service, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(status=429, headers={"retry-after": "120"}))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "resilient", "messages": QUESTION})

    assert response.status_code == 200
    assert response.headers["x-llm-provider"] == "openrouter"


def test_metrics_count_requests_tokens_and_time_to_first_token(service) -> None:
    with httpx.Client(base_url=service.url, timeout=20) as http:
        http.post("/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": QUESTION})
        with http.stream(
            "POST", "/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": QUESTION, "stream": True}
        ) as response:
            read_events(response)
        http.post("/v1/chat/completions", json={"model": "nosuch/model", "messages": QUESTION})
        # The default profile names this deployment (alias `fast`), so its metrics carry its label.
        served = {"provider": "openai", "deployment": "openai/gpt-4o-mini"}
        # A stream is recorded once its last byte has gone, which may be just after the client read it.
        assert wait_until(
            lambda: metric(http.get("/metrics").text, "llm_gateway_requests_total", status="200", **served) == 2
        )
        metrics = http.get("/metrics")

    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert metric(text, "llm_gateway_requests_total", status="200", **served) == 2
    assert metric(text, "llm_gateway_requests_total", status="404") == 1
    assert metric(text, "llm_gateway_tokens_total", type="input", **served) == 48  # 24 per fixture answer
    assert metric(text, "gen_ai_server_time_to_first_token_seconds_count", **served) == 1
    assert 'deployment="nosuch' not in text
    assert metric(text, "llm_gateway_request_duration_seconds_count", stream="true", **served) == 1


def test_equal_priorities_share_traffic_by_weight(start_service, upstreams) -> None:
    aliases = {
        "shared": [
            {"provider": "openai", "model": "gpt-4o-mini", "priority": 1, "weight": 3},
            {"provider": "openrouter", "model": "openai/gpt-4o-mini", "priority": 1, "weight": 1},
        ]
    }
    service = start_service(aliases=aliases)
    with httpx.Client(base_url=service.url, timeout=20) as http:
        served = [
            http.post("/v1/chat/completions", json={"model": "shared", "messages": QUESTION}).headers["x-llm-provider"]
            for _ in range(80)
        ]

    share = served.count("openai") / len(served)
    assert 0.55 < share < 0.95  # about 3:1; bounds loose enough for 80 draws


def test_retries_are_counted(service, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(status=503))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        assert http.post("/v1/chat/completions", json={"model": "resilient", "messages": QUESTION}).status_code == 200
        text = http.get("/metrics").text

    retries = metric(text, "llm_gateway_upstream_retries_total", deployment="openai/gpt-4o-mini")
    assert retries == 1


@pytest.mark.parametrize(
    ("draw", "first"),
    [(0.0, "a"), (0.74, "a"), (0.76, "b"), (0.999, "b")],
)
def test_weighted_order_puts_each_first_in_proportion_to_its_weight(draw, first) -> None:
    from llm_service.core.config.settings import Deployment
    from llm_service.core.llm.dispatcher import _weighted_order

    a = Deployment(provider="openai", model="a", weight=3)
    b = Deployment(provider="openai", model="b", weight=1)
    order = _weighted_order([a, b], lambda: draw)

    assert [d.model for d in order] == [first, "b" if first == "a" else "a"]


def test_the_gateway_overhead_is_a_header_and_a_histogram(service, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(delay_before_headers=0.6))  # upstream time: not the gateway's
    with httpx.Client(base_url=service.url, timeout=20) as http:
        plain = http.post("/v1/chat/completions", json={"model": "resilient", "messages": QUESTION})
        with http.stream(
            "POST", "/v1/chat/completions", json={"model": "resilient", "messages": QUESTION, "stream": True}
        ) as streamed:
            stream_overhead = float(streamed.headers["x-llm-gateway-overhead-ms"])
            read_events(streamed)

        def recorded() -> float:
            text = http.get("/metrics").text
            labels = {"provider": "openai", "deployment": "openai/gpt-4o-mini"}
            return metric(text, "llm_gateway_overhead_seconds_count", **labels)

        # A stream is recorded once its last byte has gone, which may be just after the client read it.
        assert wait_until(lambda: recorded() == 2)

    overhead = float(plain.headers["x-llm-gateway-overhead-ms"])
    assert 0 <= overhead < 500  # the 600 ms the upstream took are not counted
    assert stream_overhead >= 0


def test_a_context_length_refusal_goes_to_the_configured_larger_context_fallback(start_service, upstreams) -> None:
    aliases = {
        "small": [{"provider": "openai", "model": "gpt-4o-mini", "context_fallback": "large"}],
        "large": [{"provider": "openrouter", "model": "google/gemini-2.5-pro"}],
    }
    service = start_service(aliases=aliases)
    upstreams[OPENAI].inject(Fault(status=400, fixture="error_400_context_length"))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "small", "messages": QUESTION})

    assert response.status_code == 200, response.text
    assert response.headers["x-llm-deployment"] == "openrouter/google/gemini-2.5-pro"
    assert upstreams[OPENROUTER].requests[-1].json["model"] == "google/gemini-2.5-pro"
    assert len(upstreams[OPENAI].requests) == 1  # attempted exactly once on the small one
    # The answer names the model that actually answered (the fallback's), and carries its usage.
    answered = fixture_json("openrouter", "chat_text.json")
    assert response.json()["model"] == answered["model"]
    assert response.json()["usage"]["total_tokens"] == answered["usage"]["total_tokens"]
