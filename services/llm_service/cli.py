"""`llm-service serve --host H --port P [--workers N]` (also `python -m llm_service serve`), and
`llm-service config`:

- `config check [--profile P] [--strict]` prints every configuration problem, one per line naming its
  culprit (env var, or profile file:line:column and YAML path); exit 1 on an error (with `--strict`,
  on a warning too), else 0 after a short summary.
- `config show [--profile P] [--format yaml|json]` prints the effective configuration, every secret
  masked.
- `hash-key` prints the SHA-256 digest to configure for a caller's key (`LLM_API_KEY_HASHES`), reading
  the key from stdin (or a hidden prompt) so that it stays out of the shell's history; `--generate`
  makes a new key and prints it with its digest.

`serve` runs the same check first: an error stops it before it starts (exit 2, the check's messages on
stderr, no traceback); warnings are logged and it starts. With no API key configured it serves only on
a loopback interface (else exit 2) unless `LLM_ALLOW_UNAUTHENTICATED=true`, and warns that anyone who
reaches it is let in. The first SIGTERM (or Ctrl+C) drains (api/drain.py) before uvicorn shuts down; a
second one shuts down at once. With `--workers N`, N spawned processes serve the one socket, each a
replica of its own (`_serve_workers`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import ipaddress
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, Protocol

import uvicorn
import yaml
from typing_extensions import override

from llm_service.api.drain import CUT_GRACE_SECONDS, Drain
from llm_service.core.config.auth import KEY_PREFIX, AuthSettings, hash_api_key
from llm_service.core.config.settings import Settings
from llm_service.core.config.validation import ConfigReport, check_configuration, effective_configuration
from llm_service.logs import configure_logging
from llm_service.main import create_app

log = logging.getLogger("llm_service")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        return _show(args) if args.config_command == "show" else _check(args)
    if args.command == "hash-key":
        return _hash_key(args)
    return _serve(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-service", description="AgentOne LLM Service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="interface (default: LLM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: LLM_PORT or 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the one port, each a replica of its own (default 1; see docs/deployment.md)",
    )
    config = commands.add_parser("config", help="check or show the configuration (env + profile)")
    actions = config.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="print every configuration problem; exit 1 on an error")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    show = actions.add_parser("show", help="print the effective configuration, secrets masked")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default: yaml)")
    for action in (check, show):
        action.add_argument("--profile", default=None, help="profile to load (default: LLM_CONFIG_PROFILE or default)")
    hash_key = commands.add_parser(
        "hash-key", help="print the digest to configure for an API key read from stdin (LLM_API_KEY_HASHES)"
    )
    hash_key.add_argument("--generate", action="store_true", help="make a new random key; print it and its digest")
    return parser


def _report(args: argparse.Namespace) -> ConfigReport:
    profile: str | None = getattr(args, "profile", None)
    return check_configuration(**({"config_profile": profile} if profile else {}))


def _serve(args: argparse.Namespace) -> int:
    report = _report(args)
    settings = report.settings
    if settings is None:
        # Say every problem, without a traceback, and do not start.
        for problem in report.problems:
            print(f"llm-service: {problem}", file=sys.stderr)
        print(f"llm-service: configuration error: not starting ({_counts(report)})", file=sys.stderr)
        return 2
    # Workers name themselves on every line (`_worker`); their parent too, as the one line source left.
    process_fields = {"pid": os.getpid()} if args.workers > 1 else None
    configure_logging(settings.log_level, settings.telemetry.log_format, process_fields)
    for problem in report.warnings:
        log.warning("configuration warning", extra={"fields": {"where": problem.where, "problem": problem.message}})
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    if args.workers < 1:
        print("llm-service: --workers must be at least 1", file=sys.stderr)
        return 2
    if not _authentication_allows(settings.auth, host):
        return 2
    if args.workers > 1:
        return _serve_workers(settings, host, port, args.workers)
    return _run(settings, host, port)


def _run(
    settings: Settings,
    host: str,
    port: int,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], object] | None = None,
    *,
    parent_sentinel: int | None = None,
) -> int:
    """The service in this process until it is told to stop (on `sockets` if given, else it binds);
    `on_started` once it serves; stopped as by SIGTERM when `parent_sentinel` (a worker's parent) ends."""
    app = create_app(settings, own_process=True)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        backlog=settings.server.backlog,
        # The drain has ended what was in flight by the time uvicorn shuts down: this is for stragglers.
        timeout_graceful_shutdown=int(CUT_GRACE_SECONDS),
    )
    server = DrainingServer(config, app.state.drain, on_started=on_started, parent_sentinel=parent_sentinel)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        # uvicorn raises the SIGINT it stopped on again once shut down, which asyncio makes this: end by
        # the signal instead, quietly (a Ctrl+C that drained cleanly printed a traceback).
        _end_by(signal.SIGINT)
    return 0 if server.started else 3  # 3: uvicorn's code for a failed start (e.g. the port is taken)


