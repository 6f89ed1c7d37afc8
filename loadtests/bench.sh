#!/usr/bin/env bash
# The one-command benchmark: builds in release mode, then runs
# loadtests/bench.py (in-process ONNX Runtime vs ferroserve over gRPC, and
# perf_analyzer when tests/run.sh has fetched it). Arguments pass through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/setup.sh ort
cargo build --release --locked --bin ferroserve --bin ferroload
exec python3 loadtests/bench.py "$@"
