#!/usr/bin/env bash
# Bounded libFuzzer run of every target in fuzz/fuzz_targets, on STABLE Rust
# (no nightly, no cargo-fuzz): the coverage instrumentation is LLVM's sancov
# pass, turned on with the same flags cargo-fuzz passes.
#
#   bash fuzz/run.sh [seconds-per-target]     (default 60)
#
# The committed seed corpus fuzz/corpus/<target> is only read; new inputs go
# to a scratch copy that is deleted at exit. A crash, leak of the RSS limit or
# timeout writes its input to fuzz/artifacts/<target>/ and fails the script.
# Environment: FUZZ_TARGETS="a b" runs only those; CARGO_BUILD_JOBS as usual.
# ONNX Runtime is not needed: the targets never load it.
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: bash fuzz/run.sh [seconds-per-target]" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
fuzz="$root/fuzz"

targets="${FUZZ_TARGETS:-$(cd "$fuzz/fuzz_targets" && ls -- *.rs | sed 's/\.rs$//' | tr '\n' ' ')}"

# Building for an explicit --target keeps RUSTFLAGS off build scripts and
# proc macros (they must not be instrumented: nothing would define the
# __sanitizer_cov_* hooks they call). This is what cargo-fuzz does too.
host="$(rustc -vV | sed -n 's/^host: //p')"
unset CARGO_ENCODED_RUSTFLAGS
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"

echo "== building fuzz targets ($host, $(rustc --version))"
if ! cargo metadata --locked --offline --format-version 1 --manifest-path "$fuzz/Cargo.toml" >/dev/null 2>&1 \
    && ! cargo metadata --locked --format-version 1 --manifest-path "$fuzz/Cargo.toml" >/dev/null 2>&1; then
    echo "fuzz/Cargo.lock does not match the crates' manifests (a dependency of ferroserve changed?);" >&2
    echo "refresh it with: cargo metadata --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null" >&2
    exit 1
fi
start=$(date +%s)
cargo build --release --locked \
    --manifest-path "$fuzz/Cargo.toml" \
    --target-dir "$fuzz/target" \
    --target "$host" \
    --bins
echo "== built in $(( $(date +%s) - start ))s"

bindir="$fuzz/target/$host/release"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/ferroserve-fuzz.XXXXXX")"
trap 'rm -rf -- "$scratch"' EXIT

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
failed=()
summary=()
for t in $targets; do
    corpus="$fuzz/corpus/$t"
    artifacts="$fuzz/artifacts/$t"
    mkdir -p "$artifacts" "$scratch/$t"
    if [ -d "$corpus" ]; then
        cp -- "$corpus"/* "$scratch/$t"/ 2>/dev/null || true
    else
        corpus=""
    fi
    dict=()
    if [ -f "$fuzz/dict/$t.dict" ]; then
        dict=("-dict=$fuzz/dict/$t.dict")
    fi
    log="$scratch/$t.log"
    echo "== fuzzing $t for ${seconds}s"
    rc=0
    "$bindir/$t" \
        -max_total_time="$seconds" \
        -rss_limit_mb=2048 \
        -timeout=10 \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        "${dict[@]}" \
        "$scratch/$t" ${corpus:+"$corpus"} >"$log" 2>&1 || rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
    if [ "$rc" -eq 0 ]; then
        line="$t: ${execs:-?} executions, ${cov:-cov: ?}, no crash"
    else
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        line="$t: ${execs:-?} executions, CRASH (exit $rc), input: ${artifact:-none written}"
        failed+=("$t")
        echo "---- $t: last lines of libFuzzer's output"
        tail -n 60 "$log"
        echo "----"
        echo "reproduce: $bindir/$t ${artifact:-<artifact>}"
    fi
    echo "$line"
    summary+=("$line")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
