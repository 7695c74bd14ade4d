# The two commands of the README: `make run` and `make test`. Only Python 3.11+ is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run drain build test lint bench clean

# The editable install compiles what setup.py compiles; edits of setup.py or the .pyx rebuild.
# The runtime dependencies are the versions requirements.lock pins, as in the image.
$(STAMP): pyproject.toml requirements.lock setup.py analytics/_kernels.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

run: $(STAMP)  ## start the stack on data/ai_ledger.jsonl; while it is empty, also follow data/demo.ai_ledger.jsonl (simulated rows)
	$(BIN)/thronos-analytics run

drain: $(STAMP)  ## process the ledger once, write data/ai_analytics.json, exit
	$(BIN)/thronos-analytics run --drain

# Compiles again what setup.py compiles. Until then, an edited module runs from its source.
build: $(STAMP)
	$(BIN)/pip install --quiet --no-deps -e .

# mypy and import-linter find modules by path, not through the editable install's import
# hook, so they read a tree of links laid out as the wheel is (pyproject's package-dir).
TYPED := build/typed
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf $(TYPED) && mkdir -p $(TYPED)/thronos_analytics
	ln -s $(CURDIR)/thronos_analytics/*.py $(TYPED)/thronos_analytics/
	for layer in core analytics producers workers; do ln -s $(CURDIR)/$$layer $(TYPED)/thronos_analytics/; done
	MYPYPATH=$(TYPED) $(BIN)/mypy
	cd $(TYPED) && $(CURDIR)/$(BIN)/lint-imports $(CURDIR)/pyproject.toml

# Two processes, one per core, each with its own Redis, workers and test cluster; a file's
# tests stay in one process, since they share its module fixtures.
test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: build
	$(BIN)/python -m benchmarks.throughput

clean:
	rm -rf $(VENV) build/ data/ .pytest_cache .hypothesis
