"""With no provider keys, the service answers from the built-in fixtures, as the README promises."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import ServiceThread
from llm_service.core.config.settings import Settings
from sse_client import fixture_text, read_events, streamed_text

NO_PROVIDERS: dict[str, Any] = {
    "openai": {"api_key": None},
    "openrouter": {"api_key": None},
    "azure_openai": {"base_url": None},
    "vertex_ai": {"project": None},
    "remote": {"base_url": None},
}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def demo_service():
    settings = Settings(demo_mode="auto", **NO_PROVIDERS)
    assert settings.demo_enabled()
    with ServiceThread(settings) as running:
        yield running


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o-mini",
        "fast",
        "claude-sonnet",
        "local",
        "azure_openai/gpt-4o-mini",
        "vertex_ai/gemini-2.5-flash",
        "gemini-flash",
        "azure-gpt-4o-mini",
    ],
)
def test_demo_answers_plain_and_streamed(demo_service, model: str) -> None:
    with httpx.Client(base_url=demo_service.url, timeout=20) as http:
        plain = http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION})
        with http.stream(
            "POST", "/v1/chat/completions", json={"model": model, "messages": QUESTION, "stream": True}
        ) as r:
            events = read_events(r)

    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"]
    assert events[-1] == "[DONE]"
    assert streamed_text(events[:-1]) == plain.json()["choices"][0]["message"]["content"]


def test_demo_answers_tool_calls(demo_service) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with httpx.Client(base_url=demo_service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "fast", "messages": QUESTION, "tools": [tool]})
        health = http.get("/health").json()

    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert health["demo"] is True


def test_cli_serve_starts_in_demo_mode_and_says_so(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "OPENROUTER_", "REMOTE_LLM_", "LLM_", "AZURE_", "VERTEX_", "GENAI_PLATFORM_"))
    }
    log_file = tmp_path / "service.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.1)
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "openai/gpt-4o-mini", "messages": QUESTION},
            timeout=10,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    assert health["demo"] is True
    assert answer.json()["choices"][0]["message"]["content"] == fixture_text("openai", "text")
    assert "DEMO MODE" in log_file.read_text()
