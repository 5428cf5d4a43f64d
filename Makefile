# Spark DL Lab: the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
TOOLS ?= .tools
# The uv version is written once, in pyproject.toml ([tool.uv] required-version).
UV_VERSION := $(shell sed -n 's/^required-version = "==\(.*\)"/\1/p' pyproject.toml)
UV := $(TOOLS)/bin/uv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
BENCH_ARGS ?=
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# The browser tests drive Debian's chromium: Playwright must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: help venv env lab stop status models bench bench-peers bench-gpu test test-unit test-spark test-cluster \
        test-browser test-notebooks test-packaging test-gpu lint format strip-notebooks docker-config docker-build \
        docker-up docker-urls docker-down test-docker clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv) or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

venv: $(VENV)/.synced ## Create/refresh the virtualenv from uv.lock (the lab's one lock file)

env: ## Create .env with a Jupyter token and a Spark secret (needed before `docker compose up`)
	python3 -m lab_utils.ops.cli env

lab: venv ## Start the native lab (master, workers, history server, model server, JupyterLab), or just what is missing (a lost worker); print URLs
	$(BIN)/lab start

stop: ## Stop the native lab and all it started (kernels, drivers, executors); your own jobs (e.g. from a Jupyter terminal) are left alone
	@if [ -x $(BIN)/lab ]; then $(BIN)/lab stop; else echo "no virtualenv: nothing to stop"; fi

status: venv ## Show the native lab's services and URLs
	$(BIN)/lab status

test: venv ## Run every test, every layer of docs/testing.md (what CI runs)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv ## Unit tests only (no cluster)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

test-spark: venv ## Spark functions on one local[2] session (no cluster)
	$(BIN)/pytest -m spark $(PYTEST_ARGS)

test-cluster: venv ## Tests against a real native standalone cluster
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

test-browser: venv ## Chromium runs notebook 01 in JupyterLab and checks the Spark UIs (screenshots: test-output/browser/)
	$(BIN)/pytest -m browser $(PYTEST_ARGS)

test-notebooks: venv ## Execute every notebook against the cluster at smoke size (01: see test-browser)
	$(BIN)/pytest -m notebooks $(PYTEST_ARGS)

test-packaging: venv ## Validate the compose file and lint the Dockerfiles
	$(BIN)/pytest -m packaging $(PYTEST_ARGS)

test-gpu: venv ## The digits model and the partition predictor on an NVIDIA GPU vs the CPU (skips without one)
	$(BIN)/pytest -m gpu $(PYTEST_ARGS)

test-docker: venv ## Build both images, run the compose lab and notebooks 00, 01, 05 in it (needs a Docker engine)
	$(BIN)/pytest -m docker $(PYTEST_ARGS)

models: venv ## Build the image data set and train the lab's CNN (if missing) into share_storages/
	$(BIN)/python -m lab_utils.training.cnn

# With --peers in BENCH_ARGS, the venv is first synced with the bench-peers group (Ray Data,
# Daft); `make venv`/`make test` sync without it again (CI and the images never install it).
bench: venv ## Benchmark a session's start (classic against Spark Connect), the model server under load and every inference style against one plain process (BENCH_ARGS=..., e.g. --suites session, --suites server, --rest, --peers, --switches pipelined,zstd,lz4,max_bytes, --profile)
	$(if $(findstring --peers,$(BENCH_ARGS)),$(UV) sync --frozen --python $(PYTHON) --group bench-peers)
	$(BIN)/python -m lab_utils.bench $(BENCH_ARGS)

bench-peers: venv ## Install the peers (Ray Data, Daft) into the venv and run `make bench` with --peers
	$(MAKE) bench BENCH_ARGS="--peers $(BENCH_ARGS)"

bench-gpu: venv ## Rows/s of the partition predictor on the GPU and the CPU (digits CNN, ResNet-50); no Spark
	$(BIN)/python -m tests.gpu.bench $(BENCH_ARGS)

lint: venv ## Lint the package, tests and notebooks with ruff, check the package's layers (import-linter), type-check lab_utils with mypy
	$(BIN)/ruff check lab_utils tests notebooks
	$(BIN)/lint-imports
	$(BIN)/mypy

format: venv ## Format the code with ruff
	$(BIN)/ruff format lab_utils tests

strip-notebooks: venv ## Strip outputs and execution counts from every notebook
	$(BIN)/python -m lab_utils.notebooks strip notebooks/*.ipynb

docker-config: ## Validate docker-compose.yaml offline
	docker-compose config --quiet

# Behind a TLS-intercepting proxy: make docker-up EXTRA_CA_CERTS=/usr/local/share/ca-certificates
EXTRA_CA_CERTS ?=
DOCKER_LAB := python3 -m lab_utils.ops.docker

docker-build: ## Build both images (Spark first: JupyterLab builds FROM it); EXTRA_CA_CERTS=DIR trusts a proxy's CA
	$(DOCKER_LAB) build $(if $(EXTRA_CA_CERTS),--extra-ca $(EXTRA_CA_CERTS))

docker-up: ## Build, start the Docker lab with LAB_WORKERS workers, wait until healthy, print the URLs
	$(DOCKER_LAB) up $(if $(EXTRA_CA_CERTS),--extra-ca $(EXTRA_CA_CERTS))

docker-urls: ## Print the Docker lab's URLs (with the Jupyter token)
	$(DOCKER_LAB) urls

docker-down: ## Stop the Docker lab, leaving no container, network or anonymous volume
	$(DOCKER_LAB) down

clean: stop ## Remove the virtualenv, tools and the lab's local state (keeps share_storages/)
	rm -rf $(VENV) $(TOOLS) .lab .pytest_cache .ruff_cache .mypy_cache
