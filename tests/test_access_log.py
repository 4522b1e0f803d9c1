"""One structured JSON log line per request: who served it, how it went, tokens; never a secret or prompt."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import httpx
import pytest
from typing_extensions import override

from conftest import KEYS, MODELS
from harness import wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import Fault
from llm_service.logs import JSONFormatter, info_fields
from log_records import fields_of
from sse_client import read_events

SECRET_PROMPT = "my secret prompt text"


def access_records(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "llm_service.access" and fields_of(r).get("request_id") == request_id
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_one_access_line_per_request_with_provider_model_status_tokens(
    client: httpx.Client, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    body = {
        "model": MODELS[ProviderID.OPENAI],
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "stream": stream,
    }
    with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-request-id": f"log-{stream}"}
    ) as response:
        read_events(response) if stream else response.read()

    assert wait_until(lambda: len(access_records(caplog, f"log-{stream}")) == 1)
    record = access_records(caplog, f"log-{stream}")[0]
    fields = fields_of(record)
    assert fields["status"] == 200
    assert fields["provider"] == "openai"
    assert fields["upstream_model"] == "gpt-4o-mini"
    assert fields["model"] == MODELS[ProviderID.OPENAI]
    assert fields["stream"] is stream
    assert fields["total_tokens"] > 0
    assert fields["latency_ms"] >= 0
    line = JSONFormatter().format(record)
    assert SECRET_PROMPT not in line
    assert all(key not in line for key in KEYS.values())


def test_error_requests_are_logged_with_their_status(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_service.access")
    client.post(
        "/v1/chat/completions",
        json={"model": "nosuch/x", "messages": []},
        headers={"x-request-id": "log-err"},
    )

    assert wait_until(lambda: len(access_records(caplog, "log-err")) == 1)
    assert fields_of(access_records(caplog, "log-err")[0])["status"] == 400


def test_azure_identity_failure_text_stays_out_of_the_log() -> None:
    """azure-identity logs each failed token request with the authority's error text at WARNING; the
    service's own error (provider, credential kind, status) is what is logged instead."""
    from llm_service.logs import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("azure").level)
    try:
        configure_logging("INFO")
        assert not logging.getLogger("azure.identity.aio._internal.get_token_mixin").isEnabledFor(logging.WARNING)
        assert logging.getLogger("llm_service.credentials").isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("azure").setLevel(saved[2])


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    @override
    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _batching_handler(stream: io.StringIO) -> logging.Handler:
    from llm_service.logs import BatchingStreamHandler

    handler = BatchingStreamHandler()
    handler.setStream(stream)
    handler.setFormatter(JSONFormatter())
    return handler


def test_log_lines_of_one_event_loop_turn_are_written_together_and_none_is_held_longer() -> None:
    stream = _Writes()
    handler = _batching_handler(stream)
    log = logging.getLogger("test.batching")
    log.addHandler(handler)
    log.propagate = False
    try:

        async def turn() -> tuple[str, str]:
            log.warning("one")
            log.warning("two")
            held = stream.getvalue()
            await asyncio.sleep(0)  # the turn ends: both lines go out in one write
            return held, stream.getvalue()

        held, written = asyncio.run(turn())
        assert held == ""
        assert [json.loads(line)["event"] for line in written.splitlines()] == ["one", "two"]
        assert stream.writes == 1

        log.warning("three")  # no event loop: written at once
        assert json.loads(stream.getvalue().splitlines()[-1])["event"] == "three"

        async def flushed() -> str:
            log.warning("four")
            handler.flush()  # as logging.shutdown() does at exit
            return stream.getvalue()

        assert json.loads(asyncio.run(flushed()).splitlines()[-1])["event"] == "four"
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_a_line_written_straight_to_the_handler_is_the_line_logging_would_have_written() -> None:
    """`info_fields` skips the LogRecord when the service's JSON handler is the only place a line goes;
    what comes out must not differ from the logged line, and any other configuration gets the record."""
    stream = _Writes()
    handler = _batching_handler(stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    log = logging.getLogger("test.direct.access")
    fields = {"request_id": "req_1", "status": 200, "stream": False, "latency_ms": 1.25, "caller": None, "n": [1]}
    try:

        async def both() -> None:
            info_fields(log, "request", fields)  # straight to the handler
            log.info("request", extra={"fields": fields})  # through logging
            await asyncio.sleep(0)

        asyncio.run(both())
        direct, logged = (json.loads(line) for line in stream.getvalue().splitlines())
        assert abs(direct.pop("ts") - logged.pop("ts")) < 1
        assert direct == logged == {"level": "info", "logger": "test.direct.access", "event": "request", **fields}
        assert stream.writes == 1  # with the rest of the loop turn's lines

        seen: list[logging.LogRecord] = []
        capture = logging.Handler()
        capture.emit = lambda record: seen.append(record)  # type: ignore[method-assign]
        root.addHandler(capture)  # as pytest's caplog does: now the record is wanted
        info_fields(log, "request", fields)
        assert [fields_of(r) for r in seen] == [fields]
        assert len(stream.getvalue().splitlines()) == 3  # and the JSON handler still got its line
        root.removeHandler(capture)

        big = {"request_id": "req_2", "prompt_tokens": 2**70}  # orjson refuses integers past 64 bits
        errors: list[logging.LogRecord] = []
        handler.handleError = lambda record: errors.append(record)  # type: ignore[method-assign]
        info_fields(log, "request", big)  # reported as logging reports a line it cannot format, not raised
        assert [fields_of(r) for r in errors] == [big]

        log.setLevel(logging.WARNING)  # a line below the level goes nowhere
        info_fields(log, "request", fields)
        assert len(stream.getvalue().splitlines()) == 3
    finally:
        log.setLevel(logging.NOTSET)
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_client_leaving_a_resumable_stream_still_gets_its_whole_access_line_with_tokens(
    client: httpx.Client, upstreams: dict[ProviderID, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Generation goes on for the grace period after the client leaves (it may resume): the request's
    line is written when the stream ends, with the usage the upstream reported at its end."""
    caplog.set_level(logging.INFO, logger="llm_service.access")
    upstreams[ProviderID.OPENAI].inject(Fault(delay_per_chunk=0.05))
    body = {"model": MODELS[ProviderID.OPENAI], "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": "log-left"}) as response:
        lines = response.iter_lines()
        assert any(line.startswith("data: ") for line in lines)  # one event read, then the client hangs up

    assert wait_until(lambda: len(access_records(caplog, "log-left")) == 1, timeout=10)
    fields = fields_of(access_records(caplog, "log-left")[0])
    assert fields["status"] == 200
    assert fields["total_tokens"] > 0


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_process_named_in_the_logging_configuration_names_itself_on_every_line(log_format: str) -> None:
    """A worker of `serve --workers` configures its pid: on the access log's direct path, on lines through
    `logging`, in both formats; a line's own field of the same name wins."""
    from llm_service.logs import configure_logging, info_fields

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("azure").level)
    stream = io.StringIO()
    try:
        configure_logging("INFO", log_format, {"pid": 4242})
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        log = logging.getLogger("llm_service.test_process_fields")
        info_fields(log, "request", {"status": 200})
        log.warning("worker note", extra={"fields": {"replicas": 2}})
        log.info("started", extra={"fields": {"pid": 17}})
        handler.flush()
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("azure").setLevel(saved[2])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [r["pid"] for r in records] == [4242, 4242, 17]
        assert records[0]["status"] == 200 and records[1]["replicas"] == 2
    else:
        assert all(" pid=4242" in line for line in lines[:2])
        assert lines[2].count("pid=") == 1 and " pid=17" in lines[2]
