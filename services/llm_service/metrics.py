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
| `llm_gateway_shared_state_degraded` | gauge | (1: Redis unreachable or refusing writes; replicas on their shares) |
| `llm_gateway_shared_state_degraded_reason` | gauge | reason (unreachable, refused): 1 for why it is degraded now |
| `llm_gateway_shared_state_error_replies_total` | counter | error (class: Redis refused a command, e.g. when full) |
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from typing_extensions import override

from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import BreakerState, Transition
from llm_service.core.llm.dispatch.state import DEGRADED_REASONS
from llm_service.core.llm.models import ProviderError

if TYPE_CHECKING:
    from llm_service.core.llm.dispatch.state import StateBackend

#: Seconds (bucket upper bounds, +Inf last): LLM calls run from tens of milliseconds (a cached short
#: answer) to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
#: Seconds: the gateway's own cost is sub-millisecond when idle, seconds only when queueing.
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, math.inf)
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


def _created_series_enabled() -> bool:
    """Whether prometheus_client emits `*_created` series (PROMETHEUS_DISABLE_CREATED_SERIES and
    `disable_created_metrics()` turn them off): asked of a throwaway counter, there is no public getter."""
    probe = Counter("probe", "", registry=None)
    return any(sample.name == "probe_created" for family in probe.collect() for sample in family.samples)


class _CounterCells:
    """A labelled counter as plain floats: an update is `cell[0] += n`, no lock (one event loop writes)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        #: Label values -> (the cell, its creation time for `_created`), in order of first use.
        self.cells: dict[tuple[str, ...], tuple[list[float], float]] = {}

    def cell(self, *labels: str) -> list[float]:
        found = self.cells.get(labels)
        if found is None:
            found = self.cells[labels] = ([0.0], time.time())
        return found[0]

    def family(self, created: bool) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (cell, created_at) in list(self.cells.items()):  # list(): a snapshot, in case of threads
            family.add_metric(labels, cell[0], created=created_at if created else None)
        return family


class _HistogramCells:
    """A labelled histogram as plain floats: per label set one count per bucket (not cumulative: an
    observation touches one bucket) and the sum last."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        # `le` written as Histogram writes it ("1.0", "+Inf").
        self.le: list[str] = [floatToGoString(bound) for bound in buckets]  # type: ignore[no-untyped-call]
        self.cells: dict[tuple[str, ...], tuple[list[float], float]] = {}

    def cell(self, *labels: str) -> list[float]:
        found = self.cells.get(labels)
        if found is None:
            found = self.cells[labels] = ([0.0] * (len(self.le) + 1), time.time())
        return found[0]

    def family(self, created: bool) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (cell, created_at) in list(self.cells.items()):
            family.add_metric(labels, list(zip(self.le, accumulate(cell[:-1]), strict=True)), cell[-1])
            if created:  # HistogramMetricFamily has no `created=`; placed as Histogram places it, after _sum
                family.add_sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)), created_at)
        return family


class _RequestInstruments(Collector):
    """The per-request instruments, exposed as prometheus_client would expose its own Counter and
    Histogram (same names, HELP, labels, buckets and `_created`)."""

    def __init__(self) -> None:
        self.requests = _CounterCells(
            "llm_gateway_requests", "Chat requests by outcome", ["provider", "deployment", "status"]
        )
        self.duration = _HistogramCells(
            "llm_gateway_request_duration_seconds",
            "Time from request to last byte",
            ["provider", "deployment", "stream"],
            _LATENCY_BUCKETS,
        )
        self.ttft = _HistogramCells(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from request to the first streamed chunk",
            ["provider", "deployment"],
            _TTFT_BUCKETS,
        )
        self.overhead = _HistogramCells(
            "llm_gateway_overhead_seconds",
            "The gateway's own time until the response started: all but the upstream calls",
            ["provider", "deployment"],
            _OVERHEAD_BUCKETS,
        )
        self.tokens = _CounterCells(
            "llm_gateway_tokens", "Tokens the providers reported", ["provider", "deployment", "type"]
        )

    @override
    def collect(self) -> Iterable[Metric]:
        created = _created_series_enabled()
        return [
            self.requests.family(created),
            self.duration.family(created),
            self.ttft.family(created),
            self.overhead.family(created),
            self.tokens.family(created),
        ]

    def describe(self) -> Iterable[Metric]:
        # The registry reads names and types from it, to refuse a second metric of the same name.
        return self.collect()


