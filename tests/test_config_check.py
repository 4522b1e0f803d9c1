"""`llm-service config check|show` and start-up validation: every problem at once, each naming its culprit."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from harness import run_cli
from llm_service import cli
from llm_service.core.config.validation import ConfigProblem, ConfigReport, check_configuration

ENV_PREFIXES = (
    "OPENAI_",
    "OPENROUTER_",
    "REMOTE_LLM_",
    "LLM_",
    "AZURE_",
    "VERTEX_",
    "GENAI_PLATFORM_",
    "GOOGLE_",
    "OTEL_",
)
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the machine: relevant env vars removed, cwd an empty folder (no stray .env)."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIXES) or name in ("EU_OPENAI_KEY", "US_OPENAI_KEY"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty profile folder, named by LLM_CONFIG_DIR (so the CLI and a subprocess find it too)."""
    folder = tmp_path / "config"
    folder.mkdir()
    monkeypatch.setenv("LLM_CONFIG_DIR", str(folder))
    return folder


def profile(config_dir: Path, monkeypatch: pytest.MonkeyPatch, text: str, name: str = "p") -> str:
    """Write `config/<name>.yaml` and select it with LLM_CONFIG_PROFILE; the file as problems show it."""
    (config_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv("LLM_CONFIG_PROFILE", name)
    return f"config/{name}.yaml"


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def the(problems: list[ConfigProblem], culprit: str) -> ConfigProblem:
    found = [p for p in problems if p.culprit == culprit]
    assert len(found) == 1, f"{culprit}: {[str(p) for p in problems]}"
    return found[0]


def check() -> ConfigReport:
    return check_configuration()


# --------------------------------------------------------------------------------------------------
# Env values: the variable the operator set
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "culprit", "words"),
    [
        pytest.param({"OPENAI_TIMEOUT_READ": "abc"}, "OPENAI_TIMEOUT_READ", "valid number", id="flat-type"),
        pytest.param(
            {"OPENAI_TIMEOUT_READ": "5", "LLM_OPENAI__TIMEOUT_READ": "-1"},
            "LLM_OPENAI__TIMEOUT_READ",
            "greater than 0",
            id="nested-wins-and-is-named",
        ),
        pytest.param({"LLM_PORT": "70000"}, "LLM_PORT", "65535", id="flat-range"),
        pytest.param({"LLM_SERVER__PORT": "http"}, "LLM_SERVER__PORT", "valid integer", id="nested-type"),
        pytest.param({"LLM_LOG_LEVEL": "verbose"}, "LLM_LOG_LEVEL", "'DEBUG'", id="top-level-literal"),
        pytest.param({"AZURE_OPENAI_AUTH": "password"}, "AZURE_OPENAI_AUTH", "'azure_ad'", id="azure-auth"),
        pytest.param({"LLM_MAX_RETRIES": "-2"}, "LLM_MAX_RETRIES", "greater than or equal to 0", id="dispatcher"),
        pytest.param({"GENAI_PLATFORM_ENABLED": "maybe"}, "GENAI_PLATFORM_ENABLED", "valid boolean", id="bool"),
    ],
)
def test_a_bad_env_value_names_the_variable_that_supplied_it(monkeypatch, config_dir, env, culprit, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    report = check()

    problem = the(report.errors, culprit)
    assert words in problem.message
    assert problem.file is None
    assert report.settings is None
    assert len(report.errors) == 1, [str(p) for p in report.errors]  # the flat name under a nested one is not


def test_a_bad_value_in_dotenv_is_named_too(clean_env, config_dir):
    (clean_env / ".env").write_text("OPENROUTER_TIMEOUT_CONNECT=soon\n", encoding="utf-8")

    assert "valid number" in the(check().errors, "OPENROUTER_TIMEOUT_CONNECT").message


def test_a_bad_keyword_argument_is_named_as_an_argument(config_dir):
    report = check_configuration(openai={"timeout_read": "abc"})

    assert "valid number" in the(report.errors, "argument openai.timeout_read").message


def test_a_secret_value_is_never_echoed(monkeypatch, config_dir):
    monkeypatch.setenv("LLM_OPENAI", '{"api_key": ["sk-not-a-string-zzz999"]}')

    report = check()

    assert report.errors
    assert "sk-not-a-string-zzz999" not in "\n".join(str(p) for p in report.problems)


# --------------------------------------------------------------------------------------------------
# The profile YAML: file, line, column and YAML path
# --------------------------------------------------------------------------------------------------


def test_a_bad_profile_value_names_the_yaml_path_and_line(monkeypatch, config_dir):
    text = "providers:\n  openai:\n    base_url: http://o.test\n    timeout_read: soon\n"
    file = profile(config_dir, monkeypatch, text)

    problem = the(check().errors, "providers.openai.timeout_read")

    assert (problem.file, problem.line, problem.column) == (file, line_of(text, "timeout_read"), 19)
    assert str(problem).startswith(f"error: {file}:4:19: providers.openai.timeout_read: ")
    assert "'soon'" in problem.message


def test_env_over_a_bad_profile_value_is_the_culprit(monkeypatch, config_dir):
    profile(config_dir, monkeypatch, "providers:\n  openai:\n    timeout_read: 60\n")
    monkeypatch.setenv("OPENAI_TIMEOUT_READ", "later")

    report = check()

    assert [p.culprit for p in report.errors] == ["OPENAI_TIMEOUT_READ"]


def test_an_unknown_provider_in_an_alias_names_its_deployment(monkeypatch, config_dir):
    text = "aliases:\n  fast:\n    - provider: openai\n      model: gpt-4o\n    - provider: opneai\n      model: m\n"
    file = profile(config_dir, monkeypatch, text)

    problem = the(check().errors, "aliases.fast[1].provider")

    assert (problem.file, problem.line) == (file, line_of(text, "opneai"))
    assert "unknown provider 'opneai'" in problem.message
    assert "did you mean 'openai'" in problem.message


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        pytest.param("  empty: []\n", "has no deployments", id="empty-list"),
        pytest.param("  empty:\n", "has no deployments", id="null"),
        pytest.param("  empty:\n    provider: openai\n    model: m\n", "must be a list of deployments", id="mapping"),
    ],
)
def test_an_alias_without_a_list_of_deployments_is_an_error(monkeypatch, config_dir, entry, words):
    text = f"aliases:\n  ok:\n    - provider: openai\n      model: m\n{entry}"
    file = profile(config_dir, monkeypatch, text)

    problem = the(check().errors, "aliases.empty")

    assert (problem.file, problem.line) == (file, line_of(text, "empty:"))
    assert words in problem.message


