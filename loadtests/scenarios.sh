#!/usr/bin/env bash
# The reliability scenarios of loadtests/scenarios/, one command each:
#   loadtests/scenarios.sh overload|breaker|sigterm|garbage|hotswap|canary|churn|cost|shadow|capacity [flags...]
#   loadtests/scenarios.sh all
# Builds ferroserve and ferroload in release mode, fetches ONNX Runtime and the
# Python venv (deploy/setup.sh test) when missing, then runs the scenario. Each
# one targets 127.0.0.1 only, stops by itself, prints a summary, writes
# target/scenarios/<name>.json, and exits non-zero when a hard check fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scenario=${1:?usage: loadtests/scenarios.sh overload|breaker|sigterm|garbage|hotswap|canary|churn|cost|shadow|capacity|all [flags...]}
shift
[ -x .deps/venv/bin/python ] || deploy/setup.sh test
cargo build --release --locked --bin ferroserve --bin ferroload
if [ "$scenario" = all ]; then
  status=0
  for name in overload breaker sigterm garbage hotswap canary churn cost shadow capacity; do
    echo "=== $name"
    .deps/venv/bin/python "loadtests/scenarios/$name.py" || status=1
  done
  exit $status
fi
exec .deps/venv/bin/python "loadtests/scenarios/$scenario.py" "$@"
