"""The gateway benchmark: `make bench` (or `python -m benchmarks.run`); see docs/performance.md."""
