"""The per-request instruments as `GET /metrics` renders them: `le` buckets, cumulative counts, `_created`;
and what is read from the dispatcher at scrape time."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_service.metrics import Metrics

SERIES = {"provider": "openai", "deployment": "openai/gpt-4o"}


def request(
    metrics: Metrics,
    seconds: float,
    *,
    ttft: float | None = None,
    overhead: float | None = None,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
) -> None:
    metrics.request_outcome(
        "openai",
        "openai/gpt-4o",
        "200",
        False,
        seconds=seconds,
        ttft=ttft,
        overhead=overhead,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )


def rendered(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The `/metrics` text parsed back: (sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset({**SERIES, **labels}.items()))]


def test_a_value_on_a_bucket_bound_counts_in_that_bucket_and_all_counts_are_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.0, 0.05, math.nextafter(0.05, 1), 0.1, 300.0, math.nextafter(300.0, 1e9), math.inf):
        request(metrics, seconds)

    samples = rendered(metrics)
    bucket = "llm_gateway_request_duration_seconds_bucket"
    assert value(samples, bucket, stream="false", le="0.05") == 2  # 0.0, and 0.05 itself (le: value <= bound)
    assert value(samples, bucket, stream="false", le="0.1") == 4  # + just above 0.05, and 0.1 itself
    assert value(samples, bucket, stream="false", le="120.0") == 4
    assert value(samples, bucket, stream="false", le="300.0") == 5
    assert value(samples, bucket, stream="false", le="+Inf") == 7  # + just above the last bound, and inf
    assert value(samples, "llm_gateway_request_duration_seconds_count", stream="false") == 7
    assert len([key for key in samples if key[0] == bucket]) == 13  # 12 bounds and +Inf


def test_a_label_set_shows_all_its_series_from_its_first_request_even_unobserved_ones() -> None:
    metrics = Metrics()
    request(metrics, 0.2)  # no ttft, overhead or tokens

    samples = rendered(metrics)
    assert value(samples, "llm_gateway_requests_total", status="200") == 1
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_bucket", le="+Inf") == 0
    assert value(samples, "llm_gateway_overhead_seconds_sum") == 0
    assert value(samples, "llm_gateway_tokens_total", type="input") == 0
    # One `_created` per series, as prometheus_client writes them.
    assert value(samples, "llm_gateway_requests_created", status="200") > 0
    assert value(samples, "llm_gateway_request_duration_seconds_created", stream="false") > 0


def test_sums_and_token_counts_add_up_across_requests() -> None:
    metrics = Metrics()
    request(metrics, 0.5, ttft=0.25, overhead=0.001, tokens_in=24, tokens_out=100)
    request(metrics, 1.5, ttft=0.0, tokens_out=7)

    samples = rendered(metrics)
    assert value(samples, "llm_gateway_request_duration_seconds_sum", stream="false") == 2.0
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count") == 2
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.01") == 1
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.25") == 2
    assert value(samples, "llm_gateway_overhead_seconds_count") == 1
    assert value(samples, "llm_gateway_tokens_total", type="input") == 24
    assert value(samples, "llm_gateway_tokens_total", type="output") == 107


def test_a_negative_token_count_is_refused_as_prometheus_client_refuses_it() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        request(Metrics(), 0.1, tokens_in=-1)


def test_the_error_answers_of_the_shared_state_are_counted_by_error_class_as_its_backend_counts_them() -> None:
    backend = SimpleNamespace(degraded=False, degraded_reason=None, error_replies={"OutOfMemoryError": 3})
    metrics = Metrics()
    metrics.watch(SimpleNamespace(in_flight=0, queue_depth=0, state_backend=backend))
    backend.error_replies["ReadOnlyError"] = 1

    samples = rendered(metrics)
    name = "llm_gateway_shared_state_error_replies_total"
    assert samples[(name, frozenset({("error", "OutOfMemoryError")}))] == 3
    assert samples[(name, frozenset({("error", "ReadOnlyError")}))] == 1


def test_why_the_shared_state_is_degraded_is_a_series_per_reason_read_at_each_scrape() -> None:
    backend = SimpleNamespace(degraded=True, degraded_reason="refused", error_replies={})
    metrics = Metrics()
    metrics.watch(SimpleNamespace(in_flight=0, queue_depth=0, state_backend=backend))
    name = "llm_gateway_shared_state_degraded_reason"

    refused = rendered(metrics)
    backend.degraded, backend.degraded_reason = False, None
    shared = rendered(metrics)

    assert refused[(name, frozenset({("reason", "refused")}))] == 1
    assert refused[(name, frozenset({("reason", "unreachable")}))] == 0
    assert refused[("llm_gateway_shared_state_degraded", frozenset())] == 1
    assert shared[(name, frozenset({("reason", "refused")}))] == 0
    assert shared[(name, frozenset({("reason", "unreachable")}))] == 0
