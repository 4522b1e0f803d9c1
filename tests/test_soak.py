"""Soak: a few thousand requests through the service in its own process, across every provider, while the
fake upstreams fail at random (5xx, 429 with Retry-After, timeouts, drops and stalls mid-stream, error
events, malformed bodies) and the client hangs up at random (before an answer, mid-stream).

What must hold: every request ends in the fakes' scripted answer or OpenAI's error body (a stream: whole
and ending in [DONE], or one error event then [DONE]); every request is in the access log once, with the
status the client saw; afterwards nothing is in flight or queued, the service holds no connection to an
upstream and no more file descriptors than before, its memory stays near where the first half left it,
and its log has no error and no traceback.

Bounded: the plan has a fixed number of requests, the load stops issuing at a deadline, every request
and every wait has a timeout. Seeded (`SOAK_SEED`): the same faults and calls in the same order each run
(which request meets which fault still depends on timing). Nothing is asserted about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import KEYS, MODELS, VERTEX_LOCATION, VERTEX_PROJECT, make_fake
from harness import ServiceThread, wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import FakeUpstreamThread
from log_records import fields_of
from service_process import ServiceProcess
from soak_plan import (
    RESUME_ERROR_STATUSES,
    Call,
    client_calls,
    completion_problem,
    error_problem,
    stream_problem,
    upstream_faults,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the service's /proc entries")

SEED = int(os.environ.get("SOAK_SEED", "20240917"))
REQUESTS = 2000
CONCURRENCY = 32
#: The load stops issuing requests after this long (both halves together), whatever is left of the plan.
LOAD_BUDGET_SECONDS = 40.0
#: One request, start to end, from the client's side: past it the request counts as hung.
REQUEST_LIMIT_SECONDS = 30.0
#: The service's read timeout towards the fakes; the timeout faults wait past it.
READ_TIMEOUT = 0.8
#: Growth of the service's resident memory allowed over the second half of the load (a leak of a few
#: kilobytes a request would pass; one of the answer's size or more would not).
RSS_GROWTH_BOUND = 64 * 1024 * 1024
OPENAI, OPENROUTER, AZURE, VERTEX, REMOTE = (
    ProviderID.OPENAI,
    ProviderID.OPENROUTER,
    ProviderID.AZURE_OPENAI,
    ProviderID.VERTEX_AI,
    ProviderID.REMOTE,
)


def deployment(provider: ProviderID, **extra: Any) -> dict[str, Any]:
    return {"provider": provider.value, "model": MODELS[provider].split("/", 1)[1], **extra}


#: Aliases whose deployments span every provider, so that failover crosses wire formats.
ALIASES = {
    "soak-openai-first": [deployment(OPENAI), deployment(AZURE), deployment(VERTEX)],
    "soak-vertex-first": [deployment(VERTEX), deployment(OPENROUTER), deployment(REMOTE)],
    # a narrow deployment: requests queue for it
    "soak-remote-first": [deployment(REMOTE, max_concurrency=3, accepts_assistant_prefix=True), deployment(OPENAI)],
    "soak-shared": [deployment(AZURE, priority=0), deployment(OPENROUTER, priority=0)],
}
#: The aliases, weighted up, and each provider addressed directly (no failover).
CLIENT_MODELS = [*ALIASES, *ALIASES, *MODELS.values()]
CREDENTIAL_ENV = {
    OPENAI: "OPENAI_API_KEY",
    OPENROUTER: "OPENROUTER_API_KEY",
    AZURE: "AZURE_OPENAI_API_KEY",
    VERTEX: "VERTEX_ACCESS_TOKEN",
    REMOTE: "REMOTE_LLM_API_KEY",
}


def profile(fakes: dict[ProviderID, Any]) -> dict[str, Any]:
    """Short timeouts, quick breakers and health checks, a small queue, short stream grace and TTL."""
    providers: dict[str, Any] = {}
    for provider, fake in fakes.items():
        group: dict[str, Any] = {"base_url": fake.url, "timeout_read": READ_TIMEOUT, "timeout_total": 5.0}
        if provider is VERTEX:
            group |= {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION}
        providers[provider.value] = group
    return {
        "log_level": "INFO",
        "aliases": ALIASES,
        "providers": providers,
        "dispatcher": {
            "max_retries": 1,
            "retry_backoff_base": 0.01,
            "retry_backoff_max": 0.05,
            "retry_max_retry_after": 0.5,
            "request_timeout_seconds": 8.0,
            "first_chunk_timeout_seconds": READ_TIMEOUT,
            "stream_idle_timeout_seconds": READ_TIMEOUT,
            "max_queue_size": 20,
            "queue_timeout_seconds": 2.0,
            "breaker_min_calls": 20,
            "breaker_window_seconds": 10.0,
            "breaker_cooldown_seconds": 1.0,
            "health_check_interval_seconds": 0.5,
        },
        "streaming": {"stream_resume_grace_seconds": 0.3, "stream_resume_ttl_seconds": 2.0},
    }


@pytest.fixture
def soak_fakes() -> Iterator[dict[ProviderID, Any]]:
    """A fake per provider of this test's own: their fault queues and request logs are the soak's alone."""
    threads = {provider: FakeUpstreamThread(make_fake(provider)).start() for provider in ProviderID}
    yield {provider: thread.upstream for provider, thread in threads.items()}
    for thread in threads.values():
        thread.stop()


@pytest.fixture
def soak_service(tmp_path: Path, soak_fakes: dict[ProviderID, Any]) -> Iterator[ServiceProcess]:
    env = {CREDENTIAL_ENV[provider]: KEYS[provider] for provider in ProviderID}
    service = ServiceProcess(tmp_path, profile(soak_fakes), env).start()
    yield service
    service.stop()


@dataclass
class Outcome:
    call: Call
    status: int | None = None
    left: bool = False  # the client hung up before the end
    problem: str | None = None


# --------------------------------------------------------------------------- the client


async def one_call(http: httpx.AsyncClient, call: Call, seed: int) -> Outcome:
    headers = {"x-request-id": f"soak-{seed}-{call.index}"}
    try:
        async with asyncio.timeout(REQUEST_LIMIT_SECONDS):
            if call.stream:
                return await _stream_call(http, call, headers)
            return await _plain_call(http, call, headers)
    except TimeoutError:
        return Outcome(call, problem=f"no end within {REQUEST_LIMIT_SECONDS} s (hung)")
    except httpx.HTTPError as exc:
        return Outcome(call, problem=f"transport error {type(exc).__name__}: {exc}")


async def _plain_call(http: httpx.AsyncClient, call: Call, headers: dict[str, str]) -> Outcome:
    request = asyncio.ensure_future(http.post("/v1/chat/completions", json=call.body(), headers=headers))
    done, _ = await asyncio.wait({request}, timeout=call.leave_after_seconds)
    if not done:  # hang up: the request is cancelled and its connection closed
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await request
        return Outcome(call, left=True)
    response = request.result()
    outcome = Outcome(call, status=response.status_code)
    if response.status_code == 200:
        outcome.problem = completion_problem(call, response.content)
    else:
        outcome.problem = error_problem(response.status_code, dict(response.headers), response.content)
    return outcome


class NotJSON(Exception):
    """A `data:` payload that is neither JSON nor [DONE]."""


async def _stream_call(http: httpx.AsyncClient, call: Call, headers: dict[str, str]) -> Outcome:
    events: list[Any] = []
    try:
        async with http.stream("POST", "/v1/chat/completions", json=call.body(), headers=headers) as response:
            outcome = Outcome(call, status=response.status_code)
            if response.status_code != 200:
                body = await response.aread()
                outcome.problem = error_problem(response.status_code, dict(response.headers), body)
                return outcome
            stream_id = response.headers.get("x-llm-stream-id")
            last_id = await read_sse(response, events, stop_after=call.leave_after_events)
        if call.leave_after_events is None or len(events) < call.leave_after_events or events[-1:] == ["[DONE]"]:
            outcome.problem = stream_problem(call, events)  # read to the end
        elif call.resume and stream_id is not None:
            outcome.problem = await _resume(http, call, stream_id, last_id, events)
        else:
            outcome.left = True  # left the block early: the connection was closed mid-stream
    except NotJSON as exc:
        outcome.problem = f"an event that is not JSON: {exc}"
    return outcome


async def _resume(
    http: httpx.AsyncClient, call: Call, stream_id: str, last_id: str | None, events: list[Any]
) -> str | None:
    """Reconnect to a stream left mid-way: what came before and what comes now make one whole stream."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    async with http.stream("GET", f"/v1/chat/completions/{stream_id}/stream", headers=headers) as response:
        if response.status_code != 200:
            body = await response.aread()
            return error_problem(response.status_code, dict(response.headers), body, also=RESUME_ERROR_STATUSES)
        await read_sse(response, events, stop_after=None)
    return stream_problem(call, events)


