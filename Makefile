# Every target creates .venv on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXAMPLE_PORT ?= 9001

.PHONY: run test lint bench services install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The gateway on config.yaml (embedded defaults) plus the example upstream MCP server on $(EXAMPLE_PORT).
run: $(STAMP)
	@bash scripts/run-demo.sh $(EXAMPLE_PORT)

# Redis and PostgreSQL up, lint and types, then the whole suite (unit, integration, e2e).
# Tests spend most of their time waiting on real processes, so three workers fit this 2-core machine.
PYTEST_WORKERS ?= 3
test: $(STAMP) services lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS)

lint: $(STAMP)
	$(PY) -m ruff check gateway tests examples
	$(PY) -m ruff format --check gateway tests examples
	$(PY) -m mypy

services:
	@bash scripts/ensure-services.sh
	@bash deploy/scripts/install-promtool.sh

bench: $(STAMP) services
	$(PY) -m tests.perf.bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
