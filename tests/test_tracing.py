"""OpenTelemetry traces: each chat request a SERVER span with a CLIENT child per upstream attempt, exported
over OTLP/HTTP to a fake collector; and the telemetry settings that turn it on, never showing a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MODELS, QUESTION, fake_settings
from harness import ServiceThread
from llm_service import __version__, cli
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.core.config.telemetry import parse_otlp_headers
from llm_service.core.config.validation import check_configuration
from llm_service.core.llm.dispatch.attempt_trace import ATTEMPT_HEADERS, NO_HEADERS
from llm_service.core.llm.openai_format import parse_chat_request
from llm_service.fakes import FakeUpstreamThread, Fault, ServerThread
from llm_service.fakes.otlp_collector import FakeOTLPCollector, ReceivedSpan
from llm_service.logs import JSONFormatter
from llm_service.main import create_app
from sse_client import read_events, streamed_text
from test_genai_platform import PLATFORM_TOKEN, PROJECT, platform_fakes, platform_settings

OPENAI, OPENROUTER = ProviderID.OPENAI, ProviderID.OPENROUTER
ALIASES = {
    "resilient": [
        {"provider": "openai", "model": "gpt-4o-mini"},
        {"provider": "openrouter", "model": "openai/gpt-4o-mini"},
    ]
}
HEADER_SECRET = "otlp-header-secret-zzz123"
PROMPT = QUESTION[0]["content"]


@pytest.fixture(scope="module")
def collector_thread() -> Iterator[ServerThread[FakeOTLPCollector]]:
    with ServerThread(FakeOTLPCollector()) as running:
        yield running


@pytest.fixture
def collector(collector_thread: ServerThread[FakeOTLPCollector]) -> FakeOTLPCollector:
    collector_thread.server.reset()
    return collector_thread.server


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own OpenTelemetry settings stay out of these tests."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def traced(collector: FakeOTLPCollector, **telemetry: Any) -> dict[str, Any]:
    return {"otlp_endpoint": collector.endpoint, **telemetry}


def chat(service: ServiceThread, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=service.url, timeout=20) as http:
        return http.post("/v1/chat/completions", json=body, headers=headers)


def exported(collector: FakeOTLPCollector, service: ServiceThread, count: int) -> list[ReceivedSpan]:
    """Every span, once the service is stopped: its lifespan's shutdown flushes the last batch."""
    service.stop()
    assert collector.wait_for_spans(count), f"{len(collector.spans)} spans arrived, expected {count}"
    return list(collector.spans)


def one(spans: list[ReceivedSpan], kind: str) -> ReceivedSpan:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, [(s.kind, s.name) for s in spans]
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_span_id == parent.span_id), key=lambda s: s.start_ns)


# --------------------------------------------------------------------------------------------------
# Spans
# --------------------------------------------------------------------------------------------------


