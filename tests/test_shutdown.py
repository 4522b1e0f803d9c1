"""Graceful shutdown of the real service, as an operator runs it (`python -m llm_service serve`), on SIGTERM:
new connections are refused, readiness answers 503, streams in flight finish until the drain deadline and
the ones still running then end with one `server_shutting_down` error event and [DONE]; a request whose
answer has not started gets a 503 it may retry. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import KEYS, MODELS, QUESTION
from harness import wait_until
from llm_service.api.drain import Drain
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import Fault
from service_process import ServiceProcess
from sse_client import fixture_text, streamed_text

OPENAI, OPENROUTER, REMOTE = ProviderID.OPENAI, ProviderID.OPENROUTER, ProviderID.REMOTE
DRAIN_SECONDS = 2.5
FAST, SLOW = 12, 8  # streams that finish within the deadline, and streams still running at it


@pytest.fixture
def served(tmp_path: Path, upstreams: dict[ProviderID, Any]) -> Iterator[ServiceProcess]:
    """The service in its own process, its providers the test's fakes, a short drain deadline."""
    env = {
        "OPENAI_API_KEY": KEYS[OPENAI],
        "OPENAI_BASE_URL": upstreams[OPENAI].url,
        "OPENROUTER_API_KEY": KEYS[OPENROUTER],
        "OPENROUTER_BASE_URL": upstreams[OPENROUTER].url,
        "REMOTE_LLM_API_KEY": KEYS[REMOTE],
        "REMOTE_LLM_BASE_URL": upstreams[REMOTE].url,
        "LLM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
        "LLM_DRAIN_SECONDS": str(DRAIN_SECONDS),
    }
    service = ServiceProcess(tmp_path, {}, env).start()
    try:
        yield service
    finally:
        service.stop()


async def _stream(http: httpx.AsyncClient, model: str, started: asyncio.Event, count: list[int]) -> dict[str, Any]:
    """One streamed answer: its events (`[DONE]` as a string) and when it ended."""
    body = {"model": model, "messages": QUESTION, "stream": True}
    events: list[Any] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        count[0] += 1
        if count[0] == FAST + SLOW:
            started.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return {"events": events, "ended": time.monotonic()}


async def _shutdown_scenario(served: ServiceProcess) -> dict[str, Any]:
    started = asyncio.Event()
    count = [0]
    limits = httpx.Limits(max_connections=100)
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=30, limits=limits) as http,
        httpx.AsyncClient(base_url=served.url, timeout=5) as kept,  # one connection, kept open
        httpx.AsyncClient(base_url=served.url, timeout=30) as waiting,
    ):
        assert (await kept.get("/health/ready")).status_code == 200
        streams = [asyncio.create_task(_stream(http, MODELS[OPENAI], started, count)) for _ in range(FAST)]
        streams += [asyncio.create_task(_stream(http, MODELS[OPENROUTER], started, count)) for _ in range(SLOW)]
        plain = asyncio.create_task(
            waiting.post("/v1/chat/completions", json={"model": MODELS[REMOTE], "messages": QUESTION})
        )
        await asyncio.wait_for(started.wait(), timeout=10)  # every stream has begun

        os.kill(served.pid, signal.SIGTERM)
        sent = time.monotonic()
        readiness = None
        for _ in range(100):  # the drain begins within a moment of the signal
            readiness = await kept.get("/health/ready")
            if readiness.status_code == 503:
                break
            await asyncio.sleep(0.02)
        refused_connection = False
        try:
            async with httpx.AsyncClient(base_url=served.url, timeout=2) as fresh:
                await fresh.get("/health/live")
        except httpx.ConnectError:
            refused_connection = True
        late = await kept.post("/v1/chat/completions", json={"model": MODELS[OPENAI], "messages": QUESTION})
        results = await asyncio.wait_for(asyncio.gather(*streams), timeout=DRAIN_SECONDS + 10)
        answer = await asyncio.wait_for(plain, timeout=DRAIN_SECONDS + 10)
    return {
        "sent": sent,
        "readiness": readiness,
        "refused_connection": refused_connection,
        "late": late,
        "results": results,
        "plain": answer,
    }


def test_sigterm_drains_twenty_live_streams_and_ends_the_rest_at_the_deadline(
    served: ServiceProcess, upstreams: dict[ProviderID, Any]
) -> None:
    upstreams[OPENAI].inject(Fault(delay_per_chunk=0.12, times=FAST))  # about 1 s a stream
    upstreams[OPENROUTER].inject(Fault(delay_per_chunk=1.0, times=SLOW))  # about 8 s: past the deadline
    upstreams[REMOTE].inject(Fault(delay_before_headers=8.0))  # a plain answer that is not ready in time

    seen = asyncio.run(_shutdown_scenario(served))
    assert wait_until(served.exited, timeout=DRAIN_SECONDS + 10)
    exited = time.monotonic()
    log = served.log_path.read_text()

    assert seen["readiness"].status_code == 503
    assert seen["readiness"].json() == {"status": "not_ready", "reason": "shutting_down"}
    assert seen["refused_connection"], "a new connection was accepted while draining"
    late = seen["late"]
    assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
    assert late.headers["connection"] == "close" and late.headers["x-should-retry"] == "true"

    text = fixture_text("openai", "text")
    finished, cut = [], []
    for result in seen["results"]:
        events = result["events"]
        assert events[-1] == "[DONE]"
        assert result["ended"] - seen["sent"] < DRAIN_SECONDS + 1.5  # within the deadline, and its last write
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        if errors:
            assert errors == [events[-2]]  # one error event, right before [DONE]
            assert errors[0]["error"]["code"] == "server_shutting_down"
            assert text.startswith(streamed_text(events))  # what came before it was the answer, without a gap
            cut.append(result)
        else:
            assert streamed_text(events) == text
            finished.append(result)
    assert (len(finished), len(cut)) == (FAST, SLOW)

    plain = seen["plain"]
    assert plain.status_code == 503
    assert plain.json()["error"]["code"] == "server_shutting_down"
    assert exited - seen["sent"] < DRAIN_SECONDS + 8
    assert "Traceback" not in log and "unhandled error" not in log
    assert "drain deadline passed" in log and '"drained"' in log


def test_a_drain_with_nothing_in_flight_ends_at_once() -> None:
    async def scenario() -> tuple[float, list[str]]:
        drain = Drain(seconds=30)
        calls: list[str] = []
        began = time.monotonic()
        await drain.run(stop_accepting=lambda: calls.append("stopped"))
        return time.monotonic() - began, calls

    took, calls = asyncio.run(scenario())
    assert calls == ["stopped"]
    assert took < 1


def test_ctrl_c_drains_and_ends_by_the_signal_without_a_traceback(served: ServiceProcess) -> None:
    """SIGINT (Ctrl+C) drains as SIGTERM does; uvicorn then raises it again, and the service ends by it
    quietly rather than print asyncio's KeyboardInterrupt."""
    assert httpx.get(f"{served.url}/health/live", timeout=5).status_code == 200

    os.kill(served.pid, signal.SIGINT)

    assert wait_until(served.exited, timeout=DRAIN_SECONDS + 10)
    assert served.returncode == -signal.SIGINT
    lines = served.log_lines()
    assert any('"drained"' in line for line in lines)
    assert not [line for line in lines if "Traceback" in line or "KeyboardInterrupt" in line]
