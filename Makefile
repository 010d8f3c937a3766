# shapegate: `make run` starts the whole system locally, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PG_DIR ?= $(CURDIR)/.data/pg
PG_PORT ?= 54329
ENGINE_PORT ?= 3000
PROXY_PORT ?= 3001

.PHONY: run test install node-deps lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd tests/node && npm ci --no-audit --no-fund --silent
	touch $@

tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --silent
	touch $@

node-deps: tests/node/node_modules/.installed tests/browser/node_modules/.installed

run: install
	@scripts/run-demo

test: install node-deps
	$(PY) -m pytest -q -p no:cacheprovider
	@echo "node tests, straight to the engine:"
	PYTHON=$(abspath $(PY)) node --test --test-concurrency=1 tests/node/
	@echo "node tests, the same ones through the proxy (config/examples/open.yaml):"
	SHAPEGATE_NODE_VIA=proxy PYTHON=$(abspath $(PY)) node --test --test-concurrency=1 tests/node/

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy sync_engine proxy

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf .data
