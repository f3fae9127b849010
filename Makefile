# spotline's front door. `make demo` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAM_STAMP := $(SAM_VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
MODEL_STAMP := $(VENV)/.model-installed
BENCH_STAMP := $(VENV)/.bench-installed
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements-model.in)
TORCH_CPU_WHEELS ?= https://download.pytorch.org/whl/cpu/torch/

# sam build targets python3.13 (arm64, no Docker) and runs the python3.13 on PATH. One that runs
# as is wins; else pyenv's newest installed 3.13 beside the current version (no particular layout
# needed); else `make build` stops and says how to get one (make sam-python checks alone).
ifeq ($(shell python3.13 -c pass 2>/dev/null && echo found),)
PYENV_PYTHON313 := $(shell pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$$' | tail -n 1)
ifneq ($(PYENV_PYTHON313),)
export PYENV_VERSION ?= $(shell pyenv version-name 2>/dev/null):$(PYENV_PYTHON313)
endif
endif

.PHONY: checkov chaos help demo test test-unit test-e2e lint format validate build cfn-lint doctor clean
.PHONY: model test-model catalog run-local image push sam-python bench lock sync-compose
.PHONY: test-pythons

help:
	@echo "make demo      run the whole pipeline locally (moto server, real worker, real handlers)"
	@echo "make chaos     chaos drill: 200 jobs, workers killed at random; SEED=N replays, PLOT=t.png draws"
	@echo "make test      run the test suite (unit + end-to-end) and cfn-lint"
	@echo "make test-pythons  the unit tests on python3.12 (worker image) and 3.13 (Lambda runtime)"
	@echo "make lint      ruff check, ruff format --check, hadolint, cfn-lint, checkov"
	@echo "make validate  sam validate --lint"
	@echo "make doctor    check template.yaml for misconfigurations (python -m spotline_ops.doctor)"
	@echo "make build     sam build"
	@echo "make image     build the worker image spotline-worker:TAG and yours FROM it (ANALYZER_DIR=examples/kmeans)"
	@echo "make push      log in to the stack's ECR repository, build, push TAG, write the analyzer catalog"
	@echo "make model     add the optional real model (torch CPU + all-MiniLM-L6-v2, ~1.5 GB) to .venv"
	@echo "make test-model  the text_embed tests, failing (not skipping) without the model"
	@echo "make bench     add what the benchmarks' plots need (matplotlib) to .venv"
	@echo "make lock      rewrite the locks (requirements*.txt, with hashes) from their .in files"

# Every environment installs from a lock with hashes (`make lock` writes them from the .in files).
$(STAMP): requirements-dev.txt pyproject.toml plugins/spotline-drills/pyproject.toml \
		examples/kmeans/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e plugins/spotline-drills
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e examples/kmeans
	touch $(STAMP)

$(SAM_STAMP): requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-sam.txt
	touch $(SAM_STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

# The optional model extra. torch first and alone, by its pin and without a hash: its CPU build
# lies on local disk (PyPI's Linux torch is the CUDA build, gigabytes). The rest from the lock,
# which holds everything but torch, with --no-deps so nothing outside it is fetched.
$(MODEL_STAMP): $(STAMP) requirements-model.txt
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-model.txt
	touch $(MODEL_STAMP)

# What only the benchmarks' plots need (matplotlib: pyproject's `bench` extra).
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)

# The locks, from the .in files, with hashes (uv, in .venv). TORCH_CPU_WHEELS: where torch's CPU
# build lies (a find-links page, or a folder where the wheel is on disk) for the development
# model lock.
lock: $(STAMP)
	TORCH_VERSION='$(TORCH_VERSION)' TORCH_CPU_WHEELS='$(TORCH_CPU_WHEELS)' UV='$(BIN)/uv' tools/lock.sh

model: $(MODEL_STAMP)

test-model: $(MODEL_STAMP)
	SPOTLINE_REQUIRE_MODEL=1 $(BIN)/python -m pytest tests/unit/test_text_embed.py tests/e2e/test_text_embed.py

demo: $(STAMP)
	$(BIN)/python -m devstack demo

# Your installed analyzer, end to end on this machine: make run-local ANALYZER=kmeans \
#   INPUT='{"points": [[0, 0], [1, 1], [9, 9]], "k": 2}'
run-local: $(STAMP)
	$(BIN)/python -m devstack run --analyzer $(ANALYZER) --input '$(INPUT)' \
		$(if $(PARAMS),--params '$(PARAMS)')

chaos: $(STAMP)
	$(BIN)/python -m devstack chaos $(if $(SEED),--seed $(SEED)) $(if $(PLOT),--plot $(PLOT))

# One pytest worker per core (pytest-xdist): every test keeps its own servers, ports and
# folders, so they run side by side; the end-to-end tests keep to one worker, one at a time
# (tests/e2e/conftest.py), as their timing checks need. TEST_WORKERS=0 runs all in one process.
TEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP) cfn-lint doctor
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) tests/unit

