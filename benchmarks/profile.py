"""`--profile`: where the service's CPU goes, by py-spy (pip package `py-spy`, a dev dependency).

py-spy attaches to the running service (`record --pid`, non-blocking, on-CPU samples only) for one
run of non-streaming requests and one of paced streams, after the measured runs so that it does not
disturb them. The collapsed stacks are kept (`profile-<run>.txt`, for flamegraph.pl or speedscope);
the report gets the top functions by self time in µs of CPU per request or per chunk.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import proc

if TYPE_CHECKING:
    from benchmarks.run import Bench

RATE = 250
TOP = 15
#: The service's entry point: under every sample, so not worth listing among its functions.
_ROOT_FRAME = re.compile(r"\(llm_service/(__main__|cli)\.py\)")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--profile needs py-spy: `pip install py-spy` (it is in the dev extras)")
    return found


def _short(file: str) -> str:
    for marker in ("site-packages/", "services/", "lib/python3"):
        at = file.find(marker)
        if at >= 0:
            return file[at + len(marker) :] if marker != "lib/python3" else "stdlib/" + file.rsplit("/", 1)[-1]
    return file.rsplit("/", 1)[-1]


def _name(frame: str) -> str:
    found = _FRAME.match(frame)
    if found is None:
        return frame
    return f"{found['func']} ({_short(found['file'])})"


def summarise(collapsed: str, units: int, rate: int = RATE, top: int = TOP) -> dict[str, Any]:
    """Top functions of collapsed stacks by self samples, as µs of CPU per unit (request or chunk)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    scale = 1e6 / rate / max(units, 1)
    spots = [
        {"function": name, "self_us": n * scale, "total_us": total[name] * scale} for name, n in own.most_common(top)
    ]
    ours = [(name, n) for name, n in total.most_common() if "(llm_service/" in name and not _ROOT_FRAME.search(name)]
    ours = ours[:top]
    service = [{"function": name, "self_us": own[name] * scale, "total_us": n * scale} for name, n in ours]
    return {"samples": samples, "top": spots, "service_top": service, "sampled_us": samples * scale}


def profile_service(bench: Bench, outdir: Path) -> dict[str, Any]:
    outdir.mkdir(parents=True, exist_ok=True)
    service = bench.servers["service"]
    sizes = bench.sizes
    runs = [
        ("json", "Non-streaming requests, concurrency 32", "request", sizes.json, False, sizes.json_requests),
        ("stream", f"Streams of {sizes.stream_chunks} chunks paced {sizes.pace_ms} ms apart", "chunk",
         sizes.paced, True, sizes.stream_requests),
    ]  # fmt: skip
    summaries = []
    for key, title, unit, scenario, stream, requests in runs:
        out = outdir / f"profile-{key}.txt"
        argv = [
            _py_spy(),
            "record",
            "--pid",
            str(service.pid),
            "--rate",
            str(RATE),
            "--nonblocking",
            "--full-filenames",
        ]
        spy = subprocess.Popen(
            [*argv, "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # attached before the load starts
        cpu0 = proc.cpu_seconds(service.pid)
        result = bench.load("service", scenario, stream=stream, requests=requests, concurrency=sizes.concurrency)
        cpu = proc.cpu_seconds(service.pid) - cpu0
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode()[-1000:]}")
        units = result["completed"] if unit == "request" else result["chunks"]
        summary = summarise(out.read_text(), units)
        summary.update(title=title, unit=unit, count=units, cpu_us=cpu / max(units, 1) * 1e6, file=str(out))
        summaries.append(summary)
    shown = outdir.relative_to(Path.cwd()) if outdir.is_relative_to(Path.cwd()) else outdir
    return {"rate": RATE, "dir": str(shown), "runs": summaries}
