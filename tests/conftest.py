"""Shared fixtures: fake upstreams, the service under test, and the two test modes.

`--mock-providers` (on in CI) points every provider at the fixture-backed fakes. Without it, tests
marked `integration` run against the real provider APIs when their credentials are set and are
skipped otherwise; tests that need fault injection always use the fakes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from harness import ServiceThread
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Settings
from llm_service.core.llm.models import LLMRequest
from llm_service.fakes import FakeUpstream, FakeUpstreamThread, FakeVertex
from llm_service.fakes.threaded import ChatFake
from redis_server import RedisServer
from wire_check import assert_chunk_wire_matches, assert_request_wire_matches, assert_response_wire_matches

KEYS = {
    ProviderID.OPENAI: "sk-test-openai-0123456789abcdef",
    ProviderID.OPENROUTER: "sk-or-v1-test-0123456789abcdef",
    ProviderID.AZURE_OPENAI: "azure-test-key-0123456789abcdef",
    ProviderID.VERTEX_AI: "ya29.vertex-test-token-0123456789",
    ProviderID.REMOTE: "remote-test-key-0123456789",
}
#: The fixture flavour each provider's fake replays (tests/fixtures/<flavour>).
FLAVORS = {
    ProviderID.OPENAI: "openai",
    ProviderID.OPENROUTER: "openrouter",
    ProviderID.AZURE_OPENAI: "azure_openai",
    ProviderID.VERTEX_AI: "vertex_ai",
    ProviderID.REMOTE: "openai",
}
MODELS = {
    ProviderID.OPENAI: "openai/gpt-4o-mini",
    ProviderID.OPENROUTER: "openrouter/anthropic/claude-3.5-sonnet",
    ProviderID.AZURE_OPENAI: "azure_openai/gpt-4o-mini",
    ProviderID.VERTEX_AI: "vertex_ai/gemini-2.5-flash",
    ProviderID.REMOTE: "remote/llama-3.1-8b",
}
VERTEX_PROJECT, VERTEX_LOCATION = "demo-proj", "us-central1"
#: Providers that speak OpenAI's wire format upstream (the request body is OpenAI's, not translated).
OPENAI_WIRE = [ProviderID.OPENAI, ProviderID.OPENROUTER, ProviderID.AZURE_OPENAI, ProviderID.REMOTE]
OPENAI_FAMILY = [ProviderID.OPENAI, ProviderID.OPENROUTER, ProviderID.REMOTE]
ALL_PROVIDERS = list(ProviderID)
# What a live run uses, and the credential that enables it.
LIVE_ENV = {
    ProviderID.OPENAI: "OPENAI_API_KEY",
    ProviderID.OPENROUTER: "OPENROUTER_API_KEY",
    ProviderID.AZURE_OPENAI: "AZURE_OPENAI_ENDPOINT",
    ProviderID.VERTEX_AI: "VERTEX_PROJECT",
    ProviderID.REMOTE: "REMOTE_LLM_BASE_URL",
}
LIVE_MODELS = {
    ProviderID.OPENAI: os.environ.get("LIVE_OPENAI_MODEL", "openai/gpt-4o-mini"),
    ProviderID.OPENROUTER: os.environ.get("LIVE_OPENROUTER_MODEL", "openrouter/openai/gpt-4o-mini"),
    ProviderID.AZURE_OPENAI: os.environ.get("LIVE_AZURE_OPENAI_MODEL", "azure_openai/gpt-4o-mini"),
    ProviderID.VERTEX_AI: os.environ.get("LIVE_VERTEX_AI_MODEL", "vertex_ai/gemini-2.5-flash"),
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
        params = callspec.params if callspec else {}
        provider = params.get("provider", params.get("openai_wire_provider"))
        if isinstance(provider, ProviderID):
            item.add_marker(getattr(pytest.mark, f"provider_{provider.value}"))


@pytest.fixture(scope="session")
def mock_providers(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--mock-providers"))


@pytest.fixture(params=ALL_PROVIDERS, ids=lambda p: p.value)
def provider(request: pytest.FixtureRequest) -> ProviderID:
    """The test runs once per provider."""
    return request.param


@pytest.fixture
def fake(provider: ProviderID, upstreams: dict[ProviderID, ChatFake]) -> Any:
    """The fake upstream behind `provider`."""
    return upstreams[provider]


@pytest.fixture(params=OPENAI_WIRE, ids=lambda p: p.value)
def openai_wire_provider(request: pytest.FixtureRequest, upstreams: dict[ProviderID, Any]) -> tuple[ProviderID, Any]:
    """(provider, its fake) for each provider whose upstream speaks OpenAI's wire format."""
    return request.param, upstreams[request.param]


