"""The service in a child process, as an operator runs it (`python -m llm_service serve`), and what the
test can see of that process from outside: its log lines, its memory, its sockets and file descriptors.

Linux only: the views read `/proc`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness import stop_process, wait_until
from redis_server import free_port

#: Environment prefixes the service reads: the child gets none of the test process's own.
SERVICE_ENV_PREFIXES = (
    "OPENAI_",
    "OPENROUTER_",
    "AZURE_",
    "VERTEX_",
    "REMOTE_LLM_",
    "GENAI_",
    "LLM_",
    "REDIS_",
    "OTEL_",
)
#: TCP states in /proc/net/tcp that are only a memory of a closed socket, not an open one.
_LISTEN = "0A"


class ServiceProcess:
    """`llm-service serve` on a free loopback port with the profile `profile` (written as YAML) and the
    environment `env` (credentials); its stderr (JSON log lines) goes to `directory/service.log`."""

    def __init__(self, directory: Path, profile: dict[str, Any], env: dict[str, str], *, workers: int = 1) -> None:
        config = directory / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "soak.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
        self.log_path = directory / "service.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        own = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV_PREFIXES)}
        self._env = own | env | {"LLM_CONFIG_DIR": str(config), "LLM_CONFIG_PROFILE": "soak", "LLM_DEMO_MODE": "off"}
        self._cwd = directory
        self._workers = workers
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "llm_service", "serve", "--host", "127.0.0.1", "--port", str(self.port)),
                    *(("--workers", str(self._workers)) if self._workers != 1 else ()),
                ],
                cwd=self._cwd,
                env=self._env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        if not wait_until(self._live, timeout=timeout):
            self.stop()
            raise RuntimeError(f"the service did not start:\n{self.log_path.read_text(errors='replace')}")
        return self

    def exited(self) -> bool:
        """Whether the process has ended (or was never started, or is stopped)."""
        return self._process is None or self._process.poll() is not None

    @property
    def returncode(self) -> int | None:
        """How the process ended, as `Popen.returncode` says (-n: by signal n); None while it runs."""
        return self._process.returncode if self._process is not None else None

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, timeout=10)

    def _live(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------------ what is seen from outside

    def children(self) -> list[int]:
        """The process ids of its workers (with `workers` > 1: spawned processes; not multiprocessing's
        resource tracker, its other child)."""
        found: list[int] = []
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in Path(f"/proc/{self.pid}/task/{task}/children").read_text().split()]
        return [pid for pid in found if b"spawn_main" in _cmdline(pid)]

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (one object each); a line that is not JSON becomes {"raw": line}."""
        records: list[dict[str, Any]] = []
        for line in self.log_lines():
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            records.append(parsed if isinstance(parsed, dict) else {"raw": line})
        return records

    def rss_bytes(self) -> int:
        """Resident memory of the process."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connections_to(self, ports: set[int]) -> int:
        """The process's own TCP sockets (any state but listening) whose peer is one of `ports` on loopback."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            path = Path(f"/proc/{self.pid}/net") / Path(table).name
            if not path.exists():
                continue
            for row in path.read_text().splitlines()[1:]:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[9] in inodes and fields[3] != _LISTEN and remote_port in ports:
                    count += 1
        return count


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""
