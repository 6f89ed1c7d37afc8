#!/usr/bin/env python3
"""One-run benchmark of ferroserve against its limits (stdlib only).

In one run, on this machine, for each shipped model:
  * in-process ONNX Runtime through ferroserve's own runtime module, no server
    (cargo bench --bench inprocess): batch 1, 8, 16, 32;
  * ferroserve over gRPC, closed loop at concurrency 1, 4, 16, 64 (ferroload,
    reading loadtests/ghz/<model>.json), with the mean batch size taken from
    the server's own statistics;
  * for the mlp, the same with batching off and with a 500 us queue delay;
  * perf_analyzer against each model over gRPC at concurrency 1 and 4, when
    .deps/perf_analyzer exists (tests/run.sh puts it there).
Prints a table with ratios to the in-process figures and writes JSON.

    python3 loadtests/bench.py [--seconds 5] [--models mlp,cnn] [--out target/bench]

Run loadtests/bench.sh to build first. Loopback only; every run is bounded.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import LOADGEN, ROOT, Server, ghz_config, percentile  # noqa: E402

PERF = os.path.join(ROOT, ".deps/perf_analyzer/perf_analyzer")
CONCURRENCY = [1, 4, 16, 64]


def run_json(cmd, **kw):
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout)


def inprocess(models, seconds):
    cmd = ["cargo", "bench", "--locked", "--bench", "inprocess", "--",
           "--models", ",".join(models), "--seconds", str(seconds)]
    return run_json(cmd)


def variant(model, name, edit):
    """A copy of a shipped model under another name, its config edited."""
    config = open(os.path.join(ROOT, "models", model, "config.pbtxt")).read()
    batching = re.search(r"dynamic_batching \{ \}\n|dynamic_batching \{.*?\n\}\n", config, re.S).group(0)
    return name, model, edit(config, batching).replace(f'name: "{model}"', f'name: "{name}"')


def make_repository(models):
    """Shipped models plus variants: mlp and cnn with batching off, mlp with a 500 us delay."""
    repo = tempfile.mkdtemp(prefix="ferroserve-bench-")
    for model in models:
        shutil.copytree(os.path.join(ROOT, "models", model), os.path.join(repo, model))
    variants = [variant(m, f"{m}_nobatch", lambda c, b: c.replace(b, "")) for m in ("mlp", "cnn") if m in models]
    if "mlp" in models:
        delay = "dynamic_batching {\n  max_queue_delay_microseconds: 500\n}\n"
        variants.append(variant("mlp", "mlp_delay500", lambda c, b: c.replace(b, delay)))
    for name, model, text in variants:
        os.makedirs(os.path.join(repo, name, "1"))
        shutil.copy(os.path.join(ROOT, "models", model, "1/model.onnx"), os.path.join(repo, name, "1"))
        with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
            f.write(text)
    return repo


def load(server, model, concurrency, seconds, out):
    config = ghz_config(model.split("_")[0], server.grpc, out, model=model)
    # One unrecorded second first: connections, threads and arenas warm up.
    subprocess.run([LOADGEN, "--config", config, "--concurrency", str(concurrency), "--duration", "1s",
                    "--no-details", "--output", os.devnull], check=True, cwd=ROOT)
    before = server.stats(model)
    report_path = os.path.join(out, f"{model}-grpc-c{concurrency}.json")
    subprocess.run([LOADGEN, "--config", config, "--concurrency", str(concurrency), "--duration", f"{seconds}s",
                    "--no-details", "--output", report_path], check=True, cwd=ROOT)
    after = server.stats(model)
    with open(report_path) as f:
        report = json.load(f)
    executions = max(after[1] - before[1], 1)
    errors = sum(v for k, v in (report.get("statusCodeDistribution") or {}).items() if k != "OK")
    return {"model": model, "client": "ferroload-grpc", "concurrency": concurrency,
            "infer_per_sec": report["rps"], "p50_us": percentile(report, 50), "p99_us": percentile(report, 99),
            "mean_batch": (after[0] - before[0]) / executions, "errors": errors, "count": report["count"]}


# perf_analyzer needs concrete shapes for dynamic non-batch dims.
PERF_SHAPES = {"text": ["--shape", "words:3"]}


def perf_analyzer(server, model, concurrency, out):
    if not os.path.exists(PERF):
        return None
    csv = os.path.join(out, f"perf-{model}-c{concurrency}.csv")
    env = {**os.environ, "LD_LIBRARY_PATH": os.path.join(ROOT, ".deps/perf_analyzer/lib")}
    subprocess.run([PERF, "-m", model, "-i", "grpc", "-u", server.grpc, "--concurrency-range", str(concurrency),
                    "--measurement-interval", "3000", "--stability-percentage", "100", "--max-trials", "5",
                    "-f", csv, *PERF_SHAPES.get(model, [])],
                   check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, timeout=300)
    with open(csv) as f:
        header, row = f.read().strip().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    return {"model": model, "client": "perf_analyzer-grpc", "concurrency": concurrency,
            "infer_per_sec": float(values["Inferences/Second"]), "p50_us": float(values["p50 latency"]),
            "p99_us": float(values["p99 latency"]), "mean_batch": float("nan"), "errors": 0}


def closest(floor, model, batch):
    """The in-process row for `model` at the batch size nearest `batch`."""
    rows = [r for r in floor if r["model"] == model.split("_")[0]]
    return min(rows, key=lambda r: abs(r["batch"] - batch)) if rows else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--models", default="mlp,cnn,text,mixed")
    parser.add_argument("--out", default=os.path.join(ROOT, "target/bench"))
    args = parser.parse_args()
    models = args.models.split(",")
    os.makedirs(args.out, exist_ok=True)

    floor = inprocess(models, min(args.seconds, 3))
    repo = make_repository(models)
    rows = []
    with Server(repo) as server:
        for model in models:
            for c in CONCURRENCY:
                rows.append(load(server, model, c, args.seconds, args.out))
        for model in ("mlp", "cnn"):
            if model in models:
                for c in (16, 64):
                    rows.append(load(server, f"{model}_nobatch", c, args.seconds, args.out))
        if "mlp" in models:
            rows.append(load(server, "mlp_delay500", 1, args.seconds, args.out))
        for model in models:
            for c in (1, 4):
                row = perf_analyzer(server, model, c, args.out)
                if row:
                    rows.append(row)
    shutil.rmtree(repo, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; figures are medians of one run\n")
    print("in-process ONNX Runtime (no server):")
    print(f"  {'model':<8}{'batch':>6}{'infer/s':>12}{'p50 us':>10}{'p99 us':>10}")
    for r in floor:
        print(f"  {r['model']:<8}{r['batch']:>6}{r['infer_per_sec']:>12.0f}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}")
    print("\nferroserve over gRPC (closed loop):")
    print(f"  {'model':<14}{'client':<20}{'conc':>5}{'infer/s':>10}{'p50 us':>9}{'p99 us':>9}{'batch':>7}"
          f"{'errors':>7}{'vs in-proc tput':>17}{'p50 - in-proc b1':>18}")
    for r in rows:
        ref = closest(floor, r["model"], r["mean_batch"] if r["mean_batch"] == r["mean_batch"] else 1)
        b1 = closest(floor, r["model"], 1)
        ratio = r["infer_per_sec"] / ref["infer_per_sec"] if ref else float("nan")
        overhead = r["p50_us"] - b1["p50_us"] if b1 else float("nan")
        r["throughput_vs_inprocess"] = ratio
        r["p50_overhead_us"] = overhead
        print(f"  {r['model']:<14}{r['client']:<20}{r['concurrency']:>5}{r['infer_per_sec']:>10.0f}"
              f"{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['mean_batch']:>7.1f}{r['errors']:>7}"
              f"{ratio:>16.0%} {overhead:>17.0f}")
    by = {(r["model"], r["client"], r["concurrency"]): r for r in rows}
    goals = {}
    for model in ("mlp", "cnn"):
        one = by.get((model, "ferroload-grpc", 1))
        if one:
            goals[f"{model}: p50 overhead at c=1 over in-process b=1 (us)"] = one["p50_overhead_us"]
        for c in (16, 64):
            on, off = by.get((model, "ferroload-grpc", c)), by.get((f"{model}_nobatch", "ferroload-grpc", c))
            if on and off:
                goals[f"{model}: c={c} throughput, batching on / off"] = on["infer_per_sec"] / off["infer_per_sec"]
                goals[f"{model}: c={c} throughput / in-process at mean batch"] = on["throughput_vs_inprocess"]
    delay, base = by.get(("mlp_delay500", "ferroload-grpc", 1)), by.get(("mlp", "ferroload-grpc", 1))
    if delay and base:
        goals["mlp: c=1 p50 cost of a 500 us queue delay (us)"] = delay["p50_us"] - base["p50_us"]
    print("\ngoals:")
    for key, value in goals.items():
        print(f"  {key:<58}{value:>10.2f}")
    summary = {"machine": {"cores": os.cpu_count()}, "inprocess": floor, "server": rows, "goals": goals}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nJSON: {os.path.join(args.out, 'summary.json')}")
    if any(r["errors"] for r in rows):
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
