#!/usr/bin/env python3
"""Capacity scenario: the server's predicted limit beside the measured one.

    .deps/venv/bin/python loadtests/scenarios/capacity.py [--seconds 3] [--heavy-seconds 30]
        [--models mlp,cnn,text,mixed,resnet50] [--no-pin] [--server-cores 0.5]

(loadtests/scenarios.sh capacity builds first.) One ferroserve with default
flags serves the shipped models (the default 25 ms SLO) and the heavy CNN of
loadtests/models.py (ResNet-50, slo_latency_seconds 0.25). Unless --no-pin,
the server runs on the last core and the load generator on the others
(taskset), so the cores the server says it has are the cores it gets,
and within that core a cgroup CPU limit of --server-cores for the shipped
models (default 0.5, where the cgroup file system is writable; 0 for
none): a load generator
costs about as much CPU per request as the server, so on a 2-core machine
with a core each the generator, not the server, would give out first on
the models of microseconds. The server reads the limit (fractions kept)
as the cores it has. The heavy CNN has a server of its own, with the
whole core.

For each model: a warm-up of open-loop traffic at 60% of the server's
first answer (a light load), a second at 80% of the answer after it (so
the server measures its own cost per request near the rate asked about),
then the server's prediction (`GET /v2/models/{m}/capacity`: max_rps; the
one after the light warm-up and the one after the sweep are printed
beside it), then an open-loop Poisson sweep
that finds the real limit from below: trials at 0.6, 0.7, ... of the
prediction, 10% apart, up to the first that fails; the limit is the highest
rate at which at least 99% of the requests sent were answered OK within the
SLO (refusals and timeouts count as misses). A rate that fails is tried
once more and passes if either trial does: a stall of the shared machine
only ever makes a trial worse. (Coming from below matters: after a trial
far past the limit, the next ones start from a queue and a learnt margin
the overload left, and fail below it.) Trials on the heavy CNN last
--heavy-seconds, so each holds about a hundred requests. Prints the measured
limit beside the prediction (goal: within +-20%) and writes --out. Exits
non-zero only when the server died. Loopback only; every trial is bounded
(about a minute per model, a few on the heavy CNN).
"""

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import cost  # noqa: E402
import harness  # noqa: E402
import models  # noqa: E402

SHIPPED = ("mlp", "cnn", "text", "mixed")
WITHIN = 0.99


def build_repository(repo, names):
    for name in names:
        if name in SHIPPED:
            harness.copy_model(os.path.join(harness.ROOT, "models", name), repo, name)
    if "resnet50" in names:
        cached = models.ensure("resnet50", slo=cost.SLO)
        os.makedirs(os.path.join(repo, "resnet50", "1"))
        os.symlink(os.path.join(cached, "1", "model.onnx"), os.path.join(repo, "resnet50", "1", "model.onnx"))
        shutil.copy(os.path.join(cached, "config.pbtxt"), os.path.join(repo, "resnet50", "config.pbtxt"))


def cpu_cgroup(cores, work):
    """A cgroup limited to `cores` of CPU (v1 cpu controller or v2 cpu.max,
    over a short period so the quota throttles in small slices); None where
    none can be made here."""
    name = f"ferroserve-capacity-{os.getpid()}"
    period = 2000  # us
    quota = max(1000, int(cores * period))
    for line in open("/proc/self/mountinfo"):
        before, _, after = line.partition(" - ")
        kind, _, options = (after.split() + ["", "", ""])[:3]
        mount = before.split()[4]
        try:
            if kind == "cgroup" and "cpu" in options.split(","):
                directory = os.path.join(mount, name)
                os.mkdir(directory)
                with open(os.path.join(directory, "cpu.cfs_period_us"), "w") as f:
                    f.write(str(period))
                with open(os.path.join(directory, "cpu.cfs_quota_us"), "w") as f:
                    f.write(str(quota))
                return directory
            if kind == "cgroup2" and "cpu" in open(os.path.join(mount, "cgroup.controllers")).read().split():
                directory = os.path.join(mount, name)
                os.mkdir(directory)
                with open(os.path.join(directory, "cpu.max"), "w") as f:
                    f.write(f"{quota} {period}")
                return directory
        except OSError:
            continue
    return None