async def read_sse(response: httpx.Response, events: list[Any], stop_after: int | None) -> str | None:
    """Append the response's `data:` payloads to `events` (JSON parsed, [DONE] as a string), stopping once
    there are `stop_after`; the last event id seen (None: none)."""
    last_id: str | None = None
    async for line in response.aiter_lines():
        if stop_after is not None and len(events) >= stop_after:
            break
        if line.startswith("id: "):
            last_id = line[len("id: ") :]
        if not line.startswith("data: "):
            continue
        payload = line[len("data: ") :]
        try:
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        except ValueError:
            raise NotJSON(payload[:200]) from None
    return last_id


async def run_load(url: str, calls: list[Call], deadline: float, seed: int) -> list[Outcome]:
    """The calls by `CONCURRENCY` workers in plan order; none is started after `deadline`."""
    outcomes: list[Outcome] = []
    pending = iter(calls)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_LIMIT_SECONDS, limits=limits) as http:

        async def worker() -> None:
            for call in pending:  # one shared iterator: each call is taken once
                if time.monotonic() > deadline:
                    return
                outcomes.append(await one_call(http, call, seed))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return outcomes


# --------------------------------------------------------------------------- what the service says


def dispatcher_state(service: ServiceProcess) -> dict[str, Any]:
    dispatcher: dict[str, Any] = httpx.get(f"{service.url}/health", timeout=5).json()["dispatcher"]
    return dispatcher