def _end_by(sig: int) -> NoReturn:
    """End this process by `sig` with its default action: a supervisor sees the stop it asked for."""
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    raise SystemExit(128 + sig)  # not reached: the signal ends the process first


def _serve_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """`workers` processes serving one listening socket (the kernel hands each connection to one of them),
    each a whole service that counts as a replica (`LLM_REPLICAS` times `workers`, so that limits kept in
    each process add up to the configured ones), on the settings checked here. SIGTERM and SIGINT go to
    every worker, which drains as one process does (a SIGTERM it also got straight, from systemd say, is
    the same stop); the port stops taking connections at once. A worker that dies once the service served
    is started again; one that dies before (it would only fail again: a port, a credential file) stops the
    others, and `serve` exits with its code. A worker whose parent is gone drains and ends."""
    if settings.scale_out.redis_url is None:
        log.warning(
            "several workers without REDIS_URL: each admits its share of every limit, and keeps its own "
            "breakers, resumable streams and tool-call data (a resumption or a conversation's next turn may "
            "reach another worker); set REDIS_URL to share them",
            extra={"fields": {"workers": workers}},
        )
    scale_out = settings.scale_out.model_copy(update={"replicas": settings.scale_out.replicas * workers})
    replica = settings.model_copy(update={"scale_out": scale_out})
    small = limits_below(settings, scale_out.replicas)
    if small:
        log.warning(
            "limits below the number of replicas: each process still admits one, so together they admit more",
            extra={"fields": {"replicas": scale_out.replicas, "limits": small}},
        )
    bind = uvicorn.Config(_no_app, host=host, port=port, backlog=settings.server.backlog, log_config=None)
    listening = bind.bind_socket()
    spawn = multiprocessing.get_context("spawn")

    def new_worker() -> tuple[multiprocessing.process.BaseProcess, _Started]:
        started = spawn.Event()
        return spawn.Process(target=_worker, args=(replica, host, port, listening, started)), started

    pool = _Workers(new_worker, on_stop=listening.close)
    signal.signal(signal.SIGTERM, pool.stop)
    signal.signal(signal.SIGINT, pool.stop)
    try:
        code = pool.run(workers)
    except BaseException:
        pool.kill_all()  # no worker outlives a parent that failed
        raise
    finally:
        listening.close()
    if code == 0 and pool.stopped_by is not None:
        _end_by(pool.stopped_by)  # as one process ends (uvicorn raises it again once shut down)
    return code


def limits_below(settings: Settings, replicas: int) -> list[str]:
    """The deployment limits smaller than `replicas` (`alias: deployment limit=value`): each replica's share
    of such a limit is still 1 (`Limits.share`), so that the replicas together admit more than it."""
    return [
        f"{alias}: {deployment.label} {name}={value}"
        for alias, deployments in settings.aliases.items()
        for deployment in deployments
        for name in ("rpm", "tpm", "max_concurrency")
        if (value := getattr(deployment, name)) is not None and value < replicas
    ]


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The app of the configuration that only binds the workers' socket; never called."""


