"""Settings: flat and nested env names, .env, profile YAML, precedence, secrets, provider state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.settings import Deployment, Settings
from llm_service.core.llm.models import ConfigurationError

ENV_PREFIXES = ("OPENAI_", "OPENROUTER_", "REMOTE_LLM_", "LLM_", "AZURE_", "VERTEX_", "GENAI_PLATFORM_", "GOOGLE_")
FLAT_NAMES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENROUTER_API_KEY",
    "OPENROUTER_BASE_URL",
    "OPENROUTER_HTTP_REFERER",
    "OPENROUTER_APP_TITLE",
    "REMOTE_LLM_BASE_URL",
    "REMOTE_LLM_API_KEY",
    "LLM_CONFIG_PROFILE",
    "LLM_CONFIG_DIR",
    "LLM_DEMO_MODE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the machine: relevant env vars removed, cwd an empty folder (no stray .env)."""
    for name in FLAT_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """An empty profile folder: the default profile has no YAML there, so it adds nothing."""
    folder = tmp_path / "config"
    folder.mkdir()
    return folder


def make(config_dir: Path, **kwargs) -> Settings:
    return Settings(config_dir=config_dir, **kwargs)


def lookup(settings: Settings, path: str):
    value = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# --------------------------------------------------------------------------------------------------
# Env names
# --------------------------------------------------------------------------------------------------


def test_defaults_without_any_configuration(config_dir):
    settings = make(config_dir)

    assert settings.openai.api_key is None
    assert settings.openai.base_url == "https://api.openai.com/v1"
    assert settings.openrouter.base_url == "https://openrouter.ai/api/v1"
    assert settings.remote.base_url is None
    assert settings.config_profile == "default"
    assert settings.aliases == {}


@pytest.mark.parametrize(
    ("env_name", "value", "path", "expected"),
    [
        pytest.param("OPENAI_API_KEY", "sk-flat-openai", "openai.api_key", "sk-flat-openai", id="openai-key"),
        pytest.param("OPENAI_BASE_URL", "http://o.test/v1", "openai.base_url", "http://o.test/v1", id="openai-url"),
        pytest.param("OPENAI_ORG_ID", "org-1", "openai.org_id", "org-1", id="openai-org"),
        pytest.param("OPENAI_TIMEOUT_READ", "5", "openai.timeout_read", 5.0, id="openai-timeout"),
        pytest.param("OPENROUTER_API_KEY", "sk-or-flat", "openrouter.api_key", "sk-or-flat", id="openrouter-key"),
        pytest.param(
            "OPENROUTER_BASE_URL",
            "http://or.test/v1",
            "openrouter.base_url",
            "http://or.test/v1",
            id="or-url",
        ),
        pytest.param(
            "OPENROUTER_HTTP_REFERER",
            "https://app.test",
            "openrouter.http_referer",
            "https://app.test",
            id="or-referer",
        ),
        pytest.param("OPENROUTER_APP_TITLE", "AgentOne", "openrouter.app_title", "AgentOne", id="or-title"),
        pytest.param(
            "REMOTE_LLM_BASE_URL",
            "http://127.0.0.1:8001/v1",
            "remote.base_url",
            "http://127.0.0.1:8001/v1",
            id="r-url",
        ),
        pytest.param("REMOTE_LLM_API_KEY", "remote-key", "remote.api_key", "remote-key", id="remote-key"),
        pytest.param(
            "AZURE_OPENAI_ENDPOINT",
            "https://res.openai.azure.com/",
            "azure_openai.base_url",
            "https://res.openai.azure.com",
            id="azure-endpoint",
        ),
        pytest.param("AZURE_OPENAI_API_KEY", "az-key", "azure_openai.api_key", "az-key", id="azure-key"),
        pytest.param(
            "AZURE_OPENAI_API_VERSION", "2025-04-01-preview", "azure_openai.api_version", "2025-04-01-preview"
        ),
        pytest.param("AZURE_TENANT_ID", "tenant-1", "azure_openai.tenant_id", "tenant-1", id="azure-tenant"),
        pytest.param("AZURE_CLIENT_ID", "client-1", "azure_openai.client_id", "client-1", id="azure-client"),
        pytest.param("AZURE_CLIENT_SECRET", "s3cret", "azure_openai.client_secret", "s3cret", id="azure-secret"),
        pytest.param(
            "AZURE_AUTHORITY_HOST",
            "login.microsoftonline.us",
            "azure_openai.authority_host",
            "login.microsoftonline.us",
            id="azure-authority",
        ),
        pytest.param("VERTEX_PROJECT", "demo-proj", "vertex_ai.project", "demo-proj", id="vertex-project"),
        pytest.param("VERTEX_LOCATION", "europe-west4", "vertex_ai.location", "europe-west4", id="vertex-location"),
        pytest.param("VERTEX_BASE_URL", "http://127.0.0.1:9/", "vertex_ai.base_url", "http://127.0.0.1:9", id="vx-url"),
        pytest.param(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "/etc/sa.json",
            "vertex_ai.credentials_file",
            "/etc/sa.json",
            id="gcp-credentials-file",
        ),
        pytest.param("VERTEX_ACCESS_TOKEN", "ya29.x", "vertex_ai.api_key", "ya29.x", id="vertex-static-token"),
        pytest.param("GENAI_PLATFORM_PROJECT_NAME", "agents", "genai_platform.project_name", "agents", id="genai"),
        pytest.param("LLM_PORT", "9001", "server.port", 9001, id="server-port"),
        pytest.param("LLM_MAX_RETRIES", "5", "dispatcher.max_retries", 5, id="dispatcher-retries"),
        pytest.param("LLM_LOG_PROMPTS", "true", "telemetry.log_prompts", True, id="telemetry"),
        pytest.param("LLM_LOG_LEVEL", "DEBUG", "log_level", "DEBUG", id="top-level-prefixed"),
    ],
)
def test_flat_env_name_lands_in_its_group(monkeypatch, config_dir, env_name, value, path, expected):
    monkeypatch.setenv(env_name, value)

    assert lookup(make(config_dir), path) == expected