def test_a_deployment_with_an_unknown_field_and_no_model_says_both(monkeypatch, config_dir):
    text = "aliases:\n  local:\n    - provider: remote\n      modle: llama\n"
    file = profile(config_dir, monkeypatch, text)

    errors = check().errors

    typo = the(errors, "aliases.local[0].modle")
    assert (typo.file, typo.line) == (file, line_of(text, "modle"))
    assert "unknown field 'modle'" in typo.message and "did you mean 'model'" in typo.message
    assert "'model' is required" in the(errors, "aliases.local[0].model").message


def test_malformed_yaml_gives_line_and_column(monkeypatch, config_dir):
    text = "aliases:\n  fast:\n    - provider: openai\n     model: gpt-4o-mini\n"
    file = profile(config_dir, monkeypatch, text)

    report = check()

    (problem,) = report.errors
    assert problem.file == file
    assert problem.line == 4 and problem.column is not None
    assert "malformed YAML" in problem.message
    assert str(problem).startswith(f"error: {file}:4:")


def test_a_profile_that_is_not_a_mapping_is_an_error(monkeypatch, config_dir):
    file = profile(config_dir, monkeypatch, "- fast\n- slow\n")

    (problem,) = check().errors

    assert (problem.file, problem.line) == (file, 1)
    assert "must be a mapping, not a list" in problem.message


def test_a_missing_profile_names_the_variable_and_the_profiles_there(monkeypatch, config_dir):
    (config_dir / "prod.yaml").write_text("aliases: {}\n", encoding="utf-8")
    monkeypatch.setenv("LLM_CONFIG_PROFILE", "prdo")

    problem = the(check().errors, "LLM_CONFIG_PROFILE")

    assert "profile 'prdo' not found" in problem.message
    assert "config/prdo.yaml" in problem.message and "prod" in problem.message


