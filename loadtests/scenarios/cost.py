#!/usr/bin/env python3
"""Cost-model admission scenario: a heavy CNN and a 5 ms model far past capacity.

    .deps/venv/bin/python loadtests/scenarios/cost.py [--seconds 8] [--factors 3,10]

(loadtests/scenarios.sh cost builds first.) One ferroserve with default flags
serves a temporary repository: the heavy CNN of loadtests/models.py
(ResNet-50, random weights) as `resnet50` with slo_latency_seconds 0.25 and as
`resnet50_default` without it (the server's default SLO, 25 ms, which it
cannot meet), the test model `slow` as a 5 ms one-thread model `slow5` (no
adaptive limit), and the shipped `mlp`. In one run:

  a. resnet50: unloaded p50/p99 (closed loop, one client); the peak (closed
     loop at 1, 2, 4 clients: the best goodput); open-loop Poisson arrivals at
     each factor x peak for --seconds with a 10 s client timeout, then at the
     last factor with the deadline (grpc-timeout) at twice the SLO;
  b. resnet50_default at the last factor x peak;
  c. resnet50: a load step from 0.5x to the last factor x peak; the time after
     the step until admitted latency is back within the SLO, from 50 ms
     windows of the per-request details;
  d. slow5: unloaded, peak (1, 2, 4 clients), then each factor x its peak;
  e. closed loop with perf_analyzer (when .deps/perf_analyzer exists, else
     ferroload) at concurrency 64 on mlp and 4 on resnet50: errors.

With --pin the server runs on the last core and ferroload on the others
(taskset), so the load generator's own work (encoding 600 KB images a few
hundred times a second) does not take the model's CPU; ResNet-50 then has
one core, not two. perf_analyzer is left free: 64 client threads on one core
never finish a stable measurement window.

Then it reads the shed counters by reason, ferroserve_model_execution_seconds
and ferroserve_slo_attainable from /metrics (when the server has them).
Prints each figure beside its goal (issue 10) and writes --out. Exits
non-zero only on hard failures: the server died, or a request was lost
(answered neither OK, nor refused, nor timed out). Loopback only; every phase
is bounded (about 3 minutes in all).
"""

import argparse
import base64
import os
import random
import re
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402
import models  # noqa: E402  (loadtests/models.py)

SLO = 0.25  # seconds, resnet50's slo_latency_seconds
DEFAULT_SLO = 0.025  # the server's --slo-latency-seconds default
REFUSED = "ResourceExhausted"
TIMED_OUT = "DeadlineExceeded"
PERF = os.path.join(harness.ROOT, ".deps/perf_analyzer/perf_analyzer")
STEP_WINDOW = 0.05  # seconds


def heavy_request(model):
    """One 3x224x224 image of seeded noise, as raw FP32 bytes (base64 in protobuf JSON)."""
    rng = random.Random(224)
    values = [rng.uniform(-1.0, 1.0) for _ in range(3 * 224 * 224)]
    raw = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return {"model_name": model, "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 224, 224]}],
            "raw_input_contents": [raw]}


def slow_request(model, spin):
    return {"model_name": model, "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "contents": {"fp32_contents": [1.0]}},
        {"name": "spin", "datatype": "INT64", "shape": [1], "contents": {"int64_contents": [spin]}},
    ]}


def build_repository(repo, spin_model_dir):
    """resnet50 (SLO 0.25) and resnet50_default share one cached model file."""
    cached = models.ensure("resnet50", slo=SLO)
    config = open(os.path.join(cached, "config.pbtxt")).read()
    default = re.sub(r"# Latency SLO.*?\n\}\n", "", config, flags=re.S)
    assert "slo_latency_seconds" in config and "slo_latency_seconds" not in default
    for name, text in (("resnet50", config), ("resnet50_default", default)):
        os.makedirs(os.path.join(repo, name, "1"))
        os.symlink(os.path.join(cached, "1", "model.onnx"), os.path.join(repo, name, "1", "model.onnx"))
        with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
            f.write(text.replace('name: "resnet50"', f'name: "{name}"'))
    one_thread = harness.parameter("intra_op_thread_count", 1)
    harness.copy_model(spin_model_dir, repo, "slow5", lambda c: c + one_thread)
    harness.copy_model(os.path.join(harness.ROOT, "models/mlp"), repo, "mlp")


