"""Test harness: the real service on a loopback port in a background thread.

Tests talk to it over HTTP exactly as clients do; the fake upstreams run in their own threads.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from llm_service.core.config.settings import Settings
from llm_service.main import create_app


class ServiceThread:
    """Runs `create_app(settings)` under uvicorn in a thread; `url` is its base URL."""

    def __init__(self, settings: Settings | None = None, app: FastAPI | None = None) -> None:
        self.app = app if app is not None else create_app(settings)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 15.0) -> ServiceThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout`; for observing another thread, never for pacing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class ManualClock:
    """Wall-clock seconds that a test moves forward (`clock.now += 3600`), for `create_app(clock=...)`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def burst(url: str, body: dict[str, Any], count: int) -> list[int]:
    """POST `body` to the chat endpoint `count` times at once; the statuses, in order."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        responses = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(count)))
    return [r.status_code for r in responses]


def run_cli(*args: str, env: dict[str, str], cwd: Any) -> subprocess.CompletedProcess[str]:
    """`python -m llm_service <args>` in a child process, as an operator runs it; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "llm_service", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def stop_process(process: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
