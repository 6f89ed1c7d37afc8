#!/usr/bin/env python3
"""What TLS costs the server per request: the same build serving the same
model twice at once, in plaintext and over TLS, loaded by perf_analyzer
over gRPC (and HTTP) with its long-lived connections, the order alternating
per point. For each point: throughput, p50, and the server's CPU
microseconds per answered request (utime + stime from /proc over the
window, over the requests its statistics counted), medians of --repeat
runs, and the TLS/plaintext ratio.

    .deps/venv/bin/python loadtests/tls_overhead.py [--model mlp|mlp_big|resnet50] [--concurrency 1,16]
                                                    [--seconds 4] [--repeat 3] [--transports grpc,http-binary]

Needs target/release/ferroserve, perf_analyzer (deploy/setup.sh test) and
the venv's cryptography (certificates are made per run, in a temporary
folder). Loopback only; bounded.
"""

import argparse
import os
import shutil
import ssl
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python"))
import bench  # noqa: E402
import harness  # noqa: E402
import overhead  # noqa: E402
from certs import make_pki  # noqa: E402
from harness import ROOT, Server  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", default="grpc,http-binary")
    args = parser.parse_args()
    if not os.path.exists(overhead.PERF):
        raise SystemExit(f"perf_analyzer not found at {overhead.PERF}: run deploy/setup.sh test")
    work = Path(tempfile.mkdtemp(prefix="ferroserve-tls-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    pki = make_pki(work)
    repo = harness.temp_repository("tls")
    if args.model in bench.GENERATED:
        # A generated model (loadtests/models.py: mlp_big, resnet50), as the benchmark serves it.
        folder = bench.generate(args.model, *bench.GENERATED[args.model])
        bench.add_entry(repo, args.model, folder, open(os.path.join(folder, "config.pbtxt")).read())
    else:
        shutil.copytree(os.path.join(ROOT, "models", args.model), os.path.join(repo, args.model))
    context = ssl.create_default_context(cafile=str(pki.ca))
    tls_flags = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    ssl_args = {
        "grpc": ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(pki.ca)],
        "http-binary": ["--ssl-https-ca-certificates-file", str(pki.ca)],
    }
    levels = [int(c) for c in args.concurrency.split(",")]
    transports = args.transports.split(",")
    with Server(repo) as plain, Server(repo, *tls_flags, tls=context) as tls:
        # The certificate names localhost; gRPC's client checks the name it dialled.
        tls.grpc = tls.grpc.replace("127.0.0.1", "localhost")
        samples = {}
        for repeat in range(args.repeat):
            for transport in transports:
                for concurrency in levels:
                    order = [("plain", plain, ()), ("tls", tls, ssl_args[transport])]
                    if repeat % 2:
                        order.reverse()
                    for label, server, extra in order:
                        row = overhead.perf_analyzer_point(
                            server, args.model, transport, concurrency, args.seconds, str(work), extra=extra
                        )
                        samples.setdefault((transport, concurrency, label), []).append(row)
                        print(f"  {transport} c={concurrency} {label}: {row['server_us_per_request']:.1f} us/request, "
                              f"{row['answered_per_sec']:.0f}/s", flush=True)
    print(f"\n{args.model}: server CPU per answered request, plaintext vs TLS (medians of {args.repeat})")
    print(f"{'transport':<12} {'c':>3} {'plain us':>9} {'tls us':>8} {'ratio':>6} {'plain/s':>8} {'tls/s':>7} "
          f"{'plain p50':>10} {'tls p50':>8}")
    for transport in transports:
        for concurrency in levels:
            p = overhead.median_row(samples[(transport, concurrency, "plain")])
            t = overhead.median_row(samples[(transport, concurrency, "tls")])
            ratio = t["server_us_per_request"] / p["server_us_per_request"]
            print(f"{transport:<12} {concurrency:>3} {p['server_us_per_request']:>9.1f} {t['server_us_per_request']:>8.1f} "
                  f"{ratio:>6.2f} {p['answered_per_sec']:>8.0f} {t['answered_per_sec']:>7.0f} "
                  f"{p['p50_us']:>10.0f} {t['p50_us']:>8.0f}")


if __name__ == "__main__":
    main()
