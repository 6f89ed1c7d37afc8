"""Real clients over TLS, mTLS and API keys: tritonclient gRPC (ssl=True,
root certificate, client certificate and key) and HTTP (ssl=True),
perf_analyzer with its --ssl-grpc-* and --ssl-https-* flags, curl, and a
real Prometheus scraping https with a bearer token.

One server for the module, set up as the README's Security section says:
--tls-cert/--tls-key, --tls-client-ca (metrics port in optional mode, for
the scraper), --auth-keys. Certificates and keys are made here, per run, in
a temporary folder (cryptography, from PyPI); nothing is committed.
"""

import hashlib
import json
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from certs import Pki, make_pki
from conftest import REPO_ROOT, running_server
from test_perf_analyzer import PA_BIN, report, run_perf_analyzer
from test_prometheus_e2e import PROMETHEUS, free_port, one, wait_for

# Keys by group, as the key file lists them.
KEYS = {
    "client": ("inference,metadata,model-config,statistics", "fs-client-7c2f9a41e0b3"),
    "admin": ("model-repository,canary", "fs-admin-51d08e7fa6c2"),
    "scraper": ("metrics", "fs-scraper-0b9e33c4d871"),
}


def bearer(who):
    return {"authorization": f"Bearer {KEYS[who][1]}"}


