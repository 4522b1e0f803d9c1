"""The load client: a fixed number of chat requests (or a fixed time) at a fixed concurrency.

Run as a process of its own, so that its CPU is not the gateway's. Every answer is checked: status
200 and the exact text (the JSON answer's content, or a stream's deltas joined, with its `[DONE]`).
Prints one JSON object: counts, errors, latency and time-to-first-byte percentiles, chunks, the
peak of concurrently open requests, and the client's own CPU time.

    python -m benchmarks.load --url http://127.0.0.1:8000/v1/chat/completions \\
        --model bench-n100-f0-i10 --stream --requests 320 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from benchmarks.upstream import raise_fd_limit, use_uvloop
from benchmarks.wire import JSON_PIECES, Scenario, expected_text, request_body


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_sample: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    open_now: int = 0
    open_peak: int = 0

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        self.error_sample.setdefault(kind, detail[:300])


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, model: str, *, stream: bool, timeout: float) -> None:
        self.session = session
        self.url = url
        self.stream = stream
        self.body = request_body(model, stream=stream)
        scenario = Scenario.of(model)
        self.expected = expected_text(scenario.chunks if stream else JSON_PIECES)
        self.expected_chunks = scenario.chunks
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.results = Results()

    async def one(self) -> None:
        results = self.results
        results.open_now += 1
        results.open_peak = max(results.open_peak, results.open_now)
        started = time.perf_counter()
        try:
            async with self.session.post(
                self.url, data=self.body, headers={"Content-Type": "application/json"}, timeout=self.timeout
            ) as resp:
                if resp.status != 200:
                    results.fail(f"http_{resp.status}", (await resp.read()).decode("utf-8", "replace"))
                    return
                ok = await (self._stream(resp, started) if self.stream else self._json(resp, started))
            if ok:
                results.latencies.append(time.perf_counter() - started)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            results.fail(type(exc).__name__, repr(exc))
        finally:
            results.open_now -= 1

    async def _json(self, resp: aiohttp.ClientResponse, started: float) -> bool:
        body = await resp.read()
        try:
            text = orjson.loads(body)["choices"][0]["message"]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            self.results.fail("unreadable_json", f"{exc}: {body[:200]!r}")
            return False
        if text != self.expected:
            self.results.fail("wrong_text", f"{text[:200]!r}")
            return False
        return True

    async def _stream(self, resp: aiohttp.ClientResponse, started: float) -> bool:
        read = _StreamRead()
        buffer = b""
        first = True
        async for piece in resp.content.iter_any():
            if first:
                self.results.ttfbs.append(time.perf_counter() - started)
                first = False
            buffer += piece
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[:end], buffer[end + 2 :]
                failure = read.event(event)
                if failure is not None:
                    self.results.fail(*failure)
                    return False
        self.results.chunks += read.chunks
        text = "".join(read.parts)
        if not read.done:
            self.results.fail("no_done", f"stream ended without [DONE] after {read.chunks} chunks")
            return False
        if text != self.expected or read.chunks != self.expected_chunks:
            self.results.fail("wrong_text", f"{read.chunks} chunks: {text[:200]!r}")
            return False
        return True


class _StreamRead:
    """What a stream said so far: its content deltas and whether its `[DONE]` came."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chunks = 0
        self.done = False

    def event(self, event: bytes) -> tuple[str, str] | None:
        """Take one SSE event; (kind, detail) when it is an error or unreadable."""
        for line in event.split(b"\n"):
            if not line.startswith(b"data: "):
                continue  # id: lines of a resumable stream
            data = line[6:]
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return "unreadable_event", data.decode("utf-8", "replace")
            if "error" in chunk:
                return "error_event", data.decode("utf-8", "replace")
            for choice in chunk.get("choices") or ():
                content = choice.get("delta", {}).get("content")
                if content:
                    self.parts.append(content)
                    self.chunks += 1
        return None


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean in milliseconds (nearest rank)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    ms = {f"p{p:g}": rank(p) for p in (50, 90, 99)}
    ms["max"] = ordered[-1]
    ms["mean"] = sum(ordered) / len(ordered)
    return {k: round(v * 1000, 3) for k, v in ms.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0 if args.concurrency > 1000 else args.concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(session, args.url, args.model, stream=args.stream, timeout=args.timeout)
        issued = 0
        deadline = time.perf_counter() + args.duration if args.duration else None

        async def worker(index: int) -> None:
            nonlocal issued
            if args.ramp:
                await asyncio.sleep(args.ramp * index / args.concurrency)
            while (deadline is None and issued < args.requests) or (
                deadline is not None and time.perf_counter() < deadline
            ):
                issued += 1
                await client.one()

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
        elapsed = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    results = client.results
    completed = len(results.latencies)
    return {
        "url": args.url,
        "model": args.model,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "issued": issued,
        "completed": completed,
        "failed": sum(results.errors.values()),
        "errors": dict(results.errors),
        "error_sample": results.error_sample,
        "elapsed_s": round(elapsed, 3),
        "rps": round(completed / elapsed, 1) if elapsed else 0.0,
        "latency_ms": percentiles(results.latencies),
        "ttfb_ms": percentiles(results.ttfbs),
        "chunks": results.chunks,
        "open_peak": results.open_peak,
        "client_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The benchmark's load client")
    parser.add_argument("--url", required=True, help="the chat completions URL")
    parser.add_argument("--model", default=Scenario().model)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--requests", type=int, default=100, help="requests in all (unless --duration)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to keep sending (instead of --requests)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which the workers start")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    args = parser.parse_args(argv)
    raise_fd_limit()
    use_uvloop()
    out = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
