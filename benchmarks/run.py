"""`make bench`: the service, a bare passthrough and the upstream itself, measured side by side.

Starts, as separate processes on free loopback ports, the upstream (`upstream.py`), the bare
reference passthrough (`passthrough.py`) and the service (`python -m llm_service serve`, configured
as in production: a profile with aliases, limits and a fallback, so that the dispatcher, limits and
breakers work; metrics on; JSON logs at INFO to a file; stream resumption on). Then, for each target
(direct to the upstream, passthrough, service), with the load client (`load.py`) as another process:

- non-streaming requests at concurrency 32 (requests/s, latency, CPU per request), and one at a time
  (latency added over calling the upstream directly);
- 100-chunk streams paced as a model writes (a chunk every 10 ms: CPU per chunk, time to first byte),
  and unpaced (chunks/s);
- slow streams, thousands at once: 300 ms to the first byte, then 20 chunks 500 ms apart (every stream
  must complete with its exact text; peak RSS);
- then, for the service only, a soak (default 5 minutes) that samples its RSS.

CPU is utime + stime of each server's process tree from /proc before and after each run. The report
(markdown) goes to docs/performance.md and stdout; `--smoke` runs the same with tiny counts in seconds
(to build/bench/ unless `--output` says otherwise) and exits 1 if any target failed to answer.

    python -m benchmarks.run [--smoke] [--output FILE] [--json FILE] [--profile] [--soak SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from benchmarks import proc
from benchmarks.report import kept_notes, profile_lines, render
from benchmarks.upstream import raise_fd_limit
from benchmarks.wire import Scenario

ROOT = Path(__file__).resolve().parents[1]
DIRECT, PASSTHROUGH, SERVICE = "direct", "passthrough", "service"
TARGETS = (DIRECT, PASSTHROUGH, SERVICE)
#: The runs every target goes through.
RUNS = ("json_c32", "json_c1", "stream_paced", "stream_burst", "slow")
#: The soak's resume TTL (s): short, so that the store of ended streams is full early in the run.
SOAK_RESUME_TTL_S = 60
#: Environment the service must not inherit: it is configured by the benchmark alone.
_FOREIGN_ENV = ("LLM_", "OPENAI_", "OPENROUTER_", "AZURE_", "VERTEX_", "REMOTE_LLM_", "GENAI_PLATFORM_", "OTEL_")


@dataclass(frozen=True)
class Sizes:
    json_requests: int
    seq_requests: int
    concurrency: int
    stream_requests: int
    stream_chunks: int
    pace_ms: int
    burst_requests: int
    slow_streams: int
    slow_chunks: int
    slow_first_ms: int
    slow_interval_ms: int
    slow_ramp_s: float
    warmup: int
    rounds: int
    soak_s: float

    @property
    def paced(self) -> Scenario:
        return Scenario(self.stream_chunks, 0, self.pace_ms)

    @property
    def burst(self) -> Scenario:
        return Scenario(self.stream_chunks, 0, 0)

    @property
    def slow(self) -> Scenario:
        return Scenario(self.slow_chunks, self.slow_first_ms, self.slow_interval_ms)

    @property
    def json(self) -> Scenario:
        return Scenario(self.stream_chunks, 0, 0)


FULL = Sizes(
    json_requests=4000,
    seq_requests=400,
    concurrency=32,
    stream_requests=320,
    stream_chunks=100,
    pace_ms=10,
    burst_requests=320,
    slow_streams=5000,
    slow_chunks=20,
    slow_first_ms=300,
    slow_interval_ms=500,
    slow_ramp_s=5.0,
    warmup=200,
    # Five, not three: on this shared machine a target's CPU per request moves by up to 40% from one
    # round to the next (the core's speed, not the code), and the median of five moves less.
    rounds=5,
    soak_s=300.0,
)
SMOKE = Sizes(
    json_requests=24,
    seq_requests=5,
    concurrency=4,
    stream_requests=4,
    stream_chunks=10,
    pace_ms=2,
    burst_requests=4,
    slow_streams=20,
    slow_chunks=3,
    slow_first_ms=30,
    slow_interval_ms=50,
    slow_ramp_s=0.1,
    warmup=0,
    rounds=1,
    soak_s=0.0,
)


# ------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    ready_path: str
    log: Path
    cwd: Path = ROOT
    env: dict[str, str] = dataclasses.field(default_factory=_child_env)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=log)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.base + self.ready_path, timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {self.ready_path} within {timeout:g}s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _profile_yaml(models: list[str], upstream: str) -> str:
    """A production-like profile: each alias has a primary deployment with limits and a fallback."""
    lines = ["log_level: INFO", "telemetry:", "  log_format: json", "  metrics_enabled: true", "aliases:"]
    for model in models:
        lines += [
            f"  {model}:",
            "    - provider: remote",
            f"      model: {model}",
            "      rpm: 6000000",
            "      tpm: 6000000000",
            "      max_concurrency: 20000",
            "    - provider: remote   # the fallback: its own client and pool; never needed here",
            f"      model: {model}",
            f"      base_url: {upstream}/v1",
            "      max_concurrency: 20000",
        ]
    return "\n".join(lines) + "\n"


def servers(workdir: Path, sizes: Sizes, service_workers: int = 1) -> dict[str, Server]:
    python = sys.executable
    up = Server("upstream", [], free_port(), "/health", workdir / "upstream.log")
    up.argv = [python, "-m", "benchmarks.upstream", "--port", str(up.port)]
    through = Server("passthrough", [], free_port(), "/health", workdir / "passthrough.log")
    through.argv = [python, "-m", "benchmarks.passthrough", "--port", str(through.port), "--upstream", up.base]
    models = [s.model for s in (sizes.json, sizes.paced, sizes.burst, sizes.slow)]
    (workdir / "bench.yaml").write_text(_profile_yaml(sorted(set(models)), up.base))
    service_env = _child_env(
        LLM_CONFIG_DIR=str(workdir),
        LLM_CONFIG_PROFILE="bench",
        LLM_DEMO_MODE="off",
        REMOTE_LLM_BASE_URL=f"{up.base}/v1",
        REMOTE_LLM_API_KEY="sk-bench-0123456789abcdef",
    )
    service = Server("service", [], free_port(), "/health/ready", workdir / "service.log", workdir, service_env)
    service.argv = [python, "-m", "llm_service", "serve", "--host", "127.0.0.1", "--port", str(service.port)]
    if service_workers > 1:  # its CPU and memory are read over its process tree: every worker counts
        service.argv += ["--workers", str(service_workers)]
    return {"upstream": up, PASSTHROUGH: through, SERVICE: service}


@contextlib.contextmanager
def running(all_servers: dict[str, Server]) -> Iterator[None]:
    try:
        for server in all_servers.values():
            server.start()
        for server in all_servers.values():
            server.wait_ready()
        yield
    finally:
        for server in reversed(all_servers.values()):
            server.stop()


# ------------------------------------------------------------------------------------------- runs


@dataclass
class Bench:
    sizes: Sizes
    servers: dict[str, Server]
    workdir: Path
    #: The runs to do (`--only`; default: all of RUNS).
    only: frozenset[str] = frozenset(RUNS)

    def url(self, target: str) -> str:
        server = self.servers["upstream" if target == DIRECT else target]
        return f"{server.base}/v1/chat/completions"

    def gateway(self, target: str) -> Server | None:
        return None if target == DIRECT else self.servers[target]

    def load(
        self, target: str, scenario: Scenario, *, stream: bool, requests: int, concurrency: int, **opts: Any
    ) -> Any:
        argv = [sys.executable, "-m", "benchmarks.load", "--url", self.url(target), "--model", scenario.model]
        argv += ["--requests", str(requests), "--concurrency", str(concurrency)]
        argv += ["--stream"] if stream else []
        for key, value in opts.items():
            argv += [f"--{key}", str(value)]
        done = subprocess.run(argv, cwd=ROOT, env=_child_env(), capture_output=True, check=False, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"load client failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
        return orjson.loads(done.stdout)

    def measure(
        self, target: str, scenario: Scenario, *, stream: bool, requests: int, concurrency: int, **opts: Any
    ) -> dict[str, Any]:
        """One load run against `target`, with the CPU and memory of the gateway and the upstream."""
        gateway = self.gateway(target)
        upstream = self.servers["upstream"]
        watched = gateway or upstream
        proc.reset_peak(watched.pid)
        cpu = {name: proc.cpu_seconds(s.pid) for name, s in self.servers.items()}
        tcp = proc.tcp_counters()
        with proc.RSSSampler(watched.pid) as sampler:
            result: dict[str, Any] = self.load(
                target, scenario, stream=stream, requests=requests, concurrency=concurrency, **opts
            )
        used = {name: proc.cpu_seconds(s.pid) - cpu[name] for name, s in self.servers.items()}
        result["tcp"] = {k: v - tcp.get(k, 0) for k, v in proc.tcp_counters().items()}
        result["gateway_cpu_s"] = round(used[target], 3) if gateway is not None else None
        result["upstream_cpu_s"] = round(used["upstream"], 3)
        result["peak_rss"] = sampler.peak
        result["hwm"] = proc.hwm_bytes(watched.pid)
        result["rss_after"] = proc.rss_bytes(watched.pid)
        return result


def _per(seconds: float | None, count: int) -> float | None:
    return None if seconds is None or not count else round(seconds / count * 1e6, 1)


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rounds(bench: Bench, name: str, key: str, **load: Any) -> dict[str, Any]:
    """`rounds` runs of one load per target, interleaved (direct, passthrough, service, direct, ...), so
    that a drift in the machine's load touches every target alike; per target the run with the median
    CPU per `key` (request or chunk) is kept, with every round's figure."""
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for round_ in range(bench.sizes.rounds):
        for target in TARGETS:
            result = bench.measure(target, **load)
            count = result["completed"] if key == "request" else result["chunks"]
            result["cpu_us"] = _per(result["gateway_cpu_s"], count)
            result["upstream_cpu_us"] = _per(result["upstream_cpu_s"], count)
            result["client_cpu_us"] = _per(result["client_cpu_s"], count)
            runs[target].append(result)
            _say(f"{name} round {round_ + 1} {target}: {_brief(result, key)}")
    chosen: dict[str, Any] = {}
    for target, results in runs.items():
        ranked = sorted(results, key=lambda r: r["cpu_us"] if r["cpu_us"] is not None else r["upstream_cpu_us"] or 0)
        best = dict(ranked[len(ranked) // 2])
        best["cpu_us_rounds"] = [r["cpu_us"] for r in results]
        chosen[target] = best
    return chosen


def _brief(result: dict[str, Any], key: str) -> str:
    lat = result["latency_ms"]
    cpu = f", gateway {result['cpu_us']} µs/{key}" if result.get("cpu_us") is not None else ""
    fails = f", FAILED {result['failed']} {result['errors']}" if result["failed"] else ""
    return f"{result['completed']}/{result['issued']} ok, {result['rps']}/s, p50 {lat.get('p50')} ms{cpu}{fails}"


def run_all(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    c = sizes.concurrency
    results: dict[str, Any] = {}
    if sizes.warmup:
        _say("warm-up")
    for target in TARGETS if sizes.warmup else ():
        bench.load(target, sizes.json, stream=False, requests=sizes.warmup, concurrency=c)
        bench.load(target, sizes.burst, stream=True, requests=max(1, sizes.warmup // 4), concurrency=c)
    if "json_c32" in bench.only:
        results["json_c32"] = _rounds(
            bench, "json", "request", scenario=sizes.json, stream=False, requests=sizes.json_requests, concurrency=c
        )
    if "json_c1" in bench.only:
        results["json_c1"] = {}
    for target in TARGETS if "json_c1" in bench.only else ():
        results["json_c1"][target] = result = bench.measure(
            target, sizes.json, stream=False, requests=sizes.seq_requests, concurrency=1
        )
        result["cpu_us"] = _per(result["gateway_cpu_s"], result["completed"])
        _say(f"json one at a time {target}: {_brief(result, 'request')}")
    if "stream_paced" in bench.only:
        results["stream_paced"] = _rounds(
            bench,
            "paced streams",
            "chunk",
            scenario=sizes.paced,
            stream=True,
            requests=sizes.stream_requests,
            concurrency=c,
            # Started over one stream's length, so that streams do not begin in waves of `c` at once.
            ramp=sizes.stream_chunks * sizes.pace_ms / 1000,
        )
    if "stream_burst" in bench.only:
        results["stream_burst"] = _rounds(
            bench,
            "unpaced streams",
            "chunk",
            scenario=sizes.burst,
            stream=True,
            requests=sizes.burst_requests,
            concurrency=c,
        )
    if "slow" in bench.only:
        results["slow"] = {}
    for target in TARGETS if "slow" in bench.only else ():
        n = sizes.slow_streams
        result = bench.measure(
            target, sizes.slow, stream=True, requests=n, concurrency=n, ramp=sizes.slow_ramp_s, timeout=300
        )
        result["cpu_us"] = _per(result["gateway_cpu_s"], result["chunks"])
        results["slow"][target] = result
        _say(f"slow streams {target}: {_brief(result, 'chunk')}, open at once {result['open_peak']}")
    results["service_checks"] = service_checks(bench)
    return results


def soak(bench: Bench) -> dict[str, Any]:
    """A service of its own under a steady mixed load (non-streaming and paced 100-chunk streams, 4 + 4
    clients) for `soak_s` seconds, its RSS sampled. Its resumable streams are kept `SOAK_RESUME_TTL_S`
    instead of the default 300 s, so that the store of ended streams is full after a minute and what
    grows after that is not by design."""
    sizes = bench.sizes
    main = bench.servers[SERVICE]
    port = free_port()
    env = dict(main.env, LLM_STREAM_RESUME_TTL_SECONDS=str(SOAK_RESUME_TTL_S))
    argv = [*main.argv[:-1], str(port)]
    service = Server("service (soak)", argv, port, "/health/ready", bench.workdir / "service-soak.log", main.cwd, env)
    _say(f"soak: {sizes.soak_s:g}s of mixed load on a service of its own (resume TTL {SOAK_RESUME_TTL_S}s)")
    with running({"soak": service}):
        url = f"{service.base}/v1/chat/completions"
        load = [sys.executable, "-m", "benchmarks.load", "--url", url, "--concurrency", "4"]
        load += ["--duration", str(sizes.soak_s)]
        cpu0 = proc.cpu_seconds(service.pid)
        started = time.monotonic()
        timeline: list[tuple[float, int]] = []
        loads = [
            subprocess.Popen([*load, "--model", sizes.json.model], cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE),
            subprocess.Popen(
                [*load, "--model", sizes.paced.model, "--stream"], cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE
            ),
        ]
        while any(p.poll() is None for p in loads):
            timeline.append((round(time.monotonic() - started, 1), proc.rss_bytes(service.pid)))
            time.sleep(min(5.0, max(0.5, sizes.soak_s / 60)))
        timeline.append((round(time.monotonic() - started, 1), proc.rss_bytes(service.pid)))
        outs = [orjson.loads(p.communicate()[0]) for p in loads]
        cpu = proc.cpu_seconds(service.pid) - cpu0
    completed = sum(o["completed"] for o in outs)
    result = {
        "seconds": sizes.soak_s,
        "resume_ttl_s": SOAK_RESUME_TTL_S,
        "completed": completed,
        "streams": outs[1]["completed"],
        "failed": sum(o["failed"] for o in outs),
        "errors": [o["errors"] for o in outs],
        "rss_timeline": timeline,
        "cpu_us": _per(cpu, completed),
    }
    first, last = timeline[0][1] // 2**20, timeline[-1][1] // 2**20
    _say(f"soak: {completed} requests, {result['failed']} failed, RSS {first} -> {last} MB")
    return result


def service_checks(bench: Bench) -> dict[str, Any]:
    """That the service ran as configured: the access-log lines it wrote and the requests its metrics counted."""
    service = bench.servers[SERVICE]
    with urllib.request.urlopen(service.base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counted = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("llm_gateway_requests_total{")
    )
    log_lines = sum(
        1
        for line in service.log.read_bytes().splitlines()
        if b'"event":"request"' in line and b'"path":"/v1/chat/completions"' in line
    )
    return {"metrics_requests": int(counted), "access_log_lines": log_lines}


# ------------------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    versions: dict[str, str] = {}
    for dist in ("uvicorn", "uvloop", "httptools", "aiohttp", "fastapi", "starlette", "orjson", "pydantic"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commit": (commit.stdout.strip() or "unknown")
        + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
    }


def cpu_ratios(results: dict[str, Any]) -> list[str]:
    """Per run: the gateways' CPU per request or chunk, and the service's over the passthrough's."""
    lines = []
    for run in RUNS:
        if run not in results:
            continue
        through, service = results[run][PASSTHROUGH].get("cpu_us"), results[run][SERVICE].get("cpu_us")
        ratio = f"{service / through:.2f}x" if through and service else "-"
        lines.append(f"{run}: passthrough {through} µs, service {service} µs, {ratio}")
    return lines


def failures(results: dict[str, Any]) -> list[str]:
    """Targets that failed to answer some request, by run."""
    found = []
    for run in RUNS:
        for target, result in results.get(run, {}).items():
            if result["failed"] or not result["completed"]:
                found.append(f"{run}/{target}: {result['completed']} ok, {result['failed']} failed {result['errors']}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the service against a bare passthrough and the upstream")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds: checks that it all works")
    parser.add_argument(
        "--output", type=Path, help="the markdown report (default: docs/performance.md; smoke: build/bench/)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--soak", type=float, help="seconds of the service's memory soak (default 300; smoke: 0)")
    parser.add_argument("--slow-streams", type=int, help="concurrent slow streams (default 5000)")
    parser.add_argument("--rounds", type=int, help="rounds of the CPU runs (default 3)")
    parser.add_argument("--profile", action="store_true", help="also profile the service with py-spy (build/bench/)")
    parser.add_argument(
        "--service-workers", type=int, default=1, help="the service's worker processes (serve --workers; default 1)"
    )
    parser.add_argument(
        "--only",
        help=f"a quick look while working: only these runs (comma-separated, of {', '.join(RUNS)}), the gateway "
        "CPU per request or chunk printed, no report written",
    )
    args = parser.parse_args(argv)
    only = frozenset(args.only.split(",")) if args.only else frozenset(RUNS)
    if not only <= set(RUNS):
        parser.error(f"--only takes runs of {', '.join(RUNS)}")
    sizes = SMOKE if args.smoke else FULL
    overrides = {"soak_s": args.soak, "slow_streams": args.slow_streams, "rounds": args.rounds}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    output = args.output or (
        ROOT / "build" / "bench" / "performance-smoke.md" if args.smoke else ROOT / "docs" / "performance.md"
    )
    raise_fd_limit()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        workdir = Path(tmp)
        bench = Bench(sizes, servers(workdir, sizes, args.service_workers), workdir, only)
        info = machine()
        info["service_workers"] = args.service_workers
        with running(bench.servers):
            _say(
                f"servers up: upstream {bench.servers['upstream'].base}, passthrough "
                f"{bench.servers[PASSTHROUGH].base}, service {bench.servers[SERVICE].base}"
            )
            results = run_all(bench)
            if args.profile:
                from benchmarks.profile import profile_service

                try:
                    results["profile"] = profile_service(bench, ROOT / "build" / "bench")
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    _say(f"no profile: {exc}")  # py-spy missing, or not allowed to attach here
            if args.only:
                for line in cpu_ratios(results):
                    print(line)
                if "profile" in results:
                    print("\n".join(profile_lines(results["profile"])))
                return 0 if not failures(results) else 1
            if sizes.soak_s > 0:
                results["soak"] = soak(bench)
        info["duration_s"] = round(time.monotonic() - started)
        notes = kept_notes(output.read_text()) if output.exists() else None
        report = render(results, sizes, info, smoke=args.smoke, notes=notes)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({"sizes": dataclasses.asdict(sizes), "machine": info, "results": results}))
    print(report)
    _say(f"report written to {output}")
    failed = failures(results)
    for line in failed:
        _say(f"FAILED: {line}")
    return 1 if failed and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
