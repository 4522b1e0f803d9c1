"""Several replicas of the service act as one on a real redis-server: together they admit no more than a
deployment's RPM and answer the rest 429 with Retry-After, a breaker one opens is honoured by the other,
a Redis that goes away leaves each serving on its share of the limits (saying so on /health, /metrics
and in the log) until it is back, and the slots of a replica killed mid-request come back when their
leases expire. Instances run on their own loopback ports against the fake upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from conftest import KEYS, QUESTION, fake_settings
from harness import ServiceThread, wait_until
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.fakes import Fault
from redis_server import RedisServer, free_port
from test_failover import metric

OPENAI, OPENROUTER = ProviderID.OPENAI, ProviderID.OPENROUTER
LABEL = "openai/gpt-4o-mini"


def replica_settings(
    upstreams: dict[ProviderID, Any], server: RedisServer, aliases: dict[str, Any], **dispatcher: Any
) -> Settings:
    # A generous timeout per Redis call: on a loaded machine a burst's round trip may pass the default 0.5 s,
    # and a replica that takes it for an outage admits its own share on top (by design, tested below with
    # Redis really stopped: refused connections are seen at once, whatever the timeout).
    scale_out = {
        "redis_url": server.url,
        "replicas": 2,
        "redis_retry_seconds": 0.1,
        "slot_lease_seconds": 1.0,
        "redis_timeout_seconds": 5.0,
    }
    dispatcher = {"health_check_interval_seconds": 0, **dispatcher}
    return fake_settings(upstreams, aliases=aliases, scale_out=scale_out, dispatcher=dispatcher)


async def post_many(url: str, model: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"model": model, "messages": QUESTION}
        return list(await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(count))))


def burst_on(model: str, counts: dict[str, int]) -> dict[str, list[httpx.Response]]:
    """`counts[url]` requests to each instance, all at once; the responses by instance."""

    async def everyone() -> list[list[httpx.Response]]:
        return list(await asyncio.gather(*(post_many(url, model, n) for url, n in counts.items())))

    return dict(zip(counts, asyncio.run(everyone()), strict=True))


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=5).json()


RPM_30 = {"limited": [{"provider": "openai", "model": "gpt-4o-mini", "rpm": 30}]}


def test_a_burst_split_across_two_replicas_admits_no_more_than_the_rpm(upstreams, redis_server) -> None:
    settings = replica_settings(upstreams, redis_server, RPM_30)
    with ServiceThread(settings) as a, ServiceThread(settings) as b:
        answered = burst_on("limited", {a.url: 50, b.url: 50})
        assert health(a.url)["state"] == {
            "backend": "redis",
            "shared": True,
            "degraded": False,
            "reason": None,
            "replicas": 2,
            "for_seconds": pytest.approx(health(a.url)["state"]["for_seconds"], abs=1),
            "leases_held": 0,
        }

    every = answered[a.url] + answered[b.url]
    assert statuses(every) == {200: 30, 429: 70}
    refused = [r for r in every if r.status_code == 429]
    assert all(30 <= int(r.headers["retry-after"]) <= 60 for r in refused)  # when the window frees room
    assert len(upstreams[OPENAI].requests) == 30


def test_a_breaker_opened_by_failures_on_one_replica_is_honoured_by_the_other(upstreams, redis_server) -> None:
    aliases = {
        "ha": [
            {"provider": "openai", "model": "gpt-4o-mini"},
            {"provider": "openrouter", "model": "openai/gpt-4o-mini"},
        ]
    }
    breaker = {"breaker_min_calls": 2, "breaker_failure_ratio": 0.5, "breaker_cooldown_seconds": 30, "max_retries": 1}
    settings = replica_settings(upstreams, redis_server, aliases, **breaker)
    with ServiceThread(settings) as a, ServiceThread(settings) as b:
        upstreams[OPENAI].inject(Fault(status=503, times=2))
        on_a = [asyncio.run(post_many(a.url, "ha", 1))[0].headers["x-llm-provider"] for _ in range(2)]
        assert on_a == ["openrouter", "openrouter"]  # each failed over; the second failure opened the breaker
        on_b = [r.headers["x-llm-provider"] for r in asyncio.run(post_many(b.url, "ha", 3))]
        b_health = health(b.url)["dispatcher"]["deployments"]
        b_metrics = httpx.get(f"{b.url}/metrics").text

    assert on_b == ["openrouter"] * 3
    assert len(upstreams[OPENAI].requests) == 2  # b never sent the open deployment anything
    assert next(d for d in b_health if d["deployment"] == LABEL)["breaker"]["state"] == "open"
    assert metric(b_metrics, "llm_gateway_breaker_transitions_total", deployment=LABEL, to="open") == 1


def test_without_redis_both_serve_on_their_share_and_shared_limits_return_with_it(
    upstreams, redis_server, caplog
) -> None:
    settings = replica_settings(upstreams, redis_server, RPM_30)
    with ServiceThread(settings) as a, ServiceThread(settings) as b:
        first = burst_on("limited", {a.url: 5, b.url: 5})
        assert all(statuses(responses) == {200: 5} for responses in first.values())

        redis_server.stop()
        outage = burst_on("limited", {a.url: 20, b.url: 20})
        # each replica has its share, 30 / 2 = 15 a minute, 5 of them already used
        assert all(statuses(responses) == {200: 10, 429: 10} for responses in outage.values())
        for url in (a.url, b.url):
            seen = health(url)
            assert seen["status"] == "degraded" and seen["state"]["degraded"] is True
            assert seen["state"]["reason"] == "unreachable"
            scraped = httpx.get(f"{url}/metrics").text
            assert metric(scraped, "llm_gateway_shared_state_degraded") == 1
            assert metric(scraped, "llm_gateway_shared_state_degraded_reason", reason="unreachable") == 1
            assert metric(scraped, "llm_gateway_shared_state_degraded_reason", reason="refused") == 0
            assert httpx.get(f"{url}/health/ready").status_code == 200  # still serving

        redis_server.start()  # empty: a Redis without persistence
        assert wait_until(lambda: all(health(url)["status"] == "ok" for url in (a.url, b.url)), timeout=10)
        back = burst_on("limited", {a.url: 50, b.url: 50})
        # local windows are full (15 each): only the shared limit admits anything now, and all of it
        assert statuses(back[a.url] + back[b.url]) == {200: 30, 429: 70}
        scraped = httpx.get(f"{a.url}/metrics").text
        assert metric(scraped, "llm_gateway_shared_state_degraded") == 0
        assert metric(scraped, "llm_gateway_shared_state_degraded_reason", reason="unreachable") == 0
        assert health(a.url)["state"]["reason"] is None

    warnings = [r for r in caplog.records if r.name == "llm_service.state" and r.levelname == "WARNING"]
    assert len(warnings) == 2  # once per replica, not once per request
    assert redis_server.url not in caplog.text
    assert len(upstreams[OPENAI].requests) == 10 + 20 + 30


def serve_in_a_process(
    tmp_path: Path, upstreams: dict[ProviderID, Any], server: RedisServer, aliases: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], str]:
    """The service as an operator runs it, in its own process (so that it can be killed outright)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "replica.yaml").write_text(yaml.safe_dump({"aliases": aliases}))
    ours = ("OPENAI_", "OPENROUTER_", "AZURE_", "VERTEX_", "REMOTE_LLM_", "GENAI_", "LLM_", "REDIS_", "OTEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env |= {
        "OPENAI_API_KEY": KEYS[OPENAI],
        "OPENAI_BASE_URL": upstreams[OPENAI].url,
        "LLM_CONFIG_DIR": str(tmp_path / "config"),
        "LLM_CONFIG_PROFILE": "replica",
        "LLM_DEMO_MODE": "off",
        "LLM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
        "REDIS_URL": server.url,
        "LLM_REPLICAS": "2",
        "LLM_SLOT_LEASE_SECONDS": "1",
    }
    port = free_port()
    with (tmp_path / "replica.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        try:
            return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(live, timeout=30):
        process.kill()
        raise RuntimeError(f"the replica did not start: {(tmp_path / 'replica.log').read_text()}")
    return process, url


def ask_and_be_cut_off(url: str) -> None:
    """A request whose replica is killed before it answers."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{url}/v1/chat/completions", json={"model": "narrow", "messages": QUESTION}, timeout=30)


def test_the_slots_of_a_replica_killed_while_holding_them_come_back_when_their_leases_expire(
    tmp_path, upstreams, redis_server
) -> None:
    aliases = {"narrow": [{"provider": "openai", "model": "gpt-4o-mini", "max_concurrency": 2}]}
    doomed, doomed_url = serve_in_a_process(tmp_path, upstreams, redis_server, aliases)
    slots = redis.Redis.from_url(redis_server.url)
    try:
        upstreams[OPENAI].inject(Fault(delay_before_headers=5.0, times=2))
        hanging = [threading.Thread(target=ask_and_be_cut_off, args=(doomed_url,), daemon=True) for _ in range(2)]
        for thread in hanging:
            thread.start()
        assert wait_until(lambda: slots.zcard(f"llm:slots:{LABEL}") == 2, timeout=10)

        settings = replica_settings(upstreams, redis_server, aliases, queue_timeout_seconds=0.3)
        with ServiceThread(settings) as survivor:
            ask = lambda: httpx.post(  # noqa: E731
                f"{survivor.url}/v1/chat/completions", json={"model": "narrow", "messages": QUESTION}, timeout=10
            )
            assert ask().status_code == 429  # both slots held, and renewed, by the other replica
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
            assert wait_until(lambda: ask().status_code == 200, timeout=10)  # after the lease expired
            assert statuses(asyncio.run(post_many(survivor.url, "narrow", 2))) == {200: 2}  # both came back
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=10)
        slots.close()
