"""The KServe Python SDK (InferenceRESTClient, InferenceGRPCClient and its
gRPC stub), unchanged, against ferroserve: health, metadata, inference on
every shipped model over REST (JSON and binary tensors) and gRPC, errors,
and the repository through KServe's own message layout.

The SDK lives in a venv of its own (.deps/kserve-venv): kserve_calls.py
runs there and prints what each call answered; this test compares it with
tritonclient's answers from the same server, bit for bit.
"""

import base64
import json
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import REPO_ROOT, SHIPPED_MODELS, running_server

KSERVE_PYTHON = REPO_ROOT / ".deps" / "kserve-venv" / "bin" / "python"
DATATYPES = {np.float32: "FP32", np.int32: "INT32", np.bool_: "BOOL", np.object_: "BYTES"}


def feeds():
    rng = np.random.default_rng(13)
    words = np.array([["the", "quick", "héllo"], ["zebra", "", "dog"]], dtype=object)
    return {
        "mlp": {"input": rng.standard_normal((2, 16)).astype(np.float32)},
        "cnn": {"image": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)},
        "mixed": {
            "a": rng.standard_normal((2, 4)).astype(np.float32),
            "b": rng.integers(-1000, 1000, size=(2, 4), dtype=np.int32),
            "mask": rng.integers(0, 2, size=(2, 4)).astype(bool),
        },
        "text": {"words": words},
    }


def metric(url, name, labels):
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}\{{{re.escape(want)}\}} ", line):
            return float(line.split()[-1])
    return 0.0


def triton_outputs(grpc_url, model, model_feeds):
    client = grpcclient.InferenceServerClient(grpc_url)
    inputs = []
    for name, array in model_feeds.items():
        infer_input = grpcclient.InferInput(name, list(array.shape), DATATYPES[array.dtype.type])
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    result = client.infer(model, inputs)
    outputs = {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    client.close()
    return outputs


def same(kserve, want):
    """A KServe output (as kserve_calls.py encodes it) equals tritonclient's."""
    assert kserve["shape"] == list(want.shape)
    if kserve["datatype"] == "BYTES":
        return kserve["data"] == [v.decode() for v in want.flatten()]
    return base64.b64decode(kserve["data"]) == np.ascontiguousarray(want).tobytes()


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: run deploy/setup.sh test")
    repo = tmp_path_factory.mktemp("kserve_repository")
    for name in SHIPPED_MODELS:
        shutil.copytree(REPO_ROOT / "models" / name, repo / name)
    inputs = repo.parent / "kserve_inputs.npz"
    np.savez(inputs, **{f"{m}/{n}": a for m, f in feeds().items() for n, a in f.items()})
    with running_server(repo, "--model-control-mode", "explicit", "--load-model", "*") as srv:
        run = subprocess.run(
            [str(KSERVE_PYTHON), str(REPO_ROOT / "tests/python/kserve_calls.py"), srv.http_url, srv.grpc_url, str(inputs)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        out["reference"] = {m: triton_outputs(srv.grpc_url, m, f) for m, f in feeds().items()}
        out["unavailable_counted"] = metric(
            srv.metrics_url, "ferroserve_requests_total", {"model": "mlp", "version": "", "code": "unavailable"}
        )
        yield out


def test_health_over_rest_and_grpc(answers):
    for proto in ("rest", "grpc"):
        assert answers[proto]["live"] is True, proto
        assert answers[proto]["ready"] is True, proto
        ready = answers[proto]["model_ready"]
        assert all(ready[m] is True for m in SHIPPED_MODELS), (proto, ready)
        assert ready["no_such_model"] is False, proto


@pytest.mark.parametrize("model", SHIPPED_MODELS)
@pytest.mark.parametrize("path", [("rest", "json"), ("rest", "binary"), ("grpc", "infer")])
def test_infer_is_bit_identical_to_tritonclient(answers, model, path):
    got = answers[path[0]][path[1]][model]
    want = answers["reference"][model]
    assert set(got) == set(want)
    for name in want:
        assert same(got[name], want[name]), (model, path, name)


def test_metadata_through_the_sdk_stub(answers):
    assert answers["metadata"]["server"]["name"] == "ferroserve"
    assert answers["metadata"]["mlp"]["inputs"] == ["input"]
    assert answers["metadata"]["text"]["outputs"] == ["ids", "words_out"]
    for model in SHIPPED_MODELS:
        assert answers["metadata"][model]["name"] == model
        assert answers["metadata"][model]["platform"] == "onnxruntime_onnx"


def test_errors_name_what_was_wrong(answers):
    errors = answers["errors"]
    assert errors["rest_unknown_model"]["status"] == 404
    assert "no_such_model" in errors["rest_unknown_model"]["message"]
    assert errors["grpc_unknown_model"]["code"] == "NOT_FOUND"
    assert errors["rest_bad_shape"]["status"] == 400
    assert errors["grpc_bad_shape"]["code"] == "INVALID_ARGUMENT"
    assert "input" in errors["grpc_bad_shape"]["message"]


def test_repository_in_kserve_layout(answers):
    repo = answers["repository"]
    assert repo["unload"] == {"model_name": "mlp", "isUnloaded": True}
    assert repo["ready_after_unload"] is False
    assert repo["load"] == {"model_name": "mlp", "isLoaded": True}
    assert repo["ready_after_load"] is True
    assert repo["unload_unknown"]["code"] == "NOT_FOUND"


def test_an_unloaded_model_is_one_request_despite_the_sdk_retry_policy(answers):
    # The SDK retries UNAVAILABLE three times; the answer's negative
    # grpc-retry-pushback-ms tells it not to.
    refused = answers["repository"]["infer_unloaded"]
    assert refused["code"] == "UNAVAILABLE"
    assert "unloaded" in refused["message"]
    assert answers["unavailable_counted"] == 1.0
