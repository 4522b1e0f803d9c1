"""The dispatcher under load and failure, through the service: limits and the queue answer 429 with
Retry-After instead of failing, breakers take a failing deployment out and bring it back, and /health
and /metrics show it. Time that matters comes from an injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import QUESTION, fake_settings
from harness import ServiceThread, wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import Fault
from llm_service.main import create_app
from test_failover import metric

OPENAI, OPENROUTER = ProviderID.OPENAI, ProviderID.OPENROUTER


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def service_with(
    upstreams: dict[ProviderID, Any], clock: Monotonic | None = None, sleep: Any = None, **overrides: Any
) -> ServiceThread:
    settings = fake_settings(upstreams, **overrides)
    return ServiceThread(app=create_app(settings, monotonic=clock or time.monotonic, sleep=sleep or asyncio.sleep))


@pytest.fixture
def one_slot(upstreams) -> Iterator[ServiceThread]:
    """An alias on a deployment that takes 2 requests at once, with 3 more waiting at most."""
    aliases = {"tight": [{"provider": "openai", "model": "gpt-4o-mini", "max_concurrency": 2}]}
    dispatcher = {"max_queue_size": 3, "queue_timeout_seconds": 20}
    with service_with(upstreams, aliases=aliases, dispatcher=dispatcher) as service:
        yield service


async def burst(url: str, count: int, model: str = "tight") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return list(
            await asyncio.gather(
                *(http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION}) for _ in range(count))
            )
        )


def test_a_burst_of_five_times_capacity_gets_429s_with_retry_after_and_no_5xx(one_slot, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(delay_before_headers=0.5, times=10))
    responses = asyncio.run(burst(one_slot.url, 10))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 5  # 2 in flight + 3 queued are served; the rest told to come back
    for rejected in (r for r in responses if r.status_code == 429):
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["type"] == "rate_limit_exceeded"
    text = httpx.get(f"{one_slot.url}/metrics").text
    assert metric(text, "llm_gateway_queue_depth") == 0
    assert metric(text, "llm_gateway_in_flight") == 0
    assert metric(text, "llm_gateway_rejections_total", reason="queue_full_or_timeout") == 5
    assert len(upstreams[OPENAI].requests) == 5


def test_a_request_waiting_past_the_queue_timeout_gets_429(upstreams) -> None:
    aliases = {"tight": [{"provider": "openai", "model": "gpt-4o-mini", "max_concurrency": 1}]}
    with service_with(upstreams, aliases=aliases, dispatcher={"queue_timeout_seconds": 0.2}) as service:
        upstreams[OPENAI].inject(Fault(delay_before_headers=1.0))
        first, second = asyncio.run(burst(service.url, 2))

    assert sorted([first.status_code, second.status_code]) == [200, 429]


def test_a_queued_client_that_disconnects_leaves_the_queue_at_once(one_slot, upstreams) -> None:
    upstreams[OPENAI].inject(Fault(delay_before_headers=2.0, times=2))
    seen: dict[str, float] = {}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=one_slot.url, timeout=10) as http:
            ask = lambda: http.post("/v1/chat/completions", json={"model": "tight", "messages": QUESTION})  # noqa: E731
            holders = [asyncio.create_task(ask()) for _ in range(2)]
            await asyncio.sleep(0.3)  # both slots are taken
            waiting = asyncio.create_task(ask())
            await asyncio.sleep(0.3)
            seen["queued"] = await asyncio.to_thread(_depth, one_slot)
            waiting.cancel()  # the client hangs up while queued
            await asyncio.sleep(0.2)
            seen["after"] = await asyncio.to_thread(_depth, one_slot)
            seen["holders_busy"] = float(not any(h.done() for h in holders))
            await asyncio.gather(*holders)

    asyncio.run(scenario())
    assert seen == {"queued": 1, "after": 0, "holders_busy": 1.0}
    assert len(upstreams[OPENAI].requests) == 2  # the one who left never reached the upstream


def _depth(service: ServiceThread) -> float:
    return metric(httpx.get(f"{service.url}/metrics").text, "llm_gateway_queue_depth")


def breaker_settings(**extra: Any) -> dict[str, Any]:
    return {
        "breaker_min_calls": 2,
        "breaker_failure_ratio": 0.5,
        "breaker_cooldown_seconds": 30,
        "max_retries": 0,
        "health_check_interval_seconds": 0,  # only callers probe, unless a test says otherwise
        **extra,
    }


def deployment_health(service: ServiceThread, label: str) -> dict[str, Any]:
    deployments = httpx.get(f"{service.url}/health").json()["dispatcher"]["deployments"]
    return next(d for d in deployments if d["deployment"] == label)


def test_the_breaker_opens_half_opens_and_closes_and_health_shows_each_state(upstreams) -> None:
    clock = Monotonic()
    aliases = {"solo": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    with service_with(upstreams, clock, aliases=aliases, dispatcher=breaker_settings()) as service:
        ask = lambda: httpx.post(  # noqa: E731
            f"{service.url}/v1/chat/completions", json={"model": "solo", "messages": QUESTION}, timeout=10
        )
        label = "openai/gpt-4o-mini"
        upstreams[OPENAI].inject(Fault(status=500, times=2))
        assert [ask().status_code, ask().status_code] == [502, 502]
        assert deployment_health(service, label)["breaker"]["state"] == "open"

        refused = ask()  # no upstream call while open
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1

        clock.now += 31
        assert deployment_health(service, label)["breaker"]["state"] == "half_open"
        upstreams[OPENAI].inject(Fault(status=500))
        assert ask().status_code == 502  # the probe fails: open again
        assert deployment_health(service, label)["breaker"]["state"] == "open"

        clock.now += 31
        assert ask().status_code == 200  # the probe succeeds: closed
        assert deployment_health(service, label)["breaker"]["state"] == "closed"
        assert httpx.get(f"{service.url}/health/ready").status_code == 200
        text = httpx.get(f"{service.url}/metrics").text

    assert len(upstreams[OPENAI].requests) == 4  # 2 failures, 1 failed probe, 1 good probe
    assert metric(text, "llm_gateway_breaker_transitions_total", deployment=label, to="open") == 2
    assert metric(text, "llm_gateway_breaker_state", deployment=label) == 0


def test_traffic_moves_to_the_fallback_while_the_primary_is_open_and_returns_after(upstreams) -> None:
    clock = Monotonic()
    aliases = {
        "ha": [
            {"provider": "openai", "model": "gpt-4o-mini"},
            {"provider": "openrouter", "model": "openai/gpt-4o-mini"},
        ]
    }
    with service_with(upstreams, clock, aliases=aliases, dispatcher=breaker_settings(max_retries=1)) as service:
        ask = lambda: httpx.post(  # noqa: E731
            f"{service.url}/v1/chat/completions", json={"model": "ha", "messages": QUESTION}, timeout=10
        )
        upstreams[OPENAI].inject(Fault(status=503, times=2))
        served_by = [ask().headers["x-llm-provider"] for _ in range(5)]
        clock.now += 31
        after = [ask().headers["x-llm-provider"] for _ in range(3)]

    assert served_by == ["openrouter"] * 5  # two failovers, then the open primary is skipped
    assert after == ["openai"] * 3  # the probe after the cooldown succeeds, and traffic returns
    assert len(upstreams[OPENAI].requests) == 2 + 3  # nothing reached it while it was open


def test_health_checks_bring_a_recovered_primary_back_with_one_probe_per_interval(upstreams) -> None:
    clock = Monotonic()
    aliases = {
        "ha": [
            {"provider": "openai", "model": "gpt-4o-mini"},
            {"provider": "openrouter", "model": "openai/gpt-4o-mini"},
        ]
    }
    checks = breaker_settings(max_retries=1, health_check_interval_seconds=0.05)
    primary = upstreams[OPENAI]
    with service_with(upstreams, clock, aliases=aliases, dispatcher=checks) as service:
        ask = lambda: httpx.post(  # noqa: E731
            f"{service.url}/v1/chat/completions", json={"model": "ha", "messages": QUESTION}, timeout=10
        )
        state = lambda: deployment_health(service, "openai/gpt-4o-mini")["breaker"]["state"]  # noqa: E731
        primary.inject(Fault(status=503, times=1000))  # down until the test clears it
        served_while_down = [ask().headers["x-llm-provider"] for _ in range(4)]
        assert state() == "open" and len(primary.requests) == 2

        clock.now += 1  # one interval on: one check, which finds it still down
        assert wait_until(lambda: len(primary.requests) == 3)
        assert state() == "open"
        served_while_down += [ask().headers["x-llm-provider"] for _ in range(2)]

        primary.reset()  # recovered
        clock.now += 1  # the next check finds it answering: half-open, long before the 30 s cooldown
        assert wait_until(lambda: state() == "half_open")
        clock.now += 1  # no caller came: the check is the probe that closes it
        assert wait_until(lambda: state() == "closed")
        back = [ask().headers["x-llm-provider"] for _ in range(3)]
        text = httpx.get(f"{service.url}/metrics").text

    assert served_while_down == ["openrouter"] * 6
    assert back == ["openai"] * 3
    assert [r.json["max_tokens"] for r in primary.requests[:2]] == [1, 1]  # the two checks after recovery
    assert len(primary.requests) == 2 + 3
    label = "openai/gpt-4o-mini"
    assert metric(text, "llm_gateway_health_checks_total", deployment=label, outcome="failed") == 1
    assert metric(text, "llm_gateway_health_checks_total", deployment=label, outcome="ok") == 2


def test_an_upstream_429_pauses_the_deployment_for_its_retry_after(upstreams) -> None:
    clock = Monotonic()
    aliases = {"solo": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    with service_with(upstreams, clock, aliases=aliases, dispatcher={"max_retries": 0}) as service:
        ask = lambda: httpx.post(  # noqa: E731
            f"{service.url}/v1/chat/completions", json={"model": "solo", "messages": QUESTION}, timeout=10
        )
        upstreams[OPENAI].inject(Fault(status=429, headers={"retry-after": "45"}))
        first = ask()
        paused = ask()
        clock.now += 46
        resumed = ask()

    assert first.status_code == 429
    assert paused.status_code == 429
    assert 44 <= int(paused.headers["retry-after"]) <= 45  # what is left of the pause
    assert resumed.status_code == 200
    assert len(upstreams[OPENAI].requests) == 2  # nothing was sent while paused


def test_a_silent_upstream_is_cut_at_its_timeout_and_the_request_fails_over(upstreams) -> None:
    aliases = {"ha": [{"provider": "openai", "model": "gpt-4o-mini"}, {"provider": "openrouter", "model": "x/y"}]}
    with service_with(upstreams, aliases=aliases, openai={"timeout_read": 0.3}) as service:
        upstreams[OPENAI].inject(Fault(delay_before_headers=5.0))  # accepts, never answers in time
        started = time.monotonic()
        response = httpx.post(
            f"{service.url}/v1/chat/completions", json={"model": "ha", "messages": QUESTION}, timeout=10
        )
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.headers["x-llm-provider"] == "openrouter"
    assert elapsed < 3.0  # cut at the read timeout, not held for the upstream's 5 s


def test_streams_whose_clients_leave_at_random_points_leave_nothing_behind(upstreams) -> None:
    import random

    rng = random.Random(7)
    aliases = {"s": [{"provider": "openai", "model": "gpt-4o-mini", "max_concurrency": 64}]}
    fake = upstreams[OPENAI]
    with service_with(upstreams, aliases=aliases, dispatcher={"max_queue_size": 1000}) as service:
        fake.inject(Fault(delay_per_chunk=0.01, times=500))

        async def one(http: httpx.AsyncClient, stop_after: int) -> None:
            body = {"model": "s", "messages": QUESTION, "stream": True}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                seen = 0
                async for _ in response.aiter_lines():
                    seen += 1
                    if seen >= stop_after:
                        break  # leaving the block closes the connection mid-stream

        async def run_all() -> None:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as http:
                await asyncio.gather(*(one(http, rng.randint(1, 14)) for _ in range(500)))

        asyncio.run(run_all())
        assert wait_until(lambda: fake.active_streams == 0, timeout=10)
        # Slots are freed as each response finishes closing, which may trail the client by a moment.
        assert wait_until(lambda: metric(httpx.get(f"{service.url}/metrics").text, "llm_gateway_in_flight") == 0)
        text = httpx.get(f"{service.url}/metrics").text

    assert metric(text, "llm_gateway_in_flight") == 0
    assert metric(text, "llm_gateway_queue_depth") == 0
    assert len(fake.requests) == 500


def test_a_retry_after_a_429_waits_at_least_its_retry_after(upstreams) -> None:
    waits: list[float] = []
    clock = Monotonic()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    aliases = {"solo": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    dispatcher = {"max_retries": 1, "retry_backoff_base": 0.5, "retry_max_retry_after": 10, "queue_timeout_seconds": 5}
    with service_with(upstreams, clock, sleep=sleep, aliases=aliases, dispatcher=dispatcher) as service:
        upstreams[OPENAI].inject(Fault(status=429, headers={"retry-after": "3"}))
        response = httpx.post(
            f"{service.url}/v1/chat/completions", json={"model": "solo", "messages": QUESTION}, timeout=20
        )

    assert response.status_code == 200, response.text
    assert 3.0 in waits  # the retry waited the upstream's Retry-After, not the shorter backoff
    assert len(upstreams[OPENAI].requests) == 2


def test_a_primary_with_spent_quota_fails_over_and_is_not_retried(upstreams) -> None:
    aliases = {"ha": [{"provider": "openai", "model": "gpt-4o-mini"}, {"provider": "openrouter", "model": "x/y"}]}
    quota = (
        b'{"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",'
        b' "code": "insufficient_quota"}}'
    )
    with service_with(upstreams, aliases=aliases) as service:
        upstreams[OPENAI].inject(Fault(status=429, body=quota, times=3))
        response = httpx.post(
            f"{service.url}/v1/chat/completions", json={"model": "ha", "messages": QUESTION}, timeout=20
        )

    assert response.status_code == 200
    assert response.headers["x-llm-provider"] == "openrouter"
    assert len(upstreams[OPENAI].requests) == 1


def test_a_model_name_outside_latin1_is_served_and_leaves_no_slot_behind(start_service) -> None:
    service = start_service()
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post(
            "/v1/chat/completions", json={"model": "remote/llama-中文", "messages": QUESTION, "stream": True}
        )
        text = http.get("/metrics").text

    assert response.status_code == 200
    assert response.headers["x-llm-model"] == "llama-%E4%B8%AD%E6%96%87"
    assert metric(text, "llm_gateway_in_flight") == 0


def test_without_replay_a_stream_that_stalls_mid_answer_ends_with_one_error_event_at_the_idle_timeout(
    upstreams,
) -> None:
    aliases = {"solo": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    dispatcher = {"stream_idle_timeout_seconds": 0.3}
    no_replay = {"enable_stream_replay": False}
    with service_with(upstreams, aliases=aliases, dispatcher=dispatcher, streaming=no_replay) as service:
        upstreams[OPENAI].inject(Fault(delay_per_chunk=3.0))  # the first chunk... then silence
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{service.url}/v1/chat/completions",
            json={"model": "solo", "messages": QUESTION, "stream": True},
            timeout=10,
        ) as response:
            status = response.status_code
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        elapsed = time.monotonic() - started

    assert status == 200
    assert events[-1] == "data: [DONE]"
    errors = [e for e in events if '"error"' in e]
    assert len(errors) == 1
    assert "upstream_timeout" in errors[0]
    assert elapsed < 5.0  # the first chunk after 3 s, then cut 0.3 s into the silence after it


def test_a_stream_with_no_first_chunk_in_time_fails_over(upstreams) -> None:
    aliases = {"ha": [{"provider": "openai", "model": "gpt-4o-mini"}, {"provider": "openrouter", "model": "x/y"}]}
    dispatcher = {"first_chunk_timeout_seconds": 0.3}
    with service_with(upstreams, aliases=aliases, dispatcher=dispatcher) as service:
        upstreams[OPENAI].inject(Fault(delay_per_chunk=5.0))
        with httpx.stream(
            "POST",
            f"{service.url}/v1/chat/completions",
            json={"model": "ha", "messages": QUESTION, "stream": True},
            timeout=10,
        ) as response:
            provider = response.headers["x-llm-provider"]
            text = "".join(response.iter_lines())

    assert provider == "openrouter"
    assert "[DONE]" in text and '"error"' not in text


def test_a_request_past_its_budget_is_a_504_even_while_queued(upstreams) -> None:
    aliases = {"tight": [{"provider": "openai", "model": "gpt-4o-mini", "max_concurrency": 1}]}
    dispatcher = {"request_timeout_seconds": 0.5, "queue_timeout_seconds": 30}
    with service_with(upstreams, aliases=aliases, dispatcher=dispatcher) as service:
        upstreams[OPENAI].inject(Fault(delay_before_headers=2.0, times=2))
        responses = asyncio.run(burst(service.url, 2))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [504, 504]  # the one holding the slot and the one queued behind it
    assert all(r.json()["error"]["code"] == "request_timeout" for r in responses)


def test_a_provider_can_have_its_own_breaker_settings(upstreams) -> None:
    aliases = {
        "a": [{"provider": "openai", "model": "gpt-4o-mini"}],
        "b": [{"provider": "openrouter", "model": "x/y"}],
    }
    dispatcher = {"max_retries": 0, "breaker_min_calls": 10, "breaker_by_provider": {"openai": {"min_calls": 1}}}
    with service_with(upstreams, aliases=aliases, dispatcher=dispatcher) as service:
        upstreams[OPENAI].inject(Fault(status=500))
        upstreams[OPENROUTER].inject(Fault(status=500))
        for alias in ("a", "b"):
            httpx.post(f"{service.url}/v1/chat/completions", json={"model": alias, "messages": QUESTION}, timeout=10)
        openai_state = deployment_health(service, "openai/gpt-4o-mini")["breaker"]["state"]
        openrouter_state = deployment_health(service, "openrouter/x/y")["breaker"]["state"]

    assert (openai_state, openrouter_state) == ("open", "closed")