@pytest.mark.parametrize(
    ("text", "culprit", "needle", "words"),
    [
        pytest.param(
            "alias:\n  fast: []\n",
            "alias",
            "alias:",
            "unknown top-level key 'alias' (did you mean 'aliases'?)",
            id="top",
        ),
        pytest.param(
            "providers:\n  opnai:\n    base_url: http://o\n",
            "providers.opnai",
            "opnai",
            "unknown provider 'opnai' (did you mean 'openai'?)",
            id="provider",
        ),
        pytest.param(
            "providers:\n  openai:\n    timeout_reed: 5\n",
            "providers.openai.timeout_reed",
            "timeout_reed",
            "unknown field 'timeout_reed' of openai (did you mean 'timeout_read'?)",
            id="provider-field",
        ),
        pytest.param(
            "server:\n  prot: 9000\n", "server.prot", "prot", "unknown field 'prot' of server", id="group-field"
        ),
        pytest.param(
            "providers: [openai]\n", "providers", "providers", "must be a mapping of provider", id="providers-list"
        ),
    ],
)
def test_unknown_names_in_the_profile_are_errors(monkeypatch, config_dir, text, culprit, needle, words):
    file = profile(config_dir, monkeypatch, text)

    problem = the(check().errors, culprit)

    assert (problem.file, problem.line) == (file, line_of(text, needle))
    assert words in problem.message


# --------------------------------------------------------------------------------------------------
# What the settings mean together
# --------------------------------------------------------------------------------------------------


def test_an_enabled_genai_platform_with_missing_fields_names_each(monkeypatch, config_dir):
    monkeypatch.setenv("GENAI_PLATFORM_ENABLED", "true")
    monkeypatch.setenv("GENAI_PLATFORM_PROJECT_NAME", "agents")

    problem = the(check().errors, "GENAI_PLATFORM_ENABLED")

    for name in ("GENAI_PLATFORM_BASE_URL", "GENAI_PLATFORM_USER_ID", "GENAI_PLATFORM_TOKEN"):
        assert name in problem.message
    assert "GENAI_PLATFORM_PROJECT_NAME" not in problem.message


def test_a_genai_platform_enabled_in_the_profile_is_located_there(monkeypatch, config_dir):
    text = "genai_platform:\n  enabled: true\n  base_url: https://genai.example\n"
    file = profile(config_dir, monkeypatch, text)

    problem = the(check().errors, "genai_platform.enabled")

    assert (problem.file, problem.line) == (file, 2)
    assert "GENAI_PLATFORM_PROJECT_NAME" in problem.message


def test_azure_api_key_auth_without_a_key_is_an_error(monkeypatch, config_dir):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_AUTH", "api_key")

    assert "AZURE_OPENAI_API_KEY is not set" in the(check().errors, "AZURE_OPENAI_AUTH").message


