"""What users of Triton and KServe already run keeps working: Triton's
metric families beside ours (and agreeing with them), the Open Inference
Protocol's health bodies, GET /v2/models, JSON bodies for REST load and
unload, retry hints a retrying gRPC client obeys, every answered inference
request counted whatever refused it, and log lines a collector can parse.
"""

import gzip
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import REPO_ROOT, SHIPPED_MODELS, _server_binary, running_server

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(server):
    """{(name, frozenset of label pairs): value} of every sample."""
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
            samples[(m["name"], labels)] = float(m["value"])
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name):
    return sum(v for (n, _), v in samples.items() if n == name)


def http(server, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one HTTP call."""
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def mlp_inputs(module, batch=2):
    x = module.InferInput("input", [batch, 16], "FP32")
    x.set_data_from_numpy(np.ones((batch, 16), dtype=np.float32))
    return [x]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dropin_repository")
    for name in SHIPPED_MODELS:
        shutil.copytree(REPO_ROOT / "models" / name, repo / name)
    shutil.copytree(REPO_ROOT / "tests" / "models" / "failing", repo / "failing")
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with running_server(repo) as srv:
        yield srv


# ------------------------------------------------------------------ Triton's metrics


def test_triton_metric_families_agree_with_ours(server):
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    http_client = httpclient.InferenceServerClient(server.http_url)
    for batch in (1, 2, 3):
        grpc_client.infer("cnn", cnn_inputs(grpcclient, batch))
        http_client.infer("cnn", cnn_inputs(httpclient, batch))
    samples = scrape(server)
    labels = {"model": "cnn", "version": "1"}
    ok = value(samples, "ferroserve_requests_total", code="ok", **labels)
    assert ok == 6
    assert value(samples, "nv_inference_request_success", **labels) == ok
    # Rows run and executions: our batch-size histogram's sum and count.
    assert value(samples, "nv_inference_count", **labels) == value(samples, "ferroserve_batch_size_sum", **labels) == 12
    assert value(samples, "nv_inference_exec_count", **labels) == value(samples, "ferroserve_batch_size_count", **labels)
    # Cumulative microseconds of the same measurements (within rounding).
    duration_us = value(samples, "nv_inference_request_duration_us", **labels)
    assert duration_us == pytest.approx(1e6 * value(samples, "ferroserve_request_duration_seconds_sum", **labels), abs=6)
    compute_us = value(samples, "nv_inference_compute_infer_duration_us", **labels)
    assert 0 < compute_us <= duration_us
    for name in ("nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_output_duration_us"):
        assert (name, frozenset(labels.items())) in samples, name
    assert ("nv_inference_pending_request_count", frozenset(labels.items())) in samples
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert value(samples, "nv_inference_request_failure", reason=reason, **labels) == 0
    grpc_client.close()
    http_client.close()


def cnn_inputs(module, batch):
    x = module.InferInput("image", [batch, 3, 32, 32], "FP32")
    x.set_data_from_numpy(np.zeros((batch, 3, 32, 32), dtype=np.float32))
    return [x]


def failing_inputs(module):
    """Inputs that make the `failing` test model fail inside ONNX Runtime."""
    x = module.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    fail = module.InferInput("fail", [1, 1], "INT64")
    fail.set_data_from_numpy(np.ones((1, 1), dtype=np.int64))
    return [x, fail]


def test_triton_failure_reasons(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(Exception):
        client.infer("failing", failing_inputs(grpcclient))
    samples = scrape(server)
    labels = {"model": "failing", "version": "1"}
    assert value(samples, "nv_inference_request_failure", reason="BACKEND", **labels) == 1
    assert value(samples, "ferroserve_requests_total", code="internal", **labels) == 1
    assert value(samples, "nv_inference_request_success", **labels) == 0
    client.close()


def test_triton_metrics_can_be_turned_off(repo):
    with running_server(repo, "--triton-metrics", "false") as srv:
        httpclient.InferenceServerClient(srv.http_url).infer("mlp", mlp_inputs(httpclient))
        samples = scrape(srv)
        assert not [n for n, _ in samples if n.startswith("nv_")]
        assert value(samples, "ferroserve_requests_total", model="mlp", version="1", code="ok") == 1


# ------------------------------------------------------------------ health and listing


def test_health_bodies(server):
    status, headers, body = http(server, "GET", "/v2/health/live")
    assert (status, json.loads(body)) == (200, {"live": True})
    assert headers["content-type"] == "application/json"
    status, headers, body = http(server, "GET", "/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    assert headers["content-type"] == "application/json"
    status, _, body = http(server, "GET", "/v2/models/mlp/ready")
    assert (status, json.loads(body)) == (200, {"name": "mlp", "ready": True})
    status, _, body = http(server, "GET", "/v2/models/mlp/versions/1/ready")
    assert (status, json.loads(body)) == (200, {"name": "mlp", "ready": True})
    status, _, body = http(server, "GET", "/v2/models/mlp/versions/7/ready")
    assert status == 404 and "unknown version" in json.loads(body)["error"]
    status, _, body = http(server, "GET", "/v2/models/no_such_model/ready")
    assert status == 404 and "no_such_model" in json.loads(body)["error"]


def test_model_list(server):
    status, headers, body = http(server, "GET", "/v2/models")
    assert status == 200 and headers["content-type"] == "application/json"
    listing = json.loads(body)
    assert listing["models"] == sorted(listing["models"])
    assert set(listing["models"]) == {*SHIPPED_MODELS, "failing"}
    versions = {(v["name"], v["version"]): v["state"] for v in listing["versions"]}
    assert versions[("mlp", "1")] == "READY"


def test_rest_load_and_unload_answer_json(repo):
    with running_server(repo, "--model-control-mode", "explicit", "--load-model", "mlp") as srv:
        status, _, body = http(srv, "POST", "/v2/repository/models/cnn/load")
        assert (status, json.loads(body)) == (200, {"name": "cnn", "load": True})
        status, _, body = http(srv, "POST", "/v2/repository/models/cnn/unload")
        assert (status, json.loads(body)) == (200, {"name": "cnn", "unload": True})
        status, _, body = http(srv, "GET", "/v2/models/cnn/ready")
        assert status == 400 and json.loads(body)["ready"] is False


def test_grpc_repository_in_kserve_layout(repo):
    # KServe's RepositoryModelLoadRequest has model_name in field 1, where
    # Triton's has repository_name: the same bytes.
    with running_server(repo, "--model-control-mode", "explicit", "--load-model", "mlp") as srv:
        with grpc.insecure_channel(srv.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(repository_name="cnn"))
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            assert client.is_model_ready("cnn")
            stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(repository_name="cnn"))
            assert not client.is_model_ready("cnn")
            # Triton's layout, with a repository name: refused, saying what to do.
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(repository_name="r", model_name="cnn"))
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "leave repository_name empty" in refused.value.details()
            client.close()


# ------------------------------------------------------------------ retry hints


def retrying_channel(target, codes):
    """A grpcio channel whose service config retries `codes` (as the KServe
    SDK's InferenceGRPCClient does for UNAVAILABLE), three attempts."""
    config = {"methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
        "retryableStatusCodes": codes}}]}  # fmt: skip
    return grpc.insecure_channel(target, options=[("grpc.service_config", json.dumps(config))])


