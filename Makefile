# haul: the two commands of the README are `make demo` and `make test`.
#
#   make venv       .venv with haul and its test tools (pip install -e '.[dev]'; quiet, idempotent)
#   make demo       haul's main job once on a sample dataset (installs redis-server if needed)
#   make test-deps  the real servers the tests run against (scripts/install-test-deps.sh)
#   make test       venv + test-deps + the whole test suite (3 pytest processes)
#   make lint       ruff check, ruff format --check, mypy

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the packaging changes; the editable install picks up code changes.
STAMP := $(VENV)/.haul-installed
REDIS_HOST := 127.0.0.1
REDIS_PORT := 6379

.PHONY: help venv demo redis-server test-deps test lint

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "make: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: pip install -e '.[dev]' (log: $(VENV)/pip-install.log; slow only the first time)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
	    >$(VENV)/pip-install.log 2>&1 || { cat $(VENV)/pip-install.log; exit 1; }
	@# An editable install leaves haul's own modules uncompiled, and where PYTHONDONTWRITEBYTECODE
	@# is set Python never writes them: each command would compile them again (0.1 s here).
	@$(BIN)/python -m compileall -q worker tasks dashboard
	@touch $@

# The demo uses the Redis on 127.0.0.1:6379 when one answers; otherwise it starts its own
# redis-server (Debian package), so install that package when it is missing.
redis-server:
	@if (exec 3<>/dev/tcp/$(REDIS_HOST)/$(REDIS_PORT) && printf 'PING\r\n' >&3 \
	        && read -r -t 2 reply <&3 && [[ $$reply == +PONG* ]]) 2>/dev/null; then \
	    echo "make: a Redis answers on $(REDIS_HOST):$(REDIS_PORT); the demo uses it"; \
	elif command -v redis-server >/dev/null 2>&1 || test -x /usr/bin/redis-server; then \
	    echo "make: redis-server is installed; the demo starts its own"; \
	else \
	    echo "make: installing the Debian package redis-server (the demo starts its own Redis)"; \
	    sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq redis-server >/dev/null; \
	fi

demo: venv redis-server
	@$(BIN)/haul demo

test-deps:
	@bash scripts/install-test-deps.sh

# Three test processes on this 2-core machine: the suite spends about half its time waiting
# on workers, servers and timeouts (0.54 cores busy alone). Whole files per process
# (--dist loadfile) keep each module's servers and workers in one place. 10 min -> 5.5 min.
TEST_PROCESSES ?= 3

test: venv test-deps
	@$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
