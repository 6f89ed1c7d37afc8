#!/usr/bin/env python3
"""What the server itself costs per request (stdlib only).

For each model and concurrency, over gRPC, HTTP with binary tensors and HTTP
with JSON tensors: throughput, p50/p99, the server's cores (utime + stime
from /proc/<pid>/stat over the window) and its CPU microseconds per answered
request (that CPU over the requests its statistics counted in the same
window). Clients: perf_analyzer (gRPC and HTTP binary, the figures operators
quote) and ferroload (gRPC, HTTP binary, HTTP JSON: one client for the
JSON-versus-binary ratio).

    python3 loadtests/overhead.py [--models mlp] [--concurrency 1,4,16] [--seconds 3] [--repeat 3]
                                  [--clients perf_analyzer,ferroload] [--baseline PATH]

Every point is measured --repeat times and the medians reported. A
generated model (mlp_big, resnet50: loadtests/models.py) runs as configured,
as <name>_nospin, with allow_spinning 0, and as <name>_spin, with
spin_between_runs 1 (ONNX Runtime's own default). --baseline runs a second build
beside target/release/ferroserve (both servers up at once, the order
alternating per point), for a before/after table from one run.
--instructions adds the callgrind count per request of the in-process path
(loadtests/instructions.py). Loopback only; bounded.
"""

import argparse
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import harness  # noqa: E402
from harness import LOADGEN, ROOT, Server, ghz_config, percentile  # noqa: E402

PERF = os.path.join(ROOT, ".deps/perf_analyzer/perf_analyzer")
NO_SPINNING = 'parameters { key: "allow_spinning" value { string_value: "0" } }\n'
SPIN_BETWEEN_RUNS = 'parameters { key: "spin_between_runs" value { string_value: "1" } }\n'
TICKS = os.sysconf("SC_CLK_TCK")
# (transport, client): what each client can send.
TRANSPORTS = {
    "perf_analyzer": ["grpc", "http-binary"],
    "ferroload": ["grpc", "http-binary", "http-json"],
}


