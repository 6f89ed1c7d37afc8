#!/usr/bin/env python3
"""Churn: many swaps under load, and memory returns after each.

    python3 loadtests/scenarios/churn.py [--swaps 50] [--rps 300]

(loadtests/scenarios.sh churn builds first.) The server (explicit mode) holds
the shipped `cnn` (the largest shipped model). Under steady open-loop load,
the script replaces `cnn/1/model.onnx` --swaps times, alternating two
different files (the shipped one and a copy with another doc string, so the
file changes and the graph stays the same), and asks
for a load after each; a swap holds the old and the new copy at most. RSS is
read after each swap, once the old copy has drained. Prints RSS after the
first swap, every tenth, and the last (goal: the last within 10% of the
first), and the failed requests (goal: 0). Exits non-zero on a failed
request or a failed load. Loopback only; bounded.
"""

import argparse
import os
import shutil
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402


def load(server):
    req = urllib.request.Request(f"http://{server.http}/v2/repository/models/cnn/load", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--rps", type=int, default=300, help="open-loop rate on cnn")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds after each swap before RSS is read")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/churn.json"))
    args = parser.parse_args()

    work, repo = harness.scenario_workspace("churn")
    harness.copy_model(os.path.join(harness.ROOT, "models/cnn"), repo, "cnn")
    original = os.path.join(work, "a.onnx")
    shutil.copyfile(os.path.join(repo, "cnn/1/model.onnx"), original)
    # The same graph in a different file: a doc_string (ModelProto field 6)
    # appended to the message; the last value of a field wins when parsing.
    padded = os.path.join(work, "b.onnx")
    with open(original, "rb") as f:
        data = f.read()
    with open(padded, "wb") as f:
        f.write(data + b"\x32\x01 ")
    target = os.path.join(repo, "cnn/1/model.onnx")
    with harness.Server(repo, "--model-control-mode", "explicit", "--load-model", "cnn",
                        log=os.path.join(work, "server.log")) as server:
        config = harness.ghz_config("cnn", server.grpc, work)
        harness.ferroload(config, "-c", "2", "-z", "1s")  # warm-up, unrecorded
        rss_start = server.rss_kib() / 1024
        seconds = int(args.swaps * (args.settle + 0.3) + 3)
        loadgen = harness.ferroload(config, "-r", str(args.rps), "-c", "512", "-z", f"{seconds}s", "-t", "10s",
                                    background=True)
        rss = []
        started = time.time()
        for i in range(args.swaps):
            source = padded if i % 2 == 0 else original
            shutil.copyfile(source, target + ".tmp")
            os.replace(target + ".tmp", target)
            load(server)
            time.sleep(args.settle)
            rss.append(server.rss_kib() / 1024)
        swapping = time.time() - started
        loadgen.wait()
        report = harness.read_report(loadgen.report_path)
        loads = server.metric("ferroserve_model_loads_total", model="cnn", outcome="ok")
        errors = server.metric("ferroserve_model_loads_total", model="cnn", outcome="error")
        alive = server.alive()

    failed = harness.errors(report)
    growth = rss[-1] / rss[0] - 1
    print(f"{args.swaps} swaps in {swapping:.1f} s under {args.rps} rps; {report['count']} requests, "
          f"failed: {failed}      goal 0: {'met' if failed == 0 else 'MISSED'}")
    print(f"RSS before the swaps {rss_start:.1f} MiB; after swap 1 {rss[0]:.1f} MiB; " + ", ".join(
        f"{i + 1}: {rss[i]:.1f}" for i in range(9, len(rss), 10)))
    print(f"RSS after the last swap vs after the first: {growth:+.1%}      goal within 10%: "
          f"{'met' if abs(growth) <= 0.10 else 'MISSED'}")
    print(f"loads: {loads:g} ok, {errors:g} failed; p99 {harness.percentile(report, 99) / 1e3:.3f} ms")
    checks = {"no failed request": failed == 0, "every load succeeded": errors == 0, "server alive": alive}
    for what, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'} {what}")
    harness.write_json(args.out, {"rss_mib": rss, "rss_start_mib": rss_start, "growth": growth,
                                  "failed": failed, "requests": report["count"], "checks": checks})
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
