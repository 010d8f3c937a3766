# shapegate: `make run` starts the whole system locally, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo's ports (scripts/demo-env): `make run PROXY_PORT=8090`, or the same in the environment.
ENGINE_PORT ?= 3000
PROXY_PORT ?= 8080
DEMO_PORT ?= 5173
PG_PORT ?= 54329
DEMO_ORIGINS ?=
export ENGINE_PORT PROXY_PORT DEMO_PORT PG_PORT DEMO_ORIGINS
# The demo page's sources: rebuilt by `make run` when one changes.
DEMO_SRC := $(wildcard demo/src/*)

.PHONY: run stop test install node-deps demo-deps lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# `make run` needs only the runtime packages (half the install time of the dev tools that
# `make test` and `make lint` add); a venv with the dev tools already has them.
$(VENV)/.installed-run: pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	@if [ ! -f $(VENV)/.installed ] || [ pyproject.toml -nt $(VENV)/.installed ]; then \
	  set -x; [ -x $(PY) ] || python3 -m venv $(VENV); $(VENV)/bin/pip install -q -e .; fi
	@touch $@

install: $(VENV)/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd tests/node && npm ci --no-audit --no-fund --silent
	touch $@

tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --silent
	touch $@

tests/demo/node_modules/.installed: tests/demo/package.json tests/demo/package-lock.json
	cd tests/demo && npm ci --no-audit --no-fund --silent
	touch $@

demo/node_modules/.installed: demo/package.json demo/package-lock.json
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || { echo "installing Debian's nodejs and npm (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@command -v npm >/dev/null || { echo "make run needs Node.js and npm (the demo page is built with esbuild from npm)"; exit 1; }
	cd demo && npm ci --no-audit --no-fund --silent
	touch $@

# The page's JavaScript, bundled from npm packages (React, @electric-sql/react): nothing is
# fetched from a CDN when the page runs.
demo/dist/app.js: demo/node_modules/.installed $(DEMO_SRC)
	cd demo && npm run --silent build -- --log-level=warning

demo-deps: demo/dist/app.js

node-deps: tests/node/node_modules/.installed tests/browser/node_modules/.installed \
           tests/demo/node_modules/.installed demo-deps

run: $(VENV)/.installed-run demo-deps
	@scripts/run-demo

stop:
	@scripts/stop-demo

test: install node-deps
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --max-worker-restart=0 --durations=25
	scripts/node-tests $(abspath $(PY))

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict sync_engine
	$(VENV)/bin/mypy sync_engine proxy tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py

# Stops a running demo and its Postgres first, then deletes their files.
clean:
	@scripts/stop-demo --clean