def make_fake(provider: ProviderID, **options: Any) -> Any:
    """A fake upstream speaking `provider`'s protocol and accepting its test credential."""
    if provider is ProviderID.VERTEX_AI:
        return FakeVertex(access_token=KEYS[provider], project=VERTEX_PROJECT, location=VERTEX_LOCATION, **options)
    return FakeUpstream(FLAVORS[provider], api_key=KEYS[provider], **options)  # type: ignore[arg-type]


def provider_group(provider: ProviderID, fake: Any) -> dict[str, Any]:
    """The settings group that points `provider` at `fake`."""
    group: dict[str, Any] = {"api_key": KEYS[provider], "base_url": fake.url}
    if provider is ProviderID.VERTEX_AI:
        group |= {"project": VERTEX_PROJECT, "location": VERTEX_LOCATION}
    return group


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[ProviderID, Any]]:
    fakes = {p: make_fake(p) for p in ALL_PROVIDERS}
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


@pytest.fixture(autouse=True)
def _wire_forms_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In every test, each chunk or response an OpenAI-compatible client keeps in its upstream's bytes
    (`LLMChunk.wire`, sent to the client as they are) is checked against encoding it, and each request it
    sends as the client wrote it (`LLMRequest.wire`) against writing its fields (`wire_check`). A mismatch
    raises inside the service, which may answer it with a 500 a test does not look at: each is also kept,
    and fails the test at its end."""
    from llm_service.core.llm import openai_compat, openai_format

    decode_chunk, decode_response = openai_format.decode_chat_chunk, openai_format.decode_chat_response
    encode_request = openai_format.encode_chat_request
    mismatches: list[AssertionError] = []

    def kept(check: Callable[[], None]) -> None:
        try:
            check()
        except AssertionError as mismatch:
            mismatches.append(mismatch)
            raise

    def request_checked(request: LLMRequest, *, always_include_usage: bool) -> dict[str, Any]:
        body = encode_request(request, always_include_usage=always_include_usage)
        if request.wire is not None:
            kept(lambda: assert_request_wire_matches(request, body, always_include_usage=always_include_usage))
        return body

    def chunk_checked(*args: Any, **kwargs: Any) -> Any:
        chunk = decode_chunk(*args, **kwargs)
        if chunk.wire is not None:
            kept(lambda: assert_chunk_wire_matches(chunk, include_usage=kwargs.get("include_usage", False)))
        return chunk

    def response_checked(*args: Any, **kwargs: Any) -> Any:
        response = decode_response(*args, **kwargs)
        if response.wire is not None:
            kept(lambda: assert_response_wire_matches(response))
        return response

    monkeypatch.setattr(openai_compat, "encode_chat_request", request_checked)
    monkeypatch.setattr(openai_compat, "decode_chat_chunk", chunk_checked)
    monkeypatch.setattr(openai_compat, "decode_chat_response", response_checked)
    yield
    assert not mismatches, f"wire forms that do not say what encoding says: {mismatches}"


def fake_settings(upstreams: dict[ProviderID, Any], **overrides: Any) -> Settings:
    """Settings whose providers all point at the fakes; fast retries; demo off."""
    groups: dict[str, Any] = {p.value: provider_group(p, upstreams[p]) for p in ALL_PROVIDERS}
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
    """The guard against accidental real-network calls in mock mode: every URL the service may call."""
    platform, azure = settings.genai_platform, settings.azure_openai
    urls = [group.base_url for p in ALL_PROVIDERS if (group := settings.provider_settings(p))]
    urls += [platform.base_url, platform.token_url, settings.telemetry.traces_url()]
    if not azure.uses_api_key() and azure.is_configured() and not platform.fronts(ProviderID.AZURE_OPENAI):
        urls.append(azure.authority_host or "https://login.microsoftonline.com")
    for url in urls:
        host = urlsplit(url or "").hostname
        if host is not None:
            assert ip_address(host).is_loopback, f"a test would call outside loopback: {url}"


@pytest.fixture
def service(upstreams: dict[ProviderID, Any]) -> Iterator[ServiceThread]:
    """A fresh service per test: what the dispatcher learns (breakers, 429 pauses) stays with its test."""
    with ServiceThread(fake_settings(upstreams)) as running:
        yield running


@pytest.fixture
def client(service: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=20) as http:
        yield http


@pytest.fixture
def start_service(upstreams: dict[ProviderID, Any]) -> Iterator[Callable[..., ServiceThread]]:
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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
