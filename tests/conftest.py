"""Shared fixtures: fake upstreams, the service under test, and the two test modes.

`--mock-providers` (on in CI) points every provider at the fixture-backed fakes. Without it, tests
marked `integration` run against the real provider APIs when their credentials are set and are
skipped otherwise; tests that need fault injection always use the fakes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from harness import ServiceThread
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.fakes import FakeUpstream, FakeUpstreamThread

KEYS = {
    ProviderID.OPENAI: "sk-test-openai-0123456789abcdef",
    ProviderID.OPENROUTER: "sk-or-v1-test-0123456789abcdef",
    ProviderID.REMOTE: "remote-test-key-0123456789",
}
FLAVORS = {ProviderID.OPENAI: "openai", ProviderID.OPENROUTER: "openrouter", ProviderID.REMOTE: "openai"}
MODELS = {
    ProviderID.OPENAI: "openai/gpt-4o-mini",
    ProviderID.OPENROUTER: "openrouter/anthropic/claude-3.5-sonnet",
    ProviderID.REMOTE: "remote/llama-3.1-8b",
}
OPENAI_FAMILY = list(FLAVORS)
# What a live run uses, and the credential that enables it.
LIVE_ENV = {
    ProviderID.OPENAI: "OPENAI_API_KEY",
    ProviderID.OPENROUTER: "OPENROUTER_API_KEY",
    ProviderID.REMOTE: "REMOTE_LLM_BASE_URL",
}
LIVE_MODELS = {
    ProviderID.OPENAI: os.environ.get("LIVE_OPENAI_MODEL", "openai/gpt-4o-mini"),
    ProviderID.OPENROUTER: os.environ.get("LIVE_OPENROUTER_MODEL", "openrouter/openai/gpt-4o-mini"),
    ProviderID.REMOTE: os.environ.get("LIVE_REMOTE_MODEL", "remote/default"),
}


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mock-providers",
        action="store_true",
        default=False,
        help="point every provider at the fixture-backed fake upstreams (CI mode)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A provider_<name> marker on every test parametrised over a provider, for `-m provider_openai`.
    for item in items:
        callspec = getattr(item, "callspec", None)
        provider = callspec.params.get("provider") if callspec else None
        if isinstance(provider, ProviderID):
            item.add_marker(getattr(pytest.mark, f"provider_{provider.value}"))


@pytest.fixture(scope="session")
def mock_providers(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--mock-providers"))


@pytest.fixture(params=OPENAI_FAMILY, ids=lambda p: p.value)
def provider(request: pytest.FixtureRequest) -> ProviderID:
    """The test runs once per OpenAI-family provider."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def fake(provider: ProviderID, upstreams: dict[ProviderID, FakeUpstream]) -> FakeUpstream:
    """The fake upstream behind `provider`."""
    return upstreams[provider]


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[ProviderID, FakeUpstream]]:
    fakes = {p: FakeUpstream(FLAVORS[p], api_key=KEYS[p]) for p in OPENAI_FAMILY}
    threads = [FakeUpstreamThread(f).start() for f in fakes.values()]
    yield fakes
    for thread in threads:
        thread.stop()


@pytest.fixture(autouse=True)
def _fresh_upstreams(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with empty request logs and no pending faults."""
    yield
    if "upstreams" in request.fixturenames:
        for fake in request.getfixturevalue("upstreams").values():
            fake.reset()


def fake_settings(upstreams: dict[ProviderID, FakeUpstream], **overrides: Any) -> Settings:
    """Settings whose providers all point at the fakes; fast retries; demo off."""
    groups: dict[str, Any] = {p.value: {"api_key": KEYS[p], "base_url": upstreams[p].url} for p in OPENAI_FAMILY}
    groups["dispatcher"] = {"retry_backoff_base": 0.0, "retry_backoff_max": 0.0}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(groups.get(key), dict):
            groups[key] = {**groups[key], **value}
        else:
            groups[key] = value
    settings = Settings(demo_mode="off", **groups)
    assert_loopback_only(settings)
    return settings


def assert_loopback_only(settings: Settings) -> None:
    """The guard against accidental real-network calls in mock mode."""
    for provider in OPENAI_FAMILY:
        group = settings.provider_settings(provider)
        host = urlsplit(group.base_url or "").hostname if group else None
        if host is not None:
            assert ip_address(host).is_loopback, f"{provider} points outside loopback: {group.base_url}"


@pytest.fixture(scope="session")
def service(upstreams: dict[ProviderID, FakeUpstream]) -> Iterator[ServiceThread]:
    with ServiceThread(fake_settings(upstreams)) as running:
        yield running


@pytest.fixture
def client(service: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=20) as http:
        yield http


@pytest.fixture
def start_service(upstreams: dict[ProviderID, FakeUpstream]) -> Iterator[Callable[..., ServiceThread]]:
    """Start a service with setting overrides (e.g. short timeouts); stopped after the test."""
    started: list[ServiceThread] = []

    def start(**overrides: Any) -> ServiceThread:
        running = ServiceThread(fake_settings(upstreams, **overrides)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def live_service(
    request: pytest.FixtureRequest, provider: ProviderID, mock_providers: bool
) -> Iterator[tuple[str, str]]:
    """(service URL, model) for an `integration` test over `provider` (a fixture the test module
    parametrises): the fakes with --mock-providers, else the real API when its credential is set."""
    if mock_providers:
        yield request.getfixturevalue("service").url, MODELS[provider]
        return
    if not os.environ.get(LIVE_ENV[provider]):
        pytest.skip(f"set {LIVE_ENV[provider]} (or pass --mock-providers) to run against {provider.value}")
    with ServiceThread(Settings(demo_mode="off")) as running:
        yield running.url, LIVE_MODELS[provider]