test-e2e: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) tests/e2e

# The unit tests on the other Pythons spotline runs on: 3.12 (the worker image) and 3.13 (the
# Lambda runtime), each in a venv of its own (.venv-py3.12, .venv-py3.13) from the same lock.
# A Python this machine lacks is skipped with how to get it (REQUIRE_PYTHONS=1: a failure).
EXTRA_PYTHONS ?= 3.12 3.13

test-pythons:
	@for version in $(EXTRA_PYTHONS); do tools/test_python.sh $$version || exit 1; done

# The analyzers the base image installs, as the API checks jobs against them (the Lambda
# bundle's copy). `make push` regenerates it from the pushed image instead.
catalog: $(STAMP)
	WORKER_IMAGE=spotline-worker:latest $(BIN)/python -m gpu_worker --catalog \
		--distribution spotline > functions/spotline/catalog.json

# .cfnlintrc appends the doctor's checks as rules (tools/cfn_lint_rules): E9001, I9001.
cfn-lint: $(STAMP)
	$(BIN)/cfn-lint template.yaml

doctor: $(STAMP)
	$(BIN)/python -m spotline_ops.doctor template.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint gpu_worker/Dockerfile examples/kmeans/Dockerfile
	$(BIN)/python tools/sync_compose.py --check
	@if command -v docker-compose >/dev/null; then \
		WORKER_QUEUE_URL=q WORKER_DLQ_URL=d WORKER_TABLE_NAME=t WORKER_BUCKET=b WORKER_ID=i \
		WORKER_LOG_GROUP=g docker-compose -f gpu_worker/docker-compose.yml config -q \
		&& echo "docker-compose config: gpu_worker/docker-compose.yml is valid"; \
	else echo "docker-compose config: skipped, no docker-compose (apt install docker-compose)"; fi
	$(BIN)/cfn-lint template.yaml
	$(MAKE) --no-print-directory checkov

# Every skipped check carries its reason next to the resource (Metadata: checkov: skip).
checkov: $(CHECKOV_STAMP)
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation \
		--skip-download --compact --quiet

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

validate: $(SAM_STAMP)
	$(SAM_VENV)/bin/sam validate --lint --region us-east-1

sam-python:
	@python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null || { \
		echo "sam build needs python3.13 on PATH (the functions' runtime). Get one:" \
		"pyenv install 3.13 (make finds it), uv python install 3.13, or your OS's python3.13;" \
		"or build in Docker: sam build --use-container" >&2; exit 2; }

build: sam-python $(SAM_STAMP)
	$(SAM_VENV)/bin/sam build --region us-east-1

# The worker image, yours FROM it (ANALYZER_DIR: your package's directory with its Dockerfile;
# empty: the base alone), the push to the stack's ECR repository (STACK_NAME, AWS_REGION, TAG)
# and the catalog from the pushed image. tools/worker_image.sh holds the recipe and its settings.
ANALYZER_DIR ?= examples/kmeans

# The worker's compose file into template.yaml's user data (the one definition, copied verbatim).
sync-compose: $(STAMP)
	$(BIN)/python tools/sync_compose.py

image:
	ANALYZER_DIR='$(ANALYZER_DIR)' tools/worker_image.sh build

push:
	ANALYZER_DIR='$(ANALYZER_DIR)' tools/worker_image.sh push

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .venv-py3.* .aws-sam .pytest_cache .ruff_cache .mypy_cache
