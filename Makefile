# `make run` starts a demo; `make test` runs every test. Both build .venv first: `run` with what
# running needs, `test` with the test tools as well.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
# The data plane is compiled into the package: a change to it means installing again.
RUST := rust/Cargo.toml rust/Cargo.lock $(wildcard rust/src/*.rs)
TOOLS := $(VENV)/.installed-test

.PHONY: venv run test lint rust-check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml $(RUST) | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(TOOLS): pyproject.toml $(RUST) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(RUNTIME)

venv: $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/balancer demo

lint: $(TOOLS)
	$(BIN)/ruff check src tests
	$(BIN)/mypy src tests

# The data plane's own tests and lints (rust/): unit tests, and clippy with warnings as errors.
rust-check:
	cd rust && cargo test --release --quiet && cargo clippy --release --all-targets --quiet -- -D warnings

test: lint rust-check
	$(BIN)/pytest

# Benchmark against HAProxy and nginx stream on 127.0.0.1 (a few minutes; see balancer bench -h).
bench: $(RUNTIME)
	$(BIN)/balancer bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis rust/target
