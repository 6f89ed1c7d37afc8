#!/usr/bin/env python3
"""SIGTERM under load: every request is answered, and the server exits 0
within --exit-timeout-secs.

    python3 loadtests/scenarios/sigterm.py [--exit-timeout 3] [--term-after 3]

(loadtests/scenarios.sh sigterm builds first.) The server holds the shipped
`mlp` and `work`, the test model `slow` made slow enough (20 ms a request,
one at a time) that its queue cannot drain before the exit deadline. Open-loop
load runs on mlp over gRPC and over HTTP, and on `work` at twice what it
sustains, when SIGTERM arrives. Every request must end one of these ways:

  * OK (admitted before the signal, or finished during the drain);
  * UNAVAILABLE from the server with its reason (refused while draining, or
    still queued at the deadline);
  * refused before it was sent: the listener had closed (connection refused),
    so the server never had it.

Anything else (a reset mid-request, a timeout, an empty answer) is a lost
request. Prints the counts by outcome and transport, the exit code and the
time from the signal to exit. Exits non-zero if a request was lost, the exit
code was not 0, or the exit took longer than the deadline (plus 1 s).
Loopback only; bounded.
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

SPIN = 20000  # ~20 ms a request


def work_request():
    return {"model_name": "work", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "contents": {"fp32_contents": [1.0]}},
        {"name": "spin", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [SPIN]}},
    ]}


def classify(detail):
    """ok | shutting_down | not_sent | lost, from one report detail."""
    status, error = detail["status"], detail["error"].lower()
    if status == "OK":
        return "ok"
    if status in ("Unavailable", "503") and "shutting down" in error:
        return "shutting_down"
    if "connection refused" in error or "connect error" in error:
        return "not_sent"
    return "lost"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exit-timeout", type=int, default=3, help="the server's --exit-timeout-secs")
    parser.add_argument("--term-after", type=float, default=3.0, help="seconds of load before SIGTERM")
    parser.add_argument("--rps", type=int, default=500, help="open-loop rate on mlp, per transport")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/sigterm.json"))
    args = parser.parse_args()

    work, repo = harness.scenario_workspace("sigterm")
    harness.copy_model(os.path.join(harness.ROOT, "models/mlp"), repo, "mlp")
    one_thread = harness.parameter("intra_op_thread_count", 1)
    harness.copy_model(os.path.join(harness.ROOT, "tests/models/slow"), repo, "work", lambda c: c + one_thread)
    # Load keeps coming until well after the server is gone.
    seconds = f"{int(args.term_after + args.exit_timeout + 2)}s"
    server = harness.Server(repo, "--exit-timeout-secs", str(args.exit_timeout), log=os.path.join(work, "server.log"))
    try:
        mlp = harness.ghz_config("mlp", server.grpc, work)
        slow = harness.ghz_config("mlp", server.grpc, work, data=work_request())
        harness.ferroload(mlp, "-c", "2", "-z", "1s")  # warm-up, unrecorded
        # The signal goes out from a timer while the loads run.
        outcome = {}

        def terminate():
            time.sleep(args.term_after)
            outcome["queued_at_signal"] = harness_queue_depth(server)
            outcome["signal_at"] = time.time()
            outcome["code"], outcome["exit_s"] = server.terminate(args.exit_timeout + 10)

        timer = threading.Thread(target=terminate)
        timer.start()
        reports = harness.run_together(
            (mlp, "-r", str(args.rps), "-c", "512", "-z", seconds, "-t", "10s"),
            (mlp, "--protocol", "http", "--http-host", server.http, "-r", str(args.rps), "-c", "512",
             "-z", seconds, "-t", "10s"),
            (slow, "-r", "100", "-c", "1024", "-z", seconds, "-t", "20s"))
        timer.join()
    finally:
        server.kill()

    table = {}
    lost_examples = []
    for name, report in zip(("mlp gRPC", "mlp HTTP", "work gRPC"), reports):
        counts = {}
        for d in report["details"]:
            kind = classify(d)
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "lost" and len(lost_examples) < 5:
                sent = harness.detail_time(d) - outcome.get("signal_at", 0)
                lost_examples.append((name, f"sent {sent:+.3f} s from the signal, answered after "
                                      f"{d['latency'] / 1e9:.3f} s", d["status"], d["error"]))
        table[name] = counts
    lost = sum(c.get("lost", 0) for c in table.values())
    print(f"SIGTERM after {args.term_after:g} s of load; work queue depth then {outcome.get('queued_at_signal')}; "
          f"exit code {outcome.get('code')} after {outcome.get('exit_s', float('nan')):.2f} s "
          f"(--exit-timeout-secs {args.exit_timeout})")
    for name, counts in table.items():
        print(f"  {name:10} " + "  ".join(f"{k} {counts.get(k, 0)}"
                                          for k in ("ok", "shutting_down", "not_sent", "lost")))
    for example in lost_examples:
        print(f"  lost: {example}")
    checks = {
        "no request lost": lost == 0,
        "exit code 0": outcome.get("code") == 0,
        "exit within the deadline": outcome.get("exit_s", 1e9) <= args.exit_timeout + 1,
        "queued requests answered UNAVAILABLE at the deadline": table["work gRPC"].get("shutting_down", 0) > 0,
    }
    for what, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'} {what}")
    harness.write_json(args.out, {"outcomes": table, "exit": outcome, "checks": checks, "lost_examples": lost_examples})
    return 0 if all(checks.values()) else 1


def harness_queue_depth(server):
    try:
        return server.metric("ferroserve_queue_depth", model="work")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
