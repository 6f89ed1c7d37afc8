#!/usr/bin/env python3
"""Bad canary: a canary version that fails on a fraction of inputs is rolled
back automatically.

    python3 loadtests/scenarios/canary.py [--seconds 15] [--rps 400] [--bad-share 30]

(loadtests/scenarios.sh canary builds first.) The server holds the test model
`canary`: version 1 answers every input, version 2 fails whenever the
request's `fail` input is set; stable 1, canary 2 at weight 10. Open-loop
load sends --bad-share percent of requests with fail = 1, so the canary
fails on that share of its 10%. A watcher polls the canary's state every
50 ms. Prints the time from the first request to the rollback (goal: within
10 s at moderate load), the failed requests and the answers after it (all
OK), the rollback reason and metrics. Exits non-zero if the canary was not
rolled back or a request failed after the rollback. Loopback only; bounded.
"""

import argparse
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402


def requests(bad_share):
    """Ten requests used round-robin; `bad_share`% of them carry fail = 1."""
    out = []
    for i in range(10):
        fail = 1 if i < bad_share // 10 else 0
        out.append({"model_name": "canary", "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "contents": {"fp32_contents": [i, 1, 2, 3]}},
            {"name": "fail", "datatype": "INT64", "shape": [1, 1], "contents": {"int64_contents": [fail]}},
        ]})
    return out


def canary_state(server):
    url = f"http://{server.http}/v2/repository/models/canary/canary"
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="length of the load")
    parser.add_argument("--rps", type=int, default=400, help="open-loop rate")
    parser.add_argument("--bad-share", type=int, default=30, help="percent of requests the canary fails (0-100, tens)")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/canary.json"))
    args = parser.parse_args()

    work, repo = harness.scenario_workspace("canary")
    harness.copy_model(os.path.join(harness.ROOT, "tests/models/canary"), repo, "canary")
    with harness.Server(repo, log=os.path.join(work, "server.log")) as server:
        config = harness.ghz_config("mlp", server.grpc, work, data=requests(args.bad_share))
        seen = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                state = canary_state(server)
                if state["weight"] == 0 and "rolled_back_at" not in seen:
                    seen["rolled_back_at"] = time.time()
                    seen["state"] = state
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        started = time.time()
        watcher.start()
        report = harness.ferroload(config, "-r", str(args.rps), "-c", "256", "-z", f"{args.seconds}s", "-t", "5s",
                                   details=True)
        stop.set()
        watcher.join()
        rollbacks = server.metric("ferroserve_canary_rollbacks_total", model="canary")
        weight = server.metric("ferroserve_canary_weight", model="canary")
        alive = server.alive()

    rolled_back_at = seen.get("rolled_back_at")
    failures = [harness.detail_time(d) for d in report["details"] if d["status"] != "OK"]
    after = [t for t in failures if rolled_back_at and t > rolled_back_at + 0.1]
    print(f"{report['count']} requests at {args.rps} rps, {args.bad_share}% with fail = 1; canary weight 10")
    if rolled_back_at:
        took = rolled_back_at - started
        print(f"rolled back {took:.2f} s after the load began      goal within 10 s: "
              f"{'met' if took <= 10 else 'MISSED'}")
        print(f"  reason: {seen['state']['rolled_back']}")
    else:
        print("NOT rolled back")
    print(f"failed requests: {len(failures)} ({100 * len(failures) / max(report['count'], 1):.2f}%), "
          f"{len(after)} of them after the rollback; by code {report['statusCodeDistribution']}")
    print(f"metrics: ferroserve_canary_rollbacks_total {rollbacks:g}, ferroserve_canary_weight {weight:g}")
    checks = {
        "rolled back": rolled_back_at is not None and rollbacks == 1,
        "no failure after the rollback": not after,
        "server alive": alive,
    }
    for what, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'} {what}")
    harness.write_json(args.out, {
        "rolled_back_after_s": rolled_back_at - started if rolled_back_at else None,
        "failed": len(failures), "failed_after_rollback": len(after), "count": report["count"],
        "codes": report["statusCodeDistribution"], "state": seen.get("state"), "checks": checks,
    })
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
