#!/usr/bin/env python3
"""Overload scenario: offered load many times what the server sustains.

    python3 loadtests/scenarios/overload.py [--seconds 8] [--factors 3,10] [--spin 5000]

(loadtests/scenarios.sh overload builds first.) The model is the test model
`slow` (one instance on one thread, no batching, a Loop of `spin`
iterations, about 1 us each: 5 ms by default) with the adaptive concurrency
limit on. The load generator shares the machine, so the model must leave it
room: on two cores, a model that takes one core for 5 ms a request sustains
about 200 requests per second, and offering ten times that, and refusing
nine in ten, still fits beside it. With --spin 2000 (2 ms) the refusals of
10x overload compete with the model for the second core, and the figures
show the machine, not the server. In one run:

  1. unloaded: closed loop, one client: p50/p99;
  2. peak: closed loop at 1, 2, 4 and 8 clients on a copy of the model
     without the limit: the best goodput is the peak;
  3. for each factor F: open loop at F x peak for --seconds: goodput,
     admitted p50/p99, rejections by code and their latency p99, RSS.

Prints a summary with the goals of issue 4 (goodput >= 90% of peak, admitted
p99 <= 3x unloaded p99, rejections answered in < 1 ms p99, RSS not growing
with offered load) and writes it as JSON (--out). Exits non-zero if the
server dies or a request is lost (neither answered OK nor refused with a code).
Loopback only; every phase is bounded.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

REFUSED = {"ResourceExhausted"}


def request(spin):
    return {"model_name": "work", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "contents": {"fp32_contents": [1.0]}},
        {"name": "spin", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [spin]}},
    ]}


def closed(server, config, clients, seconds):
    report = harness.ferroload(config, "-c", str(clients), "-z", f"{seconds}s")
    ok = report["statusCodeDistribution"].get("OK", 0)
    return {"clients": clients, "goodput": ok / (report["total"] / 1e9),
            "p50_ms": harness.percentile(report, 50) / 1e3, "p99_ms": harness.percentile(report, 99) / 1e3,
            "errors": harness.errors(report)}


def open_loop(server, config, rps, seconds):
    report = harness.ferroload(config, "-r", str(int(rps)), "-c", "4096", "-z", f"{seconds}s", "-t", "5s",
                               details=True)
    by_status = harness.by_status(report)
    duration = report["total"] / 1e9
    ok = by_status.get("OK", [])
    refused = [x for code in REFUSED for x in by_status.get(code, [])]
    # From the request going out to its answer: the server and the wire,
    # without the load generator's own lateness on a busy machine.
    answered = [(d["latency"] - d.get("lateness", 0)) / 1e6 for d in report["details"] if d["status"] in REFUSED]
    lost = {code: len(v) for code, v in by_status.items() if code != "OK" and code not in REFUSED}
    return {
        "offered_rps": rps, "sent": report["count"], "sent_rps": report["count"] / duration,
        "goodput": len(ok) / duration,
        "admitted_p50_ms": harness.quantile(ok, 0.5), "admitted_p99_ms": harness.quantile(ok, 0.99),
        "refused": {code: len(by_status.get(code, [])) for code in REFUSED},
        "refusal_p50_ms": harness.quantile(refused, 0.5), "refusal_p99_ms": harness.quantile(refused, 0.99),
        "refusal_sent_p50_ms": harness.quantile(answered, 0.5), "refusal_sent_p99_ms": harness.quantile(answered, 0.99),
        "lateness_p99_ms": harness.quantile([d.get("lateness", 0) / 1e6 for d in report["details"]], 0.99),
        "other": lost, "errors_sample": sorted(report.get("errorDistribution", {}).items())[:3],
        "rss_mib": server.rss_kib() / 1024, "peak_rss_mib": server.peak_rss_kib() / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="length of each overload phase")
    parser.add_argument("--factors", default="3,10", help="offered load as multiples of the peak")
    parser.add_argument("--spin", type=int, default=5000, help="Loop iterations per request (~1 us each)")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/overload.json"))
    args = parser.parse_args()

    work, repo = harness.scenario_workspace("overload")
    slow = os.path.join(harness.ROOT, "tests/models/slow")
    # The Loop runs on one thread: one intra-op thread, none spinning idle.
    one_thread = harness.parameter("intra_op_thread_count", 1)
    adaptive = harness.parameter("adaptive_concurrency", 1)
    harness.copy_model(slow, repo, "work", lambda c: c + one_thread + adaptive)
    # The same model without the limit, to measure what the server sustains.
    harness.copy_model(slow, repo, "unlimited", lambda c: c + one_thread)
    with harness.Server(repo, log=os.path.join(work, "server.log")) as server:
        config = harness.ghz_config("mlp", server.grpc, work, data=request(args.spin))
        unlimited = harness.ghz_config("mlp", server.grpc, work, model="unlimited", data=request(args.spin))
        harness.ferroload(config, "-c", "1", "-z", "1s")  # warm-up, unrecorded
        unloaded = closed(server, config, 1, 3)
        peaks = [closed(server, unlimited, c, 3) for c in (1, 2, 4, 8)]
        peak = max(p["goodput"] for p in peaks)
        rss_before = server.rss_kib() / 1024
        phases = [dict(open_loop(server, config, f * peak, args.seconds), factor=f)
                  for f in (float(x) for x in args.factors.split(","))]
        shed = {reason: server.metric("ferroserve_shed_total", reason=reason)
                for reason in ("concurrency_limit", "queue_full", "server_inflight")}
        limit = server.metric("ferroserve_concurrency_limit", model="work")
        alive = server.alive() and server.http_status("/v2/health/ready") == 200

    print(f"unloaded (1 client): p50 {unloaded['p50_ms']:.3f} ms  p99 {unloaded['p99_ms']:.3f} ms  "
          f"{unloaded['goodput']:.0f} rps")
    for p in peaks:
        print(f"closed loop {p['clients']} clients: {p['goodput']:.0f} ok/s  p50 {p['p50_ms']:.3f} ms  "
              f"p99 {p['p99_ms']:.3f} ms  errors {p['errors']}")
    print(f"peak goodput {peak:.0f} rps; RSS after the peak phase {rss_before:.1f} MiB")
    failed = not alive
    for ph in phases:
        goodput_ratio = ph["goodput"] / peak
        p99_ratio = ph["admitted_p99_ms"] / unloaded["p99_ms"]
        print(f"\n{ph['factor']:g}x offered ({ph['offered_rps']:.0f} rps, sent {ph['sent_rps']:.0f}/s, "
              f"{ph['sent']} requests):")
        print(f"  goodput {ph['goodput']:.0f} rps = {goodput_ratio:.0%} of peak          goal >= 90%: "
              f"{'met' if goodput_ratio >= 0.9 else 'MISSED'}")
        print(f"  admitted p50 {ph['admitted_p50_ms']:.3f} ms  p99 {ph['admitted_p99_ms']:.3f} ms = "
              f"{p99_ratio:.2f}x unloaded p99      goal <= 3x: {'met' if p99_ratio <= 3 else 'MISSED'}")
        print(f"  refused {ph['refused']}: from sending to the refusal p50 {ph['refusal_sent_p50_ms']:.3f} ms  "
              f"p99 {ph['refusal_sent_p99_ms']:.3f} ms      goal p99 < 1 ms: "
              f"{'met' if ph['refusal_sent_p99_ms'] < 1 else 'MISSED'}")
        print(f"    (from the due time, with the load generator's lateness: p50 {ph['refusal_p50_ms']:.3f} ms  "
              f"p99 {ph['refusal_p99_ms']:.3f} ms; its lateness p99 {ph['lateness_p99_ms']:.3f} ms)")
        print(f"  RSS {ph['rss_mib']:.1f} MiB, peak {ph['peak_rss_mib']:.1f} MiB")
        if ph["other"]:
            print(f"  NOT OK and not refused: {ph['other']} e.g. {ph['errors_sample']}")
            failed = True
    growth = phases[-1]["rss_mib"] - phases[0]["rss_mib"]
    print(f"\nRSS change from {phases[0]['factor']:g}x to {phases[-1]['factor']:g}x offered: {growth:+.1f} MiB"
          f"      goal no growth with offered load: {'met' if growth < 0.1 * phases[0]['rss_mib'] else 'MISSED'}")
    print(f"server shed counters {shed}; final concurrency limit {limit:g}; "
          f"server {'alive and ready' if alive else 'NOT READY / DEAD'}")
    harness.write_json(args.out, {"unloaded": unloaded, "peaks": peaks, "peak": peak, "phases": phases, "shed": shed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
