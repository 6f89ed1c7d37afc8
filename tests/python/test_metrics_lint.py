"""/metrics passes `promtool check metrics` (Prometheus' own linter: naming,
units, HELP text, histogram and counter conventions), after traffic has
created every kind of series. Triton's families (`nv_inference_*`) keep
Triton's names, which the linter faults (`_us`, counters without `_total`):
the only complaints allowed are about those names."""

import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (deploy/setup.sh test)")
def test_metrics_pass_promtool(server):
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("input", [1, 16], "FP32")
    x.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    client.infer("mlp", [x])
    wrong = httpclient.InferInput("input", [1, 16], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    with pytest.raises(Exception, match="datatype"):
        client.infer("mlp", [wrong])  # an error series too
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as r:
        body = r.read()
    assert b"ferroserve_request_duration_seconds_bucket" in body
    assert b"ferroserve_slo_burn_rate" in body
    assert b"nv_inference_request_success" in body
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    complaints = (check.stdout.decode() + check.stderr.decode()).splitlines()
    ours = [line for line in complaints if line.strip() and not line.startswith("nv_inference_")]
    assert not ours, "\n".join(ours)
    # Prometheus' parser still reads every line (a syntax error fails differently).
    assert check.returncode in (0, 3), complaints