def test_a_failed_over_request_is_one_trace_with_a_client_span_per_attempt(start_service, upstreams, collector) -> None:
    headers = f"authorization=Bearer%20{HEADER_SECRET}, x-tenant = agents"
    service = start_service(aliases=ALIASES, telemetry=traced(collector, otlp_headers=headers))
    upstreams[OPENAI].inject(Fault(status=503))
    body = {"model": "resilient", "messages": QUESTION, "max_tokens": 64, "temperature": 0.2, "top_p": 0.9}

    response = chat(service, body)

    assert response.status_code == 200, response.text
    spans = exported(collector, service, 3)
    assert len(spans) == 3
    server = one(spans, "SERVER")
    assert {s.trace_id for s in spans} == {server.trace_id}
    assert server.parent_span_id == ""
    assert server.name == "POST /v1/chat/completions"
    assert server.status == "UNSET"
    assert server.attributes == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "http.route": "/v1/chat/completions",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "resilient",
        "http.response.status_code": 200,
    }
    assert server.resource["service.name"] == "llm-service"
    assert server.resource["service.version"] == __version__

    failed, served = children(spans, server)
    assert (failed.kind, served.kind) == ("CLIENT", "CLIENT")
    assert failed.name == "chat gpt-4o-mini"
    assert failed.status == "ERROR"
    assert failed.attributes["error.type"] == "503"
    assert failed.attributes["gen_ai.provider.name"] == "openai"
    assert failed.attributes["llm.deployment"] == "openai/gpt-4o-mini"
    assert failed.attributes["server.address"] == "127.0.0.1"
    assert failed.attributes["server.port"] == httpx.URL(upstreams[OPENAI].url).port
    assert "gen_ai.response.id" not in failed.attributes
    assert failed.end_ns <= served.start_ns

    upstream_answer = upstreams[OPENROUTER].requests[-1]
    assert served.name == "chat openai/gpt-4o-mini"
    assert served.status == "UNSET"
    assert "error.type" not in served.attributes
    assert served.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openrouter",
        "gen_ai.request.model": "openai/gpt-4o-mini",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "llm.deployment": "openrouter/openai/gpt-4o-mini",
        "server.address": "127.0.0.1",
        "server.port": httpx.URL(upstreams[OPENROUTER].url).port,
        "gen_ai.response.id": response.json()["id"],
        "gen_ai.response.model": response.json()["model"],
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": response.json()["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": response.json()["usage"]["completion_tokens"],
    }
    assert upstream_answer.json["model"] == "openai/gpt-4o-mini"
    # Never the conversation: not the prompt, not the answer.
    answer = response.json()["choices"][0]["message"]["content"]
    for span in spans:
        assert PROMPT not in repr(span.attributes) and answer not in repr(span.attributes)
    # The export went where and how OTLP/HTTP says, with the configured headers.
    export = collector.requests[0]
    assert export.path == "/v1/traces"
    assert export.headers["content-type"] == "application/x-protobuf"
    assert export.headers["authorization"] == f"Bearer {HEADER_SECRET}"
    assert export.headers["x-tenant"] == "agents"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", {"stream": True}, id="stream-true"),
        pytest.param("/v1/chat/completions/stream", {}, id="stream-route"),
    ],
)
def test_a_streamed_attempt_span_carries_finish_reasons_and_usage_and_ends_with_the_stream(
    start_service, upstreams, collector, path, body
) -> None:
    service = start_service(telemetry=traced(collector))
    delay = 0.02
    upstreams[OPENAI].inject(Fault(delay_per_chunk=delay))
    request = {"model": MODELS[OPENAI], "messages": QUESTION, **body}

    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", path, json=request) as response,
    ):
        assert response.status_code == 200
        events = read_events(response)

    assert "Paris" in streamed_text(events[:-1])
    spans = exported(collector, service, 2)
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")
    assert attempt.parent_span_id == server.span_id
    assert server.name == f"POST {path}"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gen_ai.request.model"] == MODELS[OPENAI]
    chunks = [e for e in events if isinstance(e, dict)]
    assert attempt.attributes["gen_ai.response.id"] == chunks[0]["id"]
    assert attempt.attributes["gen_ai.response.model"] == chunks[0]["model"]
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ["stop"]  # from the last chunks, not the first
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 24
    assert attempt.attributes["gen_ai.usage.output_tokens"] == 13
    assert attempt.status == "UNSET"
    # The upstream paused `delay` between each of its 8 events and [DONE]: a span that ended with the
    # headers or the first chunk would be over long before.
    assert attempt.duration >= 7 * delay
    assert server.end_ns >= attempt.end_ns
    assert server.duration >= attempt.duration


def test_a_stream_the_client_leaves_ends_its_attempt_as_cancelled(start_service, upstreams, collector) -> None:
    # No grace period: the upstream is cut when the client leaves, not kept for a resumption.
    service = start_service(telemetry=traced(collector), streaming={"stream_resume_grace_seconds": 0})
    upstreams[OPENAI].inject(Fault(delay_per_chunk=0.4))
    request = {"model": MODELS[OPENAI], "messages": QUESTION, "stream": True}

    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=request) as response,
    ):
        assert next(line for line in response.iter_lines() if not line.startswith("id: ")).startswith("data: ")
    assert upstreams[OPENAI].wait_for_disconnect(timeout=5)

    spans = exported(collector, service, 2)
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")
    assert (attempt.status, attempt.attributes["error.type"]) == ("ERROR", "cancelled")
    assert "gen_ai.response.finish_reasons" not in attempt.attributes
    assert attempt.parent_span_id == server.span_id


