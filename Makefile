# Two entry points for a fresh machine: `make demo` (the main job end to end on embedded defaults)
# and `make test` (the test suite against real services). Both create .venv when it is missing.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip

LOCK_PYTHON := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu

.PHONY: demo test test-fast lint typecheck bench lock system-deps browser-deps clean

# The exact versions from the dev lock, then vitguard itself without resolving anything again.
.venv/.installed: pyproject.toml requirements/dev.lock
	@command -v redis-server >/dev/null && command -v g++ >/dev/null || $(MAKE) system-deps
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/dev.lock
	$(PIP) install -q --no-deps -e .
	touch $@

# Re-resolve the lock files from pyproject.toml's ranges (run after changing a dependency; commit both).
lock:
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q uv
	.venv/bin/uv pip compile -q pyproject.toml -c requirements/lock-constraints.txt $(LOCK_PYTHON) \
	  -o requirements/runtime.lock
	.venv/bin/uv pip compile -q pyproject.toml --extra dev -c requirements/lock-constraints.txt $(LOCK_PYTHON) \
	  -o requirements/dev.lock

system-deps:
	@if ! command -v redis-server >/dev/null; then \
	  echo "installing redis-server (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	fi
	@# a C++ compiler: pdqhash (hash banks) builds from its sdist
	@if ! command -v g++ >/dev/null; then \
	  echo "installing build-essential (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential; \
	fi

# Headless Chromium and its driver, for the review console's browser tests (tests/review/) only: `make demo`
# needs no browser.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

demo: .venv/.installed
	.venv/bin/vitguard demo

# Test processes (pytest-xdist). Most of the suite waits on brokers, group joins and timeouts, so it runs on more
# processes than cores; then the tests that run worker processes against deadlines (marked `workers` by
# tests/conftest.py: exit within the shutdown timeout, probes within a second) run on one process per core, so
# none waits for a core. Both parts run; either failing fails.
TEST_JOBS ?= 3
WORKER_JOBS ?= 2
FAST_JOBS ?= 2

# Editable installs compile vitguard/ in every process (workers, CLI runs) unless bytecode may be written.
test test-fast: export PYTHONDONTWRITEBYTECODE =

test: .venv/.installed browser-deps
	status=0; \
	$(PY) -m pytest -n $(TEST_JOBS) -m "not workers" || status=$$?; \
	$(PY) -m pytest -n $(WORKER_JOBS) -m workers || status=$$?; \
	exit $$status

# The unit tests alone: no broker, Redis, Milvus or worker process (a test that uses a service fixture is marked
# integration automatically: tests/conftest.py), no chaos suite, none marked slow (training runs, CLI scripts).
test-fast: .venv/.installed
	$(PY) -m pytest -n $(FAST_JOBS) -m "not integration and not chaos and not slow" -q

lint: .venv/.installed
	.venv/bin/ruff check vitguard tests bench
	.venv/bin/mypy

bench: .venv/.installed
	$(PY) bench/model_throughput.py
	$(PY) bench/pipeline_throughput.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache vitguard_milvus.db