def metric_sum(service: ServiceProcess, name: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def idle(service: ServiceProcess) -> bool:
    state = dispatcher_state(service)
    return bool(state["in_flight"] == 0 and state["queue_depth"] == 0)


def access_records(service: ServiceProcess, seed: int) -> dict[str, list[dict[str, Any]]]:
    """The service's access-log records of this soak's requests, by request id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in service.log_records():
        request_id = record.get("request_id")
        if record.get("event") == "request" and isinstance(request_id, str) and request_id.startswith(f"soak-{seed}-"):
            found.setdefault(request_id, []).append(record)
    return found


def missing_from_log(service: ServiceProcess, received: list[Outcome]) -> str:
    logged = access_records(service, SEED)
    missing = [o for o in received if f"soak-{SEED}-{o.call.index}" not in logged]
    return f"{len(missing)} of {len(received)} not in the access log, e.g. " + "; ".join(map(str, missing[:10]))


def log_problems(service: ServiceProcess) -> list[str]:
    """Log lines that say something went wrong inside the service: errors, exceptions, tracebacks."""
    problems = []
    for record in service.log_records():
        level = str(record.get("level", "")).lower()
        failed = level in ("error", "critical") or "exception" in record or "Traceback" in str(record.get("raw", ""))
        if failed:
            problems.append(json.dumps(record)[:2000])
    return problems


def describe(outcomes: list[Outcome]) -> str:
    statuses = Counter("left" if o.left else o.status for o in outcomes)
    return f"{len(outcomes)} requests: {dict(statuses)}"


# --------------------------------------------------------------------------- the soak


def test_under_random_faults_and_hang_ups_every_request_ends_well_and_nothing_is_left_behind(
    soak_fakes: dict[ProviderID, Any], soak_service: ServiceProcess
) -> None:
    service = soak_service
    fake_ports = {fake.port for fake in soak_fakes.values()}
    rng = random.Random(SEED)
    for provider, fake in soak_fakes.items():
        for fault in upstream_faults(random.Random(f"{SEED}:{provider.value}"), REQUESTS, timeout=READ_TIMEOUT):
            fake.inject(fault)
    calls = client_calls(rng, REQUESTS, CLIENT_MODELS)
    fds_before = service.open_fds()
    assert service.connections_to(fake_ports) == 0

    started = time.monotonic()
    deadline = started + LOAD_BUDGET_SECONDS
    half = len(calls) // 2
    first = asyncio.run(run_load(service.url, calls[:half], deadline, SEED))
    assert wait_until(lambda: idle(service), timeout=20), dispatcher_state(service)
    rss_first_half = service.rss_bytes()
    second = asyncio.run(run_load(service.url, calls[half:], deadline, SEED))
    outcomes = first + second
    loaded = time.monotonic()
    served = {fake: len(fake.requests) for fake in soak_fakes.values()}
    for fake in soak_fakes.values():
        fake.reset()  # no fault left for the health checks' probes: the breakers close again

    # every request ended in the answer or a well-formed error
    problems = [f"{o.call} -> {o.status}: {o.problem}" for o in outcomes if o.problem is not None]
    assert not problems, f"{len(problems)} of {describe(outcomes)} went wrong:\n" + "\n".join(problems[:20])

    # nothing in flight or queued
    assert wait_until(lambda: idle(service), timeout=20), dispatcher_state(service)
    assert metric_sum(service, "llm_gateway_in_flight") == 0
    assert metric_sum(service, "llm_gateway_queue_depth") == 0

    # every request the service received reached the access log once, with the status its client saw (a
    # client that hung up before its answer began may have left before its request was sent)
    received = [o for o in outcomes if o.status is not None]

    def all_logged() -> bool:
        logged = access_records(service, SEED)
        return all(f"soak-{SEED}-{o.call.index}" in logged for o in received)

    assert wait_until(all_logged, timeout=15), missing_from_log(service, received)
    logged = access_records(service, SEED)
    assert all(len(records) == 1 for records in logged.values())
    assert len(logged) <= len(outcomes)
    mismatched = [
        (o.call.index, o.status, logged[f"soak-{SEED}-{o.call.index}"][0].get("status"))
        for o in received
        if logged[f"soak-{SEED}-{o.call.index}"][0].get("status") != o.status
    ]
    assert not mismatched, f"access-log status differs from the client's (index, client, log): {mismatched[:20]}"

    # no connection to an upstream left open (idle pooled ones close after aiohttp's 15 s keep-alive)
    assert wait_until(lambda: service.connections_to(fake_ports) == 0, timeout=45), service.connections_to(fake_ports)
    assert wait_until(lambda: service.open_fds() <= fds_before + 4, timeout=10), (fds_before, service.open_fds())

    # memory: the second half of the load did not grow it past a generous bound
    rss_end = service.rss_bytes()
    assert rss_end - rss_first_half <= RSS_GROWTH_BOUND, (rss_first_half, rss_end)

    # no error, exception or traceback in the service's log
    errors = log_problems(service)
    assert not errors, f"{len(errors)} error lines in the service log:\n" + "\n".join(errors[:10])

    # and the soak did what it claims: every provider served, faults struck, failover and hang-ups happened
    assert len(outcomes) >= 200, describe(outcomes)
    assert all(count > 0 for count in served.values()), served
    assert any(o.status == 200 for o in outcomes) and any(o.status in (502, 503, 504) for o in outcomes)
    assert any(o.left and o.call.stream for o in outcomes) and any(o.left and not o.call.stream for o in outcomes)
    assert any(o.call.resume and not o.left for o in outcomes)
    assert metric_sum(service, "llm_gateway_failovers_total") > 0
    timing = f"load {loaded - started:.0f} s, settling {time.monotonic() - loaded:.0f} s"
    print(f"soak (seed {SEED}): {describe(outcomes)}; {timing}; rss {rss_first_half >> 20} -> {rss_end >> 20} MiB")


# --------------------------------------------------------------------------- what the soak found (fixed in 302c825)


def test_a_client_that_hangs_up_before_its_body_arrives_is_no_unhandled_error(
    service: ServiceThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_service")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(head + b"Content-Length: 100\r\nx-request-id: gone-early\r\n\r\n" + b'{"model": ')

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "llm_service.access" and r.getMessage() == "request"]

    assert wait_until(lambda: len(logged()) == 1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    fields = fields_of(logged()[0])
    assert (fields["status"], fields["error_code"]) == (499, "client_disconnected")
