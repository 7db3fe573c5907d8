# Quant Desk — the front door. `make help` lists the targets.
# `make run` and `make test` create the virtual environment and install what they need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DESK   := $(VENV)/bin/desk
STAMP  := $(VENV)/.installed
DATA   ?= var
NAME   ?=
PYTEST := $(PY) -m pytest -q

.DEFAULT_GOAL := help
.PHONY: help setup run deploy stop status logs positions leaderboard halt resume proto test test-unit \
        test-integration test-e2e lint typecheck clean

help: ## list the targets
	@echo "Quant Desk — make targets (NAME=<strategy> where it applies):"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create the virtual environment and install everything (done by run/test too)

run: $(STAMP) ## run the embedded desk: nats-server, all services, sim broker, synthetic feed, strategies
	$(DESK) up --data-dir $(DATA)

deploy: $(STAMP) ## (re)deploy strategies from strategies/ on the running desk (NAME=one)
	$(DESK) deploy $(NAME)

stop: $(STAMP) ## stop strategies on the running desk (NAME=one)
	$(DESK) stop $(NAME)

status: $(STAMP) ## strategies' state, restarts, last error and heartbeat
	$(DESK) status $(NAME)

logs: $(STAMP) ## a strategy's output (NAME=strategy)
	$(DESK) logs $(NAME)

positions: $(STAMP) ## open positions per strategy
	$(DESK) positions

leaderboard: $(STAMP) ## members ranked by return
	$(DESK) leaderboard

halt: $(STAMP) ## kill switch: refuse new orders (NAME=one strategy, else the whole desk)
	$(DESK) halt $(NAME)

resume: $(STAMP) ## lift a halt (NAME=one strategy, else the whole desk)
	$(DESK) resume $(NAME)

proto: $(STAMP) ## regenerate desk/v1/*_pb2.py(i) from protos/ with grpcio-tools
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/desk/v1/*.proto

test: $(STAMP) ## lint and types, then unit, integration (real nats-server) and end-to-end (the whole desk) tests
	$(VENV)/bin/ruff check desk services strategy_sdk desk_client tests
	$(VENV)/bin/mypy desk services strategy_sdk desk_client
	$(PYTEST) tests/unit
	$(PYTEST) tests/integration
	$(PYTEST) tests/e2e

test-unit: $(STAMP) ## unit tests only (no servers)
	$(PYTEST) tests/unit

test-integration: $(STAMP) ## integration tests against a real nats-server
	$(PYTEST) tests/integration

test-e2e: $(STAMP) ## the embedded desk end to end
	$(PYTEST) tests/e2e

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check desk services strategy_sdk desk_client tests

typecheck: $(STAMP) ## mypy (strict on source)
	$(VENV)/bin/mypy desk services strategy_sdk desk_client

clean: ## remove the virtual environment, caches and the embedded desk's data (var/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info $(DATA)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
