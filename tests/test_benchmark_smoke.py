"""The benchmark's smoke mode: every target (direct to the upstream, the bare passthrough, the service)
answers every kind of run with the exact text, and the report is produced. Never a timing assertion:
the figures of a smoke run mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("json_c32", "json_c1", "stream_paced", "stream_burst", "slow")
TARGETS = ("direct", "passthrough", "service")


def run_ok(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Python with `args` in the repository, which must exit 0 within `timeout` seconds."""
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_benchmark_smoke_runs_every_target_and_writes_the_report(tmp_path: Path) -> None:
    report, raw = tmp_path / "performance.md", tmp_path / "results.json"
    done = run_ok([str(ROOT / "benchmarks" / "run.py"), "--smoke", "--output", str(report), "--json", str(raw)], 300)

    results = json.loads(raw.read_text())["results"]
    for run in RUNS:
        for target in TARGETS:
            result = results[run][target]
            assert result["completed"] == result["issued"] > 0, (run, target, result["errors"], result["error_sample"])
            assert result["failed"] == 0, (run, target, result["error_sample"])
            if result["stream"]:
                assert result["chunks"] > 0, (run, target)
    # The gateways' CPU was read from /proc; the service logged and counted its requests.
    assert results["json_c32"]["service"]["gateway_cpu_s"] is not None
    assert results["service_checks"]["access_log_lines"] > 0
    assert results["service_checks"]["metrics_requests"] > 0

    text = report.read_text()
    assert text.startswith("# Performance")
    for heading in ("## Targets", "## Side by side", "## Method", "## Machine"):
        assert heading in text
    assert "| | direct to upstream | bare passthrough | service |" in text
    assert "## Side by side" in done.stdout


def test_the_in_process_bytecode_count_runs_both_apps_and_names_the_services_functions() -> None:
    """`python -m benchmarks.inproc --bytecodes`: both apps answer, each gets a count, and the service's
    busiest functions are listed (its own among them). No figure is checked but that it is there."""
    done = run_ok(["-m", "benchmarks.inproc", "--bytecodes", "--requests", "40", "--top", "60"], 120)
    lines = done.stdout.splitlines()
    counts = {line.split(":")[0]: line for line in lines if " bytecodes per request" in line}
    assert set(counts) == {"passthrough", "service"}, done.stdout
    assert all(float(line.split()[1].replace(",", "")) > 0 for line in counts.values())
    assert any("llm_service/core/llm/dispatcher.py" in line for line in lines), done.stdout


def test_the_in_process_benchmark_takes_every_layer_out_of_the_service() -> None:
    """`--without` (benchmarks/layers.py) replaces the service's functions by name: each layer taken out,
    the service still answers (a failed request raises), and the run says what it measured."""
    layers = "translation,dispatcher,access-log,disconnect-watch"
    done = run_ok(
        ["-m", "benchmarks.inproc", "--bytecodes", "--requests", "40", "--top", "0", "--without", layers], 120
    )
    assert f"the service without: {layers.replace(',', ', ')}" in done.stdout
    assert "service: " in done.stdout and " bytecodes per request" in done.stdout


def test_the_floor_and_the_fused_path_answer_next_to_both_apps() -> None:
    """`--floor` (benchmarks/floor.py) and `--fused` (benchmarks/fused.py) are measured beside the passthrough
    and the service: each answers the benchmark's request (a failed request raises: the fused path refuses
    anything but a plain request with room) and gets its count and its ratio."""
    done = run_ok(
        ["-m", "benchmarks.inproc", "--bytecodes", "--floor", "--fused", "--requests", "40", "--top", "0"], 120
    )
    counts = {line.split(":")[0] for line in done.stdout.splitlines() if " bytecodes per request" in line}
    assert counts == {"passthrough", "service", "floor", "fused"}, done.stdout
    assert "floor / passthrough: " in done.stdout and "fused / passthrough: " in done.stdout
