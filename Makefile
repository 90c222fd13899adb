# Every target creates .venv on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXAMPLE_PORT ?= 9001

.PHONY: run test lint bench soak services promtool install conformance clients stdio-servers clean lock upgrade wrk

# Installs come from the hash-locked files in requirements/ (make lock writes them from pyproject.toml). When a lock
# file changes the venv is rebuilt from scratch, so nothing left over from an older lock survives.
LOCK_DIR := requirements
LOCKS := $(LOCK_DIR)/runtime.txt $(LOCK_DIR)/example.txt $(LOCK_DIR)/dev.txt
UV := $(VENV)/bin/uv

# pip installs uv alone, from its hash-pinned entry in the dev lock; uv installs the rest of the same lock with the
# same hash checks. pip took 50 s for the dev set here (most of it compiling bytecode up front), uv about 2 s warm
# and 10 s from a cold cache. UV_PIP=0 installs everything with pip.
UV_PIP ?= 1
UV_REQ := $(VENV)/uv-requirement.txt
$(STAMP): $(LOCK_DIR)/dev.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
ifeq ($(UV_PIP),1)
	awk '/^uv==/{p=1;print;next} p&&/^[ \t]/{print;next} {p=0}' $(LOCK_DIR)/dev.txt > $(UV_REQ)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(UV_REQ)
	$(UV) pip install --quiet --python $(PY) --require-hashes --no-deps -r $(LOCK_DIR)/dev.txt
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
else
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK_DIR)/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
endif
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# The official MCP conformance suite and the Node.js >= 22 it needs (Node from the npm registry as a package, so the
# machine's own Node does not matter), from the committed lock into tests/conformance/node_modules; reinstalled from
# scratch when the lock changes, like the venv. Needs npm.
CONF_DIR := tests/conformance
CONF_STAMP := $(CONF_DIR)/node_modules/.installed-stamp
$(CONF_STAMP): $(CONF_DIR)/package-lock.json $(CONF_DIR)/package.json
	rm -rf $(CONF_DIR)/node_modules
	cd $(CONF_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	$(CONF_DIR)/node_modules/.bin/node --version
	touch $(CONF_STAMP)

conformance: $(CONF_STAMP)

# The other official MCP clients the client-matrix tests (tests/e2e/test_client_matrix.py) drive the gateway with:
# the Python SDK 2.x in its own venv (it is the package `mcp` too, so it cannot share .venv with 1.x), from its
# hash-locked file, and the TypeScript SDK from npm, exactly as package-lock.json pins it (node_modules not in git).
MCP2_VENV := .venv-mcp2
MCP2_STAMP := $(MCP2_VENV)/.installed-stamp
TS_DIR := tests/clients/ts
TS_STAMP := $(TS_DIR)/node_modules/.installed-stamp

$(MCP2_STAMP): $(LOCK_DIR)/mcp2.txt $(STAMP)
	rm -rf $(MCP2_VENV)
	$(PYTHON) -m venv $(MCP2_VENV)
ifeq ($(UV_PIP),1)
	$(UV) pip install --quiet --python $(MCP2_VENV)/bin/python --require-hashes --no-deps -r $(LOCK_DIR)/mcp2.txt
else
	$(MCP2_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK_DIR)/mcp2.txt
endif
	$(MCP2_VENV)/bin/python -m pip check
	touch $(MCP2_STAMP)

$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	npm ci --prefix $(TS_DIR) --no-audit --no-fund --silent
	touch $(TS_STAMP)

clients: $(MCP2_STAMP) $(TS_STAMP)

# Third-party stdio MCP servers the stdio tests run through the gateway (tests/e2e/test_stdio_everything.py):
# @modelcontextprotocol/server-everything from npm, exactly as tests/stdio/package-lock.json pins it (install scripts
# off), run with the Node.js of `make conformance`; reinstalled from scratch when the lock changes. Needs npm.
STDIO_DIR := tests/stdio
STDIO_STAMP := $(STDIO_DIR)/node_modules/.installed-stamp
$(STDIO_STAMP): $(STDIO_DIR)/package-lock.json $(STDIO_DIR)/package.json
	rm -rf $(STDIO_DIR)/node_modules
	cd $(STDIO_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(STDIO_STAMP)

stdio-servers: $(STDIO_STAMP) $(CONF_STAMP)

# The gateway on config.yaml (embedded defaults) plus the example upstream MCP server on $(EXAMPLE_PORT).
run: $(STAMP)
	@bash scripts/run-demo.sh $(EXAMPLE_PORT)

# Redis and PostgreSQL up, lint and types, then the whole suite (unit, integration, e2e, the conformance suite),
# then the traffic-carrying e2e tests once more with the hand-written network code switched off (lean server, lean
# upstream client, Redis multiplexer: MCP_GATEWAY_TEST_PLAIN_NET=1, tests/harness.py), so the aiohttp/redis-py
# fallbacks stay working.
# Tests spend most of their time waiting on real processes (sleeps, sockets, child processes), so four workers
# keep this 2-core machine busy: three left it partly idle and took make test past 15 minutes.
PYTEST_WORKERS ?= 4
PLAIN_NET_WORKERS ?= 3
# The second pass takes the end-to-end tests whose traffic goes through the switched code (both HTTP servers,
# both upstream clients, both Redis paths), not the whole e2e folder: make test must stay under 15 minutes on this
# 2-core machine, and CLI, docs, conformance and client-matrix tests do not touch the switched code.
PLAIN_NET_TESTS ?= $(addprefix tests/e2e/,test_smoke.py test_foundation.py test_resilience.py \
	test_transport_streams.py test_transport_sse.py test_transport_websocket.py test_session_order.py \
	test_sessions_redis_blip.py test_ratelimit_http.py test_drain_keepalive.py)
test: $(STAMP) $(CONF_STAMP) $(STDIO_STAMP) clients services lint wrk
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS)
	MCP_GATEWAY_TEST_PLAIN_NET=1 $(PY) -m pytest -q -p no:cacheprovider -n $(PLAIN_NET_WORKERS) $(PLAIN_NET_TESTS)

lint: $(STAMP)
	$(PY) -m ruff check gateway tests examples
	$(PY) -m ruff format --check gateway tests examples
	$(PY) -m mypy

services: promtool
	@bash scripts/ensure-services.sh

# promtool (Debian's `prometheus` package) for the alert-rule checks and `promtool test rules` (test_deploy.py)
promtool:
	@bash deploy/scripts/install-promtool.sh

# wrk (Debian's package) drives the JSON scenarios: a Python load generator would share the 2 cores' budget
bench: $(STAMP) services wrk
	$(PY) -m tests.perf.bench

# Load plus a schedule of faults (Redis, PostgreSQL, upstream, policy, a worker) against private instances, then
# what every request and audit record became (tests/perf/soak.py; SOAK_SECONDS, default 600). Not in make test.
wrk:
	@command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)