def settle(server, probe=None, bound_ms=None, timeout=10, prefix=()):
    """Waits until what a phase left behind has drained: the server holds no
    request and none is queued, and then (with `probe`, a ghz config) until
    one probe request is answered OK within `bound_ms` (a batch that clients
    gave up on may still be running). Says so when that takes long."""
    start = time.monotonic()
    settled = False
    while time.monotonic() - start < timeout:
        idle = server.metric("ferroserve_server_inflight_requests") == 0 and \
            server.metric("ferroserve_queue_depth") == 0
        if idle and probe:
            report = harness.ferroload(probe, "-c", "1", "-n", "1", "-t", "10s", prefix=prefix)
            idle = report["statusCodeDistribution"].get("OK") == 1 and report["slowest"] / 1e6 <= bound_ms
        if idle:
            settled = True
            break
        time.sleep(0.1)
    waited = time.monotonic() - start
    if not settled:
        print(f"(the server was still busy {timeout} s after the previous phase; going on)")
    elif waited > 1:
        print(f"(the server took {waited:.1f} s to drain the previous phase)")


def closed(config, clients, seconds, prefix=()):
    report = harness.ferroload(config, "-c", str(clients), "-z", f"{seconds}s", prefix=prefix)
    codes = report.get("statusCodeDistribution") or {}
    return {"clients": clients, "goodput": codes.get("OK", 0) / (report["total"] / 1e9),
            "p50_ms": harness.percentile(report, 50) / 1e3, "p99_ms": harness.percentile(report, 99) / 1e3,
            "codes": codes}


def open_loop(config, rps, seconds, timeout, slo=None, extra=(), seed=1, prefix=()):
    """Open loop with Poisson arrivals; returns (summary, report with details)."""
    report = harness.ferroload(config, "-r", f"{rps:.3f}", "-c", "4096", "-z", f"{seconds}s", "-t", timeout,
                               "--arrivals", "poisson", "--seed", str(seed), *extra, details=True, prefix=prefix)
    return summarize(report, rps, slo), report


def summarize(report, rps, slo=None, details=None):
    details = report["details"] if details is None else details
    duration = report["total"] / 1e9
    ok = [d["latency"] / 1e6 for d in details if d["status"] == "OK"]
    refused = [d for d in details if d["status"] == REFUSED]
    # From the request going out to the refusal: the server and the wire, without
    # the load generator's own lateness on a busy machine.
    refused_sent = [(d["latency"] - d.get("lateness", 0)) / 1e6 for d in refused]
    refused_due = [d["latency"] / 1e6 for d in refused]
    codes = {}
    for d in details:
        codes[d["status"]] = codes.get(d["status"], 0) + 1
    out = {
        "offered_rps": rps, "sent": len(details), "duration_s": duration, "codes": codes,
        "goodput": len(ok) / duration if duration else 0.0,
        "admitted_p50_ms": harness.quantile(ok, 0.5), "admitted_p99_ms": harness.quantile(ok, 0.99),
        "refusal_sent_p99_ms": harness.quantile(refused_sent, 0.99),
        "refusal_due_p99_ms": harness.quantile(refused_due, 0.99),
        "deadline_exceeded": codes.get(TIMED_OUT, 0),
        "lateness_p99_ms": harness.quantile([d.get("lateness", 0) / 1e6 for d in details], 0.99),
        "lost": {c: n for c, n in codes.items() if c not in ("OK", REFUSED, TIMED_OUT)},
        "errors_sample": sorted((report.get("errorDistribution") or {}).items(), key=lambda kv: -kv[1])[:3],
    }
    if slo is not None:
        within = sum(1 for x in ok if x <= slo * 1e3)
        out["within_slo_share"] = within / len(ok) if ok else float("nan")
        out["goodput_within_slo"] = within / duration if duration else 0.0
    return out


