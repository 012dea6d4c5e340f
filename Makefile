# The commands people type. Everything else lives in pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.txt
# Where `make lab` and `make run` keep the MLflow store: the project's root, whatever the
# kernel's working folder (JupyterLab starts kernels in notebooks/).
STORE  ?= sqlite:///$(CURDIR)/mlflow.db
LAB_PORT ?= 8888
# Jupyter refuses to run as root unless told: containers and CI often are root.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
# make test's parallel workers (pytest-xdist). More than the cores: most tests spend their time
# waiting on the processes, kernels and servers they start. loadgroup keeps the tests that share
# a module fixture on one worker; the order of tests/conftest.py's LONGEST_FIRST is kept.
TEST_WORKERS ?= 4
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: install run train lab test test-fast lint typecheck docs unit nbval suite notebooks lock bench clean

# The venv, installed with requirements.txt as constraints: every machine gets the same versions.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -c $(LOCK) -e '.[dev,cnn,lab,postgres,auth]'
	touch $(STAMP)

install: $(STAMP)

run: install ## the main job: the notebook batch on real MNIST, recorded in ./mlflow.db and outputs/
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE)} $(BIN)/python run_notebooks.py

train: install ## one model, no notebooks: `mnistops train` with the default config
	$(BIN)/mnistops train

lab: install ## JupyterLab on 127.0.0.1 with the project's kernel; the store is ./mlflow.db
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE)} $(BIN)/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) \
		--no-browser --notebook-dir notebooks $(LAB_ARGS)

lint: install ## ruff, the formatter's check, and the package's layers (import-linter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

docs: install ## the manual as a site, in site/ (MkDocs Material; a broken link or page fails it)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

unit: install ## every test under tests/, in parallel
	$(BIN)/pytest $(PARALLEL)

nbval: install ## every notebook runs top to bottom; checked cells print what is committed
	$(BIN)/pytest --nbval-lax notebooks -p no:cacheprovider -q

suite: install ## every test and nbval over notebooks/, in one parallel session
	$(BIN)/pytest $(PARALLEL) --nbval-lax -p no:cacheprovider tests notebooks

# make test runs the checks beside the suite (-j): the suite leaves a third of the two cores idle
# while its tests wait on kernels and servers, and mypy and mkdocs fit there; each target's output
# is printed whole when it ends (--output-sync).
test: install ## lint, type-check, the docs, every test and nbval over notebooks/; the last line is its wall time
	@start=$$(date +%s); $(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck docs suite; status=$$?; \
	echo "make test: $$([ $$status -eq 0 ] && echo passed || echo FAILED) in $$(($$(date +%s) - start)) s wall"; \
	exit $$status

test-fast: install ## the edit-test loop: lint, then the unit and data tests (no integration, nothing slow)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not integration and not slow"

notebooks: install ## re-execute the notebooks and keep their outputs (see README: committed outputs)
	$(BIN)/python -m mnistops.runner.committed notebooks/*.ipynb

lock: install ## regenerate requirements.txt from pyproject.toml (needs the package index)
	$(BIN)/pip-compile --all-extras --strip-extras --no-emit-find-links --no-emit-index-url --quiet \
		--output-file $(LOCK) pyproject.toml

bench: install
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_cnn.py
	$(BIN)/python benchmarks/bench_notebooks.py
	$(BIN)/python benchmarks/bench_forest.py
	$(BIN)/python benchmarks/bench_serve.py  # needs wrk (apt-get install wrk)
	$(BIN)/python benchmarks/bench_monitor.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mlruns mlflow.db site
