#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: fetches what it needs
# (ONNX Runtime, a Python venv with tritonclient, perf_analyzer), then runs
# formatting and lint checks, the Rust unit and integration tests, and the
# compatibility suite driven by tritonclient and perf_analyzer, and a bounded
# garbage-input run against a live server, and a bounded fuzzing run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One full build, not an iteration: incremental state would only take disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
deploy/setup.sh test
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
FERROSERVE_BIN=target/debug/ferroserve .deps/venv/bin/python -m pytest tests/python -q -rs
# A bounded garbage run against a live server (loadtests/scenarios/garbage.py):
# malformed protobuf, JSON, binary tensors, headers and raw bytes on both
# fronts, checking no crash, no hang, no 500 and every valid request answered.
# The debug build inflates a gzip bomb slowly, so a hang here is 15 s of silence.
.deps/venv/bin/python loadtests/scenarios/garbage.py --binary target/debug/ferroserve --seconds 10 --timeout 15
# Coverage-guided fuzzing (libFuzzer, on stable Rust) of the gRPC and HTTP
# request decoders and config.pbtxt, 60 s a target from the committed
# corpus: any crash fails the run (fuzz/run.sh).
bash fuzz/run.sh 60
