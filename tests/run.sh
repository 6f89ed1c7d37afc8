#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: fetches what it needs
# (ONNX Runtime, a Python venv with tritonclient, perf_analyzer), then runs
# formatting and lint checks, the Rust unit and integration tests, and the
# compatibility suite driven by tritonclient and perf_analyzer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/setup.sh test
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
FERROSERVE_BIN=target/debug/ferroserve .deps/venv/bin/python -m pytest tests/python -q -rs
