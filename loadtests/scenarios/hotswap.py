#!/usr/bin/env python3
"""Hot swap under load: new model files take traffic with zero failed requests.

    python3 loadtests/scenarios/hotswap.py [--rps 500] [--phase 5]

(loadtests/scenarios.sh hotswap builds first.) The server runs in poll mode
on model `m` (tests/models/multiversion version 1: y = x + 1; policy: the
latest two versions serve). Steady open-loop load runs on m throughout while
this script, --phase seconds apart:

  1. copies version 2 in (y = x + 2);
  2. replaces 2/model.onnx in place with another file (y = x + 3);
  3. deletes version 1.

A prober asks m every 10 ms over HTTP to see which version and which file
answer. Prints total and failed requests (goal: 0), p99 before, during (the
2 s after each change) and after (goal: during <= 1.5x steady), and the time
from each file being complete to the first answer from it (goal: < 2 s).
Exits non-zero if a request failed or a change never took effect.
Loopback only; bounded.
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

SOURCE = os.path.join(harness.ROOT, "tests/models/multiversion")


def request(x):
    return {"model_name": "m", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "contents": {"fp32_contents": [x]}}]}


def probe(server):
    """(version, y) of one unpinned answer for x = 0."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}).encode()
    req = urllib.request.Request(f"http://{server.http}/v2/models/m/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.load(r)
    return answer["model_version"], answer["outputs"][0]["data"][0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rps", type=int, default=500, help="open-loop rate on m")
    parser.add_argument("--phase", type=float, default=5.0, help="seconds between changes")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/hotswap.json"))
    args = parser.parse_args()

    work, repo = harness.scenario_workspace("hotswap")
    harness.copy_model(SOURCE, repo, "m", lambda c: c.replace(
        "version_policy { all { } }", "version_policy { latest { num_versions: 2 } }"))
    shutil.rmtree(os.path.join(repo, "m", "2"))
    shutil.rmtree(os.path.join(repo, "m", "3"))
    model = os.path.join(repo, "m")
    seconds = int(4 * args.phase + 2)
    with harness.Server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "2",
                        log=os.path.join(work, "server.log")) as server:
        config = harness.ghz_config("mlp", server.grpc, work, data=[request(float(i)) for i in range(8)])
        harness.ferroload(config, "-c", "2", "-z", "1s")  # warm-up, unrecorded
        answers = []  # (time, version, y) from the prober
        stop = threading.Event()

        def prober():
            while not stop.is_set():
                try:
                    answers.append((time.time(), *probe(server)))
                except OSError as e:
                    answers.append((time.time(), "error", str(e)))
                time.sleep(0.01)

        changes = []  # (what, time the file was complete, (version, y) that shows it)

        def change_files():
            time.sleep(args.phase)
            os.makedirs(os.path.join(model, "2"))
            shutil.copyfile(os.path.join(SOURCE, "2/model.onnx"), os.path.join(model, "2/model.onnx"))
            changes.append(("version 2 copied in", time.time(), ("2", 2.0)))
            time.sleep(args.phase)
            shutil.copyfile(os.path.join(SOURCE, "3/model.onnx"), os.path.join(model, "2/model.onnx"))
            changes.append(("2/model.onnx replaced in place", time.time(), ("2", 3.0)))
            time.sleep(args.phase)
            shutil.rmtree(os.path.join(model, "1"))
            changes.append(("version 1 deleted", time.time(), None))

        threads = [threading.Thread(target=prober), threading.Thread(target=change_files)]
        for t in threads:
            t.start()
        report = harness.ferroload(config, "-r", str(args.rps), "-c", "512", "-z", f"{seconds}s", "-t", "5s",
                                   details=True)
        stop.set()
        for t in threads:
            t.join()
        index = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://{server.http}/v2/repository/index", data=b"{}", method="POST"), timeout=5).read())
        rss = server.rss_kib() / 1024

    details = report["details"]
    start = min(harness.detail_time(d) for d in details)
    failed = [d for d in details if d["status"] != "OK"]

    def p99(lo, hi):
        return harness.quantile([d["latency"] / 1e6 for d in details
                                 if d["status"] == "OK" and lo <= harness.detail_time(d) < hi], 0.99)

    first_change = changes[0][1] if changes else start + args.phase
    steady = p99(start + 1, first_change)
    during = [p99(t, t + 2) for _, t, _ in changes]
    after = p99(changes[-1][1] + 2, start + seconds) if changes else float("nan")
    print(f"{len(details)} requests at {args.rps} rps over {seconds} s; failed: {len(failed)}      goal 0: "
          f"{'met' if not failed else 'MISSED'}")
    for d in failed[:5]:
        print(f"  failed: {d['status']} {d['error']}")
    print(f"p99 steady {steady:.3f} ms; after the changes {after:.3f} ms")
    took = {}
    for (what, at, shows), during_p99 in zip(changes, during):
        line = f"  {what}: p99 in the 2 s after {during_p99:.3f} ms ({during_p99 / steady:.2f}x steady)"
        if shows:
            seen = next((t for t, v, y in answers if t >= at and (v, y) == shows), None)
            took[what] = seen - at if seen else None
            line += f"; first answer from it {took[what]:.2f} s after the file was complete" if seen \
                else "; NEVER answered"
        print(line)
    worst = max(during) / steady if during else float("nan")
    print(f"worst p99 during a change: {worst:.2f}x steady      goal <= 1.5x: {'met' if worst <= 1.5 else 'MISSED'}")
    slowest = max((t for t in took.values() if t is not None), default=float("nan"))
    print(f"slowest new file to first answer: {slowest:.2f} s      goal < 2 s: {'met' if slowest < 2 else 'MISSED'}")
    probe_errors = [a for a in answers if a[1] == "error"]
    served = sorted({(e.get("version"), e.get("state")) for e in index if e.get("name") == "m"})
    print(f"prober: {len(answers)} answers, {len(probe_errors)} errors; index at the end {served}; RSS {rss:.1f} MiB")
    checks = {
        "no failed request": not failed and not probe_errors,
        "every new file answered": all(v is not None for v in took.values()) and len(took) == 2,
        "version 1 retired": ("1", "READY") not in served,
    }
    for what, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'} {what}")
    harness.write_json(args.out, {
        "requests": len(details), "failed": len(failed), "p99_steady_ms": steady, "p99_during_ms": during,
        "p99_after_ms": after, "first_answer_s": took, "checks": checks,
    })
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
