# Two entry points for a fresh machine: `make demo` (the main job end to end on embedded defaults)
# and `make test` (the test suite against real services). Both create .venv when it is missing.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: demo test lint typecheck bench system-deps clean

.venv/.installed: pyproject.toml
	@command -v redis-server >/dev/null || $(MAKE) system-deps
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

system-deps:
	@if ! command -v redis-server >/dev/null; then \
	  echo "installing redis-server (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	fi

demo: .venv/.installed
	.venv/bin/vitguard demo

test: .venv/.installed
	$(PY) -m pytest

lint: .venv/.installed
	.venv/bin/ruff check vitguard tests bench
	.venv/bin/mypy

bench: .venv/.installed
	$(PY) bench/model_throughput.py
	$(PY) bench/pipeline_throughput.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache vitguard_milvus.db
