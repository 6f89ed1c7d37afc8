#!/usr/bin/env python3
"""Instructions per request on the in-process request path (stdlib only).

Runs benches/instructions.rs (decode -> repository -> scheduler -> instance
thread -> encode, no sockets) under `valgrind --tool=callgrind` twice, with
LOW and HIGH requests, and divides the difference by HIGH - LOW: start-up and
model loading cancel out. Instruction counts do not move with the machine's
load, unlike time. ONNX Runtime's own instructions (every call into its
shared library, with the C library functions it calls) are reported apart
from the server's; `--top` lists the functions where the server's
instructions per request go (self cost; a C library function there may
have been called by ONNX Runtime).

    python3 loadtests/instructions.py [--model mlp] [--transports grpc,http-binary,http-json]
                                      [--low 200] [--high 1200] [--top 25]

Build first: cargo bench --no-run --bench instructions (loadtests/bench.sh
--instructions does both).
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORT_OBJECT = re.compile(r"libonnxruntime")


def driver():
    """The instructions bench executable, built by cargo (release profile)."""
    out = subprocess.run(["cargo", "bench", "--locked", "--no-run", "--bench", "instructions",
                          "--message-format", "json"], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("target", {}).get("name") == "instructions" \
                and message.get("executable"):
            return message["executable"]
    raise SystemExit("cargo did not report the instructions bench executable")


def self_costs(path, executable):
    """From a callgrind output file: ({(object, function): self instructions},
    instructions spent inside calls from `executable`'s code into ONNX
    Runtime, with whatever it called in turn: its own memcpy and malloc
    count as its)."""
    names = {"ob": {}, "fn": {}}
    costs = collections.Counter()
    into_ort = 0
    ob = fn = callee = None
    call_cost_next = False
    with open(path) as f:
        for line in f:
            if line[0].isdigit() or line[0] in "+-*":
                parts = line.split()
                if call_cost_next:  # the inclusive cost of a call, not this function's own
                    call_cost_next = False
                    # Only calls from the server's own code: ONNX Runtime calling the C++
                    # library calling back into ONNX Runtime must not count twice.
                    if len(parts) >= 2 and is_ort(callee or ob) and ob == executable:
                        into_ort += int(parts[1])
                    callee = None
                    continue
                if len(parts) >= 2:
                    costs[(ob, fn)] += int(parts[1])
                continue
            key, _, value = line.rstrip("\n").partition("=")
            if key in ("ob", "fn", "cob", "cfn"):
                kind = key[-2:]
                m = re.match(r"\((\d+)\)(?: (.*))?", value)
                name = value
                if m:
                    ident, text = m.groups()
                    if text is not None:
                        names[kind][ident] = text
                    name = names[kind].get(ident, value)
                if key == "ob":
                    ob = name
                elif key == "fn":
                    fn = name
                elif key == "cob":
                    callee = name
            elif key == "calls":
                call_cost_next = True
    return costs, into_ort


def is_ort(obj):
    return bool(obj and ORT_OBJECT.search(obj))


def count(binary, model, transport, requests, work):
    out = os.path.join(work, f"callgrind-{transport}-{requests}.out")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "--model", model,
                    "--requests", str(requests), "--transport", transport],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    return self_costs(out, os.path.realpath(binary))


def run(model, transports, low, high, top, binary=None):
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    binary = binary or driver()
    results = {}
    with tempfile.TemporaryDirectory(prefix="ferroserve-callgrind-") as work:
        for transport in transports:
            (small, small_ort), (large, large_ort) = (count(binary, model, transport, low, work),
                                                      count(binary, model, transport, high, work))
            n = high - low
            per = {k: (large[k] - small.get(k, 0)) / n for k in large}
            ort = (large_ort - small_ort) / n
            server = sum(per.values()) - ort
            results[transport] = {"server_instructions_per_request": server, "ort_instructions_per_request": ort}
            print(f"{model} {transport}: {server:,.0f} server instructions per request "
                  f"(+ {ort:,.0f} in ONNX Runtime)", flush=True)
            if top:
                ranked = sorted(((v, fn, ob) for (ob, fn), v in per.items() if not is_ort(ob)), reverse=True)[:top]
                for v, fn, ob in ranked:
                    print(f"  {v:>9,.0f}  {fn}  [{os.path.basename(ob or '?')}]")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--transports", default="grpc,http-binary,http-json")
    parser.add_argument("--low", type=int, default=200)
    parser.add_argument("--high", type=int, default=1200)
    parser.add_argument("--top", type=int, default=0, help="list the N costliest server functions per request")
    parser.add_argument("--driver", help="the instructions bench executable (default: built by cargo)")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    results = run(args.model, args.transports.split(","), args.low, args.high, args.top, args.driver)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
