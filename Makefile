# `make run` starts a demo; `make test` runs every test. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/balancer demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy src tests

test: lint
	$(BIN)/pytest

# Benchmark against HAProxy and nginx stream on 127.0.0.1 (a few minutes; see balancer bench -h).
.PHONY: bench
bench: $(STAMP)
	$(BIN)/balancer bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