@pytest.mark.parametrize(
    ("env_name", "value", "path", "expected"),
    [
        pytest.param("LLM_OPENAI__API_KEY", "sk-nested", "openai.api_key", "sk-nested", id="openai-key"),
        pytest.param("LLM_OPENROUTER__APP_TITLE", "T", "openrouter.app_title", "T", id="openrouter-title"),
        pytest.param("LLM_REMOTE__BASE_URL", "http://r.test", "remote.base_url", "http://r.test", id="remote-url"),
        pytest.param("LLM_SERVER__PORT", "9002", "server.port", 9002, id="server-port"),
    ],
)
def test_nested_env_name_lands_in_its_group(monkeypatch, config_dir, env_name, value, path, expected):
    monkeypatch.setenv(env_name, value)

    assert lookup(make(config_dir), path) == expected


def test_nested_env_wins_over_flat_env(monkeypatch, config_dir):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://flat.test/v1")
    monkeypatch.setenv("LLM_OPENAI__BASE_URL", "http://nested.test/v1")

    assert make(config_dir).openai.base_url == "http://nested.test/v1"


def test_nested_and_flat_env_for_different_fields_of_one_group_merge(monkeypatch, config_dir):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-flat")
    monkeypatch.setenv("LLM_OPENAI__BASE_URL", "http://nested.test/v1")

    settings = make(config_dir)

    assert settings.openai.api_key is not None
    assert settings.openai.api_key.get_secret_value() == "sk-flat"
    assert settings.openai.base_url == "http://nested.test/v1"


def test_keyword_arguments_win_over_env(monkeypatch, config_dir):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://flat.test/v1")
    monkeypatch.setenv("LLM_OPENAI__BASE_URL", "http://nested.test/v1")

    assert make(config_dir, openai={"base_url": "http://kwarg.test/v1"}).openai.base_url == "http://kwarg.test/v1"


def test_invalid_env_value_is_a_validation_error(monkeypatch, config_dir):
    monkeypatch.setenv("LLM_PORT", "70000")

    with pytest.raises(ValidationError, match="port"):
        make(config_dir)


# --------------------------------------------------------------------------------------------------
# .env
# --------------------------------------------------------------------------------------------------


def test_dotenv_in_cwd_supplies_flat_and_nested_names(clean_env, config_dir):
    (clean_env / ".env").write_text(
        "OPENAI_API_KEY=sk-from-dotenv\nLLM_OPENROUTER__APP_TITLE=FromDotenv\nREMOTE_LLM_BASE_URL=http://r.test/\n",
        encoding="utf-8",
    )

    settings = make(config_dir)

    assert settings.openai.api_key is not None
    assert settings.openai.api_key.get_secret_value() == "sk-from-dotenv"
    assert settings.openrouter.app_title == "FromDotenv"
    assert settings.remote.base_url == "http://r.test"


