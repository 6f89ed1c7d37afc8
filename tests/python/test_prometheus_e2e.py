"""End to end with a real Prometheus (Debian's, installed by deploy/setup.sh):
it scrapes ferroserve every second and evaluates deploy/prometheus's
recording rules, generated for this test's repository; after a fast phase
and a slow phase of requests, the burn rates Prometheus computes from our
histograms and counters must agree with the server's own SLO gauges.

Loopback only; bounded (about 40 s); both processes are stopped at the end.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import REPO_ROOT, running_server

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (deploy/setup.sh test)")

# "slow" with a 25 ms latency SLO at 90% and a 99% availability SLO.
SLO = """
parameters [
  { key: "slo_latency_seconds" value { string_value: "0.025" } },
  { key: "slo_latency_objective" value { string_value: "0.9" } },
  { key: "slo_availability_objective" value { string_value: "0.99" } }
]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        answer = json.load(r)
    assert answer["status"] == "success", answer
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in answer["data"]["result"]}


def one(base, expr):
    values = list(query(base, expr).values())
    return values[0] if len(values) == 1 else None


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:  # Prometheus still starting
            value = None
        if value is not None:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def infer(client, spin):
    x = httpclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
    n = httpclient.InferInput("spin", [1], "INT64")
    n.set_data_from_numpy(np.array([spin], dtype=np.int64))
    client.infer("slow", [x, n])


def test_recording_rules_and_server_gauges_agree(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "tests" / "models" / "slow", repo / "slow")
    with open(repo / "slow" / "config.pbtxt", "a") as f:
        f.write(SLO)
    rules = tmp_path / "rules.yml"
    subprocess.run([sys.executable, str(REPO_ROOT / "deploy/prometheus/generate.py"), "--models", str(repo),
                    "--out", str(rules)], check=True)
    with running_server(repo) as server:
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            "scrape_configs:\n  - job_name: ferroserve\n"
            f"    static_configs:\n      - targets: ['{server.metrics_url}']\n")
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for("Prometheus to scrape ferroserve",
                     lambda: one(base, 'up{job="ferroserve"}') == 1.0 or None, timeout=60)
            client = httpclient.InferenceServerClient(server.http_url)
            # A fast phase, then a slow one: 40 requests, 10 of them ~100 ms.
            for _ in range(30):
                infer(client, 0)
            for _ in range(10):
                infer(client, 100_000)
            # Both sides count the same requests: the server's gauge (refreshed
            # every 5 s, scraped every 1 s) and the rule over our histograms.
            # The 10 slow requests alone make a burn of (10/40)/0.1 = 2.5; a
            # fast one may also miss 25 ms on a very busy machine.
            gauge = 'ferroserve_slo_burn_rate{model="slow",slo="latency",window="5m"}'
            rule = 'model:ferroserve_slo_latency_burn_rate:ratio_rate5m{model="slow"}'

            def agreeing():
                g, r = one(base, gauge), one(base, rule)
                if g is None or r is None or g < 2.5:
                    return None
                return (g, r) if abs(g - r) / g < 0.02 else None

            server_burn, rule_burn = wait_for("the rule and the server's gauge to agree", agreeing)
            assert server_burn <= 10.0 and rule_burn == pytest.approx(server_burn, rel=0.02)
            availability = one(base, 'model:ferroserve_slo_availability_burn_rate:ratio_rate5m{model="slow"}')
            assert availability == 0.0
            assert one(base, 'ferroserve_slo_burn_rate{model="slow",slo="availability",window="5m"}') == 0.0
            # A 2.5x latency burn: over the ticket's 1x (pending: it needs an
            # hour to fire), under both pages' 6x and 14.4x; availability quiet.
            def alerts():
                found = [dict(k) for k in query(base, "ALERTS")]
                return found if any(a.get("severity") == "ticket" for a in found) else None

            found = wait_for("the latency ticket alert to be pending", alerts)
            assert {(a["alertname"], a["severity"], a["alertstate"]) for a in found} == {
                ("FerroserveLatencyBudgetBurn", "ticket", "pending")
            }, found

            # A Triton dashboard's panels, unchanged: request rate, and the
            # average queue time per request (cumulative microseconds over
            # the success count), from the same scrapes as ours.
            assert query(base, "sum by (model) (rate(nv_inference_request_success[30s]))"), "no Triton request rate"
            assert one(base, "sum by (model) (nv_inference_queue_duration_us) / sum by (model) "
                             "(nv_inference_request_success)") is not None
            triton = one(base, 'nv_inference_request_success{model="slow",version="1"}')
            ours = one(base, 'ferroserve_requests_total{model="slow",version="1",code="ok"}')
            assert triton == ours == 40.0
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=10)
