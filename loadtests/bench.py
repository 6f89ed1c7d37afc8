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

With --concurrency-sweep it runs only the batching-delay sweep instead: for
every shipped model and the generated mlp_big and resnet50 (the heavy CNN,
loadtests/models.py), each as configured and with
max_queue_delay_microseconds 0, ferroload closed loop over gRPC at
concurrency 1, 2, 4, 8, 16, 64 (--seconds per point, default 3, after 1 s
unrecorded): throughput and p50 side by side, the ratio delay / no delay, and
flags where throughput falls below 0.95x the previous concurrency's, or the
delay's throughput below 0.95x (or its p50 above 1.1x) the no-delay one's.

    python3 loadtests/bench.py --concurrency-sweep [--seconds 3] [--models mlp,resnet50]

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
import harness  # noqa: E402
from harness import LOADGEN, ROOT, Server, ghz_config, percentile  # noqa: E402

PERF = os.path.join(ROOT, ".deps/perf_analyzer/perf_analyzer")
VENV_PYTHON = os.path.join(ROOT, ".deps/venv/bin/python")
CONCURRENCY = [1, 4, 16, 64]
SWEEP_CONCURRENCY = [1, 2, 4, 8, 16, 64]
SWEEP_MODELS = "mlp,cnn,text,mixed,mlp_big,resnet50"
# Models written by loadtests/models.py (with numpy and onnx from the venv), and the
# arguments both variants share. resnet50's is the scenario's entry (cost.py), so the
# cache holds one; the sweep gives it --heavy-slo instead, in its own copy of the config.
GENERATED = {"mlp_big": [], "resnet50": ["--slo", "0.25"]}


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


def measure(server, name, config, concurrency, seconds, report_path):
    """Closed loop on `name`: one unrecorded second first (connections, threads and arenas warm
    up), then `seconds` recorded. Returns the report and the mean batch size in that time."""
    subprocess.run([LOADGEN, "--config", config, "--concurrency", str(concurrency), "--duration", "1s",
                    "--no-details", "--output", os.devnull], check=True, cwd=ROOT)
    before = server.stats(name)
    subprocess.run([LOADGEN, "--config", config, "--concurrency", str(concurrency), "--duration", f"{seconds}s",
                    "--no-details", "--output", report_path], check=True, cwd=ROOT)
    after = server.stats(name)
    with open(report_path) as f:
        report = json.load(f)
    return report, (after[0] - before[0]) / max(after[1] - before[1], 1)


def load(server, model, concurrency, seconds, out):
    config = ghz_config(model.split("_")[0], server.grpc, out, model=model)
    report_path = os.path.join(out, f"{model}-grpc-c{concurrency}.json")
    report, mean_batch = measure(server, model, config, concurrency, seconds, report_path)
    errors = sum(v for k, v in (report.get("statusCodeDistribution") or {}).items() if k != "OK")
    return {"model": model, "client": "ferroload-grpc", "concurrency": concurrency,
            "infer_per_sec": report["rps"], "p50_us": percentile(report, 50), "p99_us": percentile(report, 99),
            "mean_batch": mean_batch, "errors": errors, "count": report["count"]}


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



# --------------------------------------------------------------------------
# --concurrency-sweep: the batching delay as configured against delay 0
# --------------------------------------------------------------------------

def configured_delay(config):
    """The config's max_queue_delay_microseconds: None without dynamic batching, 0 when unset."""
    if not re.search(r"^dynamic_batching\s*\{", config, re.M):
        return None
    m = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config)
    return int(m.group(1)) if m else 0


def without_delay(config):
    return re.sub(r"max_queue_delay_microseconds:\s*\d+", "max_queue_delay_microseconds: 0", config)


