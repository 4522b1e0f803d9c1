"""GenAI Platform mode: Azure OpenAI and Vertex AI requests go through the platform's URL, with its
token and attribution headers; a half-configured platform stops start-up naming what is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import MODELS, QUESTION, VERTEX_LOCATION, VERTEX_PROJECT
from harness import run_cli
from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.genai_platform import build_genai_headers, resolve_genai_endpoint
from llm_service.fakes import FakeUpstream, FakeUpstreamThread, FakeVertex, ServerThread
from llm_service.fakes.token_endpoints import FakeGoogleOAuth

PLATFORM_TOKEN = "genai-platform-token-0123456789"
PROJECT, DEFAULT_USER = "agents-team", "svc-agent"


def platform_fakes(token: str) -> dict[ProviderID, Any]:
    """The platform's Azure and Vertex fronts: each provider's real protocol under the platform prefix."""
    return {
        ProviderID.AZURE_OPENAI: FakeUpstream(
            "azure_openai", api_key="not-used", bearer_token=token, path_prefix="/azure-openai"
        ),
        ProviderID.VERTEX_AI: FakeVertex(
            access_token=token, project=VERTEX_PROJECT, location=VERTEX_LOCATION, path_prefix="/vertex-ai"
        ),
    }


@pytest.fixture
def platform() -> Iterator[dict[ProviderID, Any]]:
    fakes = platform_fakes(PLATFORM_TOKEN)
    threads = [FakeUpstreamThread(f).start() for f in fakes.values()]
    yield fakes
    for thread in threads:
        thread.stop()


def platform_settings(fake: Any, **auth: Any) -> dict[str, Any]:
    origin = f"http://127.0.0.1:{fake.port}"
    return {
        "enabled": True,
        "base_url": origin,
        "project_name": PROJECT,
        "user_id": DEFAULT_USER,
        **(auth or {"token": PLATFORM_TOKEN}),
    }


@pytest.mark.parametrize("provider", [ProviderID.AZURE_OPENAI, ProviderID.VERTEX_AI], ids=lambda p: p.value)
def test_requests_go_through_the_platform_with_its_token_and_headers(start_service, platform, provider) -> None:
    fake = platform[provider]
    service = start_service(genai_platform=platform_settings(fake), azure_openai={"api_key": "az-own-key"})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        plain = http.post("/v1/chat/completions", json={"model": MODELS[provider], "messages": QUESTION})
        as_alice = http.post(
            "/v1/chat/completions",
            json={"model": MODELS[provider], "messages": QUESTION, "user": "alice", "stream": True},
        )

    assert plain.status_code == 200, plain.text
    assert as_alice.status_code == 200, as_alice.text
    first, second = fake.requests
    expected_path = {
        ProviderID.AZURE_OPENAI: "/azure-openai/openai/deployments/gpt-4o-mini/chat/completions",
        ProviderID.VERTEX_AI: f"/vertex-ai/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
        "/publishers/google/models/gemini-2.5-flash:generateContent",
    }[provider]
    assert first.path == expected_path
    assert first.headers["authorization"] == f"Bearer {PLATFORM_TOKEN}"
    assert first.headers["x-genai-project-name"] == PROJECT
    assert first.headers["x-genai-user-id"] == DEFAULT_USER
    assert "api-key" not in first.headers  # the provider's own credential stays home
    assert second.headers["x-genai-user-id"] == "alice"
    if provider is ProviderID.AZURE_OPENAI:
        assert first.query["api-version"] == "2024-10-21"
    else:
        assert second.path.endswith(":streamGenerateContent")
        assert second.query["alt"] == "sse"


def test_providers_the_platform_does_not_front_keep_their_own_reach(start_service, platform, upstreams) -> None:
    service = start_service(genai_platform=platform_settings(platform[ProviderID.AZURE_OPENAI]))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": MODELS[ProviderID.OPENAI], "messages": QUESTION})

    assert response.status_code == 200
    assert "x-genai-project-name" not in upstreams[ProviderID.OPENAI].requests[-1].headers


def test_platform_token_from_an_oauth_client_is_fetched_once_and_sent(start_service) -> None:
    oauth = FakeGoogleOAuth(access_token="platform-oauth-token", client_id="genai-client", client_secret="genai-s3cret")
    with ServerThread(oauth):
        fakes = platform_fakes("platform-oauth-token")
        with FakeUpstreamThread(fakes[ProviderID.VERTEX_AI]) as vertex:
            auth = {"client_id": "genai-client", "client_secret": "genai-s3cret", "token_url": oauth.token_url}
            service = start_service(genai_platform=platform_settings(vertex.upstream, **auth))
            with httpx.Client(base_url=service.url, timeout=20) as http:
                answers = [
                    http.post(
                        "/v1/chat/completions", json={"model": MODELS[ProviderID.VERTEX_AI], "messages": QUESTION}
                    )
                    for _ in range(3)
                ]

            assert [a.status_code for a in answers] == [200, 200, 200]
            assert vertex.requests[-1].headers["authorization"] == "Bearer platform-oauth-token"
    assert oauth.client_credentials_issued == 1


def test_missing_platform_fields_stop_start_up_naming_them(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENAI_PLATFORM_", "LLM_"))}
    env |= {"GENAI_PLATFORM_ENABLED": "true", "GENAI_PLATFORM_BASE_URL": "https://genai.example"}
    result = run_cli("serve", "--port", "0", env=env, cwd=tmp_path)

    assert result.returncode == 2
    for name in ("GENAI_PLATFORM_PROJECT_NAME", "GENAI_PLATFORM_USER_ID", "GENAI_PLATFORM_TOKEN"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_build_genai_headers_and_resolve_genai_endpoint() -> None:
    assert build_genai_headers("u1", "p1", "tok") == {
        "Authorization": "Bearer tok",
        "X-GenAI-Project-Name": "p1",
        "X-GenAI-User-Id": "u1",
    }
    assert (
        resolve_genai_endpoint("https://genai.example/", "/openai/deployments/d", ProviderID.AZURE_OPENAI)
        == "https://genai.example/azure-openai/openai/deployments/d"
    )
    assert resolve_genai_endpoint("https://g", "/v1/x", ProviderID.VERTEX_AI) == "https://g/vertex-ai/v1/x"


def test_azure_through_the_platform_needs_no_azure_endpoint(start_service, platform) -> None:
    fake = platform[ProviderID.AZURE_OPENAI]
    service = start_service(genai_platform=platform_settings(fake), azure_openai={"base_url": None, "api_key": None})
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post("/v1/chat/completions", json={"model": "azure-gpt-4o-mini", "messages": QUESTION})

    assert response.status_code == 200, response.text
    assert fake.requests[-1].path == "/azure-openai/openai/deployments/gpt-4o-mini/chat/completions"


def test_a_user_with_a_line_break_is_a_400_not_a_forged_header(start_service, platform) -> None:
    fake = platform[ProviderID.VERTEX_AI]
    service = start_service(genai_platform=platform_settings(fake))
    with httpx.Client(base_url=service.url, timeout=20) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": MODELS[ProviderID.VERTEX_AI], "messages": QUESTION, "user": "eve\r\nX-Admin: 1"},
        )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "user"
    assert fake.requests == []


def test_a_dead_platform_token_endpoint_is_a_503_naming_provider_and_credential(start_service, platform) -> None:
    fake = platform[ProviderID.VERTEX_AI]
    oauth = FakeGoogleOAuth(client_id="genai-client", client_secret="genai-s3cret")
    oauth.fail_with = 503
    with ServerThread(oauth):
        auth = {"client_id": "genai-client", "client_secret": "genai-s3cret", "token_url": oauth.token_url}
        service = start_service(genai_platform=platform_settings(fake, **auth), dispatcher={"max_retries": 0})
        with httpx.Client(base_url=service.url, timeout=20) as http:
            response = http.post(
                "/v1/chat/completions", json={"model": MODELS[ProviderID.VERTEX_AI], "messages": QUESTION}
            )

    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "vertex_ai" in message and "GenAI Platform" in message
    assert "genai-s3cret" not in response.text
    assert fake.requests == []


@pytest.mark.parametrize("prefix", ["", "/", "gateway/azure/"])
def test_endpoint_joins_without_double_slashes(prefix) -> None:
    url = resolve_genai_endpoint(
        "https://g/", "/openai/x", ProviderID.AZURE_OPENAI, prefixes={ProviderID.AZURE_OPENAI: prefix}
    )
    assert "//" not in url.removeprefix("https://")
    assert url.endswith("/openai/x")