def trial(config, rps, seconds, slo, prefix, seed):
    report = harness.ferroload(config, "-r", f"{rps:.3f}", "-c", "4096", "-z", f"{seconds}s", "-t", "10s",
                               "--arrivals", "poisson", "--seed", str(seed), details=True, prefix=prefix)
    details = report["details"]
    within = sum(1 for d in details if d["status"] == "OK" and d["latency"] / 1e9 <= slo)
    codes = {}
    for d in details:
        codes[d["status"]] = codes.get(d["status"], 0) + 1
    share = within / len(details) if details else 0.0
    lateness = harness.quantile([d.get("lateness", 0) / 1e6 for d in details], 0.99)
    return {"rps": rps, "sent": len(details), "within_share": share, "passed": share >= WITHIN, "codes": codes,
            "generator_lateness_p99_ms": lateness}


def prediction(server, name):
    answer = server.get_json(f"/v2/models/{name}/capacity")
    version = answer["versions"][0]
    return {"max_rps": version["max_rps"], "limited_by": version["limited_by"], "batch": version["batch_size"],
            "overhead_us": version["overhead_us_per_request"], "overhead_source": version["overhead_source"],
            "overhead_mean_us": answer["overhead_mean_us_per_request"],
            "cores": answer["cores"], "cores_per_execution": version["cores_per_execution"]}


STEPS = [0.6 + 0.1 * i for i in range(12)]  # 0.6 .. 1.7 of the prediction


