# The commands people type. Everything else lives in pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install train test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[dev,cnn]'
	touch $(STAMP)

install: $(STAMP)

train: install ## the main job: train the default model on real MNIST, tracked in ./mlflow.db
	$(BIN)/mnistops train

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit ## lint, type-check, then every test

bench: install
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_cnn.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mlruns mlflow.db
