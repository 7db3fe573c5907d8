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

# Docker: images, compose. OFFLINE=1 builds from a local Debian base image (no registry needed).
OFFLINE    ?=
BASE_IMAGE ?= $(if $(OFFLINE),quantdesk/base:bookworm,python:3.11-slim-bookworm)
COMPOSE    ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
PROJECT    ?= quantdesk
WHEELS     := deploy/build/wheels

.DEFAULT_GOAL := help
.PHONY: sandbox-tools bench wheels base-image build strategy-image up down clean-docker test-docker test-browser test-faults test-cluster test-busy hooks
.PHONY: help setup run deploy stop status logs positions leaderboard halt resume proto test test-unit \
        test-integration test-e2e test-confinement lint typecheck clean

help: ## list the targets
	@echo "Quant Desk — make targets (NAME=<strategy> where it applies):"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'

# Two distributions, both editable: quant-desk-sdk (./sdk) and quant-desk, which depends on it (in one pip
# command, so pip takes the SDK from ./sdk and never looks for it on an index).
$(STAMP): pyproject.toml sdk/pyproject.toml sdk/split_build.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./sdk -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create the virtual environment and install everything (done by run/test too)

run: $(STAMP) sandbox-tools ## run the embedded desk: nats-server, all services, sim broker, synthetic feed, strategies
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

wheels: $(STAMP) ## build quant-desk and quant-desk-sdk and download every wheel the images need into deploy/build/wheels
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PY) -m pip wheel --quiet --wheel-dir $(WHEELS) ./sdk '.[docker]'
	cp $(VENV)/bin/nats-server deploy/build/nats-server

base-image: ## make quantdesk/base:bookworm offline with debootstrap (root, Docker engine)
	deploy/offline/make-base-image.sh quantdesk/base:bookworm

build: wheels $(if $(OFFLINE),base-image) ## build the service and NATS images (and the strategy image)
	docker build --quiet -f deploy/Dockerfile.nats -t quantdesk/nats:latest .
	docker build --quiet -f deploy/Dockerfile.service --build-arg BASE_IMAGE=$(BASE_IMAGE) -t quantdesk/service:latest .
	$(MAKE) --no-print-directory strategy-image SKIP_WHEELS=1

strategy-image: $(if $(SKIP_WHEELS),,wheels) ## build the strategy runtime image (strategy_sdk + desk_client)
	docker build --quiet -f deploy/Dockerfile.strategy --build-arg BASE_IMAGE=$(BASE_IMAGE) -t quantdesk/strategy:latest .

up: ## run the desk under compose, in the background (make build first); the CLI's credentials go to var/
	DESK_STRATEGIES_DIR=$(CURDIR)/strategies $(COMPOSE) -p $(PROJECT) up -d
	@mkdir -p $(DATA)/credentials && umask 077 && $(COMPOSE) -p $(PROJECT) run --rm --no-deps -T nats-auth \
	  python -m desk.bus.auth cli-credentials /auth > $(DATA)/credentials/cli.json
	@echo "desk CLI credentials for this stack: $(DATA)/credentials/cli.json"

down: ## stop the compose desk and its strategy containers (volumes are kept)
	-$(DESK) stop
	$(COMPOSE) -p $(PROJECT) down

clean-docker: ## remove the compose desk, its volumes, strategy containers, networks and code volumes, and the images
	-$(COMPOSE) -p $(PROJECT) down --volumes --remove-orphans
	-docker ps -aq --filter label=quantdesk.strategy | xargs -r docker rm -f
	-docker ps -aq --filter label=quantdesk.code-version | xargs -r docker rm -f
	-docker network ls -q --filter label=quantdesk.strategy | xargs -r docker network rm
	-docker volume ls -q --filter label=quantdesk.code-version | xargs -r docker volume rm
	-docker image rm quantdesk/service:latest quantdesk/strategy:latest quantdesk/nats:latest