def test_process_env_wins_over_dotenv(monkeypatch, clean_env, config_dir):
    (clean_env / ".env").write_text("OPENAI_BASE_URL=http://dotenv.test/v1\n", encoding="utf-8")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://process.test/v1")

    assert make(config_dir).openai.base_url == "http://process.test/v1"


def test_dotenv_outside_cwd_is_not_read(monkeypatch, tmp_path, config_dir):
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-elsewhere\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert make(config_dir).openai.api_key is None


# --------------------------------------------------------------------------------------------------
# Profile YAML
# --------------------------------------------------------------------------------------------------

PROFILE_YAML = """\
aliases:
  fast:
    - provider: openai
      model: gpt-4o-mini
    - provider: openrouter
      model: openai/gpt-4o-mini
  local:
    - provider: remote
      model: llama-3.1-8b
providers:
  openai:
    base_url: http://yaml.test/v1/
    timeout_read: 60
  openrouter:
    app_title: FromYaml
"""


@pytest.fixture
def profile_dir(config_dir: Path) -> Path:
    (config_dir / "p.yaml").write_text(PROFILE_YAML, encoding="utf-8")
    return config_dir


def test_profile_yaml_supplies_aliases_and_provider_overrides(profile_dir):
    settings = Settings(config_dir=profile_dir, config_profile="p")

    assert settings.aliases == {
        "fast": [
            Deployment(provider=ProviderID.OPENAI, model="gpt-4o-mini"),
            Deployment(provider=ProviderID.OPENROUTER, model="openai/gpt-4o-mini"),
        ],
        "local": [Deployment(provider=ProviderID.REMOTE, model="llama-3.1-8b")],
    }
    assert settings.openai.base_url == "http://yaml.test/v1"
    assert settings.openai.timeout_read == 60.0
    assert settings.openrouter.app_title == "FromYaml"
    assert settings.openrouter.base_url == "https://openrouter.ai/api/v1"


@pytest.mark.parametrize(
    "env_name",
    [pytest.param("OPENAI_BASE_URL", id="flat"), pytest.param("LLM_OPENAI__BASE_URL", id="nested")],
)
def test_env_wins_over_profile_yaml_field_by_field(monkeypatch, profile_dir, env_name):
    monkeypatch.setenv(env_name, "http://env.test/v1")

    settings = Settings(config_dir=profile_dir, config_profile="p")

    assert settings.openai.base_url == "http://env.test/v1"
    assert settings.openai.timeout_read == 60.0  # the YAML's other fields of the group survive


def test_profile_and_config_dir_can_come_from_env(monkeypatch, profile_dir):
    monkeypatch.setenv("LLM_CONFIG_PROFILE", "p")
    monkeypatch.setenv("LLM_CONFIG_DIR", str(profile_dir))

    settings = Settings()

    assert settings.config_profile == "p"
    assert set(settings.aliases) == {"fast", "local"}


def test_unknown_non_default_profile_raises_value_error_naming_the_file(config_dir):
    with pytest.raises(ValueError, match="config profile 'nope' not found") as caught:
        Settings(config_dir=config_dir, config_profile="nope")

    # A plain ValueError from the YAML source, not a pydantic ValidationError.
    assert not isinstance(caught.value, ValidationError)
    assert str(config_dir / "nope.yaml") in str(caught.value)


def test_missing_default_profile_is_not_an_error(config_dir):
    assert Settings(config_dir=config_dir, config_profile="default").aliases == {}