class _Started(Protocol):
    """A worker's flag, set once it serves (a `multiprocessing.Event`)."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...


def _worker(settings: Settings, host: str, port: int, listening: socket.socket, started: _Started) -> None:
    """One worker (a spawned process), on the settings its parent checked (a worker started again hours
    later serves as the others do, whatever became of the profile file since)."""
    os.setpgrp()  # a terminal's Ctrl+C reaches the parent alone, which stops every worker once
    configure_logging(settings.log_level, settings.telemetry.log_format, {"pid": os.getpid()})
    parent = multiprocessing.parent_process()
    watch = parent.sentinel if parent is not None else None
    sys.exit(_run(settings, host, port, [listening], started.set, parent_sentinel=watch))


#: Signals a worker ends by when it was told to stop: a clean end.
_STOPS = (signal.SIGTERM, signal.SIGINT)
#: The pause before starting again a worker that died before it served, once the service has served;
#: doubled at each such death in a row, up to `_RESTARTS_BEFORE_SERVING` of them, when `serve` gives up
#: (Redis down at every start, say: a supervisor must learn of it rather than clients wait on a port).
_RESTART_PAUSE_SECONDS = 1.0
_RESTARTS_BEFORE_SERVING = 5
#: How long workers have to end after a failure of `serve` itself before they are killed.
_KILL_AFTER_SECONDS = 10.0


class _Workers:
    """The worker processes: started, started again when one dies, stopped on a signal."""

    def __init__(
        self, new: Callable[[], tuple[multiprocessing.process.BaseProcess, _Started]], on_stop: Callable[[], None]
    ) -> None:
        self._new = new
        self._on_stop = on_stop
        self._running: dict[multiprocessing.process.BaseProcess, _Started] = {}
        self._stopping = False
        self._served = False  # a worker of this service has served
        self._failed_in_a_row = 0  # workers that died before serving since one last served
        #: The first signal that stopped the workers, if one did.
        self.stopped_by: int | None = None

    def run(self, workers: int) -> int:
        for _ in range(workers):
            self._start()
        code = 0
        while self._running:
            ended = multiprocessing.connection.wait([p.sentinel for p in self._running], timeout=1.0)
            self._served = self._served or any(started.is_set() for started in self._running.values())
            for process in [p for p in self._running if p.sentinel in ended]:
                started = self._running.pop(process)
                process.join()
                exitcode = process.exitcode if process.exitcode is not None else 1
                if self._stopping:
                    code = code or (0 if -exitcode in _STOPS else _exit_status(exitcode))
                    continue
                served = started.is_set()
                log.error(
                    "worker ended",
                    extra={"fields": {"worker_pid": process.pid, "exit_code": exitcode, "served": served}},
                )
                self._failed_in_a_row = 0 if served else self._failed_in_a_row + 1
                if served:
                    self._start()
                elif self._served and self._failed_in_a_row <= _RESTARTS_BEFORE_SERVING:
                    # The service works: a passing failure (memory, say); try again, later each time.
                    time.sleep(_RESTART_PAUSE_SECONDS * 2 ** (self._failed_in_a_row - 1))
                    self._start()
                else:
                    code = _exit_status(exitcode) or 1
                    self._signal_all(signal.SIGTERM)  # it would fail again: stop the rest
        return code

    def stop(self, sig: int, frame: FrameType | None) -> None:
        """The handler of SIGTERM and SIGINT: the signal for every worker (a second one too: each then
        shuts down at once)."""
        if self.stopped_by is None:
            self.stopped_by = sig
        self._signal_all(sig)

    def kill_all(self) -> None:
        """Stop every worker, and kill those still running after `_KILL_AFTER_SECONDS`."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + _KILL_AFTER_SECONDS
        for process in list(self._running):
            process.join(max(deadline - time.monotonic(), 0))
            if process.exitcode is None:
                process.kill()
                process.join()

    def _signal_all(self, sig: int) -> None:
        if not self._stopping:
            self._stopping = True
            self._on_stop()  # the port refuses new connections from now on (the workers close theirs)
        for process, started in self._running.items():
            if process.pid is not None and process.exitcode is None:
                # A worker still starting has no handler of its own yet: SIGTERM ends it quietly, where
                # SIGINT would be a KeyboardInterrupt with its traceback.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig if started.is_set() else signal.SIGTERM)

    def _start(self) -> None:
        if self._stopping:
            return
        process, started = self._new()
        process.start()
        self._running[process] = started
        if self._stopping and process.pid is not None:  # the signal came while it started
            os.kill(process.pid, self.stopped_by or signal.SIGTERM)


