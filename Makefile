# TapPass developer entry points. `make run` and `make test` install what
# they need (system packages via apt-get, crates via cargo) on first use.

CARGO_TARGET_DIR ?= $(HOME)/.cache/tappass/target
export CARGO_TARGET_DIR

.PHONY: setup build run test lint fmt bench bench-memory bench-micro

setup:
	@bash scripts/setup-debian.sh

build: setup
	cargo build --workspace --bins

## Start TapPass in the foreground: the control plane and a gateway on
## 127.0.0.1:8080 in one process (`tappass up`), offline (models mock-gpt
## and mock-claude), with its state in ./.tappass.
run: setup
	cargo build --release -p tappass-controlplane --bin tappass
	$(CARGO_TARGET_DIR)/release/tappass up --data-dir .tappass

## All tests: Rust unit and integration tests, then the official OpenAI and
## Anthropic Python SDKs against the real gateway.
test: build
	cargo test --workspace
	bash tests/sdk/run.sh

## Load benchmark: direct vs Pingora pass-through vs TapPass (vs LiteLLM
## and Portkey with BENCH_ARGS=--peers); results in benches/results/.
bench: setup
	cargo build --release -p tappass-dataplane -p tappass-benches --bins
	$(CARGO_TARGET_DIR)/release/tappass-bench $(BENCH_ARGS)

## Memory of TapPass and the Pingora pass-through each holding 1,000
## concurrent slow streams (about 35 s); results in benches/results/memory.*.
bench-memory: setup
	cargo build --release -p tappass-dataplane -p tappass-benches --bins
	$(CARGO_TARGET_DIR)/release/tappass-bench --memory $(BENCH_ARGS)

## Criterion micro-benchmarks (a few minutes); summary in
## benches/results/micro.md. One of them: MICRO=detectors (or tokens, rego,
## snapshot, audit).
MICRO ?= detectors tokens rego snapshot audit budget
bench-micro: setup
	for b in $(MICRO); do cargo bench -p tappass-benches --bench $$b || exit 1; done
	cargo build --release -p tappass-benches --bin tappass-bench-micro-report
	$(CARGO_TARGET_DIR)/release/tappass-bench-micro-report

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