def test_an_incoming_traceparent_is_continued(start_service, collector) -> None:
    service = start_service(telemetry=traced(collector))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    response = chat(
        service,
        {"model": MODELS[OPENAI], "messages": QUESTION},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=1"},
    )

    assert response.status_code == 200
    spans = exported(collector, service, 2)
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")
    assert server.trace_id == attempt.trace_id == trace_id
    assert server.parent_span_id == parent_id
    assert attempt.parent_span_id == server.span_id


def test_an_error_answer_marks_the_request_span_and_names_the_upstream_status(
    start_service, upstreams, collector
) -> None:
    service = start_service(telemetry=traced(collector), dispatcher={"max_retries": 0})
    upstreams[OPENAI].inject(Fault(status=500))

    response = chat(service, {"model": MODELS[OPENAI], "messages": QUESTION})

    assert response.status_code == 502
    spans = exported(collector, service, 2)
    server, attempt = one(spans, "SERVER"), one(spans, "CLIENT")
    assert (server.status, server.attributes["error.type"]) == ("ERROR", "502")
    assert server.attributes["http.response.status_code"] == 502
    assert (attempt.status, attempt.attributes["error.type"]) == ("ERROR", "500")


def test_no_endpoint_means_no_tracer_and_no_spans(start_service, collector) -> None:
    service = start_service()
    services = service.app.state.services

    assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}).status_code == 200

    assert services.tracing is None
    assert services.dispatcher._tracer is None
    service.stop()
    assert collector.spans == [] and collector.requests == []


def test_a_sample_ratio_of_0_exports_nothing(start_service, collector) -> None:
    service = start_service(telemetry=traced(collector, traces_sample_ratio=0))

    for _ in range(3):
        assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}).status_code == 200

    service.stop()
    assert collector.spans == [] and collector.requests == []


def test_a_sampled_caller_trace_is_recorded_even_at_a_ratio_of_0(start_service, collector) -> None:
    service = start_service(telemetry=traced(collector, traces_sample_ratio=0))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    chat(service, {"model": MODELS[OPENAI], "messages": QUESTION})
    chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}, headers={"traceparent": traceparent})

    spans = exported(collector, service, 2)
    assert {s.trace_id for s in spans} == {"0af7651916cd43dd8448eb211c80319c"}
    assert sorted(s.kind for s in spans) == ["CLIENT", "SERVER"]


def test_the_full_traces_url_wins_over_the_base_endpoint(start_service, collector) -> None:
    telemetry = {"otlp_endpoint": "http://127.0.0.1:9", "otlp_traces_endpoint": f"{collector.endpoint}/v1/traces"}
    service = start_service(telemetry=telemetry)

    assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}).status_code == 200

    assert len(exported(collector, service, 2)) == 2


def test_the_headers_never_reach_a_log_line(start_service, collector, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    service = start_service(telemetry=traced(collector, otlp_headers=f"authorization=Bearer%20{HEADER_SECRET}"))

    assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}).status_code == 200
    exported(collector, service, 2)

    (started,) = [r for r in caplog.records if r.name == "llm_service.tracing"]
    assert started.fields["traces_url"] == f"{collector.endpoint}/v1/traces"
    formatter = JSONFormatter()
    for record in caplog.records:
        assert HEADER_SECRET not in formatter.format(record)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------------------------------
# Trace context: sent to upstreams, named in the access log
# --------------------------------------------------------------------------------------------------

CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CALLER_HEADERS = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"}


def names(traceparent: str, span: ReceivedSpan, *, sampled: bool = True) -> bool:
    """Whether a W3C traceparent names `span` in its trace, with the sampled flag as given (the other flags
    are the SDK's: a trace id it made is marked random, 0x02)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    return (version, trace_id, span_id, int(flags, 16) & 1) == ("00", span.trace_id, span.span_id, int(sampled))


def test_each_attempt_names_its_own_span_to_its_upstream(start_service, upstreams, collector) -> None:
    """The upstream of each attempt gets a traceparent naming that attempt's CLIENT span in the caller's
    trace, and the caller's tracestate: an upstream that traces too hangs its spans under the attempt."""
    service = start_service(aliases=ALIASES, telemetry=traced(collector))
    upstreams[OPENAI].inject(Fault(status=503))

    response = chat(service, {"model": "resilient", "messages": QUESTION}, headers=CALLER_HEADERS)

    assert response.status_code == 200, response.text
    spans = exported(collector, service, 3)
    failed, served = children(spans, one(spans, "SERVER"))
    for upstream, attempt in ((upstreams[OPENAI], failed), (upstreams[OPENROUTER], served)):
        sent = upstream.requests[-1].headers
        assert names(sent["traceparent"], attempt) and attempt.trace_id == CALLER_TRACE
        assert sent["tracestate"] == "vendor=1"


