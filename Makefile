# One command each: `make demo` (end-to-end run on a local Anvil), `make test`, `make bench`.
# Every target installs what it needs: the Python venv from pyproject.toml, the Node
# toolchain (Anvil, forge, solc-js, circom2, circomlib) from package-lock.json, Debian's
# PostgreSQL server binaries for the PostgreSQL tests and the replica benchmark, and Debian's
# C++ toolchain for circom's native witness generator.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FORGE := node_modules/.bin/forge
# apt-get needs root: CI runs as root, a developer's shell may need sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

.PHONY: setup postgres native-toolchain contracts test test-forge test-python demo bench clean

setup: $(VENV)/.installed node_modules/.installed postgres

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

# The tests start their own throwaway server from these binaries (tests/postgres_fixtures.py):
# the package's system cluster is never used. The package lists are refreshed only when the
# first install attempt fails.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(APT_INSTALL) postgresql \
		|| { $(SUDO) apt-get update && $(APT_INSTALL) postgresql; }

# circom's C++ witness generator (settlement/artifacts.py builds it per circuit, cached) needs
# these; without them the WASM generator is used.
NATIVE_PACKAGES := g++ libgmp-dev nlohmann-json3-dev nasm make

native-toolchain:
	@dpkg -s $(NATIVE_PACKAGES) >/dev/null 2>&1 || $(APT_INSTALL) $(NATIVE_PACKAGES) \
		|| { $(SUDO) apt-get update && $(APT_INSTALL) $(NATIVE_PACKAGES); }

# The dashboard's browser test drives Debian's Chromium (Playwright cannot download a browser here).
CHROMIUM := /usr/lib/chromium/chromium

$(CHROMIUM):
	$(APT_INSTALL) chromium || { $(SUDO) apt-get update && $(APT_INSTALL) chromium; }

contracts: setup
	$(FORGE) build

test: contracts test-forge test-python

test-forge: contracts
	$(FORGE) test

test-python: contracts native-toolchain $(CHROMIUM)
	$(PY) -m pytest -q

demo: contracts native-toolchain
	$(PY) -m examples.demo

bench: contracts native-toolchain
	$(PY) -m bench

clean:
	rm -rf out cache build .pytest_cache .hypothesis
