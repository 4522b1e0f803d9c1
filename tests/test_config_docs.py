"""docs/configuration.md and .env.example: current with the code, complete, and never showing a secret."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import get_args

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_service.core.config.settings import Settings, SettingsGroup

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = REPO / "docs" / "configuration.md"
ENV_EXAMPLE = REPO / ".env.example"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_env_docs", REPO / "scripts" / "generate_env_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _has_secret(annotation: object) -> bool:
    if annotation is SecretStr:
        return True
    return any(_has_secret(arg) for arg in get_args(annotation))


def _env_vars() -> dict[str, list[str]]:
    """Every env var the service reads, collected from the settings classes themselves (not the generator)."""
    prefix = str(Settings.model_config.get("env_prefix") or "")
    delimiter = str(Settings.model_config.get("env_nested_delimiter"))
    found: dict[str, list[str]] = {"flat": [], "nested": [], "group": []}
    for name, info in Settings.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, SettingsGroup):
            found["group"].append(f"{prefix}{name}".upper())
            for field in group.model_fields:
                found["flat"].append(group.env_name(field))
                found["nested"].append(f"{prefix}{name}{delimiter}{field}".upper())
        else:
            found["flat"].append(f"{prefix}{name}".upper())
    return found


def _secret_env_vars() -> list[str]:
    prefix = str(Settings.model_config.get("env_prefix") or "")
    names = [f"{prefix}{n}".upper() for n, i in Settings.model_fields.items() if _has_secret(i.annotation)]
    for info in Settings.model_fields.values():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, SettingsGroup):
            names += [group.env_name(f) for f, fi in group.model_fields.items() if _has_secret(fi.annotation)]
    return names


def _mentions(text: str, name: str) -> bool:
    """`name` as a whole word: OPENAI_API_KEY is not found inside AZURE_OPENAI_API_KEY."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


# --- (a) drift ---------------------------------------------------------------------------------------


def test_committed_docs_are_what_the_generator_produces_now() -> None:
    problems = gen.stale(gen.outputs())
    assert not problems, "\n\n".join(problems)
    assert gen.main(["--check"]) == 0


def test_check_mode_reports_a_stale_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "stale.md").write_text("old\n", encoding="utf-8")
    problems = gen.stale({tmp_path / "stale.md": "new\n", tmp_path / "missing.md": "x\n"})
    assert len(problems) == 2
    assert "out of date (+1 -1 lines)" in problems[0] and "-old" in problems[0] and "+new" in problems[0]
    assert "missing" in problems[1]


def test_env_example_is_not_ignored_by_git() -> None:
    ignored = [line.strip() for line in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()]
    assert ".env.example" not in ignored and ".env*" not in ignored and "*.example" not in ignored


# --- (b) completeness --------------------------------------------------------------------------------


def test_the_collected_env_vars_are_real_and_distinct() -> None:
    found = _env_vars()
    assert {"OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS", "LLM_PORT"} <= set(
        found["flat"]
    )
    assert {"LLM_OPENAI__API_KEY", "LLM_SERVER__PORT", "LLM_CONFIG_PROFILE"} <= set(found["nested"] + found["flat"])
    everything = found["flat"] + found["nested"] + found["group"]
    shared = [name for name, count in Counter(everything).items() if count > 1]
    assert not shared, f"two settings read the same env var: {shared}"


def test_every_env_var_the_service_reads_is_documented_in_both_files() -> None:
    markdown = MARKDOWN.read_text(encoding="utf-8")
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    found = _env_vars()
    names = found["flat"] + found["nested"] + found["group"]
    undocumented = [n for n in names if not _mentions(markdown, n)]
    assert not undocumented, f"missing from docs/configuration.md (run `make docs`): {undocumented}"
    unlisted = [n for n in names if not _mentions(example, n)]
    assert not unlisted, f"missing from .env.example (run `make docs`): {unlisted}"
    # Each flat name has its own (commented-out) assignment line in .env.example.
    assigned = set(re.findall(r"^# ([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    assert not set(found["flat"]) - assigned, sorted(set(found["flat"]) - assigned)


def test_every_setting_has_a_description() -> None:
    assert gen.undocumented() == []


# --- (c) secrets -------------------------------------------------------------------------------------


def test_secrets_are_marked_and_left_empty() -> None:
    markdown = MARKDOWN.read_text(encoding="utf-8").splitlines()
    example = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    secrets = _secret_env_vars()
    assert "OPENAI_API_KEY" in secrets and "AZURE_CLIENT_SECRET" in secrets
    for name in secrets:
        (row,) = [line for line in markdown if line.startswith("| ") and f"| `{name}` |" in line]
        assert "**secret**" in row, row
        index = example.index(f"# {name}=")  # the value is empty
        assert "secret" in example[index - 1], example[index - 1]


class _Vault(SettingsGroup):
    ENV_PREFIX = "VAULT_"
    token: SecretStr = Field(default=SecretStr("hunter2-group"), description="A token")
    spare: SecretStr | None = Field(default_factory=lambda: SecretStr("hunter2-factory"), description="Another")
    keys: dict[str, SecretStr] = Field(default={"a": SecretStr("hunter2-mapping")}, description="Keys")


class _Entry(BaseModel):
    key: SecretStr = Field(default=SecretStr("hunter2-model"), description="An entry's key")


class _SecretSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_", env_nested_delimiter="__")
    password: SecretStr = Field(default=SecretStr("hunter2-top"), description="A password")
    vault: _Vault = Field(default_factory=_Vault)
    entries: list[_Entry] = Field(default_factory=list, description="Entries")


def test_the_generator_never_prints_a_default_secret_value() -> None:
    template = "# T\n\n<!-- generate: settings -->\n\n<!-- generate: profile-models -->\n"
    markdown = gen.render_markdown(_SecretSettings, template)
    example = gen.render_env_example(_SecretSettings)
    for text in (markdown, example):
        assert "hunter2" not in text
        assert "**********" not in text  # not even SecretStr's mask
    for name in ("LLM_PASSWORD", "VAULT_TOKEN", "VAULT_SPARE", "VAULT_KEYS"):
        assert f"\n# {name}=\n" in example
        (row,) = [line for line in markdown.splitlines() if f"| `{name}` |" in line]
        assert "**secret**" in row and "*hidden*" in row
    (entry,) = [line for line in markdown.splitlines() if line.startswith("| `key` |")]
    assert "**secret**" in entry and "*hidden*" in entry
