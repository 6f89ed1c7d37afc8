#!/usr/bin/env bash
# The one-command benchmark: builds in release mode, then runs
# loadtests/bench.py (in-process ONNX Runtime vs ferroserve over gRPC, and
# perf_analyzer when tests/run.sh has fetched it). Arguments pass through;
# --concurrency-sweep runs the batching-delay sweep instead, which generates
# mlp_big and resnet50 with the Python venv (deploy/setup.sh test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/setup.sh ort
case " $* " in
  *" --concurrency-sweep "*) [ -x .deps/venv/bin/python ] || deploy/setup.sh test ;;
esac
cargo build --release --locked --bin ferroserve --bin ferroload
exec python3 loadtests/bench.py "$@"
