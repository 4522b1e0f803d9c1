"""The profile YAML drives aliases end to end: a request for an alias reaches the deployment the YAML
names, with that deployment's own server, API version and key when it brings them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import QUESTION
from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.fakes import FakeUpstream, FakeUpstreamThread

PROFILE = """
aliases:
  regional-llama:
    - provider: remote
      model: llama-3.1-70b
      base_url: {remote_eu}
      api_key_env: EU_VLLM_KEY
      rpm: 600
      weight: 2
  gpt-eu:
    - provider: azure_openai
      model: gpt-4o-mini
      base_url: {azure_eu}
      api_version: 2025-04-01-preview
      api_key_env: AZURE_OPENAI_API_KEY_WESTEUROPE
    - provider: azure_openai
      model: gpt-4o-mini
  plain-remote:
    - provider: remote
      model: llama-3.1-8b
  team-b:
    - provider: openai
      model: gpt-4o-mini
      api_key_env: TEAM_B_OPENAI_KEY
"""


@pytest.fixture
def second_region() -> Iterator[dict[str, Any]]:
    fakes = {
        "remote_eu": FakeUpstream("openai", api_key="eu-vllm-key-0123456789"),
        "azure_eu": FakeUpstream("azure_openai", api_key="azure-westeurope-key-0123456789"),
    }
    threads = [FakeUpstreamThread(f).start() for f in fakes.values()]
    yield fakes
    for thread in threads:
        thread.stop()


@pytest.fixture
def profile(tmp_path: Path, second_region, monkeypatch) -> Path:
    monkeypatch.setenv("EU_VLLM_KEY", "eu-vllm-key-0123456789")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY_WESTEUROPE", "azure-westeurope-key-0123456789")
    (tmp_path / "regions.yaml").write_text(PROFILE.format(**{k: f.url for k, f in second_region.items()}))
    return tmp_path


def ask(service: Any, model: str) -> httpx.Response:
    with httpx.Client(base_url=service.url, timeout=20) as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION})


def test_an_alias_reaches_the_server_and_key_its_deployment_names(start_service, profile, second_region, upstreams):
    service = start_service(config_dir=profile, config_profile="regions")
    response = ask(service, "regional-llama")

    assert response.status_code == 200, response.text
    sent = second_region["remote_eu"].requests[-1]
    assert sent.json["model"] == "llama-3.1-70b"
    assert sent.headers["authorization"] == "Bearer eu-vllm-key-0123456789"
    assert upstreams[ProviderID.REMOTE].requests == []  # the provider's own server is not used
    # An alias without its own reach still uses the provider's settings.
    assert ask(service, "plain-remote").status_code == 200
    assert upstreams[ProviderID.REMOTE].requests[-1].json["model"] == "llama-3.1-8b"


def test_an_azure_deployment_in_another_resource_uses_its_endpoint_version_and_key(
    start_service, profile, second_region, upstreams
):
    service = start_service(config_dir=profile, config_profile="regions")
    response = ask(service, "gpt-eu")

    assert response.status_code == 200, response.text
    sent = second_region["azure_eu"].requests[-1]
    assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert sent.query["api-version"] == "2025-04-01-preview"
    assert sent.headers["api-key"] == "azure-westeurope-key-0123456789"
    assert upstreams[ProviderID.AZURE_OPENAI].requests == []


def test_a_deployment_whose_key_variable_is_unset_is_not_served(start_service, profile, monkeypatch) -> None:
    monkeypatch.delenv("TEAM_B_OPENAI_KEY", raising=False)
    service = start_service(config_dir=profile, config_profile="regions")
    with httpx.Client(base_url=service.url, timeout=20) as http:
        listed = {m["id"] for m in http.get("/v1/models").json()["data"]}
        response = http.post("/v1/chat/completions", json={"model": "team-b", "messages": QUESTION})

    assert {"gpt-eu", "regional-llama", "plain-remote"} <= listed
    assert "team-b" not in listed
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_deployment_fields_parse_from_the_yaml(profile) -> None:
    settings = Settings(config_dir=profile, config_profile="regions", demo_mode="off")
    first = settings.aliases["regional-llama"][0]

    assert (first.rpm, first.weight, first.tpm, first.max_concurrency) == (600, 2.0, None, None)
    key = settings.deployment_key("EU_VLLM_KEY")
    assert key is not None
    assert key.get_secret_value() == "eu-vllm-key-0123456789"
    assert "eu-vllm-key" not in repr(settings)


@pytest.mark.parametrize(
    "entry",
    [
        {"provider": "remote", "model": "m", "api_key": "sk-in-yaml"},
        {"provider": "remote", "model": "m", "weight": 0},
        {"provider": "remote", "model": "m", "api_key_env": "not a name"},
        {"provider": "remote", "model": ""},
    ],
    ids=["key-in-yaml", "zero-weight", "bad-env-name", "empty-model"],
)
def test_a_malformed_deployment_is_refused(entry) -> None:
    with pytest.raises(ValueError, match=r"aliases"):
        Settings(demo_mode="off", aliases={"a": [entry]})
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError is a ValueError
        Deployment.model_validate(entry)


@pytest.mark.parametrize("profile_name", ["default", "demo", "production.example"])
def test_the_shipped_profiles_load(profile_name, monkeypatch) -> None:
    monkeypatch.delenv("LLM_DEMO_MODE", raising=False)
    settings = Settings(config_profile=profile_name)

    assert settings.aliases
    assert all(deployments for deployments in settings.aliases.values())


def test_the_demo_profile_serves_every_provider_from_the_fixtures() -> None:
    from harness import ServiceThread

    settings = Settings(config_profile="demo")
    assert settings.demo_enabled()
    with ServiceThread(settings) as service:
        for alias in ("fast", "claude-sonnet", "azure-gpt-4o-mini", "gemini-flash", "local"):
            assert ask(service, alias).status_code == 200, alias


def test_an_unquoted_yaml_date_is_an_api_version(tmp_path) -> None:
    (tmp_path / "p.yaml").write_text("providers:\n  azure_openai:\n    api_version: 2025-04-01\n")
    assert Settings(config_dir=tmp_path, config_profile="p").azure_openai.api_version == "2025-04-01"


def test_a_profile_sets_other_groups_and_top_level_settings_and_env_still_wins(tmp_path, monkeypatch) -> None:
    (tmp_path / "p.yaml").write_text(
        "log_level: DEBUG\nserver:\n  cors_allow_origins: https://app.example\ndispatcher:\n  max_retries: 5\n"
    )
    monkeypatch.setenv("LLM_MAX_RETRIES", "1")
    settings = Settings(config_dir=tmp_path, config_profile="p")

    assert settings.log_level == "DEBUG"
    assert settings.server.cors_origins() == ["https://app.example"]
    assert settings.dispatcher.max_retries == 1