def generate(model, *args):
    """Runs loadtests/models.py (cached in target/models); returns the folder it printed."""
    if not os.path.exists(VENV_PYTHON):
        sys.exit(f"{model} is generated with numpy and onnx from .deps/venv: run deploy/setup.sh test first")
    out = subprocess.run([VENV_PYTHON, os.path.join(ROOT, "loadtests/models.py"), model, *args], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()
    for line in out[:-1]:
        print(f"  {line}")
    return out[-1]


def add_entry(repo, name, source_dir, config):
    """`name` in `repo`: `config` as its config.pbtxt, version 1's model file linked from `source_dir`."""
    os.makedirs(os.path.join(repo, name, "1"))
    os.symlink(os.path.join(source_dir, "1", "model.onnx"), os.path.join(repo, name, "1", "model.onnx"))
    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
        f.write(config)


def sweep_repository(models, heavy_slo):
    """Each model as configured (`name`) and with delay 0 (`name_nodelay`); returns (repo, delays)."""
    repo = tempfile.mkdtemp(prefix="ferroserve-sweep-")
    delays = {}
    for model in models:
        if model in GENERATED:
            folders = (generate(model, *GENERATED[model]),
                       generate(model, *GENERATED[model], "--delay", "0", "--name", f"{model}_nodelay"))
        else:
            folders = (os.path.join(ROOT, "models", model),) * 2
        for name, folder in zip((model, f"{model}_nodelay"), folders):
            config = open(os.path.join(folder, "config.pbtxt")).read()
            config = re.sub(r'^name: ".*"$', f'name: "{name}"', config, count=1, flags=re.M)
            if name.endswith("_nodelay"):
                config = without_delay(config)
            else:
                delays[model] = configured_delay(config)
            if model == "resnet50":
                config = re.sub(r'(key: "slo_latency_seconds"\s*value \{ string_value: )"[^"]*"',
                                rf'\1"{heavy_slo:g}"', config)
            add_entry(repo, name, folder, config)
    return repo, delays


def sweep_data(model):
    """Request data for a generated model (seeded noise, raw FP32), or None for a shipped one."""
    import base64
    import random
    import struct

    shapes = {"mlp_big": ("input", [1, 256]), "resnet50": ("image", [1, 3, 224, 224])}
    if model not in shapes:
        return None
    name, shape = shapes[model]
    rng = random.Random(7)
    count = 1
    for d in shape:
        count *= d
    raw = struct.pack(f"<{count}f", *(rng.uniform(-1, 1) for _ in range(count)))
    return {"model_name": model, "inputs": [{"name": name, "datatype": "FP32", "shape": shape}],
            "raw_input_contents": [base64.b64encode(raw).decode()]}


def sweep_point(server, name, config, concurrency, seconds, out):
    report_path = os.path.join(out, f"sweep-{name}-c{concurrency}.json")
    report, mean_batch = measure(server, name, config, concurrency, seconds, report_path)
    codes = report.get("statusCodeDistribution") or {}
    return {"infer_per_sec": codes.get("OK", 0) / (report["total"] / 1e9), "p50_us": percentile(report, 50),
            "p99_us": percentile(report, 99), "errors": sum(n for c, n in codes.items() if c != "OK"),
            "mean_batch": mean_batch}


def sweep_flags(row, previous):
    flags = []
    for variant, short in (("delay", "d"), ("nodelay", "n")):
        if previous and row[variant]["infer_per_sec"] < 0.95 * previous[variant]["infer_per_sec"]:
            flags.append(f"{short}:tput<0.95x prev c")
    if row["tput_ratio"] < 0.95:
        flags.append("delay tput<0.95x")
    if row["p50_ratio"] > 1.1:
        flags.append("delay p50>1.1x")
    if row["delay"]["errors"] or row["nodelay"]["errors"]:
        flags.append("errors")
    return flags


def concurrency_sweep(args):
    models = (args.models or SWEEP_MODELS).split(",")
    levels = [int(c) for c in args.sweep_concurrency.split(",")]
    os.makedirs(args.out, exist_ok=True)
    print("preparing the repository (generated models are cached in target/models)")
    repo, delays = sweep_repository(models, args.heavy_slo)
    results = {}
    started = time.monotonic()
    try:
        with Server(repo, ready_timeout=180) as server:
            for model in models:
                data = sweep_data(model)
                rows = []
                for i, c in enumerate(levels):
                    row = {"concurrency": c}
                    variants = [("delay", model), ("nodelay", f"{model}_nodelay")]
                    # Alternate which runs first, so that drift on a shared machine does not always favour one.
                    for variant, name in variants[::-1] if i % 2 else variants:
                        config = ghz_config(model if data is None else "mlp", server.grpc, args.out, model=name,
                                            data=data and dict(data, model_name=name))
                        row[variant] = sweep_point(server, name, config, c, args.seconds, args.out)
                    row["tput_ratio"] = row["delay"]["infer_per_sec"] / max(row["nodelay"]["infer_per_sec"], 1e-9)
                    row["p50_ratio"] = row["delay"]["p50_us"] / max(row["nodelay"]["p50_us"], 1e-9)
                    row["flags"] = sweep_flags(row, rows[-1] if rows else None)
                    rows.append(row)
                    print(f"  {model} c={c}: {row['delay']['infer_per_sec']:.0f} vs "
                          f"{row['nodelay']['infer_per_sec']:.0f} infer/s", flush=True)
                results[model] = {"configured_delay_us": delays[model], "rows": rows}
    finally:
        shutil.rmtree(repo, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; ferroload closed loop over gRPC, "
          f"{args.seconds:g} s per point; {time.monotonic() - started:.0f} s in all")
    print("d = as configured, n = max_queue_delay_microseconds 0; ratios d/n")
    for model, result in results.items():
        delay = result["configured_delay_us"]
        what = ("no dynamic batching: both columns run the same config (the ratio is the noise)" if delay is None
                else "configured delay 0 us: both columns run the same config (the ratio is the noise)" if delay == 0
                else f"configured delay {delay} us")
        print(f"\n{model} ({what})")
        print(f"  {'conc':>5}{'d infer/s':>11}{'d p50 us':>10}{'batch':>6}{'n infer/s':>11}{'n p50 us':>10}"
              f"{'batch':>6}{'tput d/n':>9}{'p50 d/n':>8}  flags")
        for row in result["rows"]:
            d, n = row["delay"], row["nodelay"]
            print(f"  {row['concurrency']:>5}{d['infer_per_sec']:>11.1f}{d['p50_us']:>10.0f}{d['mean_batch']:>6.1f}"
                  f"{n['infer_per_sec']:>11.1f}{n['p50_us']:>10.0f}{n['mean_batch']:>6.1f}"
                  f"{row['tput_ratio']:>9.2f}{row['p50_ratio']:>8.2f}  {', '.join(row['flags'])}")
    if "resnet50" in results:
        print(f"\n(resnet50 runs with slo_latency_seconds {args.heavy_slo:g} (--heavy-slo), so that admission "
              "does not refuse what a closed loop at 64 queues)")
    path = os.path.join(args.out, "sweep.json")
    with open(path, "w") as f:
        json.dump({"machine": {"cores": os.cpu_count()}, "seconds": args.seconds, "heavy_slo": args.heavy_slo,
                   "models": results}, f, indent=2)
    print(f"\nJSON: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, help="seconds per point (default 5; 3 with --concurrency-sweep)")
    parser.add_argument("--models", help=f"default mlp,cnn,text,mixed ({SWEEP_MODELS} with --concurrency-sweep)")
    parser.add_argument("--out", default=os.path.join(ROOT, "target/bench"))
    parser.add_argument("--concurrency-sweep", action="store_true",
                        help="run the batching-delay sweep (delay as configured vs 0) instead")
    parser.add_argument("--sweep-concurrency", default=",".join(map(str, SWEEP_CONCURRENCY)),
                        help="the sweep's concurrency levels")
    parser.add_argument("--server", help="the ferroserve binary to measure (default target/release/ferroserve), "
                        "e.g. another commit's build for a before/after comparison")
    parser.add_argument("--heavy-slo", type=float, default=5.0,
                        help="the sweep's slo_latency_seconds for resnet50 (a histogram bucket boundary)")
    args = parser.parse_args()
    if args.server:
        harness.SERVER = os.path.abspath(args.server)
    if args.concurrency_sweep:
        args.seconds = args.seconds or 3
        return concurrency_sweep(args)
    args.seconds = args.seconds or 5
    models = (args.models or "mlp,cnn,text,mixed").split(",")
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
