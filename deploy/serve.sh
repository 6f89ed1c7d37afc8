#!/usr/bin/env bash
# Serves the shipped models/ on 8000 (HTTP), 8001 (gRPC) and 8002 (metrics):
# fetches the ONNX Runtime library if needed, builds in release mode, runs.
# Extra arguments go to ferroserve, e.g. deploy/serve.sh --http-port 9000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/setup.sh ort
cargo build --release --locked
exec target/release/ferroserve --model-repository models "$@"