def test_an_azure_client_secret_without_tenant_and_client_is_an_error(monkeypatch, config_dir):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "entra-secret-zzz444")

    report = check()

    problem = the(report.errors, "AZURE_CLIENT_SECRET")
    assert "AZURE_TENANT_ID and AZURE_CLIENT_ID" in problem.message
    assert "entra-secret-zzz444" not in str(problem)


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ("openrouter", "OPENROUTER_API_KEY"),
        ("remote", "REMOTE_LLM_BASE_URL"),
        ("azure_openai", "AZURE_OPENAI_ENDPOINT"),
        ("vertex_ai", "VERTEX_PROJECT"),
    ],
)
def test_a_deployment_whose_provider_is_not_configured_is_a_warning_naming_what_to_set(
    monkeypatch, config_dir, provider, variable
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-configured")  # one provider: demo mode is off
    text = f"aliases:\n  fast:\n    - provider: openai\n      model: m\n    - provider: {provider}\n      model: m\n"
    file = profile(config_dir, monkeypatch, text)

    report = check()

    assert report.errors == []
    assert report.settings is not None  # warnings do not stop start-up
    problem = the(report.warnings, "aliases.fast[1]")
    assert (problem.file, problem.line) == (file, line_of(text, f"provider: {provider}"))
    assert f"set {variable}" in problem.message


def test_a_deployment_key_variable_that_is_not_set_is_a_warning(monkeypatch, config_dir):
    text = "aliases:\n  eu:\n    - provider: openai\n      model: m\n      api_key_env: EU_OPENAI_KEY\n"
    profile(config_dir, monkeypatch, text)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-configured")

    assert "EU_OPENAI_KEY is not set" in the(check().warnings, "aliases.eu[0]").message
    monkeypatch.setenv("EU_OPENAI_KEY", "sk-eu")
    assert check().problems == ()


def test_demo_mode_reports_no_unconfigured_deployment(config_dir):
    report = check_configuration(config_dir=REPO_CONFIG)

    assert report.settings is not None and report.settings.demo_enabled()
    assert report.problems == ()


@pytest.mark.parametrize("name", sorted(p.stem for p in REPO_CONFIG.glob("*.yaml")))
def test_every_shipped_profile_has_no_error(name):
    report = check_configuration(config_dir=REPO_CONFIG, config_profile=name)

    assert report.errors == [], [str(p) for p in report.errors]


def test_demo_mode_off_with_nothing_configured_is_a_warning(monkeypatch, config_dir):
    monkeypatch.setenv("LLM_DEMO_MODE", "off")

    assert "no provider is configured" in the(check().warnings, "LLM_DEMO_MODE").message


def test_an_unknown_own_env_var_is_a_warning_with_a_suggestion(monkeypatch, config_dir):
    monkeypatch.setenv("LLM_MAX_RETRYS", "3")
    monkeypatch.setenv("REMOTE_LLM_BASEURL", "http://r")

    report = check()

    assert "did you mean 'LLM_MAX_RETRIES'" in the(report.warnings, "LLM_MAX_RETRYS").message
    assert "did you mean 'REMOTE_LLM_BASE_URL'" in the(report.warnings, "REMOTE_LLM_BASEURL").message
    assert report.settings is not None


def test_a_secret_in_the_profile_and_a_duplicate_key_are_warnings(monkeypatch, config_dir):
    text = (
        "aliases:\n  fast:\n    - provider: openai\n      model: a\n  fast:\n    - provider: openai\n      model: b\n"
        "providers:\n  openai:\n    api_key: sk-in-yaml-zzz555\n"
    )
    file = profile(config_dir, monkeypatch, text)

    report = check()

    secret = the(report.warnings, "providers.openai.api_key")
    assert "OPENAI_API_KEY" in secret.message
    duplicate = the(report.warnings, "aliases.fast")
    assert (duplicate.file, duplicate.line) == (file, 5)
    assert "first at line 2" in duplicate.message
    assert "sk-in-yaml-zzz555" not in "\n".join(str(p) for p in report.problems)


def test_a_valid_configuration_has_no_problem(monkeypatch, config_dir):
    text = "aliases:\n  fast:\n    - provider: openai\n      model: m\nproviders:\n  openai:\n    timeout_read: 30\n"
    profile(config_dir, monkeypatch, text)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")

    report = check()

    assert report.problems == ()
    assert report.settings is not None
    assert report.settings.openai.timeout_read == 30.0


# --------------------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------------------

MANY_PROBLEMS = """\
aliases:
  fast:
    - provider: opneai
      model: gpt-4o-mini
  empty: []
  local:
    - provider: remote
      model: llama
alias: {}
providers:
  openai:
    timeout_reed: 5
"""


def test_every_problem_is_reported_together(monkeypatch, config_dir):
    file = profile(config_dir, monkeypatch, MANY_PROBLEMS)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")
    monkeypatch.setenv("OPENAI_TIMEOUT_READ", "abc")
    monkeypatch.setenv("LLM_PORT", "-1")
    monkeypatch.setenv("GENAI_PLATFORM_ENABLED", "true")
    monkeypatch.setenv("LLM_MAX_RETRYS", "3")

    report = check()

    assert {p.culprit for p in report.errors} == {
        "OPENAI_TIMEOUT_READ",
        "LLM_PORT",
        "GENAI_PLATFORM_ENABLED",
        "aliases.fast[0].provider",
        "aliases.empty",
        "alias",
        "providers.openai.timeout_reed",
    }
    assert {p.culprit for p in report.warnings} == {"aliases.local[0]", "LLM_MAX_RETRYS"}
    lines = {p.culprit: p.line for p in report.problems if p.file == file}
    assert lines == {
        "aliases.fast[0].provider": 3,
        "aliases.empty": 5,
        "aliases.local[0]": 7,
        "alias": 9,
        "providers.openai.timeout_reed": 12,
    }
    assert report.settings is None
    # Errors come first, then warnings.
    assert [p.severity for p in report.problems] == ["error"] * 7 + ["warning"] * 2


# --------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------


def test_config_check_prints_every_problem_and_exits_1(monkeypatch, config_dir, capsys):
    profile(config_dir, monkeypatch, MANY_PROBLEMS)
    monkeypatch.setenv("OPENAI_TIMEOUT_READ", "abc")

    code = cli.main(["config", "check"])

    out = capsys.readouterr().out
    assert code == 1
    for problem in check().problems:
        assert str(problem) in out.splitlines()
    assert "error(s)" not in out and "errors" in out.splitlines()[-1]


def test_config_check_ok_summarises_and_warnings_fail_only_when_strict(monkeypatch, config_dir, capsys):
    text = "aliases:\n  fast:\n    - provider: openai\n      model: m\n  far:\n    - {provider: vertex_ai, model: g}"
    profile(config_dir, monkeypatch, text)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")

    assert cli.main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK (1 warning): profile 'p' (config/p.yaml)" in out
    assert "providers: openai" in out and "aliases:   far, fast" in out
    assert "VERTEX_PROJECT" in out

    assert cli.main(["config", "check", "--strict"]) == 1


def test_config_check_takes_a_profile_option(monkeypatch, config_dir, capsys):
    (config_dir / "other.yaml").write_text("aliases:\n  x: []\n", encoding="utf-8")

    assert cli.main(["config", "check", "--profile", "other"]) == 1
    assert "config/other.yaml:2:3: aliases.x: alias 'x' has no deployments" in capsys.readouterr().out


SECRETS = {
    "OPENAI_API_KEY": "sk-openai-secret-zzz111",
    "OPENROUTER_API_KEY": "sk-or-secret-zzz222",
    "REMOTE_LLM_API_KEY": "remote-secret-zzz333",
    "AZURE_OPENAI_API_KEY": "azure-secret-zzz444",
    "AZURE_CLIENT_SECRET": "entra-secret-zzz555",
    "VERTEX_ACCESS_TOKEN": "ya29.vertex-secret-zzz666",
    "GENAI_PLATFORM_TOKEN": "platform-secret-zzz777",
    "GENAI_PLATFORM_CLIENT_SECRET": "platform-oauth-secret-zzz888",
    "EU_OPENAI_KEY": "sk-deployment-secret-zzz999",
}


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_config_show_masks_every_secret(monkeypatch, config_dir, capsys, fmt):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REMOTE_LLM_BASE_URL", "http://svc:url-password-zzz000@vllm.internal:8000/v1")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    text = "aliases:\n  eu:\n    - provider: openai\n      model: m\n      api_key_env: EU_OPENAI_KEY\n"
    profile(config_dir, monkeypatch, text)

    assert cli.main(["config", "show", "--format", fmt]) == 0

    out = capsys.readouterr().out
    for secret in [*SECRETS.values(), "url-password-zzz000"]:
        assert secret not in out
    data = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert data["openai"]["api_key"] == "**********"
    assert data["genai_platform"]["client_secret"] == "**********"
    assert data["remote"]["base_url"] == "http://svc:**********@vllm.internal:8000/v1"
    assert data["aliases"]["eu"][0]["api_key_env"] == "EU_OPENAI_KEY"
    assert data["config_profile"] == "p"


def test_config_show_with_errors_prints_them_and_exits_1(monkeypatch, config_dir, capsys):
    monkeypatch.setenv("LLM_PORT", "port")

    assert cli.main(["config", "show"]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: LLM_PORT: " in captured.err


def test_serve_logs_warnings_and_starts(monkeypatch, config_dir, caplog):
    monkeypatch.setenv("LLM_MAX_RETRYS", "3")
    started: list[tuple[str, int]] = []
    monkeypatch.setattr(cli, "configure_logging", lambda level, log_format, process_fields=None: None)

    def run(server: cli.DrainingServer, sockets: object = None) -> None:
        started.append((server.config.host, server.config.port))
        server.started = True

    monkeypatch.setattr(cli.DrainingServer, "run", run)

    with caplog.at_level(logging.WARNING, logger="llm_service"):
        assert cli.main(["serve", "--port", "0"]) == 0

    assert started == [("127.0.0.1", 0)]
    (record,) = [r for r in caplog.records if r.getMessage() == "configuration warning"]
    assert record.fields["where"] == "LLM_MAX_RETRYS"


def test_serve_with_a_bad_configuration_exits_without_a_traceback_saying_the_same(
    monkeypatch, config_dir, tmp_path, capsys
):
    profile(config_dir, monkeypatch, MANY_PROBLEMS, name="bad")
    monkeypatch.setenv("OPENAI_TIMEOUT_READ", "abc")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIXES)}
    env |= {"LLM_CONFIG_DIR": str(config_dir), "LLM_CONFIG_PROFILE": "bad", "OPENAI_TIMEOUT_READ": "abc"}

    result = run_cli("serve", "--port", "0", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert cli.main(["config", "check"]) == 1
    checked = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("error:", "warning:"))]
    assert len(checked) == 5  # demo mode (no key): no deployment warning
    for line in checked:
        assert f"llm-service: {line}" in result.stderr.splitlines()
    assert "config/bad.yaml:3:17: aliases.fast[0].provider" in result.stderr
    assert "not starting" in result.stderr
