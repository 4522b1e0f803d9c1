"""The markdown report of a benchmark run: the targets, the side-by-side table, the method, the machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.run import Sizes

TARGETS = ("direct", "passthrough", "service")
HEADS = ("direct to upstream", "bare passthrough", "service")
MB = 1024 * 1024
#: Goals of the issue: CPU ratios (service / passthrough), slow streams, memory.
JSON_RATIO_GOAL = 1.5
CHUNK_RATIO_GOAL = 2.0
SLOW_STREAMS_GOAL = 5000
RSS_GOAL_MB = 500


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _pair(stats: dict[str, float], a: str = "p50", b: str = "p99", digits: int = 1, scale: float = 1.0) -> str:
    if not stats:
        return "—"
    return f"{_num(stats[a] * scale, digits)} / {_num(stats[b] * scale, digits)}"


def _mb(value: int | None) -> str:
    return "—" if not value else f"{value / MB:,.0f}"


def _ratio(service: float | None, passthrough: float | None) -> float | None:
    if service is None or not passthrough:
        return None
    return service / passthrough


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def _section(title: str) -> str:
    return f"| **{title}** |" + " |" * len(TARGETS)


def _cpu_cells(by_target: dict[str, Any]) -> list[str]:
    cells = []
    for target in TARGETS:
        result = by_target[target]
        rounds = [r for r in result.get("cpu_us_rounds", []) if r is not None]
        spread = f" ({', '.join(_num(r) for r in rounds)})" if len(rounds) > 1 else ""
        cells.append("—" if result.get("cpu_us") is None else _num(result["cpu_us"]) + spread)
    return cells


def _json_rows(results: dict[str, Any], concurrency: int) -> list[str]:
    c32, c1 = results["json_c32"], results["json_c1"]
    direct1 = c1["direct"]["latency_ms"]
    added = []
    for target in TARGETS:
        lat = c1[target]["latency_ms"]
        added.append(
            "—"
            if target == "direct" or not lat
            else f"{lat['p50'] - direct1['p50']:+.2f} / {lat['p99'] - direct1['p99']:+.2f}"
        )
    return [
        _section(f"Non-streaming, concurrency {concurrency}"),
        _row("requests/s", [_num(c32[t]["rps"]) for t in TARGETS]),
        _row("latency p50 / p99 (ms)", [_pair(c32[t]["latency_ms"]) for t in TARGETS]),
        _row("**gateway CPU per request (µs)**, median (each round)", _cpu_cells(c32)),
        _row("upstream CPU per request (µs)", [_num(c32[t]["upstream_cpu_us"]) for t in TARGETS]),
        _row("load-client CPU per request (µs)", [_num(c32[t]["client_cpu_us"]) for t in TARGETS]),
        _row("peak RSS of the server (MB)", [_mb(c32[t]["peak_rss"]) for t in TARGETS]),
        _section("Non-streaming, one request at a time"),
        _row("latency p50 / p99 (ms)", [_pair(c1[t]["latency_ms"], digits=2) for t in TARGETS]),
        _row("added over direct, p50 / p99 (ms)", added),
        _row("gateway CPU per request (µs)", [_num(c1[t].get("cpu_us")) for t in TARGETS]),
    ]


def _stream_rows(results: dict[str, Any], sizes: Sizes) -> list[str]:
    paced, burst = results["stream_paced"], results["stream_burst"]
    n, c = sizes.stream_chunks, sizes.concurrency
    per_stream = [_num(None if paced[t]["cpu_us"] is None else paced[t]["cpu_us"] * n / 1000, 2) for t in TARGETS]
    return [
        _section(f"{n}-chunk streams, a chunk every {sizes.pace_ms} ms, concurrency {c}"),
        _row("time to first byte p50 / p99 (ms)", [_pair(paced[t]["ttfb_ms"]) for t in TARGETS]),
        _row("stream duration p50 / p99 (ms)", [_pair(paced[t]["latency_ms"]) for t in TARGETS]),
        _row("**gateway CPU per chunk (µs)**, median (each round)", _cpu_cells(paced)),
        _row("gateway CPU per stream (ms)", per_stream),
        _row("upstream CPU per chunk (µs)", [_num(paced[t]["upstream_cpu_us"], 1) for t in TARGETS]),
        _section(f"{n}-chunk streams, unpaced, concurrency {c}"),
        _row("streams/s", [_num(burst[t]["rps"]) for t in TARGETS]),
        _row("chunks/s", [_num(burst[t]["chunks"] / burst[t]["elapsed_s"]) for t in TARGETS]),
        _row("time to first byte p50 / p99 (ms)", [_pair(burst[t]["ttfb_ms"]) for t in TARGETS]),
        _row("gateway CPU per chunk (µs), median (each round)", _cpu_cells(burst)),
    ]


def _slow_rows(results: dict[str, Any], sizes: Sizes) -> list[str]:
    slow = results["slow"]
    n = sizes.slow_streams
    title = (
        f"{n:,} slow streams at once: {sizes.slow_first_ms} ms to the first byte, "
        f"then {sizes.slow_chunks} chunks {sizes.slow_interval_ms} ms apart"
    )
    return [
        _section(title),
        _row("completed with exact text", [f"{slow[t]['completed']:,} / {n:,}" for t in TARGETS]),
        _row("failed", [_failed(slow[t]) for t in TARGETS]),
        _row("open at once (peak, client side)", [_num(slow[t]["open_peak"]) for t in TARGETS]),
        _row(
            "listen-queue overflows (kernel count, whole machine)",
            [_num(slow[t].get("tcp", {}).get("ListenOverflows")) for t in TARGETS],
        ),
        _row("time to first byte p50 / p99 (ms)", [_pair(slow[t]["ttfb_ms"], digits=0) for t in TARGETS]),
        _row(
            "stream duration p50 / max (s)",
            [_pair(slow[t]["latency_ms"], b="max", digits=2, scale=0.001) for t in TARGETS],
        ),
        _row("gateway CPU per chunk (µs)", [_num(slow[t]["cpu_us"]) for t in TARGETS]),
        _row("**peak RSS of the server (MB)**", [_mb(slow[t]["peak_rss"]) for t in TARGETS]),
    ]


def _span(seconds: float) -> str:
    return f"{seconds / 60:.0f}-minute" if seconds % 60 == 0 else f"{seconds:.0f}-second"


def _failed(result: dict[str, Any]) -> str:
    if not result["failed"]:
        return "0"
    kinds = "; ".join(f"{n:,} {kind}: {result['error_sample'].get(kind, '')}" for kind, n in result["errors"].items())
    return f"{result['failed']:,} ({kinds})".replace("|", "/")


def _soak_verdict(soak: dict[str, Any]) -> tuple[str, bool]:
    timeline = soak["rss_timeline"]
    end_t, end_rss = timeline[-1]
    mid = min(timeline, key=lambda point: abs(point[0] - end_t / 2))
    growth = end_rss - mid[1]
    flat = growth <= max(10 * MB, 0.05 * mid[1])
    text = (
        f"{_mb(mid[1])} MB at {mid[0]:.0f} s, {_mb(end_rss)} MB at {end_t:.0f} s "
        f"({growth / MB:+.0f} MB in the second half)"
    )
    return text, flat


def _targets(results: dict[str, Any], sizes: Sizes, smoke: bool) -> list[str]:
    c32, paced, burst, slow = results["json_c32"], results["stream_paced"], results["stream_burst"], results["slow"]
    json_ratio = _ratio(c32["service"]["cpu_us"], c32["passthrough"]["cpu_us"])
    chunk_ratio = _ratio(paced["service"]["cpu_us"], paced["passthrough"]["cpu_us"])
    burst_ratio = _ratio(burst["service"]["cpu_us"], burst["passthrough"]["cpu_us"])
    service_slow = slow["service"]
    slow_ok = service_slow["completed"] == sizes.slow_streams and not service_slow["failed"]
    rss_mb = service_slow["peak_rss"] / MB

    def met(ok: bool, measured_enough: bool = True) -> str:
        if smoke or not measured_enough:
            return "not judged (smoke run)" if smoke else "not judged (too few)"
        return "**yes**" if ok else "**no**"

    def cpu(result: dict[str, Any]) -> str:
        return _num(result["cpu_us"])

    def rounds(run: dict[str, Any]) -> str:
        """The ratio of each round's pair (run side by side, so the closest in time): how far one
        figure can be trusted on a machine whose load moves within seconds."""
        service, passthrough = (run[t].get("cpu_us_rounds") or [] for t in ("service", "passthrough"))
        if len(service) != len(passthrough):
            return ""
        ratios = [_ratio(s, p) for s, p in zip(service, passthrough, strict=True)]
        shown = [f"{r:.2f}x" for r in ratios if r is not None]
        return f"; each round: {', '.join(shown)}" if len(shown) > 1 else ""

    enough = sizes.slow_streams >= SLOW_STREAMS_GOAL
    lines = [
        "| Target | Goal | Measured | Met |",
        "|---|---|---|---|",
        f"| Gateway CPU per non-streaming request | ≤ {JSON_RATIO_GOAL}x the passthrough's | "
        f"{_num(json_ratio, 2)}x ({cpu(c32['service'])} vs {cpu(c32['passthrough'])} µs{rounds(c32)}) | "
        f"{met(json_ratio is not None and json_ratio <= JSON_RATIO_GOAL)} |",
        f"| Gateway CPU per streamed chunk (paced 100-chunk streams) | ≤ {CHUNK_RATIO_GOAL}x the passthrough's | "
        f"{_num(chunk_ratio, 2)}x ({cpu(paced['service'])} vs {cpu(paced['passthrough'])} µs; "
        f"unpaced: {_num(burst_ratio, 2)}x{rounds(paced)}) | "
        f"{met(chunk_ratio is not None and chunk_ratio <= CHUNK_RATIO_GOAL)} |",
        f"| {SLOW_STREAMS_GOAL:,} concurrent slow streams complete with exact text | all | "
        f"{service_slow['completed']:,} of {sizes.slow_streams:,} | {met(slow_ok, enough)} |",
        f"| Peak RSS during them | < {RSS_GOAL_MB} MB | {rss_mb:,.0f} MB | {met(rss_mb < RSS_GOAL_MB, enough)} |",
    ]
    if "soak" in results:
        text, flat = _soak_verdict(results["soak"])
        seconds = results["soak"]["seconds"]
        lines.append(f"| Memory flat over a {_span(seconds)} run | flat | {text} | {met(flat, seconds >= 300)} |")
    else:
        lines.append("| Memory flat over a 5-minute run | flat | not run (`--soak 0`) | — |")
    return lines


def _soak_lines(soak: dict[str, Any]) -> list[str]:
    timeline = soak["rss_timeline"]
    marks: list[tuple[float, int]] = []
    step = max(soak["seconds"] / 10, 1)
    next_mark = 0.0
    for t, rss in timeline:
        if t >= next_mark:
            marks.append((t, rss))
            next_mark = t + step
    if marks[-1] != timeline[-1]:
        marks.append(timeline[-1])
    return [
        f"A service of its own, a {_span(soak['seconds'])} run of mixed load (4 clients sending non-streaming",
        f"requests, 4 sending paced 100-chunk streams): {soak['completed']:,} requests ({soak['streams']:,} of them",
        f"streams), {soak['failed']} failed, {_num(soak['cpu_us'])} µs of CPU per request on average. Its ended",
        f"streams are kept for resumption {soak['resume_ttl_s']} s instead of the default 300 s, so that this",
        "store is full after the first minute: what grows after that is not by design. RSS over time:",
        "",
        "| t (s) | " + " | ".join(f"{t:.0f}" for t, _ in marks) + " |",
        "|---|" + "---|" * len(marks),
        "| RSS (MB) | " + " | ".join(_mb(rss) for _, rss in marks) + " |",
    ]


def _method(sizes: Sizes) -> list[str]:
    s = sizes
    slow_open = (s.slow_first_ms + (s.slow_chunks - 1) * s.slow_interval_ms) / 1000
    return [
        "## Method",
        "",
        "`make bench` (`benchmarks/run.py`) starts three servers as separate processes on loopback:",
        "",
        "- **upstream** (`benchmarks/upstream.py`): a minimal HTTP/1.1 server on raw asyncio and uvloop,",
        "  keep-alive, answering as OpenAI's Chat Completions API does (a pretty-printed `chat.completion`, or",
        "  `data: {...}` chunk events: role, content, finish reason, the usage chunk, `data: [DONE]`). The model",
        "  name picks the scenario (`bench-n<chunks>-f<ms to first byte>-i<ms between chunks>`); bodies are built",
        "  once, so it costs a few µs per request (its CPU is in the table: it is never the bottleneck).",
        "- **bare passthrough** (`benchmarks/passthrough.py`): a plain ASGI app on uvicorn (uvloop, httptools, no",
        "  access log, as the service runs) that POSTs the body bytes to the upstream with one shared aiohttp",
        "  `ClientSession` and returns, or streams as they arrive, the upstream's bytes: the floor for a Python",
        "  gateway on this stack.",
        "- **service**: `python -m llm_service serve` with a profile as in production: each alias a `remote`",
        "  deployment with rpm, tpm and concurrency limits and a fallback deployment, so the dispatcher, the limits",
        "  and the breakers run; metrics on; JSON logs at INFO to a file; stream resumption on (the default); an",
        "  API key.",
        "",
        "**direct to upstream** is the load client calling the upstream itself: the reference for added latency.",
        "",
        "The load client (`benchmarks/load.py`, aiohttp on uvloop) is a process of its own; it sends a typical",
        "request (system prompt and a 500-character question) and checks every answer: status 200 and the exact",
        "text, a stream's deltas joined (text with non-ASCII, quotes, escapes and an emoji; every chunk numbered)",
        "and its `[DONE]`. Runs, for each target in turn:",
        "",
        f"1. non-streaming: {s.json_requests:,} requests at concurrency {s.concurrency}, {s.rounds} rounds, the",
        f"   targets interleaved; then {s.seq_requests:,} requests one at a time (latency added over direct).",
        f"2. {s.stream_chunks}-chunk streams with a chunk every {s.pace_ms} ms (as a model writes: each chunk is",
        f"   a read and a write of its own): {s.stream_requests:,} streams at concurrency {s.concurrency}, the",
        "   clients starting over the length of one stream so that streams do not start in waves,",
        f"   {s.rounds} rounds; then unpaced (the whole answer in one upstream write): {s.burst_requests:,} streams.",
        f"3. {s.slow_streams:,} streams at once, opened over {s.slow_ramp_s:g} s: {s.slow_first_ms} ms to the",
        f"   first byte, then {s.slow_chunks} chunks {s.slow_interval_ms} ms apart (each open about {slow_open:g} s).",
        "4. the soak: a service of its own (resume TTL 60 s) under mixed load, its RSS sampled (see above).",
        "",
        "Before the runs, a warm-up of each target is not measured. **CPU** is utime + stime of the server's",
        "process tree from `/proc/<pid>/stat`, read before and after each run, divided by the requests completed",
        "(or the content chunks received): work done, whatever else the machine does, so it is the steadiest",
        "figure here. Of the rounds, the median is shown with every round's figure. **Peak RSS** is the tree's",
        "VmRSS sampled every 0.2 s during the run. Latency and time to first byte (the first body byte of a",
        "stream) are the client's, nearest-rank percentiles. Throughput and latency depend on the machine:",
        "the load client, the upstream and the gateway share its cores, so compare the targets within one run.",
    ]


def _machine(info: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return [
        "## Machine",
        "",
        f"- {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, Linux {info['kernel']}; shared with other",
        f"  work (load average {', '.join(str(x) for x in info['load_average'])} at the start).",
        f"- Python {info['python']}; {versions}.",
        f"- Commit {info['commit']}; {info['date']}; the run took {info.get('duration_s', 0) / 60:.1f} minutes.",
        *(
            [
                f"- The service ran {info['service_workers']} worker processes (`serve --workers`): its figures "
                "are theirs together."
            ]
            if info.get("service_workers", 1) > 1
            else []
        ),
    ]


def profile_lines(profile: dict[str, Any]) -> list[str]:
    lines = [
        "## Where the service's CPU goes",
        "",
        f"py-spy ({profile['rate']} samples/s, on-CPU samples only) while the service served the runs below; µs of",
        "CPU per request or chunk by function, self time (the function's own code, not its callees). The full",
        f"profiles are in `{profile['dir']}` (collapsed stacks; not committed).",
    ]
    for run in profile["runs"]:
        lines += [
            "",
            f"**{run['title']}** ({run['count']:,} {run['unit']}s, {run['samples']:,} samples; "
            f"{run['cpu_us']:,.0f} µs of CPU per {run['unit']} by /proc during the profiled run, "
            f"{run['sampled_us']:,.0f} µs in the samples):",
            "",
            f"| # | function (file) | self µs/{run['unit']} | with callees µs/{run['unit']} |",
            "|---|---|---|---|",
        ]
        for i, spot in enumerate(run["top"], start=1):
            lines.append(f"| {i} | `{spot['function']}` | {spot['self_us']:.1f} | {spot['total_us']:.1f} |")
        lines += [
            "",
            f"The service's own functions by time with callees (µs/{run['unit']}): "
            + "; ".join(f"`{s['function']}` {s['total_us']:.0f}" for s in run["service_top"][:10])
            + ".",
        ]
    return lines


NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"


def kept_notes(previous: str) -> str | None:
    """The hand-written notes of an earlier report (between the notes markers), kept by a rerun."""
    start, end = previous.find(NOTES_START), previous.find(NOTES_END)
    if start < 0 or end < start:
        return None
    return previous[start : end + len(NOTES_END)]


def render(
    results: dict[str, Any], sizes: Sizes, info: dict[str, Any], *, smoke: bool = False, notes: str | None = None
) -> str:
    checks = results.get("service_checks", {})
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `make bench` (benchmarks/run.py); rerun it to refresh. Edit only between the notes",
        "markers: a rerun keeps that part and rewrites the rest. -->",
        "",
        "What the gateway costs on its hot path, next to a bare passthrough on the same stack and to calling the",
        f"upstream directly. Measured {info['date']} on the machine described below.",
    ]
    if smoke:
        lines += [
            "",
            "**Smoke run** (`--smoke`): tiny counts, to check that every target answers; its figures mean nothing.",
        ]
    lines += ["", "## Targets", "", *_targets(results, sizes, smoke), "", "## Side by side", ""]
    lines += ["| | " + " | ".join(HEADS) + " |", "|---|" + "---|" * len(HEADS)]
    lines += _json_rows(results, sizes.concurrency) + _stream_rows(results, sizes) + _slow_rows(results, sizes)
    lines += [
        "",
        f"The service wrote {checks.get('access_log_lines', 0):,} access-log lines and counted "
        f"{checks.get('metrics_requests', 0):,} requests in its metrics (warm-up included).",
    ]
    if notes:
        lines += ["", notes]
    if "soak" in results:
        lines += ["", "## Memory over time", "", *_soak_lines(results["soak"])]
    if "profile" in results:
        lines += ["", *profile_lines(results["profile"])]
    lines += ["", *_method(sizes), "", *_machine(info), ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "make bench                                   # the full run (about 10 minutes), rewrites this file",
        ".venv/bin/python -m benchmarks.run --smoke   # a few seconds: every target answers, report in build/bench/",
        ".venv/bin/python -m benchmarks.run --soak 0 --profile   # no soak; py-spy profiles in build/bench/",
        "```",
        "",
    ]
    return "\n".join(lines)
