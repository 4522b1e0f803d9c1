"""`llm-service serve --workers N`, as an operator runs it: N worker processes serve the one port, each
a replica of its own, so that limits kept in each add up to the configured ones (no Redis here: each
admits its share); SIGTERM drains and stops every worker and the service ends as one process does; a worker that dies is
started again. Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import KEYS, QUESTION
from harness import wait_until
from llm_service.core.config.constants import ProviderID
from service_process import ServiceProcess

OPENAI = ProviderID.OPENAI
WORKERS = 2
RPM = 10
ALIAS = "limited"


@pytest.fixture
def workers(tmp_path: Path, upstreams: dict[ProviderID, Any]) -> Iterator[ServiceProcess]:
    """The service with two workers, its one alias limited to `RPM` requests a minute."""
    profile = {"aliases": {ALIAS: [{"provider": "openai", "model": "gpt-4o-mini", "rpm": RPM}]}}
    env = {
        "OPENAI_API_KEY": KEYS[OPENAI],
        "OPENAI_BASE_URL": upstreams[OPENAI].url,
        "LLM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
        "LLM_QUEUE_TIMEOUT_SECONDS": "0.2",
        "LLM_DRAIN_SECONDS": "2",
    }
    service = ServiceProcess(tmp_path, profile, env, workers=WORKERS).start()
    try:
        yield service
    finally:
        service.stop()


def _burst(url: str, count: int) -> list[int]:
    async def everyone() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            body = {"model": ALIAS, "messages": QUESTION}
            responses = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(count)))
        return [r.status_code for r in responses]

    return asyncio.run(everyone())


def _exited(service: ServiceProcess) -> bool:
    process = service._process
    return process is None or process.poll() is not None


def test_workers_serve_one_port_and_together_stay_within_a_limit(workers: ServiceProcess) -> None:
    assert wait_until(lambda: _serving(workers) == WORKERS, timeout=20)
    statuses = _burst(workers.url, 4 * RPM)

    assert set(statuses) <= {200, 429}, statuses
    # Each worker admits its share (RPM / 2); which worker gets a connection is the kernel's choice, so
    # together they admit at most RPM, and at least what one worker's share allows.
    assert RPM // WORKERS <= statuses.count(200) <= RPM, statuses
    assert any("several workers without REDIS_URL" in line for line in workers.log_lines())


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_drains_every_worker_and_the_service_ends_as_one_process_does(
    workers: ServiceProcess, stop: signal.Signals
) -> None:
    assert wait_until(lambda: _serving(workers) == WORKERS, timeout=20)
    children = workers.children()
    assert httpx.get(f"{workers.url}/health/live", timeout=5).status_code == 200

    os.kill(workers.pid, stop)

    assert wait_until(lambda: _exited(workers), timeout=20)
    # As one process does: shut down cleanly, then ended by the signal it was sent (uvicorn raises it again).
    assert workers._process is not None and workers._process.returncode == -stop
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    records = workers.log_records()
    assert sum(1 for r in records if r.get("event") == "drained") == WORKERS
    assert not [r for r in records if "raw" in r and "Traceback" in r["raw"]]


def test_a_worker_that_dies_once_it_served_is_started_again(workers: ServiceProcess) -> None:
    assert wait_until(lambda: _serving(workers) == WORKERS, timeout=20)
    first, second = workers.children()

    os.kill(first, signal.SIGKILL)

    assert wait_until(lambda: first not in workers.children() and len(workers.children()) == WORKERS, timeout=20)
    assert second in workers.children()
    assert wait_until(lambda: _serving(workers) == WORKERS + 1, timeout=20)  # the new one started too
    assert not _exited(workers)
    assert set(_burst(workers.url, 4)) <= {200, 429}
    ended = [r for r in workers.log_records() if r.get("event") == "worker ended"]
    assert [(r["pid"], r["served"]) for r in ended] == [(first, True)]


def _serving(service: ServiceProcess) -> int:
    """How many workers have started so far (each logs `started` once its lifespan is up)."""
    return sum(1 for record in service.log_records() if record.get("event") == "started")
