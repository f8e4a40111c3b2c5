# pixfleet - every target installs what it needs first.
#   make demo   sample photos -> two thumbs workers -> enqueue --wait -> results (embedded broker)
#   make test   lint (ruff) + types (mypy --strict) + tests (pytest), the fault suite
#               (tests/reliability, ~10 min on 2 cores) included; FAST=1 skips tests marked slow

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
DEMO_HOME  ?= $(CURDIR)/.pixfleet-demo
CODE       := pixfleet brokers producer consumers tests bench

.PHONY: install brokers demo test lint typecheck pytest schema bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	@set -euo pipefail; \
	rm -rf "$(DEMO_HOME)"; export PIXFLEET_HOME="$(DEMO_HOME)"; \
	$(BIN)/uploader samples "$(DEMO_HOME)/samples" --count 6 >/dev/null; \
	echo "== 6 sample photos in $(DEMO_HOME)/samples; starting two thumbs workers"; \
	$(BIN)/worker run --group thumbs --concurrency 1 2>"$(DEMO_HOME)/worker-1.log" & w1=$$!; \
	$(BIN)/worker run --group thumbs --concurrency 1 2>"$(DEMO_HOME)/worker-2.log" & w2=$$!; \
	trap 'kill -TERM $$w1 $$w2 2>/dev/null || true; wait $$w1 $$w2 || true' EXIT; \
	echo "== uploader enqueue --wait"; \
	$(BIN)/uploader enqueue "$(DEMO_HOME)/samples" --wait --timeout 120; \
	kill -TERM $$w1 $$w2; wait $$w1 $$w2; trap - EXIT; \
	echo "== workers drained and stopped:"; \
	grep -h "worker stopped" "$(DEMO_HOME)"/worker-*.log | sed 's/^.*consumers.cli: /   /'; \
	echo "== backlog:"; $(BIN)/uploader status

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/mypy

brokers:
	bash tests/harness/ensure-rabbitmq.sh
	bash tests/harness/ensure-chromium.sh
	bash tests/harness/ensure-nginx.sh

pytest: $(STAMP) brokers
	$(BIN)/python -m pytest --durations=30 $(if $(FAST),-m "not slow")

test: lint typecheck pytest

schema: $(STAMP)
	$(BIN)/python -m pixfleet.schema

bench: $(STAMP)
	$(BIN)/python -m bench.throughput

clean:
	rm -rf $(VENV) .pixfleet .pixfleet-demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

# -- docker/compose.yaml: the whole topology on one Docker host (needs the compose plugin) ----
#   make compose-up [BROKER=kafka]   build, start, wait until healthy; http://localhost:8080/
.PHONY: compose-up compose-down
COMPOSE ?= docker compose -f docker/compose.yaml

compose-up:
	$(if $(filter kafka,$(BROKER)),COMPOSE_PROFILES=kafka PIXFLEET_COMPOSE_BROKER=kafka://kafka:9092?leader_leave=true) \
	$(COMPOSE) up --build --detach --wait --wait-timeout 300

compose-down:
	$(COMPOSE) --profile kafka down --remove-orphans
