# `make run` starts a demo; `make test` runs every test. Both build .venv first: `run` with what
# running needs, `test` with the test tools as well.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TOOLS := $(VENV)/.installed-test

.PHONY: venv run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(TOOLS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(RUNTIME)

venv: $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/balancer demo

lint: $(TOOLS)
	$(BIN)/ruff check src tests
	$(BIN)/mypy src tests

test: lint
	$(BIN)/pytest

# Benchmark against HAProxy and nginx stream on 127.0.0.1 (a few minutes; see balancer bench -h).
bench: $(RUNTIME)
	$(BIN)/balancer bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