def step_recovery(report, step_at, slo, window=STEP_WINDOW):
    """From the per-request details of a stepped run: the time from the step to
    the end of the last `window` of due times whose admitted (OK) requests
    went past the SLO (0 if none did), with the figures before the step."""
    stamps = [(harness.detail_time(d), d) for d in report["details"]]
    t0 = min(t for t, _ in stamps)  # request 0 is due at the start
    before = [d for t, d in stamps if t - t0 < step_at]
    after = [(t - t0 - step_at, d) for t, d in stamps if t - t0 >= step_at]
    windows = {}
    for offset, d in after:
        if d["status"] == "OK":
            windows.setdefault(int(offset // window), []).append(d["latency"] / 1e9)
    late = sorted(w for w, latencies in windows.items() if max(latencies) > slo)
    end = max((offset for offset, _ in after), default=0.0)
    recovery = (late[-1] + 1) * window if late else 0.0
    return {
        "step_at_s": step_at, "window_s": window, "windows_with_admitted": len(windows),
        "windows_over_slo": len(late), "recovery_s": recovery,
        # Recovered: some window after the last late one admitted requests, all within the SLO.
        "recovered": not late or any(w > late[-1] for w in windows),
        "first_late_window_s": late[0] * window if late else None,
        "after_end_s": end,
        "before": summarize(report, None, slo, before), "after": summarize(report, None, slo, [d for _, d in after]),
    }


def perf_analyzer(server, model, concurrency, interval_ms, work):
    """perf_analyzer closed loop at one concurrency: (summary) with errors."""
    csv = os.path.join(work, f"perf-{model}-c{concurrency}.csv")
    env = {**os.environ, "LD_LIBRARY_PATH": os.path.join(harness.ROOT, ".deps/perf_analyzer/lib")}
    cmd = [PERF, "-m", model, "-i", "grpc", "-u", server.grpc, "--concurrency-range", str(concurrency),
           "--measurement-interval", str(interval_ms), "--stability-percentage", "100", "--max-trials", "4",
           "-f", csv]
    try:
        proc = subprocess.run(cmd, cwd=harness.ROOT, env=env, capture_output=True, text=True, timeout=90)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        output, code = "perf_analyzer failed to finish in 90 s", None
    error_lines = [line.strip() for line in output.splitlines() if re.search(r"error|failed", line, re.I)]
    row = {}
    if os.path.exists(csv):
        lines = open(csv).read().strip().splitlines()
        if len(lines) >= 2:
            row = dict(zip(lines[0].split(","), lines[1].split(",")))
    return {"client": "perf_analyzer", "model": model, "concurrency": concurrency, "exit_code": code,
            # perf_analyzer stops at the first failed request: a failure is at least one error.
            "errors": len(error_lines) if error_lines else (0 if code == 0 else 1),
            "error_lines": error_lines[:3],
            "infer_per_sec": float(row["Inferences/Second"]) if row else float("nan"),
            "p99_ms": float(row["p99 latency"]) / 1e3 if row else float("nan")}


def ferroload_closed(config, model, concurrency, seconds, prefix=()):
    report = harness.ferroload(config, "-c", str(concurrency), "-z", f"{seconds}s", prefix=prefix)
    codes = report.get("statusCodeDistribution") or {}
    return {"client": "ferroload (perf_analyzer missing)", "model": model, "concurrency": concurrency,
            "errors": sum(n for c, n in codes.items() if c != "OK"), "codes": codes,
            "infer_per_sec": codes.get("OK", 0) / (report["total"] / 1e9),
            "p99_ms": harness.percentile(report, 99) / 1e3}


def read_metrics(server):
    """The admission figures from /metrics; series the server does not have yet are left out."""
    text = server.metrics_text()
    shed = {}
    for labels, value in harness.parse_series(text, "ferroserve_shed_total"):
        key = f"{labels.get('model', '')}/{labels.get('reason', '')}"
        shed[key] = shed.get(key, 0) + value
    execution = {f"{l.get('model')}/v{l.get('version')}/b{l.get('batch')}": v
                 for l, v in harness.parse_series(text, "ferroserve_model_execution_seconds")}
    attainable = {f"{l.get('model')}/v{l.get('version')}": v
                  for l, v in harness.parse_series(text, "ferroserve_slo_attainable")}
    return {"shed": shed, "execution_seconds": execution, "slo_attainable": attainable}


def goal(ok):
    return "met" if ok else "MISSED"


def print_phase(title, ph, peak, unloaded_p99=None, slo=None, deadline_goal=False):
    print(f"\n{title} ({ph['offered_rps']:.1f} rps offered, {ph['sent']} requests, codes {ph['codes']}):")
    ratio = ph["goodput"] / peak if peak else float("nan")
    print(f"  goodput {ph['goodput']:.1f} ok/s = {ratio:.0%} of peak {peak:.1f}      goal >= 90%: {goal(ratio >= 0.9)}")
    if slo is not None:
        share = ph["within_slo_share"]
        print(f"  admitted within {slo * 1e3:.0f} ms: {share:.2%} (p50 {ph['admitted_p50_ms']:.1f} ms, "
              f"p99 {ph['admitted_p99_ms']:.1f} ms)      goal >= 99.9%: {goal(share >= 0.999)}")
    if unloaded_p99 is not None:
        r = ph["admitted_p99_ms"] / unloaded_p99
        print(f"  admitted p50 {ph['admitted_p50_ms']:.1f} ms, p99 {ph['admitted_p99_ms']:.1f} ms = {r:.2f}x "
              f"unloaded p99 {unloaded_p99:.1f} ms      goal <= 3x: {goal(r <= 3)}")
    n_refused = ph["codes"].get(REFUSED, 0)
    if n_refused:
        print(f"  refused {n_refused}: p99 {ph['refusal_sent_p99_ms']:.3f} ms from sending "
              f"({ph['refusal_due_p99_ms']:.3f} ms from the due time; generator lateness p99 "
              f"{ph['lateness_p99_ms']:.3f} ms)      goal < 1 ms: {goal(ph['refusal_sent_p99_ms'] < 1)}")
    else:
        print("  refused 0      goal refusal p99 < 1 ms: n/a (nothing refused)")
    if deadline_goal:
        print(f"  DEADLINE_EXCEEDED {ph['deadline_exceeded']}      goal 0: {goal(ph['deadline_exceeded'] == 0)}")
    elif ph["deadline_exceeded"]:
        print(f"  DEADLINE_EXCEEDED {ph['deadline_exceeded']} (client timeout)")
    if ph["lost"]:
        print(f"  LOST (neither OK, refused nor timed out): {ph['lost']} e.g. {ph['errors_sample']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8, help="length of each open-loop phase")
    parser.add_argument("--closed-seconds", type=float, default=3, help="length of each closed-loop phase")
    parser.add_argument("--factors", default="3,10", help="offered load as multiples of the peak")
    parser.add_argument("--spin", type=int, default=5000, help="slow5: Loop iterations per request (~1 us each)")
    parser.add_argument("--parts", default="a,b,c,d,e", help="which parts to run (the peak of a is always measured "
                        "when a, b or c runs)")
    parser.add_argument("--pin", action="store_true", help="the server on the last core, ferroload on the others")
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "target/scenarios/cost.json"))
    args = parser.parse_args()
    factors = [float(x) for x in args.factors.split(",")]
    parts = set(args.parts.split(","))
    top, seconds, closed_s = factors[-1], args.seconds, args.closed_seconds
    started = time.monotonic()

    work, repo = harness.scenario_workspace("cost")
    build_repository(repo, os.path.join(harness.ROOT, "tests/models/slow"))
    log = os.path.join(work, "server.log")
    server_prefix, load = harness.pinning(args.pin)
    result = {"slo_s": SLO, "seconds": seconds, "factors": factors, "parts": sorted(parts),
              "pinned": " ".join(server_prefix) or None}
    with harness.Server(repo, log=log, ready_timeout=120, prefix=server_prefix) as server:
        heavy = harness.ghz_config("cnn", server.grpc, work, data=heavy_request("resnet50"))
        heavy_default = harness.ghz_config("cnn", server.grpc, work, data=heavy_request("resnet50_default"))
        slow5 = harness.ghz_config("mlp", server.grpc, work, data=slow_request("slow5", args.spin))
        mlp = harness.ghz_config("mlp", server.grpc, work)

        if parts & {"a", "b", "c"}:
            # The heavy CNN's unloaded latency and peak, which a, b and c are judged by.
            for config in (heavy, heavy_default):  # warm-up, unrecorded: sessions, arenas, the cost model
                harness.ferroload(config, "-c", "2", "-z", "2s", prefix=load)
            unloaded = closed(heavy, 1, closed_s + 1, load)
            peaks = [dict(unloaded)] + [closed(heavy, c, closed_s, load) for c in (2, 4)]
            peak = max(p["goodput"] for p in peaks)
            result["heavy"] = {"unloaded": unloaded, "peaks": peaks, "peak": peak}
        # Between phases on the heavy CNN: drained, and a request answered near its unloaded time.
        calm = dict(probe=heavy, bound_ms=3 * unloaded["p99_ms"]) if "heavy" in result else {}
        calm["prefix"] = load
        if "a" in parts:
            phases = []
            for f in factors:
                settle(server, **calm)
                summary, _ = open_loop(heavy, f * peak, seconds, "10s", SLO, prefix=load)
                phases.append(dict(summary, factor=f, timeout="10s"))
            settle(server, **calm)
            deadline = f"{int(2 * SLO * 1e3)}ms"
            summary, _ = open_loop(heavy, top * peak, seconds, deadline, SLO, seed=2, prefix=load)
            phases.append(dict(summary, factor=top, timeout=deadline, deadline_run=True))
            result["a"] = phases
        if "b" in parts:
            settle(server, **calm)
            summary, _ = open_loop(heavy_default, top * peak, seconds, "10s", DEFAULT_SLO, seed=3, prefix=load)
            result["b"] = dict(summary, factor=top)
        if "c" in parts:
            settle(server, **calm)
            step_at = round(seconds * 0.4, 1)
            _, report = open_loop(heavy, 0.5 * peak, seconds, "10s", SLO, seed=4, prefix=load,
                                  extra=("--step-at", f"{step_at}s", "--step-rps", f"{top * peak:.3f}"))
            result["c"] = dict(step_recovery(report, step_at, SLO), low_rps=0.5 * peak, high_rps=top * peak)
        if "d" in parts:
            settle(server, **calm)
            harness.ferroload(slow5, "-c", "1", "-z", "1s", prefix=load)  # warm-up, unrecorded
            d_unloaded = closed(slow5, 1, closed_s, load)
            d_peaks = [dict(d_unloaded)] + [closed(slow5, c, closed_s, load) for c in (2, 4)]
            d_peak = max(p["goodput"] for p in d_peaks)
            phases = []
            for f in factors:
                settle(server, probe=slow5, bound_ms=3 * d_unloaded["p99_ms"], prefix=load)
                summary, _ = open_loop(slow5, f * d_peak, seconds, "5s", seed=5, prefix=load)
                phases.append(dict(summary, factor=f))
            result["d"] = {"unloaded": d_unloaded, "peaks": d_peaks, "peak": d_peak, "phases": phases}
        if "e" in parts:
            settle(server, **calm)
            runs = []
            for model, config, concurrency, interval in (("mlp", mlp, 64, 2000), ("resnet50", heavy, 4, 3000)):
                if os.path.exists(PERF):
                    # perf_analyzer is not pinned: 64 client threads on one core never
                    # finish a stable measurement window.
                    runs.append(perf_analyzer(server, model, concurrency, interval, work))
                else:
                    runs.append(ferroload_closed(config, model, concurrency, 5, load))
            result["e"] = runs
        result["metrics"] = read_metrics(server)
        alive = server.alive() and server.http_status("/v2/health/ready") == 200
    result["server_alive"] = alive
    hard = [] if alive else ["the server died or is not ready"]
    hard += report_all(result, args.spin)
    result["hard_failures"] = hard
    result["elapsed_s"] = time.monotonic() - started
    print(f"\nserver {'alive and ready' if alive else 'NOT READY / DEAD'}; {result['elapsed_s']:.0f} s in all")
    if hard:
        print("HARD FAILURES: " + "; ".join(hard) + f" (server log {log})")
    harness.write_json(args.out, result)
    return 1 if hard else 0


def report_all(result, spin):
    """Prints the summary, each figure beside its goal; returns the hard failures (lost requests)."""
    lost = []
    top = result["factors"][-1]
    if "heavy" in result:
        h = result["heavy"]
        unloaded, peak = h["unloaded"], h["peak"]
        where = f"server under `{result['pinned']}`, load generator on the other cores" if result.get("pinned") \
            else "server and load generator sharing every core"
        print(f"\n== heavy CNN resnet50 (ResNet-50), SLO {SLO * 1e3:.0f} ms; {where}")
        print(f"unloaded (1 client): p50 {unloaded['p50_ms']:.1f} ms  p99 {unloaded['p99_ms']:.1f} ms  "
              f"{unloaded['goodput']:.1f} ok/s")
        for p in h["peaks"]:
            print(f"closed loop {p['clients']} clients: {p['goodput']:.1f} ok/s  p50 {p['p50_ms']:.1f} ms  "
                  f"p99 {p['p99_ms']:.1f} ms  codes {p['codes']}")
        print(f"peak goodput {peak:.1f} ok/s")
    for ph in result.get("a", []):
        lost += [f"a {ph['factor']:g}x: {ph['lost']}"] if ph["lost"] else []
        if ph.get("deadline_run"):
            title = f"a. {ph['factor']:g}x, Poisson, deadline (grpc-timeout) {ph['timeout']} = 2x SLO"
            print_phase(title, ph, peak, slo=SLO, deadline_goal=True)
        else:
            print_phase(f"a. {ph['factor']:g}x, Poisson, client timeout {ph['timeout']}", ph, peak, slo=SLO)
    if "b" in result:
        b = result["b"]
        lost += [f"b: {b['lost']}"] if b["lost"] else []
        print_phase(f"b. resnet50_default (the server's default SLO, 25 ms, unattainable): {top:g}x, Poisson", b,
                    peak, unloaded_p99=unloaded["p99_ms"])
        print("  (unloaded p99 measured on resnet50: the same model file)")
    if "c" in result:
        c = result["c"]
        print(f"\nc. load step on resnet50: {c['low_rps']:.1f} -> {c['high_rps']:.1f} rps at {c['step_at_s']:g} s, "
              f"Poisson")
        for when in ("before", "after"):
            ph = c[when]
            print(f"  {when}: admitted p99 {ph['admitted_p99_ms']:.1f} ms, codes {ph['codes']}")
            lost += [f"c {when}: {ph['lost']}"] if ph["lost"] else []
        windows = f"{c['windows_over_slo']} of {c['windows_with_admitted']} {c['window_s'] * 1e3:.0f} ms windows"
        if c["recovered"]:
            print(f"  admitted latency back within the SLO {c['recovery_s'] * 1e3:.0f} ms after the step ({windows} "
                  f"with admitted requests went over it)      goal <= 100 ms: {goal(c['recovery_s'] <= 0.1)}")
        else:
            print(f"  admitted latency NOT back within the SLO by the end of the run ({c['after_end_s']:.1f} s after "
                  f"the step; {windows} over it)      goal <= 100 ms: MISSED")
    if "d" in result:
        d = result["d"]
        print(f"\n== d. the 5 ms model slow5 (spin {spin}, one thread, no adaptive limit)")
        print(f"unloaded (1 client): p50 {d['unloaded']['p50_ms']:.2f} ms  p99 {d['unloaded']['p99_ms']:.2f} ms")
        for p in d["peaks"]:
            print(f"closed loop {p['clients']} clients: {p['goodput']:.0f} ok/s  p99 {p['p99_ms']:.2f} ms  "
                  f"codes {p['codes']}")
        for ph in d["phases"]:
            lost += [f"d {ph['factor']:g}x: {ph['lost']}"] if ph["lost"] else []
            print_phase(f"d. {ph['factor']:g}x, Poisson", ph, d["peak"], unloaded_p99=d["unloaded"]["p99_ms"])
    if "e" in result:
        print("\n== e. closed loop, errors")
        for run in result["e"]:
            example = f"  e.g. {run['error_lines'][0]}" if run.get("error_lines") else ""
            print(f"  {run['client']} {run['model']} c={run['concurrency']}: {run['infer_per_sec']:.1f} infer/s, "
                  f"p99 {run['p99_ms']:.1f} ms, errors {run['errors']}      goal 0: {goal(run['errors'] == 0)}"
                  f"{example}")
    m = result["metrics"]
    print("\n== /metrics")
    print(f"  ferroserve_shed_total by model/reason: {m['shed'] or 'none'}")
    print(f"  ferroserve_model_execution_seconds: {m['execution_seconds'] or 'not exported by this build'}")
    print(f"  ferroserve_slo_attainable: {m['slo_attainable'] or 'not exported by this build'}")
    return lost


if __name__ == "__main__":
    sys.exit(main())
