"""The service's own CPU per request or chunk, in one process, next to the bare passthrough's.

`make bench` measures whole servers (uvicorn included) from /proc; on a noisy machine its figures move by
±20% from run to run. This drives both ASGI apps directly (no uvicorn, no load client in the way) against
the benchmark upstream in another process, and counts this process's CPU time (`time.process_time`), so
a change of a few µs on the hot path shows in one run of a minute. What it leaves out (uvicorn's own
cost, about the same for both) is what `make bench` adds; use it while working, and `make bench` for the
record. Under py-spy (`py-spy record -- python -m benchmarks.inproc`) it shows where the service's time
goes without another process's samples mixed in.

With `--bytecodes` it counts, instead of CPU time, the Python bytecodes each app runs per request or
chunk (`sys.settrace` opcode events; C code, the event loop included, is not counted): a figure that
does not move with the machine's load, so a change of a few bytecodes on the hot path shows in one run,
with the service's functions that run the most of them.

    python -m benchmarks.inproc [--stream] [--pace MS] [--requests N] [--rounds N] [--bytecodes]
                                [--floor] [--fused] [--without LAYERS] [--instructions]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import uvloop

from benchmarks.floor import Floor
from benchmarks.fused import install as install_fused
from benchmarks.layers import LAYERS, without
from benchmarks.passthrough import Passthrough
from benchmarks.run import _child_env, _profile_yaml, free_port
from benchmarks.upstream import raise_fd_limit
from benchmarks.wire import Scenario, request_body
from llm_service.logs import configure_logging

App = Callable[[Any, Any, Any], Awaitable[None]]
CONCURRENCY = 32


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }


async def _one(app: App, body: bytes) -> None:
    """One request over ASGI: the body at once, then a client that stays (no disconnect) until the
    response is complete, when `receive()` answers `http.disconnect` as uvicorn's does."""
    first = True
    complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False) and not complete.done():
            complete.set_result(None)

    await app(_scope(body), receive, send)
    if status != 200:
        raise RuntimeError(f"the app answered {status}")


async def _load(app: App, body: bytes, requests: int) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with gate:
            await _one(app, body)

    await asyncio.gather(*(one() for _ in range(requests)))