class _SharedState(Collector):
    """The shared state's own figures, read from the state backend at scrape time:
    `llm_gateway_shared_state_error_replies_total` (its count of error answers, by class) and
    `llm_gateway_shared_state_degraded_reason` (1 for the reason it is degraded now; every reason has its
    series, 0 when it is not the one)."""

    def __init__(self, dispatcher: Watched) -> None:
        self._dispatcher = dispatcher

    @override
    def collect(self) -> Iterable[Metric]:
        backend = self._dispatcher.state_backend
        replies = CounterMetricFamily(
            "llm_gateway_shared_state_error_replies",
            "Commands the shared state answered with an error, e.g. out of memory (what they would write is lost)",
            labels=["error"],
        )
        for error, count in list(backend.error_replies.items()):
            replies.add_metric([error], count)
        reasons = GaugeMetricFamily(
            "llm_gateway_shared_state_degraded_reason",
            "Why the shared state is degraded: unreachable (the link failed) or refused (it answered the limits' "
            "writes with an error, e.g. out of memory)",
            labels=["reason"],
        )
        now = backend.degraded_reason
        for reason in DEGRADED_REASONS:
            reasons.add_metric([reason], 1.0 if reason == now else 0.0)
        return [replies, reasons]

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class Metrics:
    """The instruments, on a registry of their own (several instances may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Registered first, as the prometheus_client instruments it replaces were: same order in the output.
        self.request_instruments = _RequestInstruments()
        r.register(self.request_instruments)
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
            "1 while the state replicas share is unreachable or refuses the limits' writes (each admits on its "
            "share of the limits)",
            registry=r,
        )

        # Label sets are bounded (provider, deployment, status, stream): so is this.
        self._request_cells: dict[tuple[str, str, str, bool], tuple[list[float], ...]] = {}

    def watch(self, dispatcher: Watched) -> None:
        """Read queue depth, in-flight and the shared state from `dispatcher` at every scrape."""
        self.queue_depth.set_function(lambda: dispatcher.queue_depth)
        self.in_flight.set_function(lambda: dispatcher.in_flight)
        self.state_degraded.set_function(lambda: float(dispatcher.state_backend.degraded))
        self.registry.register(_SharedState(dispatcher))

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
        # Plain float cells, found by one dict lookup per request, instead of prometheus_client's
        # Counter.inc/Histogram.observe (a lock per value, buckets walked in Python): 9.3 -> 2.0 µs a
        # request with everything set. A histogram's bucket is the first bound >= the value, as in
        # Histogram.observe (but a NaN, which perf_counter never gives, counts in the first bucket where
        # observe counted it in none); its last cell is the sum.
        key = (provider, deployment, status, stream)
        found = self._request_cells.get(key)
        if found is None:
            # All six on first sight, as `labels()` made the children: a label set's zero series show.
            m = self.request_instruments
            found = self._request_cells[key] = (
                m.requests.cell(provider, deployment, status),
                m.duration.cell(provider, deployment, "true" if stream else "false"),
                m.ttft.cell(provider, deployment),
                m.overhead.cell(provider, deployment),
                m.tokens.cell(provider, deployment, "input"),
                m.tokens.cell(provider, deployment, "output"),
            )
        count, duration, first_token, own, input_tokens, output_tokens = found
        count[0] += 1
        duration[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        duration[-1] += seconds
        if ttft is not None:
            first_token[bisect_left(_TTFT_BUCKETS, ttft)] += 1
            first_token[-1] += ttft
        if overhead is not None:
            own[bisect_left(_OVERHEAD_BUCKETS, overhead)] += 1
            own[-1] += overhead
        # Negative counts raise, as Counter.inc did: a counter that goes down reads as a restart.
        if tokens_in is not None:
            if tokens_in < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
            input_tokens[0] += tokens_in
        if tokens_out is not None:
            if tokens_out < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
            output_tokens[0] += tokens_out

    def render(self) -> bytes:
        return generate_latest(self.registry)
