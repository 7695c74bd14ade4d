# The two commands of the README: `make run` and `make test`. Only Python 3.11+ is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run drain test lint bench clean

# setup.py and the .pyx: the editable install compiles the scoring kernels; edits rebuild them.
$(STAMP): pyproject.toml setup.py analytics/_kernels.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)  ## start the stack on data/ai_ledger.jsonl; while it is empty, also follow data/demo.ai_ledger.jsonl (simulated rows)
	$(BIN)/thronos-analytics run

drain: $(STAMP)  ## process the ledger once, write data/ai_analytics.json, exit
	$(BIN)/thronos-analytics run --drain

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.throughput

clean:
	rm -rf $(VENV) data/ .pytest_cache .hypothesis
