# Every target does its own setup on a fresh clone: the venv is created and filled on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test lint typecheck unit docs clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the service (demo fixtures when no provider API keys are set).
run: $(STAMP)
	$(BIN)/llm-service serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check services tests scripts benchmarks
	$(BIN)/ruff format --check services tests scripts benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy scripts/generate_env_docs.py
	$(BIN)/mypy --strict benchmarks
# Tests: calls with wrong arguments and fakes drifting from what they stand in for, without annotating every test.
	$(BIN)/mypy tests --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls --allow-untyped-decorators --no-warn-return-any

unit: $(STAMP)
	$(BIN)/pytest --mock-providers $(PYTEST_ARGS)

## Regenerate docs/configuration.md and .env.example from the settings classes.
docs: $(STAMP)
	$(BIN)/python scripts/generate_env_docs.py

## The benchmark: service vs a bare passthrough vs the upstream itself (about 10 minutes); writes
## docs/performance.md and prints it. BENCH_ARGS: e.g. --smoke, --soak 0, --profile.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

## Every test: lint, types, then the suite against the fixture-backed fakes.
test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
