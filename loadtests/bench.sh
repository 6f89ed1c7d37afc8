#!/usr/bin/env bash
# The one-command benchmark: builds in release mode, then runs
# loadtests/bench.py (in-process ONNX Runtime vs ferroserve over gRPC, and
# perf_analyzer when tests/run.sh has fetched it). Arguments pass through;
# --concurrency-sweep runs the batching-delay sweep instead, which generates
# mlp_big and resnet50 with the Python venv (deploy/setup.sh test).
#   --overhead      runs loadtests/overhead.py instead: server CPU per answered
#                   request over gRPC, HTTP binary and HTTP JSON (the rest of the
#                   arguments pass to it: --baseline PATH, --instructions, ...)
#   --instructions  runs loadtests/instructions.py instead: instructions per
#                   request in process under callgrind
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/setup.sh ort
case " $* " in
  *" --concurrency-sweep "* | *" --overhead "*) [ -x .deps/venv/bin/python ] || deploy/setup.sh test ;;
esac
cargo build --release --locked --bin ferroserve --bin ferroload
case "${1:-}" in
  --overhead)
    shift
    case " $* " in *" --instructions "*) cargo bench --locked --no-run --bench instructions ;; esac
    exec python3 loadtests/overhead.py "$@" ;;
  --instructions)
    shift
    cargo bench --locked --no-run --bench instructions
    exec python3 loadtests/instructions.py "$@" ;;
esac
exec python3 loadtests/bench.py "$@"