async def _cpu_per(app: App, body: bytes, requests: int, units: int) -> float:
    """µs of this process's CPU per unit (request or chunk) over `requests` requests."""
    await _load(app, body, max(requests // 10, CONCURRENCY))  # warm-up
    started = time.process_time()
    await _load(app, body, requests)
    return (time.process_time() - started) / (requests * units) * 1e6


class BytecodeCounter:
    """Python bytecodes run, by function (`file:line:name`), while it is installed with `sys.settrace`."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        where = f"{_short(code.co_filename)}:{code.co_firstlineno}:{code.co_name}"
        counts = self.counts

        def count(frame: FrameType, event: str, arg: object) -> Any:
            if event == "opcode":
                counts[where] += 1
            return count

        return count


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/services/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def _bytecodes_per(app: App, body: bytes, requests: int, units: int) -> collections.Counter[str]:
    """Bytecodes per unit, by function, over `requests` requests (after a warm-up)."""
    await _load(app, body, max(requests // 10, CONCURRENCY))
    counter = BytecodeCounter()
    sys.settrace(counter)
    try:
        await _load(app, body, requests)
    finally:
        sys.settrace(None)
    return collections.Counter({k: v / (requests * units) for k, v in counter.counts.items()})


async def measure(
    upstream: str,
    scenario: Scenario,
    *,
    stream: bool,
    requests: int,
    rounds: int,
    bytecodes: bool = False,
    floor: bool = False,
    fused: bool = False,
    only: str | None = None,
) -> dict[str, Any]:
    """Both apps (with `floor`, the floor too: benchmarks/floor.py), `rounds` rounds of `requests` each (CPU
    time, or one round counting bytecodes); `only` one app ("passthrough", "service" or "floor"): a warm-up
    and `requests` requests of it, nothing measured (what `--instructions` runs under callgrind)."""
    from llm_service.core.config.settings import Settings
    from llm_service.main import create_app, tune_gc

    body = request_body(scenario.model, stream=stream)
    units = scenario.chunks if stream else 1
    through = Passthrough(upstream)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    through.session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    service = create_app(Settings())
    apps: dict[str, App] = {"passthrough": through, "service": service}
    if floor or only == "floor":
        apps["floor"] = Floor(upstream, through.session)
    second = None
    if fused or only == "fused":
        second = create_app(Settings())  # a service of its own, its chat path the fused one (benchmarks/fused.py)
        install_fused(second)
        apps["fused"] = second
    figures: dict[str, list[float]] = {name: [] for name in apps}
    functions: dict[str, collections.Counter[str]] = {}
    try:
        async with service.router.lifespan_context(service), _started(second):
            tune_gc()  # as `llm-service serve` does
            if only is not None:
                await _load(apps[only], body, CONCURRENCY * 2)  # warm-up: what a first request does once
                await _load(apps[only], body, requests)
                return {}
            if bytecodes:
                for name, app in apps.items():
                    counted = await _bytecodes_per(app, body, requests, units)
                    figures[name].append(counted.total())
                    functions[name] = counted
            for _ in range(0 if bytecodes else rounds):  # interleaved: a drift of the machine touches all alike
                for name, app in apps.items():
                    figures[name].append(await _cpu_per(app, body, requests, units))
    finally:
        await through.session.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    return {
        "unit": "chunk" if stream else "request",
        "rounds": figures,
        "ratios": {name: value / medians["passthrough"] for name, value in medians.items() if name != "passthrough"},
        "functions": functions,
    }


@contextlib.asynccontextmanager
async def _started(app: Any) -> AsyncIterator[None]:
    """`app`'s lifespan, if there is an app."""
    if app is None:
        yield
        return
    async with app.router.lifespan_context(app):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--stream", action="store_true", help="100-chunk streams (CPU per chunk)")
    parser.add_argument("--pace", type=int, default=10, help="ms between a stream's chunks (default 10)")
    parser.add_argument("--requests", type=int, help="requests per round (default 3000; streams: 320)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bytecodes", action="store_true", help="count Python bytecodes instead of CPU time")
    parser.add_argument("--top", type=int, default=40, help="with --bytecodes: the service's functions shown")
    parser.add_argument(
        "--without",
        type=lambda text: [layer for layer in text.split(",") if layer],
        default=[],
        help=f"take these layers out of the service (comma-separated: {', '.join(LAYERS)}; benchmarks/layers.py)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count machine instructions (C included) under valgrind's callgrind instead of CPU time",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure the floor too (benchmarks/floor.py: the per-request target's features, inlined)",
    )
    parser.add_argument(
        "--fused",
        action="store_true",
        help="measure a fused chat path too (benchmarks/fused.py: the service's own parts on one flat path)",
    )
    # --instructions' runs, each of one app
    parser.add_argument("--only", choices=("passthrough", "service", "floor", "fused"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)  # theirs, started by the run that counts
    args = parser.parse_args(argv)
    if (args.floor or args.fused) and args.stream:
        parser.error("--floor and --fused measure non-streaming requests only")
    raise_fd_limit()
    if args.instructions:
        return _count_instructions(args, argv if argv is not None else sys.argv[1:])
    scenario = Scenario(100, 0, args.pace if args.stream else 0)
    requests = args.requests or ((32 if args.stream else 300) if args.bytecodes else (320 if args.stream else 3000))
    with tempfile.TemporaryDirectory(prefix="llm-inproc-") as tmp, _upstream(args.upstream) as upstream:
        Path(tmp, "bench.yaml").write_text(_profile_yaml([scenario.model], upstream))
        os.environ.update(
            LLM_CONFIG_DIR=tmp,
            LLM_CONFIG_PROFILE="bench",
            LLM_DEMO_MODE="off",
            REMOTE_LLM_BASE_URL=f"{upstream}/v1",
            REMOTE_LLM_API_KEY="sk-bench-0123456789abcdef",
        )
        configure_logging("INFO", "json")  # as the service logs, to nowhere
        with open(os.devnull, "w") as sink:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.setStream(sink)
            run = measure(
                upstream,
                scenario,
                stream=args.stream,
                requests=requests,
                rounds=args.rounds,
                bytecodes=args.bytecodes,
                floor=args.floor,
                fused=args.fused,
                only=args.only,
            )
            with without(args.without):
                result = uvloop.run(run)
    if args.only is not None:
        return 0
    if args.without:
        print(f"the service without: {', '.join(args.without)}")
    if args.bytecodes:
        for name, values in result["rounds"].items():
            print(f"{name}: {values[0]:,.0f} bytecodes per {result['unit']}")
        _print_ratios(result["ratios"])
        counted = result["functions"]
        print(f"the service's {args.top} busiest functions (bytecodes per {result['unit']}):")
        for where, count in counted["service"].most_common(args.top):
            print(f"{count:8,.1f}  {where}")
        # What the service runs more of than the passthrough, function by function: where its excess is.
        excess = collections.Counter(counted["service"])
        excess.subtract(counted["passthrough"])
        print(f"the {args.top} functions the service runs most more of than the passthrough:")
        for where, count in excess.most_common(args.top):
            print(f"{count:8,.1f}  {where}")
        return 0
    for name, values in result["rounds"].items():
        shown = ", ".join(f"{v:,.1f}" for v in values)
        print(f"{name}: {statistics.median(values):,.1f} µs per {result['unit']} (rounds: {shown})")
    _print_ratios(result["ratios"])
    return 0


def _print_ratios(ratios: dict[str, float]) -> None:
    for name, ratio in ratios.items():
        print(f"{name} / passthrough: {ratio:.2f}x")


@contextlib.contextmanager
def _upstream(url: str | None) -> Iterator[str]:
    """The benchmark upstream at `url`, or one started for the run (and stopped after it)."""
    if url is not None:
        yield url
        return
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.upstream", "--port", str(port)], env=_child_env(), stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


#: Requests (streams: tenths of them) of the two runs under callgrind whose difference is counted: what
#: starting the process, importing and warming up costs is the same in both, and drops out.
_FEWER, _MORE = 100, 400


def _count_instructions(args: argparse.Namespace, argv: list[str]) -> int:
    """Instructions per request (or chunk) of each app: two runs of it under callgrind, of `_FEWER` and
    `_MORE` requests, their difference divided by the requests between them. Deterministic: a figure that
    does not move with the machine's load, C code (the event loop, orjson, the allocator) included."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("--instructions needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    units = 100 if args.stream else 1
    fewer, more = (_FEWER // 10, _MORE // 10) if args.stream else (_FEWER, _MORE)
    passed = [a for a in argv if a not in ("--instructions", "--bytecodes", "--floor", "--fused")]
    per_unit: dict[str, float] = {}
    with _upstream(args.upstream) as upstream:
        for app in ("passthrough", "service", *(["floor"] if args.floor else []), *(["fused"] if args.fused else [])):
            counted = []
            for requests in (fewer, more):
                command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m"]
                command += ["benchmarks.inproc", *passed, "--only", app, "--requests", str(requests)]
                done = subprocess.run(
                    [*command, "--upstream", upstream], capture_output=True, text=True, check=False, env=_child_env()
                )
                found = re.search(r"Collected : (\d+)", done.stderr)
                if done.returncode != 0 or found is None:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                counted.append(int(found.group(1)))
            per_unit[app] = (counted[1] - counted[0]) / ((more - fewer) * units)
    if args.without:
        print(f"the service without: {', '.join(args.without)}")
    unit = "chunk" if args.stream else "request"
    for app, count in per_unit.items():
        print(f"{app}: {count:,.0f} instructions per {unit}")
    _print_ratios({app: count / per_unit["passthrough"] for app, count in per_unit.items() if app != "passthrough"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
