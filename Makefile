# periscope's developer entry points. Two commands get a fresh machine going:
#   make demo   -- virtual environment, periscope, CPython 3.14 and 3.15 target interpreters, the demo
#   make test   -- the same set-up, ruff and the import contracts, then the whole test suite (every
#                  target-facing test on both minors)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo lint test bench soak screenshots target-python system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# tmux drives the end-to-end test, gcc compiles the embedding host of the build-variant test and
# OpenSSH (its server, started by the --host tests on a loopback port with its own keys and config)
# carries the remote tests; install them when missing (Debian-family, as root). Each entry is
# tool:package.
SYSTEM_TOOLS := tmux:tmux gcc:gcc sshd:openssh-server ssh:openssh-client

system-deps:
	@for entry in $(SYSTEM_TOOLS); do tool=$${entry%%:*}; package=$${entry#*:}; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package >/dev/null; \
	  else echo "$$tool is missing: install it (for example: sudo apt-get install $$package)"; exit 1; fi; }; done

# The CPython minors the test suite starts targets under (explorer.versions.SUPPORTED_MINORS).
TARGET_MINORS ?= 3.14 3.15

target-python: $(STAMP)
	@for minor in $(TARGET_MINORS); do $(BIN)/periscope target-python --version $$minor || exit 1; done

setup: $(STAMP) system-deps
	@for minor in $(TARGET_MINORS); do $(BIN)/periscope target-python --version $$minor >/dev/null || exit 1; done

demo: setup
	$(BIN)/periscope --demo

# ruff (config in pyproject.toml) and the import contracts: the core does not import Textual,
# widgets know nothing of sessions, payloads import only the standard library.
lint: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports --no-cache >/dev/null || $(BIN)/lint-imports --no-cache

test: setup lint
	$(BIN)/python -m pytest -n 2 -m "not soak" --durations=15 $(PYTEST_ARGS)

soak: setup
	$(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m tests.bench

screenshots: setup
	$(BIN)/python -m tests.screenshots

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