def sweep(server, config, name, slo, seconds, prefix):
    # Warm-up: traffic for the server to measure its cost per request at,
    # first at 60% of its first answer (a light load), then at 80% of the
    # answer that gave (near the rate the question is about).
    first = prediction(server, name)
    warm = trial(config, max(1.0, 0.6 * first["max_rps"]), seconds, slo, prefix, seed=1)
    time.sleep(2.2)  # two samples of the server's one-second timer
    light = prediction(server, name)
    cost.settle(server)
    warm_near = trial(config, max(1.0, 0.8 * light["max_rps"]), seconds, slo, prefix, seed=2)
    time.sleep(2.2)
    predicted = prediction(server, name)
    low, high = 0.0, None
    trials = []
    for step, share in enumerate(STEPS):
        rate = share * predicted["max_rps"]
        cost.settle(server)
        t = trial(config, rate, seconds, slo, prefix, seed=100 + step)
        if not t["passed"]:
            trials.append(t)
            cost.settle(server)
            t = trial(config, rate, seconds, slo, prefix, seed=200 + step)
        trials.append(t)
        print(f"  {name}: {rate:9.1f} rps ({share:.1f}x): {t['within_share']:.2%} within {slo * 1e3:.0f} ms "
              f"({'pass' if t['passed'] else 'fail'}), codes {t['codes']}, "
              f"generator lateness p99 {t['generator_lateness_p99_ms']:.1f} ms")
        if not t["passed"]:
            high = rate
            break
        low = rate
    after = prediction(server, name)
    return {"model": name, "slo_s": slo, "first": first, "warm_up": warm, "predicted_light": light,
            "warm_up_near": warm_near, "predicted": predicted,
            "predicted_after": after, "trials": trials, "measured": low, "upper": high}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--heavy-seconds", type=float, default=30)
    parser.add_argument("--models", default="mlp,cnn,text,mixed,resnet50")
    parser.add_argument("--no-pin", action="store_true", help="let the server and the load generator share cores")
    parser.add_argument("--server-cores", type=float, default=0.5,
                        help="a cgroup CPU limit for the server, in cores (0: none)")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/capacity.json"))
    args = parser.parse_args()
    names = args.models.split(",")
    work, repo = harness.scenario_workspace("capacity")
    cores = os.cpu_count() or 1
    server_prefix, load_prefix = harness.pinning(not args.no_pin)
    pin = bool(server_prefix)
    shipped = [n for n in names if n != "resnet50"]
    group = cpu_cgroup(args.server_cores, work) if args.server_cores > 0 and shipped else None
    if args.server_cores > 0 and shipped and group is None:
        print(f"no cgroup could be made here: the server runs without a {args.server_cores}-core limit")
    result = {"pinned": bool(pin), "server_cores_limit": args.server_cores if group else None, "models": []}
    started = time.monotonic()
    alive = True
    # The shipped models under the cgroup limit; the heavy CNN, whose cost
    # no load generator comes near, on a server of its own with the whole core.
    for batch, limited in ((shipped, True), ([n for n in names if n == "resnet50"], False)):
        if not batch:
            continue
        prefix = server_prefix
        if limited and group:
            prefix = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *server_prefix]
        served = os.path.join(repo, "limited" if limited else "whole")
        build_repository(served, batch)
        log = os.path.join(work, f"server-{'limited' if limited else 'whole'}.log")
        with harness.Server(served, log=log, ready_timeout=300, prefix=prefix) as server:
            for name in batch:
                if name == "resnet50":
                    config = harness.ghz_config("mlp", server.grpc, work, data=cost.heavy_request(name))
                    slo, seconds = cost.SLO, args.heavy_seconds
                else:
                    config = harness.ghz_config(name, server.grpc, work)
                    slo, seconds = cost.DEFAULT_SLO, args.seconds
                m = sweep(server, config, name, slo, seconds, load_prefix)
                m["server_cores_limit"] = args.server_cores if limited and group else None
                result["models"].append(m)
            alive = alive and server.alive() and server.http_status("/v2/health/ready") == 200
    if group:
        for _ in range(50):
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)
    result["server_alive"] = alive
    result["elapsed_s"] = time.monotonic() - started
    where = f"server on core {cores - 1}, load generator on 0-{cores - 2}" if pin else "sharing every core"
    if group:
        where += f", the shipped models' server limited to {args.server_cores} cores (cgroup)"
    print(f"\n== capacity: predicted (GET /v2/models/{{m}}/capacity) vs measured (open-loop sweep, >= 99% "
          f"within the SLO), {where}")
    for m in result["models"]:
        p, light, after = m["predicted"], m["predicted_light"], m["predicted_after"]
        ratio = p["max_rps"] / m["measured"] if m["measured"] else float("inf")
        ratio_light = light["max_rps"] / m["measured"] if m["measured"] else float("inf")
        ratio_after = after["max_rps"] / m["measured"] if m["measured"] else float("inf")
        bracket = f"{m['measured']:.1f}..{m['upper']:.1f}" if m["upper"] else f">= {m['measured']:.1f}"
        print(f"  {m['model']:9s} predicted {p['max_rps']:9.1f} rps ({p['limited_by']}, batch {p['batch']:.1f}, "
              f"overhead {p['overhead_us']:.0f} us {p['overhead_source']}, {p['cores']:.2f} cores), "
              f"measured {bracket} rps: {ratio:.2f}x      goal 0.8-1.2x: {cost.goal(0.8 <= ratio <= 1.2)}")
        print(f"  {'':9s} at the light warm-up: {light['max_rps']:9.1f} rps (overhead {light['overhead_us']:.0f} us "
              f"{light['overhead_source']}): {ratio_light:.2f}x; after the sweep: {after['max_rps']:9.1f} rps "
              f"(overhead {after['overhead_us']:.0f} us {after['overhead_source']}): {ratio_after:.2f}x")
    harness.write_json(args.out, result)
    if not alive:
        print(f"HARD FAILURE: a server died or is not ready (server logs in {work})")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
