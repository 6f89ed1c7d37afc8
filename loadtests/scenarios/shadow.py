#!/usr/bin/env python3
"""Shadow scenario: the serving version's figures with and without a shadow.

    .deps/venv/bin/python loadtests/scenarios/shadow.py [--seconds 8] [--loads 0.5,10]

(loadtests/scenarios.sh shadow builds first.) One ferroserve with default
flags serves the heavy CNN of loadtests/models.py (ResNet-50, random
weights, slo_latency_seconds 0.25) as versions 1 and 2 of `resnet50`, the
same file: version 1 serves, version 2 is its shadow. The peak is the best
closed-loop goodput at 1, 2 and 4 clients. Then, at each load (a multiple of
the peak, open-loop Poisson arrivals, a 10 s client timeout), the same run
twice with the shadow off (shadow_percent 0, through the operator API) and
twice with it copying 100% of unpinned requests, alternating; each
condition's median is compared:

  - the serving version's goodput and admitted p99 (goals at 50% load: p99
    within 10%; at 10x: goodput and p99 unchanged within noise);
  - what became of the copies (compared, shed by pressure, by queue) —
    under overload the shadow is shed first;
  - the shadow's agreement with the serving version (the same model: 100%
    of rows within tolerance, top-1 agreement 1).

Prints each figure beside its goal (issue 15) and writes --out. Exits
non-zero only when the server died or a request was lost. Loopback only;
about two minutes.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import cost  # noqa: E402  (the heavy request, open loops and their summaries)
import harness  # noqa: E402
import models  # noqa: E402

SLO = cost.SLO
MODEL = "resnet50"


def build_repository(repo):
    cached = models.ensure("resnet50", slo=SLO)
    config = open(os.path.join(cached, "config.pbtxt")).read()
    config += "version_policy { all { } }\n"
    config += harness.parameter("shadow_version", 2) + harness.parameter("shadow_percent", 0)
    for version in (1, 2):
        os.makedirs(os.path.join(repo, MODEL, str(version)))
        os.symlink(os.path.join(cached, "1", "model.onnx"), os.path.join(repo, MODEL, str(version), "model.onnx"))
    with open(os.path.join(repo, MODEL, "config.pbtxt"), "w") as f:
        f.write(config)


def set_percent(server, percent):
    server.post_json(f"/v2/repository/models/{MODEL}/shadow", {"action": "set", "version": 2, "percent": percent})


def copies(server):
    report = server.get_json(f"/v2/models/{MODEL}/shadow")
    r = report["requests"]
    return {"mirrored": r["mirrored"], "compared": r["compared"], "shed_pressure": r["shed"]["pressure"],
            "shed_queue": r["shed"]["queue"], "shed_busy": r["shed"]["busy"], "shadow_errors": r["shadow_errors"]}


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def run(server, config, rps, seconds, percent, seed, work):
    cost.settle(server)
    set_percent(server, percent)
    before = copies(server)
    summary, _ = cost.open_loop(config, rps, seconds, "10s", SLO, seed=seed)
    # Copies still running finish on spare cycles; their count is read after.
    time.sleep(1.0)
    summary["copies"] = delta(copies(server), before)
    summary["percent"] = percent
    return summary


def median_of(runs, key):
    values = [r[key] for r in runs if r[key] == r[key]]  # NaN apart
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--loads", default="0.5,10", help="multiples of the peak (default 0.5,10)")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/shadow.json"))
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    work, repo = harness.scenario_workspace("shadow")
    build_repository(repo)
    log = os.path.join(work, "server.log")
    result = {"loads": loads, "seconds": args.seconds}
    lost = []
    started = time.monotonic()
    with harness.Server(repo, log=log, ready_timeout=300) as server:
        heavy = harness.ghz_config("mlp", server.grpc, work, data=cost.heavy_request(MODEL))
        harness.ferroload(heavy, "-c", "1", "-z", "2s")  # warm-up, unrecorded
        peaks = [cost.closed(heavy, c, 3) for c in (1, 2, 4)]
        peak = max(p["goodput"] for p in peaks)
        result.update(peaks=peaks, peak=peak)
        print(f"peak goodput {peak:.1f} ok/s (closed loop at 1, 2, 4 clients)")
        phases = []
        for load in loads:
            runs = {0: [], 100: []}
            for i, percent in enumerate((0, 100, 100, 0)):
                summary = run(server, heavy, load * peak, args.seconds, percent, seed=10 + i, work=work)
                runs[percent].append(summary)
                lost += [f"{load:g}x shadow {percent}%: {summary['lost']}"] if summary["lost"] else []
                print(f"  {load:g}x, shadow {percent:3d}%: goodput {summary['goodput']:.1f} ok/s, admitted p99 "
                      f"{summary['admitted_p99_ms']:.1f} ms, within SLO {summary['within_slo_share']:.2%}, "
                      f"copies {summary['copies']}")
            phases.append({"load": load, "off": runs[0], "on": runs[100]})
        result["phases"] = phases
        report = server.get_json(f"/v2/models/{MODEL}/shadow")
        result["report"] = report
        alive = server.alive() and server.http_status("/v2/health/ready") == 200
    result["server_alive"] = alive
    print_summary(result)
    hard = ([] if alive else ["the server died or is not ready"]) + lost
    result["hard_failures"] = hard
    result["elapsed_s"] = time.monotonic() - started
    if hard:
        print("HARD FAILURES: " + "; ".join(hard) + f" (server log {log})")
    harness.write_json(args.out, result)
    return 1 if hard else 0


def print_summary(result):
    print(f"\n== shadow at 100% vs none on {MODEL} (ResNet-50), SLO {SLO * 1e3:.0f} ms, peak {result['peak']:.1f} ok/s")
    for phase in result["phases"]:
        off, on = phase["off"], phase["on"]
        p99_off, p99_on = median_of(off, "admitted_p99_ms"), median_of(on, "admitted_p99_ms")
        good_off, good_on = median_of(off, "goodput"), median_of(on, "goodput")
        ratio = p99_on / p99_off if p99_off else float("nan")
        copies = {k: sum(r["copies"][k] for r in on) for k in on[0]["copies"]}
        print(f"{phase['load']:g}x load (median of {len(off)} runs each):")
        print(f"  serving p99 {p99_off:.1f} ms without, {p99_on:.1f} ms with = {ratio:.2f}x      "
              f"goal {'<= 1.10x' if phase['load'] < 1 else 'unchanged within noise'}: "
              f"{cost.goal(ratio <= 1.10) if phase['load'] < 1 else f'{ratio:.2f}x'}")
        print(f"  serving goodput {good_off:.1f} ok/s without, {good_on:.1f} with = {good_on / good_off:.2f}x")
        print(f"  copies with the shadow on: {copies}")
    report = result["report"]
    for output in report["outputs"]:
        total = output["total"]
        print(f"agreement of the shadow (the same model) on '{output['name']}': {total['rows']} rows, "
              f"{total['agreement']:.2%} within tolerance, top-1 {total['top1_agreement']}, "
              f"max abs difference {total['max_abs_difference']:.3g}      goal 100%: "
              f"{cost.goal(total['differing_rows'] == 0)}")
    latency = report["latency"]
    print(f"latency of compared pairs: serving p99 {latency['serving']['p99_ms']} ms, shadow p99 "
          f"{latency['shadow']['p99_ms']} ms (the shadow runs on spare cycles only)")


if __name__ == "__main__":
    sys.exit(main())