def infer_request(model, names_and_arrays):
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array, datatype in names_and_arrays:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def test_a_refusal_a_retry_cannot_fix_reaches_the_server_once(repo):
    with running_server(repo, "--model-control-mode", "explicit", "--load-model", "mlp,failing") as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        client.unload_model("mlp")
        with retrying_channel(srv.grpc_url, ["UNAVAILABLE", "INTERNAL"]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            # The control: a model failure carries no hint, and the policy
            # resends it: three requests reach the server.
            failing = infer_request("failing", [("x", np.ones((1, 4), np.float32), "FP32"),
                                                ("fail", np.ones((1, 1), np.int64), "INT64")])  # fmt: skip
            with pytest.raises(grpc.RpcError) as failed:
                stub.ModelInfer(failing, timeout=10)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            # The unloaded model: UNAVAILABLE with a negative pushback, once.
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(infer_request("mlp", [("input", np.ones((1, 16), np.float32), "FP32")]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "unloaded" in refused.value.details()
            trailers = dict(refused.value.trailing_metadata())
            assert trailers.get("grpc-retry-pushback-ms") == "-1"
        samples = scrape(srv)
        assert value(samples, "ferroserve_requests_total", model="failing", version="1", code="internal") == 3
        assert value(samples, "ferroserve_requests_total", model="mlp", version="", code="unavailable") == 1
        client.close()


# ------------------------------------------------------------------ every answer counted

GOOD_INPUT = {"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}
HTTP_CASES = [
    # (what, path, body, headers, status)
    ("malformed JSON", "/v2/models/mlp/infer", b"{bad", {}, 400),
    ("unknown datatype", "/v2/models/mlp/infer",
     json.dumps({"inputs": [{**GOOD_INPUT, "datatype": "FP33"}]}).encode(), {}, 400),
    ("bad shape", "/v2/models/mlp/infer", json.dumps({"inputs": [{**GOOD_INPUT, "shape": [1, 15]}]}).encode(), {}, 400),
    ("bad timeout parameter", "/v2/models/mlp/infer",
     json.dumps({"parameters": {"timeout": "soon"}, "inputs": [GOOD_INPUT]}).encode(), {}, 400),
    ("bad timeout header", "/v2/models/mlp/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode(),
     {"x-request-timeout-ms": "-3"}, 400),
    ("bad header length", "/v2/models/mlp/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode(),
     {"inference-header-content-length": "many"}, 400),
    ("header length past the body", "/v2/models/mlp/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode(),
     {"inference-header-content-length": "100000"}, 400),
    ("null id", "/v2/models/mlp/infer", json.dumps({"id": None, "inputs": [GOOD_INPUT]}).encode(), {}, 400),
    ("object parameter", "/v2/models/mlp/infer",
     json.dumps({"parameters": {"p": {"k": 1}}, "inputs": [GOOD_INPUT]}).encode(), {}, 400),
    ("body that is not gzip", "/v2/models/mlp/infer", b"not gzip at all", {"content-encoding": "gzip"}, 400),
    ("unknown model, bad body", "/v2/models/no_such_model/infer", b"{bad", {}, 404),
    ("unknown version", "/v2/models/mlp/versions/9/infer", json.dumps({"inputs": [GOOD_INPUT]}).encode(), {}, 404),
    ("valid", "/v2/models/mlp/infer", gzip.compress(json.dumps({"inputs": [GOOD_INPUT]}).encode()),
     {"content-encoding": "gzip"}, 200),
]  # fmt: skip


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_every_http_inference_answer_is_counted_once(server, case):
    what, path, body, headers, want = case
    before = scrape(server)
    status, _, answer = http(server, "POST", path, body, {"content-type": "application/json", **headers})
    assert status == want, (what, answer)
    after = scrape(server)
    assert total(after, "ferroserve_requests_total") - total(before, "ferroserve_requests_total") == 1, what
    if path.startswith("/v2/models/mlp/") and status == 400:
        # Under the model the path names, as the repository knows it.
        def mlp_refused(samples):
            return sum(v for (n, labels), v in samples.items()
                       if n == "ferroserve_requests_total" and ("model", "mlp") in labels
                       and ("code", "invalid_argument") in labels)  # fmt: skip

        assert mlp_refused(after) - mlp_refused(before) == 1, what


GRPC_CASES = [
    ("bytes that are not a message", b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown datatype", infer_request("mlp", [("input", np.ones((1, 16), np.float32), "FP33")]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("bad shape", infer_request("mlp", [("input", np.ones((1, 15), np.float32), "FP32")]).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown model", infer_request("nope", [("input", np.ones((1, 16), np.float32), "FP32")]).SerializeToString(),
     grpc.StatusCode.NOT_FOUND),
]  # fmt: skip


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_every_grpc_inference_answer_is_counted_once(server, case):
    what, message, want = case
    before = scrape(server)
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            call(message, timeout=10)
    assert refused.value.code() == want, (what, refused.value.details())
    after = scrape(server)
    assert total(after, "ferroserve_requests_total") - total(before, "ferroserve_requests_total") == 1, what


# ------------------------------------------------------------------ logs


def logged_lines(repo, tmp_path, *flags):
    """The stderr lines of a server that loaded, answered a few calls
    (one of them a model failure) and stopped; on a copy of `repo`, so the
    log is its own."""
    repo = shutil.copytree(repo, tmp_path / "logged")
    with running_server(repo, *flags) as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        client.infer("mlp", mlp_inputs(httpclient))
        with pytest.raises(Exception):
            client.infer("failing", failing_inputs(httpclient))
        client.close()
    return (repo.parent / f"ferroserve-{repo.name}.log").read_text().splitlines()


def test_json_logs_are_one_object_per_line(repo, tmp_path):
    lines = logged_lines(repo, tmp_path, "--log-format", "json")
    assert len(lines) > 5
    parsed = [json.loads(line) for line in lines]  # every line parses
    for line in parsed:
        assert {"timestamp", "level", "target", "message", "fields"} <= set(line), line
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line["timestamp"]), line
    failed = [p for p in parsed if p["message"] == "model execution failed"]
    assert failed and failed[0]["level"] == "WARN" and failed[0]["fields"]["model"] == "failing"
    assert any(p["target"] == "ort" and p["level"] == "ERROR" for p in parsed), "ONNX Runtime's line, as JSON"
    assert any(p["message"] == "ready" for p in parsed)
    assert not any("\x1b[" in line for line in lines)


def test_text_logs_to_a_file_carry_no_escape_codes(repo, tmp_path):
    lines = logged_lines(repo, tmp_path, "--log-level", "warn")
    assert not any(" INFO " in line for line in lines), "--log-level warn leaves info out"
    assert any(" WARN " in line and "model execution failed" in line for line in lines)
    # ONNX Runtime's own line about the failure, through the same writer.
    assert any(" ERROR ort" in line for line in lines), lines
    assert not any("\x1b[" in line for line in lines)


def test_a_bad_log_level_is_refused_by_name(repo):
    run = subprocess.run([str(_server_binary()), "--model-repository", str(repo), "--log-level", "info,=loud"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert run.returncode != 0
    assert "--log-level" in run.stderr and "info,=loud" in run.stderr


# ------------------------------------------------------------------ a fuzz run, counted

VALID_BODIES = {
    "mlp": {"inputs": [GOOD_INPUT]},
    "mixed": {"inputs": [
        {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1.5, 2.0, 3.0, 4.0]},
        {"name": "b", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, -4]},
        {"name": "mask", "shape": [1, 4], "datatype": "BOOL", "data": [True, False, True, False]}]},
    "text": {"id": "t", "inputs": [{"name": "words", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}],
             "outputs": [{"name": "ids", "parameters": {"binary_data": True}}]},
}  # fmt: skip
ODD_VALUES = [None, True, -1, 0, 2**70, 1.5, "", "x", [], [1, [2]], {}, {"k": {"k": 1}}, "FP32", [1, 16]]


def mutate(rng, value):
    """`value` with one random change somewhere inside it."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        roll = rng.random()
        if roll < 0.2:
            return {k: v for k, v in value.items() if k != key}
        if roll < 0.4:
            return {**value, key: ODD_VALUES[rng.integers(len(ODD_VALUES))]}
        return {**value, key: mutate(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = int(rng.integers(len(value)))
        return value[:i] + [mutate(rng, value[i])] + value[i + 1:]
    return ODD_VALUES[rng.integers(len(ODD_VALUES))]


def fuzzed_http(rng):
    """(path, body bytes, headers) of one mutated inference request."""
    model = rng.choice([*VALID_BODIES, "no_such_model"])
    body = json.dumps(mutate(rng, VALID_BODIES.get(model, VALID_BODIES["mlp"]))).encode()
    roll = rng.random()
    headers = {"content-type": "application/json"}
    if roll < 0.15:  # bytes flipped or cut
        raw = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        body = bytes(raw[: int(rng.integers(1, len(raw) + 1))])
    elif roll < 0.25:
        headers["inference-header-content-length"] = rng.choice(["0", "7", "-1", "x", str(len(body) + 9)])
    elif roll < 0.35:
        headers["content-encoding"] = "gzip"
        body = gzip.compress(body) if rng.random() < 0.5 else body
    elif roll < 0.4:
        headers["x-request-timeout-ms"] = rng.choice(["0", "abc", "-5", "99999999999999999999"])
    version = rng.choice(["", "", "/versions/1", "/versions/2", "/versions/x"])
    return f"/v2/models/{model}{version}/infer", body, headers


def test_a_fuzz_run_counts_every_answer(server):
    """Seeded mutations of valid requests on both fronts: the answers the
    clients got equal what ferroserve_requests_total counted over the run."""
    rng = np.random.default_rng(2026)
    before = total(scrape(server), "ferroserve_requests_total")
    statuses = {}
    for _ in range(300):
        path, body, headers = fuzzed_http(rng)
        status, _, _ = http(server, "POST", path, body, headers)
        statuses[status] = statuses.get(status, 0) + 1
    valid = infer_request("mlp", [("input", np.ones((1, 16), np.float32), "FP32")]).SerializeToString()
    codes = {}
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(200):
            message = bytearray(valid)
            for _ in range(int(rng.integers(0, 3))):
                message[int(rng.integers(len(message)))] = int(rng.integers(256))
            if rng.random() < 0.3:
                message = message[: int(rng.integers(1, len(message) + 1))]
            try:
                call(bytes(message), timeout=10)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            codes[code] = codes.get(code, 0) + 1
    answered = sum(statuses.values()) + sum(codes.values())
    counted = total(scrape(server), "ferroserve_requests_total") - before
    print(f"fuzz run: HTTP {sorted(statuses.items())}, gRPC {sorted(codes.items())}, counted {counted:.0f}")
    assert counted == answered == 500, (statuses, codes)
    assert sum(n for s, n in statuses.items() if s >= 400) > 100, statuses  # mostly refusals
    assert "DEADLINE_EXCEEDED" not in codes, codes  # every call was answered by the server