def test_a_streamed_attempt_names_its_span_to_its_upstream(start_service, upstreams, collector) -> None:
    service = start_service(telemetry=traced(collector))
    request = {"model": MODELS[OPENAI], "messages": QUESTION, "stream": True}

    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=request) as response,
    ):
        assert "Paris" in streamed_text(read_events(response)[:-1])

    attempt = one(exported(collector, service, 2), "CLIENT")
    assert names(upstreams[OPENAI].requests[-1].headers["traceparent"], attempt)


@pytest.mark.parametrize("provider", [OPENAI, ProviderID.VERTEX_AI], ids=lambda p: p.value)
def test_a_stream_replayed_after_a_break_names_its_new_attempt_upstream(
    start_service, upstreams, collector, provider
) -> None:
    """A stream cut after two chunks is asked for again: that second request names the second attempt."""
    service = start_service(telemetry=traced(collector))
    upstreams[provider].inject(Fault(drop_after_chunks=2))
    request = {"model": MODELS[provider], "messages": QUESTION, "stream": True}

    with (
        httpx.Client(base_url=service.url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=request, headers=CALLER_HEADERS) as response,
    ):
        assert read_events(response)[-1] == "[DONE]"

    spans = exported(collector, service, 3)
    first, second = children(spans, one(spans, "SERVER"))
    cut, replayed = upstreams[provider].requests
    assert names(cut.headers["traceparent"], first) and names(replayed.headers["traceparent"], second)
    assert replayed.headers["tracestate"] == "vendor=1"


def test_an_attempts_headers_are_its_tasks_only_while_it_is_made(upstreams, collector) -> None:
    """Set for the attempt, taken back after it: nothing the task does later (another request's attempt
    in a worker task, a health probe) is named after an attempt that has ended."""
    app = create_app(fake_settings(upstreams, telemetry=traced(collector)))
    plain, streamed = (
        parse_chat_request({"model": MODELS[OPENAI], "messages": QUESTION, "stream": stream})
        for stream in (False, True)
    )

    async def run() -> None:
        async with app.router.lifespan_context(app):
            dispatcher = app.state.services.dispatcher
            await dispatcher.generate(plain)
            assert ATTEMPT_HEADERS.get() is NO_HEADERS
            routed = await dispatcher.open_stream(streamed)  # its first chunk read: the request made
            assert ATTEMPT_HEADERS.get() is NO_HEADERS
            async for _ in routed.chunks:
                pass

    asyncio.run(run())
    assert all("traceparent" in r.headers for r in upstreams[OPENAI].requests[-2:])


def test_an_unsampled_trace_is_propagated_as_unsampled(start_service, upstreams, collector) -> None:
    """At a sample ratio of 0 nothing is recorded, and the upstream is told so (flags 00): it follows the
    decision rather than start a trace of its own."""
    service = start_service(telemetry=traced(collector, traces_sample_ratio=0))

    assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}).status_code == 200

    traceparent = upstreams[OPENAI].requests[-1].headers["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[02]", traceparent), traceparent


@pytest.mark.parametrize("telemetry", ["off", "tracing-off"])
def test_no_trace_context_reaches_the_upstream_when_it_is_not_to(
    start_service, upstreams, collector, telemetry
) -> None:
    """With propagation turned off, or without tracing, the upstream gets no trace context: not the
    service's, and not the caller's either (a caller's headers are never passed on)."""
    settings = traced(collector, propagate_trace_context=False) if telemetry == "off" else {}
    service = start_service(telemetry=settings)

    assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}, headers=CALLER_HEADERS).status_code == 200

    sent = upstreams[OPENAI].requests[-1].headers
    assert "traceparent" not in sent and "tracestate" not in sent
    if telemetry == "off":  # traced all the same: the attempt has its span, only the upstream is not told
        assert one(exported(collector, service, 2), "CLIENT").trace_id == CALLER_TRACE


