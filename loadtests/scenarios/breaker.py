#!/usr/bin/env python3
"""Failing-model scenario: a model that starts failing opens its circuit
breaker, its neighbour serves on unaffected, and the breaker closes once the
fault clears.

    python3 loadtests/scenarios/breaker.py [--seconds 8] [--rps 1000] [--failing-rps 200]

(loadtests/scenarios.sh breaker builds first.) The server holds the shipped
`mlp` (the neighbour) and the test model `failing` (its run fails inside ONNX
Runtime when its `fail` input is non-zero) with the documented breaker
defaults. Both get steady open-loop load through three phases:

  1. healthy: `failing` gets fail = 0;
  2. fault: `failing` gets fail = 1: a few INTERNAL answers, then the breaker
     opens and refuses UNAVAILABLE at once (half-open probes fail, it reopens);
  3. cleared: fail = 0 again: after the open wait, probes succeed and it closes.

Prints how fast the open breaker refuses (goal < 1 ms p99, from the request
going out), the neighbour's p99 in each phase (the median of per-second p99s,
so one noisy second on a shared machine does not decide it; goal: no more
than 20% worse while the other model fails than the mean of the phases
before and after, which cancels drift over the run), when the breaker opened and closed,
and the breaker's metrics. Exits non-zero if the breaker does not open, does
not close after the fault clears, the neighbour loses a request, or the server
dies. Loopback only; every phase is bounded.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402


def failing_request(fail):
    return {"model_name": "failing", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "contents": {"fp32_contents": [1, 2, 3, 4]}},
        {"name": "fail", "datatype": "INT64", "shape": [1, 1], "contents": {"int64_contents": [fail]}},
    ]}


def phase(server, work, fail, args):
    mlp = harness.ghz_config("mlp", server.grpc, work)
    failing = harness.ghz_config("mlp", server.grpc, work, data=failing_request(fail))
    seconds = f"{args.seconds}s"
    neighbour, target = harness.run_together(
        (mlp, "-r", str(args.rps), "-c", "256", "-z", seconds, "-t", "5s"),
        (failing, "-r", str(args.failing_rps), "-c", "256", "-z", seconds, "-t", "5s"))
    n = harness.by_status(neighbour)
    t = harness.by_status(target, from_sending=True)
    ok_times = sorted(harness.detail_time(d) for d in target["details"] if d["status"] == "OK")
    start = min(harness.detail_time(d) for d in target["details"])
    return {
        "neighbour_ok": len(n.get("OK", [])), "neighbour_other": {k: len(v) for k, v in n.items() if k != "OK"},
        "neighbour_p50_ms": harness.quantile(n.get("OK", []), 0.5),
        "neighbour_p99_ms": harness.windowed_quantile(neighbour, 0.99),
        "neighbour_p99_whole_ms": harness.quantile(n.get("OK", []), 0.99),
        "failing": {k: len(v) for k, v in t.items()},
        "unavailable_p50_ms": harness.quantile(t.get("Unavailable", []), 0.5),
        "unavailable_p99_ms": harness.quantile(t.get("Unavailable", []), 0.99),
        "internal_p50_ms": harness.quantile(t.get("Internal", []), 0.5),
        "first_ok_after_s": (ok_times[0] - start) if ok_times else None,
        "breaker_state": server.metric("ferroserve_breaker_state", model="failing"),
        "errors_sample": sorted(target.get("errorDistribution", {}).items())[:2],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="length of each phase (> the 5 s open wait)")
    parser.add_argument("--rps", type=int, default=1000, help="open-loop rate on the neighbour (mlp)")
    parser.add_argument("--failing-rps", type=int, default=200, help="open-loop rate on the failing model")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/breaker.json"))
    args = parser.parse_args()

    work, repo = harness.scenario_workspace("breaker")
    harness.copy_model(os.path.join(harness.ROOT, "models/mlp"), repo, "mlp")
    harness.copy_model(os.path.join(harness.ROOT, "tests/models/failing"), repo, "failing")
    with harness.Server(repo, log=os.path.join(work, "server.log")) as server:
        warm = harness.ghz_config("mlp", server.grpc, work)
        harness.ferroload(warm, "-c", "2", "-z", "1s")  # warm-up, unrecorded
        phases = {}
        for name, fail in (("healthy", 0), ("fault", 1), ("cleared", 0)):
            phases[name] = phase(server, work, fail, args)
        transitions = {to: server.metric("ferroserve_breaker_transitions_total", model="failing", to=to)
                       for to in ("open", "half_open", "closed")}
        alive = server.alive() and server.http_status("/v2/health/ready") == 200

    healthy, fault, cleared = phases["healthy"], phases["fault"], phases["cleared"]
    for name, ph in phases.items():
        change = ph["neighbour_p99_ms"] / healthy["neighbour_p99_ms"] - 1
        print(f"{name:8} neighbour mlp: {ph['neighbour_ok']} ok, p50 {ph['neighbour_p50_ms']:.3f} ms, "
              f"p99 {ph['neighbour_p99_ms']:.3f} ms ({change:+.0%} vs healthy; over the whole phase "
              f"{ph['neighbour_p99_whole_ms']:.3f} ms), other {ph['neighbour_other']}")
        print(f"{'':8} failing: {ph['failing']}, breaker state at the end {ph['breaker_state']:g} "
              f"(0 closed, 1 open, 2 half-open)")
    # A-B-A: the phases before and after the fault bracket it, so drift on a
    # shared machine over the run cancels out.
    around = (healthy["neighbour_p99_ms"] + cleared["neighbour_p99_ms"]) / 2
    fault_change = fault["neighbour_p99_ms"] / around - 1
    print(f"\nopen breaker refuses UNAVAILABLE in p50 {fault['unavailable_p50_ms']:.3f} ms, "
          f"p99 {fault['unavailable_p99_ms']:.3f} ms (model failures took p50 {fault['internal_p50_ms']:.3f} ms)"
          f"      goal p99 < 1 ms: {'met' if fault['unavailable_p99_ms'] < 1 else 'MISSED'}")
    print(f"neighbour p99 while the breaker is open: {fault['neighbour_p99_ms']:.3f} ms, {fault_change:+.0%} vs "
          f"{around:.3f} ms, the mean of the phases before and after      goal no more than 20% worse: "
          f"{'met' if fault_change < 0.2 else 'MISSED'}")
    first_ok = cleared["first_ok_after_s"]
    print(f"after the fault cleared, the first OK came {first_ok:.2f} s in (the breaker waits 5 s open "
          f"after its last failed probe); transitions {transitions}" if first_ok is not None
          else "after the fault cleared, no request succeeded")
    checks = {
        "breaker opened": fault["failing"].get("Unavailable", 0) > 0 and transitions["open"] >= 1,
        "breaker closed after the fault cleared": cleared["breaker_state"] == 0 and transitions["closed"] >= 1,
        "healthy phase all OK": set(healthy["failing"]) == {"OK"},
        "neighbour lost nothing": not any(ph["neighbour_other"] for ph in phases.values()),
        "server alive and ready": alive,
    }
    for what, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'} {what}")
    harness.write_json(args.out, {"phases": phases, "transitions": transitions, "checks": checks})
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
