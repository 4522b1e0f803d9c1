"""Structural rules of the codebase that review alone would let slip."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from llm_service.core.config.constants import ProviderID

PACKAGE = Path(__file__).resolve().parents[1] / "services" / "llm_service"


def _code(path: Path) -> str:
    """Source without comments and docstrings, so prose may name things."""
    text = re.sub(r'"""[\s\S]*?"""', "", path.read_text(encoding="utf-8"))
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_ensure_client_lives_in_one_file_at_most() -> None:
    holders = [p for p in PACKAGE.rglob("*.py") if "_ensure_client" in p.read_text(encoding="utf-8")]
    assert len(holders) <= 1, holders


def test_factory_and_retry_hold_no_provider_names_or_status_literals() -> None:
    names = "|".join(re.escape(p.value) for p in ProviderID)
    for name in ("factory.py", "retry.py"):
        code = _code(PACKAGE / "core" / "llm" / name)
        assert not re.search(rf"[\"']({names})[\"']", code), f"{name} spells a provider name"
        assert not re.search(r"(?<![\w.])[1-5]\d\d(?![\w.])", code), f"{name} holds a status-code literal"


def test_provider_clients_do_not_read_the_environment_or_know_the_api() -> None:
    for path in (PACKAGE / "core").rglob("*.py"):
        code = _code(path)
        if path.name != "settings.py":
            assert "os.environ" not in code and "getenv" not in code, f"{path.name} reads the environment"
        assert "llm_service.api" not in code and "fastapi" not in code, f"{path.name} depends on the API layer"


def test_the_wheel_carries_the_demo_fixtures_and_profiles(tmp_path: Path) -> None:
    """Demo mode and the default profile must work from an installed wheel, not only from a clone."""
    beside = Path(sys.executable).with_name("uv")
    uv = str(beside) if beside.exists() else shutil.which("uv")
    assert uv, "uv is needed to build the wheel (the Makefile installs it into .venv)"
    repo = PACKAGE.parents[1]
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(tmp_path), str(repo)], check=True, timeout=120)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "llm_service/fakes/fixtures/openai/chat_text.sse" in names
    assert "llm_service/fakes/fixtures/openrouter/chat_tool_call.json" in names
    assert "llm_service/config/default.yaml" in names