def test_through_the_genai_platform_the_attempt_is_named_beside_the_attribution_headers(
    start_service, collector
) -> None:
    fake = platform_fakes(PLATFORM_TOKEN)[ProviderID.AZURE_OPENAI]
    with FakeUpstreamThread(fake):
        service = start_service(genai_platform=platform_settings(fake), telemetry=traced(collector))
        response = chat(service, {"model": MODELS[ProviderID.AZURE_OPENAI], "messages": QUESTION, "user": "alice"})

        assert response.status_code == 200, response.text
        attempt = one(exported(collector, service, 2), "CLIENT")
        sent = fake.requests[-1].headers
    assert names(sent["traceparent"], attempt)
    assert (sent["x-genai-project-name"], sent["x-genai-user-id"]) == (PROJECT, "alice")


def test_the_access_line_names_the_trace_and_the_request_span(start_service, collector, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    service = start_service(telemetry=traced(collector))

    response = chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}, headers=CALLER_HEADERS)

    assert response.status_code == 200
    server = one(exported(collector, service, 2), "SERVER")
    (line,) = [r.fields for r in caplog.records if r.name == "llm_service.access"]
    assert (line["trace_id"], line["span_id"]) == (CALLER_TRACE, server.span_id)
    assert server.trace_id == CALLER_TRACE


def test_without_tracing_the_access_line_has_no_trace_fields(start_service, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    service = start_service()

    assert chat(service, {"model": MODELS[OPENAI], "messages": QUESTION}, headers=CALLER_HEADERS).status_code == 200

    service.stop()  # the line is written once the answer has gone
    (line,) = [r.fields for r in caplog.records if r.name == "llm_service.access"]
    assert "trace_id" not in line and "span_id" not in line


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No profile and no .env: only what a test sets reaches the settings."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_the_standard_opentelemetry_env_vars_configure_tracing(clean_dir, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.internal:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k%3Dv, x-team=agents")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llm-gateway-eu")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")

    telemetry = Settings().telemetry

    assert telemetry.traces_url() == "http://collector.internal:4318/v1/traces"
    assert telemetry.export_headers() == {"api-key": "k=v", "x-team": "agents"}
    assert (telemetry.otlp_timeout_ms, telemetry.service_name, telemetry.traces_sample_ratio) == (
        2500,
        "llm-gateway-eu",
        0.25,
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/otlp/v1/traces")
    assert Settings().telemetry.traces_url() == "https://traces.example/otlp/v1/traces"


def test_tracing_is_off_by_default_and_an_empty_endpoint_is_unset(clean_dir, monkeypatch) -> None:
    assert Settings().telemetry.traces_url() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    assert Settings().telemetry.traces_url() is None


@pytest.mark.parametrize(
    ("text", "words", "unsaid"),
    [
        ("authorization", "pair 1 has no '='", "authorization"),
        ("a=1,Bearer-zzz", "pair 2 has no '='", "Bearer-zzz"),
        ("=zzz", "pair 1 has no valid header name", "zzz"),
        ("Bearer zzz=x", "pair 1 has no valid header name", "zzz"),
        ("a=zzz%0Ay", "pair 1 has a line break", "zzz"),
    ],
)
def test_bad_header_syntax_is_refused_without_showing_the_value(text, words, unsaid) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        parse_otlp_headers(text)
    assert unsaid not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "http:// or https:// URL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:port/v1/traces"}, "port is not a number"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "less than or equal to 1"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "valid number"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": f"authorization Bearer {HEADER_SECRET}"}, "pair 1 has no '='"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "only http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "only http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, "greater than 0"),
    ],
)
def test_config_check_names_each_bad_telemetry_variable(clean_dir, monkeypatch, env, words) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    report = check_configuration()

    (culprit,) = env
    problems = [p for p in report.errors if p.culprit == culprit]
    assert len(problems) == 1, [str(p) for p in report.problems]
    assert words in problems[0].message
    assert all(HEADER_SECRET not in str(p) for p in report.problems)


def test_config_show_masks_the_headers(clean_dir, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{HEADER_SECRET}")

    assert cli.main(["config", "show", "--format", "json"]) == 0

    out = capsys.readouterr().out
    assert HEADER_SECRET not in out
    telemetry = json.loads(out)["telemetry"]
    assert telemetry["otlp_headers"] == "**********"
    assert telemetry["otlp_endpoint"] == "http://127.0.0.1:4318"