def test_profile_yaml_that_is_not_a_mapping_raises(config_dir):
    (config_dir / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")

    with pytest.raises(ValueError, match="expected a mapping"):
        Settings(config_dir=config_dir, config_profile="list")


def test_empty_profile_yaml_adds_nothing(config_dir):
    (config_dir / "empty.yaml").write_text("", encoding="utf-8")

    assert Settings(config_dir=config_dir, config_profile="empty").aliases == {}


def test_profile_alias_with_unknown_provider_is_a_validation_error(config_dir):
    (config_dir / "bad.yaml").write_text("aliases:\n  x:\n    - provider: nowhere\n      model: m\n", "utf-8")

    with pytest.raises(ValidationError, match="aliases"):
        Settings(config_dir=config_dir, config_profile="bad")


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------

SECRETS = {
    "OPENAI_API_KEY": "sk-secret-openai-zzz111",
    "OPENROUTER_API_KEY": "sk-or-secret-zzz222",
    "REMOTE_LLM_API_KEY": "remote-secret-zzz333",
}


def test_api_keys_are_secret_and_never_rendered(monkeypatch, config_dir):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    settings = make(config_dir)

    api_keys = set()
    for group in (settings.openai, settings.openrouter, settings.remote):
        assert isinstance(group.api_key, SecretStr)
        api_keys.add(group.api_key.get_secret_value())
    assert api_keys == set(SECRETS.values())
    renderings = {
        "repr": repr(settings),
        "str": str(settings),
        "json": settings.model_dump_json(),
        "group-repr": repr(settings.openai),
        "dump": repr(settings.model_dump()),
    }
    for where, text in renderings.items():
        for secret in SECRETS.values():
            assert secret not in text, f"{secret} leaked in {where}"


# --------------------------------------------------------------------------------------------------
# Provider state
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected_providers", "expected_demo"),
    [
        pytest.param({}, [], True, id="nothing-configured"),
        pytest.param({"OPENAI_API_KEY": "sk-a"}, [ProviderID.OPENAI], False, id="openai-key"),
        pytest.param({"OPENAI_API_KEY": ""}, [], True, id="empty-key-not-configured"),
        pytest.param({"OPENAI_BASE_URL": "http://o.test"}, [], True, id="openai-url-without-key"),
        pytest.param({"OPENROUTER_API_KEY": "sk-or"}, [ProviderID.OPENROUTER], False, id="openrouter-key"),
        pytest.param({"REMOTE_LLM_BASE_URL": "http://r.test"}, [ProviderID.REMOTE], False, id="remote-url"),
        pytest.param({"REMOTE_LLM_API_KEY": "k"}, [], True, id="remote-key-without-url"),
        pytest.param(
            {"OPENAI_API_KEY": "a", "OPENROUTER_API_KEY": "b", "REMOTE_LLM_BASE_URL": "http://r.test"},
            [ProviderID.OPENAI, ProviderID.OPENROUTER, ProviderID.REMOTE],
            False,
            id="all-three",
        ),
        pytest.param({"LLM_DEMO_MODE": "on", "OPENAI_API_KEY": "a"}, [ProviderID.OPENAI], True, id="demo-on"),
        pytest.param({"LLM_DEMO_MODE": "off"}, [], False, id="demo-off"),
        pytest.param({"LLM_DEMO_MODE": "auto", "OPENAI_API_KEY": "a"}, [ProviderID.OPENAI], False, id="demo-auto"),
    ],
)
def test_configured_providers_and_demo_mode(monkeypatch, config_dir, env, expected_providers, expected_demo):
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = make(config_dir)

    assert settings.configured_providers() == expected_providers
    assert settings.demo_enabled() is expected_demo


@pytest.mark.parametrize(
    ("env_name", "value", "path", "expected"),
    [
        pytest.param("OPENAI_BASE_URL", "https://o.test/v1/", "openai.base_url", "https://o.test/v1", id="one"),
        pytest.param("OPENAI_BASE_URL", "https://o.test/v1//", "openai.base_url", "https://o.test/v1", id="two"),
        pytest.param(
            "OPENROUTER_BASE_URL",
            "https://or.test/api/v1/",
            "openrouter.base_url",
            "https://or.test/api/v1",
            id="or",
        ),
        pytest.param(
            "REMOTE_LLM_BASE_URL",
            "http://127.0.0.1:8001/",
            "remote.base_url",
            "http://127.0.0.1:8001",
            id="remote",
        ),
        pytest.param("LLM_OPENAI__BASE_URL", "https://n.test/v1/", "openai.base_url", "https://n.test/v1", id="nested"),
        pytest.param("OPENAI_BASE_URL", "https://o.test/v1", "openai.base_url", "https://o.test/v1", id="none"),
    ],
)
def test_trailing_slash_is_stripped_from_base_url(monkeypatch, config_dir, env_name, value, path, expected):
    monkeypatch.setenv(env_name, value)

    assert lookup(make(config_dir), path) == expected