def _exit_status(exitcode: int) -> int:
    """A process's exit code as a shell reports it (a signal n: 128 + n)."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _authentication_allows(auth: AuthSettings, host: str) -> bool:
    """With no key configured: only on loopback, unless allowed; a warning either way."""
    if auth.enabled():
        return True
    if not _is_loopback(host) and not auth.allow_unauthenticated:
        print(
            f"llm-service: no API key is configured (LLM_API_KEY_HASHES), so the service serves only on a "
            f"loopback interface, not on {host}: configure keys (`llm-service hash-key --generate`), or set "
            "LLM_ALLOW_UNAUTHENTICATED=true to let in anyone who reaches it",
            file=sys.stderr,
        )
        return False
    log.warning(
        "no API key configured (LLM_API_KEY_HASHES): every caller that reaches the service is let in",
        extra={"fields": {"host": host}},
    )
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


#: A SIGTERM this soon after the one that began a drain is the same stop, not a second one (which would
#: end the drain at once).
_SAME_STOP_SECONDS = 2.0


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM or SIGINT drains (`Drain.run`: no new connections, readiness 503,
    what is in flight finishes or is ended at the deadline) before uvicorn's own shutdown and the
    lifespan's; a second signal goes to uvicorn (shut down now; a third Ctrl+C: exit at once), except a
    SIGTERM within `_SAME_STOP_SECONDS` of the first: the same stop told twice."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Drain,
        *,
        on_started: Callable[[], object] | None = None,
        parent_sentinel: int | None = None,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self._on_started = on_started
        self._parent_sentinel = parent_sentinel
        self._drain_signal: tuple[int, float] | None = None  # the signal that began the drain, and when
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._drain_requested = False

    @override
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self._parent_sentinel is not None:
            # A worker whose `serve` is gone (killed, say) must not go on serving with nobody in charge.
            self._loop.add_reader(self._parent_sentinel, self._parent_gone)
        if self.started and self._on_started is not None:
            self._on_started()

    def _parent_gone(self) -> None:
        assert self._loop is not None and self._parent_sentinel is not None
        self._loop.remove_reader(self._parent_sentinel)
        log.warning("the parent process is gone: draining")
        self.handle_exit(signal.SIGTERM, None)

    @override
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        first = self._drain_signal
        if first is not None and sig == signal.SIGTERM == first[0] and time.monotonic() - first[1] < _SAME_STOP_SECONDS:
            return  # the same stop told twice (systemd signals every process of a unit, and `serve` too)
        if self._drain_requested or loop is None or not self.started or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        self._drain_signal = (sig, time.monotonic())
        self._captured_signals.append(sig)  # re-raised after the shutdown, as uvicorn does
        loop.call_soon_threadsafe(self._start_drain)  # a signal handler runs between any two bytecodes

    def _start_drain(self) -> None:
        self._draining = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.drain.run(stop_accepting=self._stop_accepting)
        finally:
            self.should_exit = True

    def _stop_accepting(self) -> None:
        for server in self.servers:
            server.close()


def _hash_key(args: argparse.Namespace) -> int:
    """Print the digest of the key on stdin (a prompt on a terminal), or of a new key along with it."""
    if args.generate:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        print(f"key:  {key}")
        print(f"hash: {hash_api_key(key)}")
        print("Give the key to its caller; configure only the hash. The key is not shown again.", file=sys.stderr)
        return 0
    key = getpass.getpass("API key (not shown): ") if sys.stdin.isatty() else sys.stdin.read()
    key = key.strip()
    if not key:
        print("llm-service: no key on stdin (or use --generate to make one)", file=sys.stderr)
        return 2
    print(hash_api_key(key))
    return 0


def _check(args: argparse.Namespace) -> int:
    report = _report(args)
    for problem in report.problems:
        print(problem)
    settings = report.settings
    if settings is None:
        print(f"configuration has errors: {_counts(report)}")
        return 1
    source = report.profile_file if report.profile_loaded else f"no {report.profile_file}: defaults only"
    count = len(report.warnings)
    warnings = f" ({count} warning{'s' * (count != 1)})" if count else ""
    providers = ", ".join(p.value for p in settings.configured_providers()) or "none"
    demo = " (demo mode: the built-in fixtures serve every provider)" if settings.demo_enabled() else ""
    print(f"configuration OK{warnings}: profile {report.profile!r} ({source})")
    print(f"  providers: {providers}{demo}")
    print(f"  aliases:   {', '.join(sorted(settings.aliases)) or 'none'}")
    return 1 if args.strict and report.warnings else 0


def _show(args: argparse.Namespace) -> int:
    report = _report(args)
    if report.settings is None:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(f"configuration has errors: {_counts(report)}", file=sys.stderr)
        return 1
    data: dict[str, Any] = effective_configuration(report.settings)
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return 0


def _counts(report: ConfigReport) -> str:
    errors, warnings = len(report.errors), len(report.warnings)
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


if __name__ == "__main__":
    sys.exit(main())