@dataclass(frozen=True)
class TlsServer:
    server: object
    pki: Pki
    keys_file: Path

    def context(self, client_cert=True):
        """A client context trusting the server's CA, with our client
        certificate unless told otherwise."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if client_cert:
            context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("tls"))


def serve_mlp(tmp_path_factory, pki, *flags, keys_file=None):
    """A server of mlp over mTLS (metrics port in optional mode)."""
    repo = tmp_path_factory.mktemp("tls_repository")
    shutil.copytree(REPO_ROOT / "models" / "mlp", repo / "mlp")
    tls = [
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.client_ca), "--metrics-tls-client-auth", "optional",
    ]  # fmt: skip
    probe = TlsServer(None, pki, keys_file)
    return running_server(repo, *tls, *flags, tls=probe.context())


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    """mTLS and API keys."""
    keys_file = pki.folder / "keys"
    keys_file.write_text(
        "".join(f"{who} {groups} {hashlib.sha256(key.encode()).hexdigest()}\n" for who, (groups, key) in KEYS.items())
    )
    flags = [
        "--auth-keys", str(keys_file),
        # perf_analyzer sends its -H headers on HTTP inference calls only.
        "--auth-open-groups", "metadata,model-config,statistics",
        "--model-control-mode", "explicit", "--load-model", "mlp",
    ]  # fmt: skip
    with serve_mlp(tmp_path_factory, pki, *flags, keys_file=keys_file) as server:
        yield TlsServer(server, pki, keys_file)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    """mTLS alone: the client certificate is the credential (perf_analyzer's
    gRPC client sends no headers)."""
    with serve_mlp(tmp_path_factory, pki) as server:
        yield TlsServer(server, pki, None)


def mlp_input(module):
    x = module.InferInput("input", [1, 16], "FP32")
    x.set_data_from_numpy(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))
    return [x]


def check_probabilities(result):
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 10)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-4


def grpc_client(tls_server, client_cert=True):
    pki = tls_server.pki
    return grpcclient.InferenceServerClient(
        url=tls_server.server.grpc_url.replace("127.0.0.1", "localhost"),
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key) if client_cert else None,
        certificate_chain=str(pki.client_cert) if client_cert else None,
    )


def test_tritonclient_grpc_over_mtls_with_keys(tls_server):
    client = grpc_client(tls_server)
    # Health is open to probes; everything else needs a key with its group.
    assert client.is_server_live() and client.is_server_ready()
    check_probabilities(client.infer("mlp", mlp_input(grpcclient), headers=bearer("client")))
    assert client.get_model_metadata("mlp", headers=bearer("client")).name == "mlp"

    with pytest.raises(InferenceServerException) as missing:
        client.infer("mlp", mlp_input(grpcclient))
    assert missing.value.status() == "StatusCode.UNAUTHENTICATED", missing.value
    assert "authorization: Bearer" in missing.value.message()
    with pytest.raises(InferenceServerException) as denied:
        client.unload_model("mlp", headers=bearer("client"))
    assert denied.value.status() == "StatusCode.PERMISSION_DENIED", denied.value
    assert "model-repository" in denied.value.message()
    client.load_model("mlp", headers=bearer("admin"))
    assert client.is_model_ready("mlp")
    client.close()

    # Without a client certificate the handshake is refused.
    anonymous = grpc_client(tls_server, client_cert=False)
    with pytest.raises(InferenceServerException):
        anonymous.get_server_metadata(headers=bearer("client"), client_timeout=10)
    anonymous.close()


def test_tritonclient_http_over_mtls_with_keys(tls_server):
    pki = tls_server.pki
    options = {"ca_certs": str(pki.ca), "certfile": str(pki.client_cert), "keyfile": str(pki.client_key)}
    client = httpclient.InferenceServerClient(tls_server.server.http_url, ssl=True, ssl_options=options)
    assert client.is_server_ready()
    check_probabilities(client.infer("mlp", mlp_input(httpclient), headers=bearer("client")))
    with pytest.raises(InferenceServerException) as missing:
        client.infer("mlp", mlp_input(httpclient))
    assert missing.value.status() == "401", missing.value
    with pytest.raises(InferenceServerException) as denied:
        client.get_model_repository_index(headers=bearer("client"))
    assert denied.value.status() == "403", denied.value
    with pytest.raises(InferenceServerException) as denied:
        client.get_model_repository_index(headers=bearer("scraper"))
    assert denied.value.status() == "403", denied.value
    index = client.get_model_repository_index(headers=bearer("admin"))
    assert [m["name"] for m in index] == ["mlp"]
    client.close()


def curl(*args):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (deploy/setup.sh test installs it)")
    return subprocess.run([curl, "--silent", "--show-error", "--max-time", "20", *args], capture_output=True, text=True)


def test_curl_over_mtls(tls_server):
    pki, server = tls_server.pki, tls_server.server
    tls = ["--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    url = f"https://localhost:{server.http_url.rsplit(':', 1)[1]}"
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    for version in ("--http1.1", "--http2"):
        answer = curl(*tls, version, "-H", f"authorization: Bearer {KEYS['client'][1]}",
                      "-H", "content-type: application/json", "-d", body, "-w", "\n%{http_code} %{http_version}",
                      f"{url}/v2/models/mlp/infer")  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        payload, status = answer.stdout.rsplit("\n", 1)
        assert status == ("200 1.1" if version == "--http1.1" else "200 2"), answer.stdout
        assert json.loads(payload)["outputs"][0]["shape"] == [1, 10]
    refused = curl(*tls, "-i", "-H", "content-type: application/json", "-d", body, f"{url}/v2/models/mlp/infer")
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.startswith("HTTP/") and " 401" in refused.stdout.splitlines()[0], refused.stdout
    assert "www-authenticate: bearer" in refused.stdout.lower(), refused.stdout
    # No client certificate, or one from a CA the server does not know: no answer.
    for client in ([], ["--cert", str(pki.rogue_cert), "--key", str(pki.rogue_key)]):
        failed = curl("--cacert", str(pki.ca), *client, f"{url}/v2/health/ready")
        assert failed.returncode != 0, f"served without a valid client certificate: {failed.stdout}"
    # The server does not present itself to a client that does not trust its CA.
    untrusted = curl("--cacert", str(pki.client_ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                     f"{url}/v2/health/ready")  # fmt: skip
    assert untrusted.returncode == 60, untrusted.stderr  # CURLE_PEER_FAILED_VERIFICATION


def tls_failures(tls_server, model):
    """Failed requests the server counted for `model`, asked over mTLS."""
    request = urllib.request.Request(f"https://{tls_server.server.http_url}/v2/models/{model}/stats")
    with urllib.request.urlopen(request, timeout=5, context=tls_server.context()) as r:
        stats = json.load(r)["model_stats"]
    return sum(s["inference_stats"]["fail"]["count"] for s in stats)


@pytest.mark.skipif(not PA_BIN.exists(), reason=f"perf_analyzer not installed at {PA_BIN} (run deploy/setup.sh test)")
def test_perf_analyzer_grpc_over_mtls(mtls_server, tmp_path):
    pki, server = mtls_server.pki, mtls_server.server
    args = ["-m", "mlp", "-b", "1", "-i", "grpc", "-u", server.grpc_url.replace("127.0.0.1", "localhost"),
            "--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(pki.ca),
            "--ssl-grpc-private-key-file", str(pki.client_key),
            "--ssl-grpc-certificate-chain-file", str(pki.client_cert)]  # fmt: skip
    rows = run_perf_analyzer(None, "mlp", args, tmp_path / "tls.csv", failures=lambda: tls_failures(mtls_server, "mlp"))
    report("mlp b=1 grpc over mTLS", rows)


@pytest.mark.skipif(not PA_BIN.exists(), reason=f"perf_analyzer not installed at {PA_BIN} (run deploy/setup.sh test)")
def test_perf_analyzer_https_over_mtls_with_a_key(tls_server, tmp_path):
    pki, server = tls_server.pki, tls_server.server
    args = ["-m", "mlp", "-b", "1", "-i", "http", "-u", f"https://{server.http_url}",
            "-H", f"authorization: Bearer {KEYS['client'][1]}",
            "--ssl-https-verify-peer", "1", "--ssl-https-verify-host", "2",
            "--ssl-https-ca-certificates-file", str(pki.ca),
            "--ssl-https-client-certificate-file", str(pki.client_cert),
            "--ssl-https-private-key-file", str(pki.client_key)]  # fmt: skip
    rows = run_perf_analyzer(None, "mlp", args, tmp_path / "tls.csv", failures=lambda: tls_failures(tls_server, "mlp"))
    report("mlp b=1 https over mTLS with a key", rows)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (deploy/setup.sh test)")
def test_prometheus_scrapes_https_with_a_bearer_token(tls_server, tmp_path):
    pki, server = tls_server.pki, tls_server.server
    port = free_port()
    job = (
        "  - job_name: {name}\n    scheme: https\n"
        "    tls_config:\n      ca_file: '{ca}'\n"
        "{auth}"
        "    static_configs:\n      - targets: ['{target}']\n"
    )
    token = f"    authorization:\n      credentials: '{KEYS['scraper'][1]}'\n"
    wrong = f"    authorization:\n      credentials: '{KEYS['client'][1]}'\n"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        + job.format(name="ferroserve", ca=pki.ca, auth=token, target=server.metrics_url)
        + job.format(name="anonymous", ca=pki.ca, auth="", target=server.metrics_url)
        + job.format(name="wrong_group", ca=pki.ca, auth=wrong, target=server.metrics_url)
    )
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for("Prometheus to scrape ferroserve over https", lambda: one(base, 'up{job="ferroserve"}') == 1.0 or None,
                 timeout=60)  # fmt: skip
        expiry = wait_for("the certificate expiry", lambda: one(base, "ferroserve_tls_cert_expiry_timestamp_seconds"))
        assert abs(expiry - (time.time() + 30 * 86_400)) < 86_400 + 600, expiry
        # Scrapes without the metrics group fail, and the server counts them.
        for refused in ("anonymous", "wrong_group"):
            wait_for(f"the {refused} job's scrapes to fail", lambda: one(base, f'up{{job="{refused}"}}') == 0.0 or None)
        # Both refused jobs counted, as the next scrape of the good job sees it.
        def both_counted():
            denied = query_sum(base, 'ferroserve_auth_denied_total{port="metrics"}')
            return denied if denied is not None and denied >= 2 else None

        wait_for("the refused scrapes to be counted", both_counted)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)


def query_sum(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": f"sum({expr})"})
    with urllib.request.urlopen(url, timeout=5) as r:
        result = json.load(r)["data"]["result"]
    return float(result[0]["value"][1]) if result else None
