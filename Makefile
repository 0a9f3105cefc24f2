# One command each: `make demo` (end-to-end run on a local Anvil), `make test`, `make bench`.
# Every target installs what it needs: the Python venv from pyproject.toml and the Node
# toolchain (Anvil, forge, solc-js, circom2, circomlib) from package-lock.json.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FORGE := node_modules/.bin/forge

.PHONY: setup contracts test test-forge test-python demo bench clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

# `npm ci` refuses this registry's lock file (it omits other platforms' optional
# binaries), so install from the lock with `npm install`.
node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

contracts: setup
	$(FORGE) build

test: contracts test-forge test-python

test-forge: contracts
	$(FORGE) test

test-python: contracts
	$(PY) -m pytest -q

demo: contracts
	$(PY) -m examples.demo

bench: contracts
	$(PY) -m bench

# The dashboard's browser test drives Debian's Chromium (Playwright cannot download a browser here).
CHROMIUM := /usr/lib/chromium/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

test-python: $(CHROMIUM)

clean:
	rm -rf out cache build .pytest_cache .hypothesis
