"""Prometheus metrics of one service instance, served at `GET /metrics`.

Names follow Prometheus conventions (`_total` counters, `_seconds` histograms) and the OpenTelemetry
GenAI semantic conventions where one exists (`gen_ai_server_time_to_first_token_seconds`). Labels are
bounded: the provider, the deployment label from the profile (`provider/model[@host]`; a deployment
addressed directly as `<provider>/<model>` is `<provider>/_direct`), the status and error class names; a
caller's free-form model name never becomes a label.

| metric | type | labels |
|---|---|---|
| `llm_gateway_requests_total` | counter | provider, deployment, status |
| `llm_gateway_request_duration_seconds` | histogram | provider, deployment, stream |
| `gen_ai_server_time_to_first_token_seconds` | histogram | provider, deployment |
| `llm_gateway_overhead_seconds` | histogram | provider, deployment (time outside upstream calls) |
| `llm_gateway_tokens_total` | counter | provider, deployment, type (input, output) |
| `llm_gateway_failovers_total` | counter | from_deployment, to_deployment, reason |
| `llm_gateway_upstream_retries_total` | counter | deployment, reason (failed attempts followed by another) |
| `llm_gateway_rejections_total` | counter | reason: queue_full_or_timeout, rate_limited, deployments_unavailable, ... |
| `llm_gateway_breaker_state` | gauge | deployment (0 closed, 1 half-open, 2 open) |
| `llm_gateway_breaker_transitions_total` | counter | deployment, to |
| `llm_gateway_health_checks_total` | counter | deployment, outcome (ok, failed): probes of deployments out of service |
| `llm_gateway_queue_depth` | gauge | |
| `llm_gateway_in_flight` | gauge | |
| `llm_gateway_shared_state_degraded` | gauge | (1: Redis unreachable, each replica on its share of the limits) |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import BreakerState, Transition
from llm_service.core.llm.models import ProviderError

if TYPE_CHECKING:
    from llm_service.core.llm.dispatch.state import StateBackend

#: Seconds: LLM calls run from tens of milliseconds (a cached short answer) to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds: the gateway's own cost is sub-millisecond when idle, seconds only when queueing.
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Watched(Protocol):
    """What the gauges read at scrape time (the dispatcher)."""

    @property
    def in_flight(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def state_backend(self) -> StateBackend: ...


class Metrics:
    """The instruments, on a registry of their own (several instances may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llm_gateway_requests", "Chat requests by outcome", ["provider", "deployment", "status"], registry=r
        )
        self.duration = Histogram(
            "llm_gateway_request_duration_seconds",
            "Time from request to last byte",
            ["provider", "deployment", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from request to the first streamed chunk",
            ["provider", "deployment"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llm_gateway_overhead_seconds",
            "The gateway's own time until the response started: all but the upstream calls",
            ["provider", "deployment"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llm_gateway_tokens", "Tokens the providers reported", ["provider", "deployment", "type"], registry=r
        )
        self.failovers = Counter(
            "llm_gateway_failovers",
            "Requests moved to the next deployment after a retryable failure",
            ["from_deployment", "to_deployment", "reason"],
            registry=r,
        )

        self.retries = Counter(
            "llm_gateway_upstream_retries",
            "Failed upstream attempts followed by another attempt",
            ["deployment", "reason"],
            registry=r,
        )
        self.rejections = Counter(
            "llm_gateway_rejections", "Requests refused for capacity or health", ["reason"], registry=r
        )
        self.breaker_state = Gauge(
            "llm_gateway_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["deployment"], registry=r
        )
        self.breaker_transitions = Counter(
            "llm_gateway_breaker_transitions", "Circuit breaker state changes", ["deployment", "to"], registry=r
        )
        self.health_checks = Counter(
            "llm_gateway_health_checks",
            "Probe requests to deployments whose breaker is not closed",
            ["deployment", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge("llm_gateway_queue_depth", "Requests waiting for capacity", registry=r)
        self.in_flight = Gauge("llm_gateway_in_flight", "Requests holding a deployment slot", registry=r)
        self.state_degraded = Gauge(
            "llm_gateway_shared_state_degraded",
            "1 while the state replicas share is unreachable (each admits on its share of the limits)",
            registry=r,
        )

        # Label sets are bounded (provider, deployment, status, stream): so is this.
        self._request_children: dict[tuple[str, str, str, bool], tuple[Any, ...]] = {}

    def watch(self, dispatcher: Watched) -> None:
        """Read queue depth and in-flight from `dispatcher` at every scrape."""
        self.queue_depth.set_function(lambda: dispatcher.queue_depth)
        self.in_flight.set_function(lambda: dispatcher.in_flight)
        self.state_degraded.set_function(lambda: float(dispatcher.state_backend.degraded))

    def breaker_transition(self, transition: Transition) -> None:
        self.breaker_state.labels(transition.name).set(_BREAKER_VALUE[transition.to_state])
        self.breaker_transitions.labels(transition.name, transition.to_state.value).inc()

    def retried(self, deployment_label: str, error: ProviderError) -> None:
        self.retries.labels(deployment_label, type(error).__name__).inc()

    def health_checked(self, deployment_label: str, ok: bool) -> None:
        self.health_checks.labels(deployment_label, "ok" if ok else "failed").inc()

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def failover(self, from_deployment: Deployment, to_deployment: Deployment, error: ProviderError) -> None:
        # Failovers happen only between an alias's deployments: profile labels, bounded.
        self.failovers.labels(from_deployment.label, to_deployment.label, type(error).__name__).inc()

    def request_outcome(
        self,
        provider: str,
        deployment: str,
        status: str,
        stream: bool,
        *,
        seconds: float,
        ttft: float | None,
        overhead: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
    ) -> None:
        """One chat request: its outcome, duration, time to first token, own overhead and tokens."""
        # The labelled children are looked up once per label set: `labels()` validates, builds a tuple
        # and takes a lock, about 3 µs each, five times a request.
        key = (provider, deployment, status, stream)
        found = self._request_children.get(key)
        if found is None:
            found = self._request_children[key] = (
                self.requests.labels(provider, deployment, status),
                self.duration.labels(provider, deployment, "true" if stream else "false"),
                self.ttft.labels(provider, deployment),
                self.overhead.labels(provider, deployment),
                self.tokens.labels(provider, deployment, "input"),
                self.tokens.labels(provider, deployment, "output"),
            )
        count, duration, first_token, own, tokens_in_child, tokens_out_child = found
        count.inc()
        duration.observe(seconds)
        if ttft is not None:
            first_token.observe(ttft)
        if overhead is not None:
            own.observe(overhead)
        if tokens_in is not None:
            tokens_in_child.inc(tokens_in)
        if tokens_out is not None:
            tokens_out_child.inc(tokens_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)