def test_provider_settings_returns_the_group_of_every_provider(config_dir):
    settings = make(config_dir)

    assert settings.provider_settings(ProviderID.OPENAI) is settings.openai
    assert settings.provider_settings(ProviderID.OPENROUTER) is settings.openrouter
    assert settings.provider_settings(ProviderID.REMOTE) is settings.remote
    assert settings.provider_settings(ProviderID.VERTEX_AI) is settings.vertex_ai
    assert settings.provider_settings(ProviderID.AZURE_OPENAI) is settings.azure_openai


# --------------------------------------------------------------------------------------------------
# Azure OpenAI, Vertex AI and the GenAI Platform
# --------------------------------------------------------------------------------------------------


def test_azure_is_configured_by_its_endpoint_and_picks_its_auth(monkeypatch, config_dir):
    assert ProviderID.AZURE_OPENAI not in make(config_dir).configured_providers()
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    settings = make(config_dir)
    assert ProviderID.AZURE_OPENAI in settings.configured_providers()
    assert not settings.azure_openai.uses_api_key()  # no key: Azure AD
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    assert make(config_dir).azure_openai.uses_api_key()
    monkeypatch.setenv("AZURE_OPENAI_AUTH", "azure_ad")
    assert not make(config_dir).azure_openai.uses_api_key()


@pytest.mark.parametrize(
    ("location", "root"),
    [
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
    ],
)
def test_vertex_api_root_follows_the_location(config_dir, location, root):
    settings = make(config_dir, vertex_ai={"project": "p", "location": location})
    assert settings.vertex_ai.api_root() == root
    assert ProviderID.VERTEX_AI in settings.configured_providers()


def test_enabled_genai_platform_without_its_fields_stops_start_up_naming_each(monkeypatch, config_dir):
    monkeypatch.setenv("GENAI_PLATFORM_ENABLED", "true")
    monkeypatch.setenv("GENAI_PLATFORM_PROJECT_NAME", "agents")
    with pytest.raises(ConfigurationError) as caught:
        make(config_dir)
    message = caught.value.message
    for name in ("GENAI_PLATFORM_BASE_URL", "GENAI_PLATFORM_USER_ID", "GENAI_PLATFORM_TOKEN"):
        assert name in message
    assert "GENAI_PLATFORM_PROJECT_NAME" not in message


def test_genai_platform_with_a_partial_oauth_client_names_the_missing_part(config_dir):
    platform = {
        "enabled": True,
        "base_url": "https://genai.example",
        "project_name": "agents",
        "user_id": "svc",
        "client_id": "cid",
    }
    with pytest.raises(ConfigurationError) as caught:
        make(config_dir, genai_platform=platform)
    assert "GENAI_PLATFORM_CLIENT_SECRET" in caught.value.message
    assert "GENAI_PLATFORM_TOKEN_URL" in caught.value.message
    assert "GENAI_PLATFORM_CLIENT_ID" not in caught.value.message


def test_complete_or_disabled_genai_platform_is_accepted(config_dir):
    assert not make(config_dir).genai_platform.enabled
    platform = {"enabled": True, "base_url": "https://g/", "project_name": "p", "user_id": "u", "token": "t"}
    assert make(config_dir, genai_platform=platform).genai_platform.base_url == "https://g"


def test_a_provider_fronted_by_the_platform_needs_no_endpoint_of_its_own(config_dir):
    platform = {"enabled": True, "base_url": "https://g", "project_name": "p", "user_id": "u", "token": "t"}
    settings = make(config_dir, genai_platform=platform)

    assert settings.configured_providers() == [ProviderID.AZURE_OPENAI]  # Vertex still needs its project
    assert not settings.demo_enabled()
    with_project = make(config_dir, genai_platform=platform, vertex_ai={"project": "proj"})
    assert set(with_project.configured_providers()) == {ProviderID.AZURE_OPENAI, ProviderID.VERTEX_AI}


def test_a_structured_setting_is_json_in_its_flat_env_var_too(monkeypatch, config_dir):
    monkeypatch.setenv("LLM_BREAKER_BY_PROVIDER", '{"openai": {"min_calls": 3}}')
    settings = make(config_dir)

    assert settings.dispatcher.breaker_settings(ProviderID.OPENAI)["min_calls"] == 3
    assert settings.dispatcher.breaker_settings(ProviderID.OPENROUTER)["min_calls"] == 10