soak: $(STAMP)
	$(PY) -m tests.perf.soak

# The lock files from pyproject.toml, keeping every pin that still satisfies it (hashes for every platform's wheels).
COMPILE_FLAGS = --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock"
COMPILE = $(UV) pip compile $(COMPILE_FLAGS) pyproject.toml
lock: $(STAMP)
	$(COMPILE) -o $(LOCK_DIR)/runtime.txt
	$(COMPILE) --extra example -o $(LOCK_DIR)/example.txt
	$(COMPILE) --extra dev -o $(LOCK_DIR)/dev.txt
	$(UV) pip compile $(COMPILE_FLAGS) $(LOCK_DIR)/build.in -o $(LOCK_DIR)/build.txt
	$(UV) pip compile $(COMPILE_FLAGS) $(LOCK_DIR)/mcp2.in -o $(LOCK_DIR)/mcp2.txt

# Every pin moved to the newest release pyproject.toml allows, then the whole suite on it.
upgrade: $(STAMP)
	$(COMPILE) --upgrade -o $(LOCK_DIR)/runtime.txt
	$(COMPILE) --upgrade --extra example -o $(LOCK_DIR)/example.txt
	$(COMPILE) --upgrade --extra dev -o $(LOCK_DIR)/dev.txt
	$(UV) pip compile $(COMPILE_FLAGS) --upgrade $(LOCK_DIR)/build.in -o $(LOCK_DIR)/build.txt
	$(UV) pip compile $(COMPILE_FLAGS) --upgrade $(LOCK_DIR)/mcp2.in -o $(LOCK_DIR)/mcp2.txt
	$(MAKE) test

clean:
	rm -rf $(VENV) $(MCP2_VENV) $(TS_DIR)/node_modules var .mypy_cache .ruff_cache