def cpu_seconds(pid):
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def answered(server, model):
    """Successful requests the server's statistics have counted for `model`."""
    url = f"{getattr(server, 'http_base', 'http://' + server.http)}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=5, context=getattr(server, "tls", None)) as r:
        stats = json.load(r)["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


class Window:
    """Server CPU and answered requests between start() and stop()."""

    def __init__(self, server, model):
        self.server, self.model = server, model

    def start(self):
        self.t0, self.cpu0, self.n0 = time.monotonic(), cpu_seconds(self.server.pid), answered(self.server, self.model)

    def stop(self):
        dt = time.monotonic() - self.t0
        cpu = cpu_seconds(self.server.pid) - self.cpu0
        n = answered(self.server, self.model) - self.n0
        return {"answered_per_sec": n / dt, "server_cores": cpu / dt,
                "server_us_per_request": cpu / max(n, 1) * 1e6}


def typed_data(model):
    """The request ferroload sends: the shipped model's ghz data, or seeded noise for a generated one."""
    base = model.removesuffix("_nospin").removesuffix("_spin")
    if base in bench.GENERATED:
        data = bench.sweep_data(base)
        raw = base64.b64decode(data.pop("raw_input_contents")[0])
        data["inputs"][0]["contents"] = {"fp32_contents": list(struct.unpack(f"<{len(raw) // 4}f", raw))}
    else:
        with open(os.path.join(ROOT, "loadtests/ghz", f"{base}.json")) as f:
            data = json.load(f)["data"]
    data["model_name"] = model
    return data


def raw_data(model):
    """The same request with its typed contents turned into raw bytes (what perf_analyzer sends)."""
    data = typed_data(model)
    raw = []
    for tensor in data["inputs"]:
        contents = tensor.pop("contents")
        (kind, values), = contents.items()
        fmt = {"fp32_contents": "f", "int64_contents": "q", "int_contents": "i", "fp64_contents": "d"}[kind]
        raw.append(base64.b64encode(struct.pack(f"<{len(values)}{fmt}", *values)).decode())
    data["raw_input_contents"] = raw
    return data


def perf_analyzer_point(server, model, transport, concurrency, seconds, out, extra=()):
    """One point; `extra` adds perf_analyzer flags (its --ssl-* ones)."""
    csv = os.path.join(out, f"overhead-pa-{model}-{transport}-c{concurrency}.csv")
    if os.path.exists(csv):
        os.unlink(csv)
    protocol, url = ("grpc", server.grpc) if transport == "grpc" else ("http", server.http)
    env = {**os.environ, "LD_LIBRARY_PATH": os.path.join(ROOT, ".deps/perf_analyzer/lib")}
    # Windows long enough that ours (inside the client's run) sees only steady load.
    interval_ms = int(max(seconds, 1) * 1000)
    if getattr(server, "tls", None) and protocol == "http":
        url = f"https://{url}"
    proc = subprocess.Popen([PERF, "-m", model, "-i", protocol, "-u", url, *extra, "--concurrency-range", str(concurrency),
                             "--measurement-interval", str(interval_ms), "--stability-percentage", "1000",
                             "--max-trials", "6", "-f", csv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    window = Window(server, model)
    time.sleep(1.5)
    window.start()
    time.sleep(seconds)
    row = window.stop()
    if proc.wait(timeout=180) != 0 or not os.path.exists(csv):
        # No stable window on a noisy machine: the server-side figures stand.
        print(f"  (perf_analyzer found no stable window on {model} {transport} c={concurrency}; "
              "its latencies are left out)", flush=True)
        row.update(infer_per_sec=row["answered_per_sec"], p50_us=float("nan"), p99_us=float("nan"), errors=0)
        return row
    with open(csv) as f:
        header, line = f.read().strip().splitlines()[:2]
    values = dict(zip(header.split(","), line.split(",")))
    row.update(infer_per_sec=float(values["Inferences/Second"]), p50_us=float(values["p50 latency"]),
               p99_us=float(values["p99 latency"]), errors=0)
    return row


def ferroload_point(server, model, transport, concurrency, seconds, out):
    data = typed_data(model) if transport == "http-json" else raw_data(model)
    config = ghz_config("mlp", server.grpc, out, model=model, data=data)
    protocol = ["--protocol", "http", "--http-host", server.http] if transport.startswith("http") else []
    base = [LOADGEN, "--config", config, "--concurrency", str(concurrency), "--no-details", *protocol]
    subprocess.run([*base, "--duration", "1s", "--output", os.devnull], check=True, cwd=ROOT)
    report_path = os.path.join(out, f"overhead-fl-{model}-{transport}-c{concurrency}.json")
    window = Window(server, model)
    window.start()
    subprocess.run([*base, "--duration", f"{seconds}s", "--output", report_path], check=True, cwd=ROOT)
    row = window.stop()
    with open(report_path) as f:
        report = json.load(f)
    codes = report.get("statusCodeDistribution") or {}
    row.update(infer_per_sec=codes.get("OK", 0) / (report["total"] / 1e9), p50_us=percentile(report, 50),
               p99_us=percentile(report, 99), errors=sum(n for c, n in codes.items() if c != "OK"))
    return row


POINT = {"perf_analyzer": perf_analyzer_point, "ferroload": ferroload_point}


def median_row(samples):
    """Each figure's median over the repeats (errors: the sum)."""
    keys = [k for k in samples[0] if k != "errors"]
    row = {k: sorted(s[k] for s in samples)[len(samples) // 2] for k in keys}
    row["errors"] = sum(s["errors"] for s in samples)
    return row


def run(args):
    models = args.models.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    clients = [c for c in args.clients.split(",") if c != "perf_analyzer" or os.path.exists(PERF)]
    os.makedirs(args.out, exist_ok=True)
    repo = harness.temp_repository("overhead")
    names = []
    for model in models:
        if model not in bench.GENERATED:
            shutil.copytree(os.path.join(ROOT, "models", model), os.path.join(repo, model))
            names.append(model)
            continue
        # A generated model (loadtests/models.py) as configured (ONNX
        # Runtime's pool threads spin while a run lasts), with them parking
        # instead of spinning, and (not with --baseline, whose build may not
        # know the parameter) spinning between runs too, ONNX Runtime's default.
        folder = bench.generate(model)
        config = open(os.path.join(folder, "config.pbtxt")).read()
        bench.add_entry(repo, model, folder, config)
        names.append(model)
        variants = [("_nospin", NO_SPINNING)] + ([] if args.baseline else [("_spin", SPIN_BETWEEN_RUNS)])
        for suffix, parameter in variants:
            variant = config.replace(f'name: "{model}"', f'name: "{model}{suffix}"') + parameter
            bench.add_entry(repo, f"{model}{suffix}", folder, variant)
            names.append(f"{model}{suffix}")
    models = names
    builds = [("now", os.path.abspath(args.server))]
    if args.baseline:
        builds.append(("before", os.path.abspath(args.baseline)))
    servers = {}
    rows = []
    try:
        for name, binary in builds:
            harness.SERVER = binary
            servers[name] = Server(repo)
        i = 0
        for model in models:
            for client in clients:
                for transport in TRANSPORTS[client]:
                    for c in levels:
                        samples = {build: [] for build, _ in builds}
                        for _ in range(args.repeat):
                            order = builds if i % 2 == 0 else builds[::-1]
                            i += 1
                            for build, _ in order:
                                row = POINT[client](servers[build], model, transport, c, args.seconds, args.out)
                                samples[build].append(row)
                                print(f"  {build:<7}{model} {client} {transport} c={c}: {row['infer_per_sec']:.0f}/s, "
                                      f"{row['server_us_per_request']:.0f} us CPU/request", flush=True)
                        for build, _ in builds:
                            row = median_row(samples[build])
                            row.update(model=model, client=client, transport=transport, concurrency=c, build=build)
                            rows.append(row)
    finally:
        for server in servers.values():
            server.kill()
        shutil.rmtree(repo, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; {args.seconds:g} s per point; "
          "server CPU = utime+stime of the server process over the window / requests it answered")
    print(f"  {'build':<7}{'model':<7}{'client':<14}{'transport':<12}{'conc':>5}{'infer/s':>10}{'p50 us':>9}"
          f"{'p99 us':>9}{'cores':>7}{'CPU us/req':>11}{'errors':>7}")
    for r in rows:
        print(f"  {r['build']:<7}{r['model']:<7}{r['client']:<14}{r['transport']:<12}{r['concurrency']:>5}"
              f"{r['infer_per_sec']:>10.0f}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['server_cores']:>7.2f}"
              f"{r['server_us_per_request']:>11.1f}{r['errors']:>7}")
    ratios(rows)
    result = {"machine": {"cores": os.cpu_count()}, "seconds": args.seconds, "rows": rows}
    if args.instructions:
        import instructions

        print(f"\ninstructions per request, in process (callgrind; this tree's build):")
        shipped = next((m for m in models if m not in bench.GENERATED and not m.endswith(("_nospin", "_spin"))), "mlp")
        result["instructions"] = instructions.run(shipped, ["grpc", "http-binary", "http-json"], 200, 1200, 0)
    with open(os.path.join(args.out, "overhead.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nJSON: {os.path.join(args.out, 'overhead.json')}")


def ratios(rows):
    """gRPC over HTTP binary (same client) and JSON over binary, per build and concurrency."""
    by = {(r["build"], r["model"], r["client"], r["transport"], r["concurrency"]): r for r in rows}
    lines = []
    for (build, model, client, transport, c), r in by.items():
        binary = by.get((build, model, client, "http-binary", c))
        if binary and transport in ("grpc", "http-json"):
            ratio = r["server_us_per_request"] / max(binary["server_us_per_request"], 1e-9)
            lines.append(f"  {build:<7}{model:<7}{client:<14}c={c:<4}{transport} / http-binary CPU per request: "
                         f"{ratio:.2f}")
        before = by.get(("before", model, client, transport, c))
        if build == "now" and before:
            lines.append(f"  now/before {model:<7}{client:<14}{transport:<12}c={c:<4}CPU per request "
                         f"{r['server_us_per_request'] / max(before['server_us_per_request'], 1e-9):.2f}, "
                         f"throughput {r['infer_per_sec'] / max(before['infer_per_sec'], 1e-9):.2f}")
    if lines:
        print("\nratios:")
        print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--clients", default="perf_analyzer,ferroload")
    parser.add_argument("--repeat", type=int, default=3,
                        help="measure each point this many times (builds alternating); report medians")
    parser.add_argument("--server", default=harness.SERVER, help="the build to measure")
    parser.add_argument("--baseline", help="another build, measured in the same run")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per request in process under callgrind")
    parser.add_argument("--out", default=os.path.join(ROOT, "target/bench"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
