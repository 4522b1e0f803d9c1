"""`llm-service serve --workers N`, as an operator runs it: N worker processes serve the one port, each
a replica of its own, so that limits kept in each add up to the configured ones (no Redis here: each
admits its share); SIGTERM or SIGINT drains and stops every worker and the service ends as one process
does, also when every process gets the SIGTERM (systemd); a worker that dies is started again; workers
whose `serve` is killed drain and end. Every wait is bounded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import KEYS, QUESTION, fake_settings
from harness import wait_until
from llm_service.cli import limits_below
from llm_service.core.config.constants import ProviderID
from llm_service.fakes import Fault
from service_process import ServiceProcess
from sse_client import fixture_text, streamed_text
from test_redis_replicas import post_many

OPENAI = ProviderID.OPENAI
WORKERS = 2
RPM = 10
ALIAS = "limited"


def two_workers(directory: Path, upstreams: dict[ProviderID, Any], drain_seconds: float) -> ServiceProcess:
    """The service with two workers, its one alias limited to `RPM` requests a minute."""
    profile = {"aliases": {ALIAS: [{"provider": "openai", "model": "gpt-4o-mini", "rpm": RPM}]}}
    env = {
        "OPENAI_API_KEY": KEYS[OPENAI],
        "OPENAI_BASE_URL": upstreams[OPENAI].url,
        "LLM_HEALTH_CHECK_INTERVAL_SECONDS": "0",
        "LLM_QUEUE_TIMEOUT_SECONDS": "0.2",
        "LLM_DRAIN_SECONDS": str(drain_seconds),
    }
    return ServiceProcess(directory, profile, env, workers=WORKERS)


@pytest.fixture
def workers(tmp_path: Path, upstreams: dict[ProviderID, Any]) -> Iterator[ServiceProcess]:
    service = two_workers(tmp_path, upstreams, drain_seconds=2).start()
    try:
        yield service
    finally:
        _stop_all(service)


def _stop_all(service: ServiceProcess) -> None:
    """Stop `serve`, and any worker of it left (a failed test must leave no process behind)."""
    left = service.children() if not service.exited() else []
    service.stop()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _burst(url: str, count: int) -> list[int]:
    return [response.status_code for response in asyncio.run(post_many(url, ALIAS, count))]


def test_workers_serve_one_port_and_together_stay_within_a_limit(workers: ServiceProcess) -> None:
    assert wait_until(lambda: _serving(workers) == WORKERS, timeout=20)
    statuses = _burst(workers.url, 4 * RPM)

    assert set(statuses) <= {200, 429}, statuses
    # Each worker admits its share (RPM / 2); which worker gets a connection is the kernel's choice, so
    # together they admit at most RPM, and at least what one worker's share allows.
    assert RPM // WORKERS <= statuses.count(200) <= RPM, statuses
    warned = [r for r in workers.log_records() if "several workers without REDIS_URL" in r.get("event", "")]
    assert [r["pid"] for r in warned] == [workers.pid]  # the parent names itself too
    started = [r for r in workers.log_records() if r.get("event") == "started"]
    assert [r["replicas"] for r in started] == [WORKERS, WORKERS]  # each admits its share: RPM / 2
    assert sorted(r["pid"] for r in started) == sorted(workers.children())

    # Every line a worker writes says which worker wrote it: the access log's too.
    def requests() -> list[dict[str, Any]]:
        return [r for r in workers.log_records() if r.get("event") == "request"]

    assert wait_until(lambda: len(requests()) >= 4 * RPM, timeout=10)  # lines go out just after answers
    assert {r.get("pid") for r in requests()} <= set(workers.children())


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_drains_every_worker_and_the_service_ends_as_one_process_does(
    workers: ServiceProcess, stop: signal.Signals
) -> None:
    assert wait_until(lambda: _serving(workers) == WORKERS, timeout=20)
    children = workers.children()
    assert httpx.get(f"{workers.url}/health/live", timeout=5).status_code == 200

    os.kill(workers.pid, stop)

    assert wait_until(workers.exited, timeout=20)
    # As one process does: shut down cleanly, then ended by the signal it was sent (uvicorn raises it again).
    assert workers.returncode == -stop
    assert not any(_alive(pid) for pid in children)
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
    assert not workers.exited()
    assert set(_burst(workers.url, 4)) <= {200, 429}
    ended = [r for r in workers.log_records() if r.get("event") == "worker ended"]
    assert [(r["worker_pid"], r["served"], r["pid"]) for r in ended] == [(first, True, workers.pid)]


def _serving(service: ServiceProcess) -> int:
    """How many workers have started so far (each logs `started` once its lifespan is up)."""
    return _events(service, "started")


def _events(service: ServiceProcess, event: str) -> int:
    return sum(1 for record in service.log_records() if record.get("event") == event)


def test_workers_whose_serve_is_killed_drain_and_end(workers: ServiceProcess) -> None:
    assert wait_until(lambda: _serving(workers) == WORKERS, timeout=20)
    children = workers.children()

    os.kill(workers.pid, signal.SIGKILL)

    assert wait_until(lambda: not any(_alive(pid) for pid in children), timeout=20)
    gone = [r for r in workers.log_records() if r.get("event") == "the parent process is gone: draining"]
    assert len(gone) == WORKERS


def test_a_sigterm_to_every_process_at_once_is_one_drain_that_lets_a_long_stream_finish(
    tmp_path: Path, upstreams: dict[ProviderID, Any]
) -> None:
    """As systemd stops a unit (SIGTERM to each of its processes, and `serve` passes it on): each worker
    drains once. Taken as a second signal, the forwarded one would end the drain and cut the stream after
    uvicorn's last grace (5 s); the stream here lasts longer than that, within the drain deadline."""
    fake = upstreams[OPENAI]
    service = two_workers(tmp_path, upstreams, drain_seconds=15).start()
    try:
        assert wait_until(lambda: _serving(service) == WORKERS, timeout=20)
        fake.inject(Fault(delay_per_chunk=0.8))  # 9 events: about 7 s
        first_event = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            streamed = pool.submit(_stream, service.url, first_event)
            assert first_event.wait(timeout=20)
            # The workers' own first, then `serve`'s, passed on: two deliveries (a second SIGTERM pending
            # before the first is handled would merge with it, and prove nothing).
            for pid in service.children():
                os.kill(pid, signal.SIGTERM)
            assert wait_until(lambda: _events(service, "draining") == WORKERS, timeout=10)
            os.kill(service.pid, signal.SIGTERM)
            events = streamed.result(timeout=30)
        assert wait_until(service.exited, timeout=30)
        assert service.returncode == -signal.SIGTERM
    finally:
        _stop_all(service)

    assert events[-1] == "[DONE]"
    assert streamed_text(events) == fixture_text("openai", "text")


def _stream(url: str, first_event: threading.Event) -> list[Any]:
    events: list[Any] = []
    body = {"model": ALIAS, "messages": QUESTION, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                first_event.set()
    return events


def test_limits_smaller_than_the_replicas_are_named(upstreams: dict[ProviderID, Any]) -> None:
    """`serve --workers` warns of them: each process's share of such a limit is still 1."""
    deployment = {"provider": "openai", "model": "gpt-4o-mini"}
    aliases = {"small": [{**deployment, "rpm": 3, "max_concurrency": 8}], "big": [{**deployment, "rpm": 600}]}
    settings = fake_settings(upstreams, aliases=aliases)

    assert limits_below(settings, 4) == ["small: openai/gpt-4o-mini rpm=3"]
    assert limits_below(settings, 10) == [
        "small: openai/gpt-4o-mini rpm=3",
        "small: openai/gpt-4o-mini max_concurrency=8",
    ]
    assert limits_below(settings, 2) == []


def _alive(pid: int) -> bool:
    """Running (a process that ended but was not reaped yet, a zombie, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