proto: $(STAMP) ## regenerate desk/v1/*_pb2.py(i) from protos/ with grpcio-tools
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/desk/v1/*.proto

STAGE := deploy/ci/stage.sh

test: $(STAMP) sandbox-tools ## lint and types, then unit, integration, end-to-end, confinement, cluster, fault, browser and Docker tests
	$(STAGE) lint $(VENV)/bin/ruff check desk services strategy_sdk desk_client bench tools tests sdk/split_build.py
	$(STAGE) format $(VENV)/bin/ruff format --check desk services strategy_sdk desk_client bench tools tests sdk/split_build.py
	$(STAGE) typecheck $(VENV)/bin/mypy desk services strategy_sdk desk_client bench tools tests sdk/split_build.py
	$(STAGE) unit $(PYTEST) tests/unit
	$(STAGE) integration $(PYTEST) tests/integration
	$(STAGE) e2e $(PYTEST) tests/e2e
	$(STAGE) confinement $(PYTEST) tests/confinement
	$(STAGE) cluster $(PYTEST) -m cluster tests/cluster
	$(STAGE) faults $(MAKE) --no-print-directory test-faults
	$(STAGE) browser $(MAKE) --no-print-directory test-browser
	$(STAGE) docker deploy/ci/docker-stage.sh

hooks: $(STAMP) ## install the git pre-commit hook: ruff check, ruff format --check, mypy (.pre-commit-config.yaml)
	$(VENV)/bin/pre-commit install

test-busy: $(STAMP) ## `make test` twice with two CPU-burning processes beside it (RUNS=, BURNERS= to change)
	deploy/ci/busy-test.sh

sandbox-tools: ## install Debian's bubblewrap (the process runtime's sandbox) when missing and we are root
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's bubblewrap (strategies' sandbox)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "WARNING: bwrap (bubblewrap) is missing: strategies would run unconfined; sandbox tests skip"; fi; }

test-faults: $(STAMP) ## kill -9 each service and nats-server under load; prove nothing lost or duplicated; the Alpaca netting crash matrix (~3 min)
	$(PYTEST) -m faults tests/faults

test-browser: $(STAMP) ## the dashboard in headless Chromium (installs Debian's chromium when missing)
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(PYTEST) -m browser tests/browser

test-docker: $(STAMP) ## the compose desk under a real Docker engine (installs and starts one when it can)
	deploy/ci/docker-stage.sh

test-cluster: $(STAMP) ## a 3-node JetStream cluster of real nats-servers: R3, leader loss, client fail-over
	$(PYTEST) -m cluster tests/cluster

test-unit: $(STAMP) ## unit tests only (no servers)
	$(PYTEST) tests/unit

test-integration: $(STAMP) ## integration tests against a real nats-server
	$(PYTEST) tests/integration

test-e2e: $(STAMP) ## the embedded desk end to end
	$(PYTEST) tests/e2e

test-confinement: $(STAMP) sandbox-tools ## a hostile strategy against the real desk: reply injection, permissions, sandbox
	$(PYTEST) tests/confinement

bench: $(STAMP) bench-peers-env ## benchmark the desk against bare NATS/SQLite limits and peer backtesters (table + bench/results/*.json)
	$(PY) -m bench

# --- bench: the backtest section's peers (backtrader, NautilusTrader) in their own venv, never in $(VENV) ---
PEERS_VENV  := bench/.venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
.PHONY: bench-peers-env
bench-peers-env: $(PEERS_STAMP) ## the bench's own environment for backtrader and NautilusTrader (bench/.venv-peers)
$(PEERS_STAMP): bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	@touch $(PEERS_STAMP)
# --- end of the peers' environment ---

lint: $(STAMP) ## ruff check and ruff format --check
	$(VENV)/bin/ruff check desk services strategy_sdk desk_client bench tools tests sdk/split_build.py
	$(VENV)/bin/ruff format --check desk services strategy_sdk desk_client bench tools tests sdk/split_build.py

typecheck: $(STAMP) ## mypy (strict on source, relaxed on tests)
	$(VENV)/bin/mypy desk services strategy_sdk desk_client bench tools tests sdk/split_build.py

clean: ## remove the virtual environment, caches and the embedded desk's data (var/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info $(DATA)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- docs-site: the members' docs site (mkdocs.yml; tests/unit/test_docs_site.py builds it too) ---
.PHONY: docs-site
docs-site: $(STAMP) ## build the docs site with its API reference into site/ (mkdocs build --strict; opens offline)
	$(VENV)/bin/mkdocs build --strict --site-dir site
	@echo "docs site: site/index.html"

# --- docs: the generated parts of docs/architecture.md (tests/unit/test_docs_truth.py checks them) ---
.PHONY: docs
docs: $(STAMP) ## regenerate the generated parts of the docs (the environment tables, from the settings classes)
	$(PY) -m tools.envtable
