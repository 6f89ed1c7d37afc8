"""NVIDIA's Python tritonclient (gRPC and HTTP), unchanged, against ferroserve.

Every test that applies to both protocols runs once per protocol through the
`proto` fixture. Numerical results are checked against onnxruntime running the
very same model file in-process.
"""

import functools
import queue
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import model_path

ALL_MODELS = ("cnn", "identity_all", "mixed", "mlp", "text")
RTOL, ATOL = 1e-5, 1e-6
VOCAB = "the quick brown fox jumps over lazy dog hello world".split()


# --------------------------------------------------------------------------- fixtures


class Proto:
    """One protocol's client module, connected client and a few helpers."""

    def __init__(self, name, module, client):
        self.name = name
        self.module = module
        self.client = client

    @property
    def is_grpc(self):
        return self.name == "grpc"

    def input(self, name, arr, datatype, binary=True):
        inp = self.module.InferInput(name, list(arr.shape), datatype)
        if self.is_grpc:
            inp.set_data_from_numpy(arr)
        else:
            inp.set_data_from_numpy(arr, binary_data=binary)
        return inp

    def output(self, name, binary=True):
        if self.is_grpc:
            return self.module.InferRequestedOutput(name)
        return self.module.InferRequestedOutput(name, binary_data=binary)

    def json(self, method, *args, **kwargs):
        """Call a metadata method; gRPC's protobuf answer is turned into a dict."""
        fn = getattr(self.client, method)
        if self.is_grpc:
            return fn(*args, as_json=True, **kwargs)
        return fn(*args, **kwargs)

    def response_id(self, result):
        resp = result.get_response()
        return resp.id if self.is_grpc else resp.get("id")


@pytest.fixture(scope="module", params=["grpc", "http"])
def proto(request, server):
    if request.param == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield Proto("grpc", grpcclient, client)
    else:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=4)
        yield Proto("http", httpclient, client)
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server):
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@functools.lru_cache(maxsize=None)
def _session(model):
    return ort.InferenceSession(str(model_path(model)), providers=["CPUExecutionProvider"])


def reference(model, feeds):
    """Run the model in onnxruntime; returns {output name: array}."""
    sess = _session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def as_str(arr):
    """Normalise a BYTES result (bytes or str elements) to a str object array."""
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(arr)


# ------------------------------------------------------------------------ model data


def mlp_data(rng, batch):
    return {"input": rng.standard_normal((batch, 16)).astype(np.float32)}


def cnn_data(rng, batch):
    return {"image": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def mixed_data(rng, batch):
    return {
        "a": rng.standard_normal((batch, 4)).astype(np.float32),
        "b": rng.integers(-1000, 1000, size=(batch, 4), dtype=np.int32),
        "mask": rng.integers(0, 2, size=(batch, 4)).astype(bool),
    }


def text_words(rng, batch, n):
    pool = VOCAB + ["zebra", "héllo", "", "THE", "wörld✓"]
    return np.array(rng.choice(pool, size=(batch, n)), dtype=object)


DTYPES = {
    "input": "FP32",
    "image": "FP32",
    "a": "FP32",
    "b": "INT32",
    "mask": "BOOL",
}


def infer_and_compare(proto, model, feeds, binary_in=True, binary_out=True, **kw):
    """Infer all outputs of `model` and compare each one with onnxruntime."""
    inputs = [proto.input(n, a, DTYPES[n], binary_in) for n, a in feeds.items()]
    expected = reference(model, feeds)
    outputs = [proto.output(n, binary_out) for n in expected]
    result = proto.client.infer(model, inputs, outputs=outputs, **kw)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None, f"output {name} missing"
        assert got.shape == want.shape, name
        if np.issubdtype(want.dtype, np.floating):
            assert got.dtype == want.dtype, name
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    return result


# -------------------------------------------------------------------- health & metadata


def test_server_live_and_ready(proto):
    assert proto.client.is_server_live() is True
    assert proto.client.is_server_ready() is True


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_ready(proto, model):
    assert proto.client.is_model_ready(model) is True
    assert proto.client.is_model_ready(model, model_version="1") is True


def test_unknown_model_not_ready_http(http_client):
    assert http_client.is_model_ready("no_such_model") is False


def test_unknown_model_not_ready_grpc(grpc_client):
    assert grpc_client.is_model_ready("no_such_model") is False


def test_server_metadata(proto):
    md = proto.json("get_server_metadata")
    assert md["name"]
    assert md["version"]
    ext = md["extensions"]
    assert isinstance(ext, list) and ext
    for required in ("model_repository", "model_configuration", "binary_tensor_data", "statistics"):
        assert required in ext


def _shape(dims):
    # gRPC's JSON form renders int64 as strings.
    return [int(d) for d in dims]


@pytest.mark.parametrize(
    "model,inputs,outputs",
    [
        ("mlp", {"input": ("FP32", [-1, 16])}, {"probabilities": ("FP32", [-1, 10])}),
        ("cnn", {"image": ("FP32", [-1, 3, 32, 32])}, {"logits": ("FP32", [-1, 10])}),
        (
            "text",
            {"words": ("BYTES", [-1, -1])},
            {"ids": ("INT64", [-1, -1]), "words_out": ("BYTES", [-1, -1])},
        ),
        (
            "mixed",
            {"a": ("FP32", [-1, 4]), "b": ("INT32", [-1, 4]), "mask": ("BOOL", [-1, 4])},
            {"sum": ("FP32", [-1, 4]), "masked": ("FP64", [-1, 4]), "count": ("INT64", [-1, 1])},
        ),
    ],
)
def test_model_metadata(proto, model, inputs, outputs):
    md = proto.json("get_model_metadata", model)
    assert md["name"] == model
    assert "1" in md["versions"]
    assert md["platform"] == "onnxruntime_onnx"
    got_in = {t["name"]: (t["datatype"], _shape(t["shape"])) for t in md["inputs"]}
    got_out = {t["name"]: (t["datatype"], _shape(t["shape"])) for t in md["outputs"]}
    assert got_in == inputs
    assert got_out == outputs


@pytest.mark.parametrize("model,mbs", [("mlp", 32), ("cnn", 16), ("text", 8), ("mixed", 16), ("identity_all", 8)])
def test_model_config(proto, model, mbs):
    cfg = proto.json("get_model_config", model)
    if proto.is_grpc:
        cfg = cfg["config"]  # ModelConfigResponse wraps the ModelConfig
    assert cfg["name"] == model
    assert int(cfg["max_batch_size"]) == mbs
    assert cfg["platform"] == "onnxruntime_onnx" or cfg.get("backend") == "onnxruntime"
    assert cfg["input"] and cfg["output"]
    if model == "mlp":
        (inp,) = cfg["input"]
        assert inp["name"] == "input"
        assert inp["data_type"] == "TYPE_FP32"
        assert _shape(inp["dims"]) == [16]
        (out,) = cfg["output"]
        assert out["name"] == "probabilities"
        assert _shape(out["dims"]) == [10]
        assert [int(x) for x in cfg["dynamic_batching"]["preferred_batch_size"]] == [8, 16]


def test_model_repository_index(proto):
    index = proto.json("get_model_repository_index")
    if proto.is_grpc:
        index = index["models"]
    by_name = {m["name"]: m for m in index}
    assert set(ALL_MODELS) <= set(by_name)
    for name in ALL_MODELS:
        assert by_name[name]["state"] == "READY"
        assert by_name[name]["version"] == "1"


def _success_count(stats, model):
    (entry,) = [s for s in stats["model_stats"] if s["name"] == model]
    # gRPC's JSON form leaves out zero fields and renders uint64 as strings.
    return int(entry.get("inference_stats", {}).get("success", {}).get("count", 0))


def test_inference_statistics(proto):
    before = _success_count(proto.json("get_inference_statistics", "cnn"), "cnn")
    rng = np.random.default_rng(7)
    for _ in range(3):
        infer_and_compare(proto, "cnn", cnn_data(rng, 1))
    after = _success_count(proto.json("get_inference_statistics", "cnn"), "cnn")
    assert after >= before + 3
    all_stats = proto.json("get_inference_statistics")
    assert {s["name"] for s in all_stats["model_stats"]} >= set(ALL_MODELS)


# ------------------------------------------------------------------------- inference


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_infer_mlp(proto, batch):
    infer_and_compare(proto, "mlp", mlp_data(np.random.default_rng(batch), batch))


@pytest.mark.parametrize("batch", [1, 4])
def test_infer_cnn(proto, batch):
    infer_and_compare(proto, "cnn", cnn_data(np.random.default_rng(100 + batch), batch))


@pytest.mark.parametrize("batch", [1, 7, 16])
def test_infer_mixed(proto, batch):
    infer_and_compare(proto, "mixed", mixed_data(np.random.default_rng(200 + batch), batch))


@pytest.mark.parametrize("batch,n", [(1, 1), (3, 5), (8, 2)])
def test_infer_text(proto, batch, n):
    words = text_words(np.random.default_rng(300 + batch), batch, n)
    want = reference("text", {"words": words})
    encoded = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(words)
    result = proto.client.infer("text", [proto.input("words", encoded, "BYTES")])
    ids = result.as_numpy("ids")
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want["ids"])
    out = result.as_numpy("words_out")
    assert out.shape == (batch, n)
    assert all(isinstance(v, bytes) for v in out.flat)
    np.testing.assert_array_equal(as_str(out), want["words_out"])
    # sanity: the vocabulary lookup really happened
    np.testing.assert_array_equal(
        ids, np.vectorize(lambda w: VOCAB.index(w) + 1 if w in VOCAB else 0)(words)
    )


def test_requested_output_subset(proto):
    feeds = mixed_data(np.random.default_rng(400), 3)
    want = reference("mixed", feeds)
    inputs = [proto.input(n, a, DTYPES[n]) for n, a in feeds.items()]
    result = proto.client.infer("mixed", inputs, outputs=[proto.output("masked")])
    names = [o.name for o in result.get_response().outputs] if proto.is_grpc else [
        o["name"] for o in result.get_response()["outputs"]
    ]
    assert names == ["masked"]
    assert result.as_numpy("sum") is None
    assert result.as_numpy("count") is None
    got = result.as_numpy("masked")
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want["masked"], rtol=RTOL, atol=ATOL)


def test_request_id_echoed(proto):
    rid = f"req-{proto.name}-42"
    result = infer_and_compare(proto, "mlp", mlp_data(np.random.default_rng(500), 2), request_id=rid)
    assert proto.response_id(result) == rid
    resp = result.get_response()
    if proto.is_grpc:
        assert resp.model_name == "mlp"
    else:
        assert resp["model_name"] == "mlp"


def test_explicit_model_version(proto):
    infer_and_compare(proto, "mlp", mlp_data(np.random.default_rng(501), 2), model_version="1")


def test_async_infer(proto):
    rng = np.random.default_rng(600)
    feeds = [mlp_data(rng, 2) for _ in range(4)]
    if proto.is_grpc:
        done = queue.Queue()
        for i, f in enumerate(feeds):
            proto.client.async_infer(
                "mlp",
                [proto.input("input", f["input"], "FP32")],
                callback=lambda result, error, i=i: done.put((i, result, error)),
                request_id=str(i),
            )
        results = {}
        for _ in feeds:
            i, result, error = done.get(timeout=30)
            assert error is None, error
            results[i] = result
    else:
        pending = [
            proto.client.async_infer("mlp", [proto.input("input", f["input"], "FP32")], request_id=str(i))
            for i, f in enumerate(feeds)
        ]
        results = dict(enumerate(p.get_result(timeout=30) for p in pending))
    for i, f in enumerate(feeds):
        assert proto.response_id(results[i]) == str(i)
        np.testing.assert_allclose(
            results[i].as_numpy("probabilities"),
            reference("mlp", f)["probabilities"],
            rtol=RTOL,
            atol=ATOL,
        )


# ------------------------------------------------------------ HTTP binary / JSON matrix


@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
@pytest.mark.parametrize("model", ["mlp", "mixed"])
def test_http_binary_data_matrix(http_client, model, binary_in, binary_out):
    proto = Proto("http", httpclient, http_client)
    rng = np.random.default_rng(700)
    feeds = mlp_data(rng, 3) if model == "mlp" else mixed_data(rng, 3)
    result = infer_and_compare(proto, model, feeds, binary_in=binary_in, binary_out=binary_out)
    for out in result.get_response()["outputs"]:
        has_binary = "binary_data_size" in (out.get("parameters") or {})
        assert has_binary == binary_out, out["name"]
        assert ("data" in out) == (not binary_out), out["name"]


@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
def test_http_binary_data_matrix_text(http_client, binary_in, binary_out):
    words = text_words(np.random.default_rng(800), 2, 3)
    want = reference("text", {"words": words})
    encoded = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(words)
    inp = httpclient.InferInput("words", list(words.shape), "BYTES")
    inp.set_data_from_numpy(encoded, binary_data=binary_in)
    outputs = [
        httpclient.InferRequestedOutput("ids", binary_data=binary_out),
        httpclient.InferRequestedOutput("words_out", binary_data=binary_out),
    ]
    result = http_client.infer("text", [inp], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("ids"), want["ids"])
    np.testing.assert_array_equal(as_str(result.as_numpy("words_out")), want["words_out"])


def test_http_no_outputs_listed_all_binary(http_client):
    """outputs=None: tritonclient sets binary_data_output, every output comes back binary."""
    feeds = mixed_data(np.random.default_rng(900), 2)
    inputs = []
    for n, a in feeds.items():
        inp = httpclient.InferInput(n, list(a.shape), DTYPES[n])
        inp.set_data_from_numpy(a)
        inputs.append(inp)
    result = http_client.infer("mixed", inputs)
    want = reference("mixed", feeds)
    outs = result.get_response()["outputs"]
    assert {o["name"] for o in outs} == set(want)
    for o in outs:
        assert "binary_data_size" in o["parameters"], o["name"]
        np.testing.assert_allclose(result.as_numpy(o["name"]), want[o["name"]], rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------- every data type


def utf8(words):
    return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(np.asarray(words, dtype=object))


def identity_data(rng, shape):
    """One array per identity_all input, keyed by type suffix: (datatype, array)."""

    def ints(dt):
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        a.flat[0], a.flat[-1] = info.min, info.max  # the extremes must survive too
        return a

    # tritonclient 2.50 handles BF16 as float32 arrays on the Python side (it sends
    # the high 16 bits and widens them back on receipt), so use float32 values
    # that bfloat16 holds exactly, i.e. with the low 16 bits cleared.
    bf16 = (rng.standard_normal(shape) * 100).astype(np.float32)
    bf16.flat[0] = np.float32(1.5e38)
    bf16.flat[-1] = np.float32(-3.0e-30)
    bf16 = (bf16.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)

    words = rng.choice(["", "a", "héllo wörld ✓", "tab\there", "x" * 300, "😀"], size=shape)
    return {
        "bool": ("BOOL", rng.integers(0, 2, size=shape).astype(bool)),
        "uint8": ("UINT8", ints(np.uint8)),
        "uint16": ("UINT16", ints(np.uint16)),
        "uint32": ("UINT32", ints(np.uint32)),
        "uint64": ("UINT64", ints(np.uint64)),
        "int8": ("INT8", ints(np.int8)),
        "int16": ("INT16", ints(np.int16)),
        "int32": ("INT32", ints(np.int32)),
        "int64": ("INT64", ints(np.int64)),
        "fp16": ("FP16", rng.standard_normal(shape).astype(np.float16)),
        "fp32": ("FP32", rng.standard_normal(shape).astype(np.float32)),
        "fp64": ("FP64", rng.standard_normal(shape)),
        "bytes": ("BYTES", utf8(words)),
        "bf16": ("BF16", bf16),
    }


def identity_infer(proto, data, binary=True):
    """Send every identity_all input; BF16 always binary (tritonclient requires it)."""
    inputs = [proto.input(f"in_{t}", arr, dt, binary or dt == "BF16") for t, (dt, arr) in data.items()]
    outputs = [proto.output(f"out_{t}", binary or dt == "BF16") for t, (dt, _) in data.items()]
    return proto.client.infer("identity_all", inputs, outputs=outputs)


def check_identity(result, data):
    for t, (dt, arr) in data.items():
        got = result.as_numpy(f"out_{t}")
        assert got is not None, t
        assert got.shape == arr.shape, t
        if dt == "BYTES":
            # binary BYTES come back as bytes; JSON ones as str (tritonclient's doing)
            assert [v if isinstance(v, bytes) else v.encode() for v in got.flat] == list(arr.flat), t
        else:
            assert got.dtype == arr.dtype, (t, got.dtype)
            np.testing.assert_array_equal(got, arr, err_msg=t)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 2)])
def test_identity_all_types(proto, shape):
    data = identity_data(np.random.default_rng(sum(shape)), shape)
    check_identity(identity_infer(proto, data), data)


def test_identity_all_types_http_json(http_client):
    """Inputs and outputs as JSON (BF16 excepted, see identity_infer)."""
    proto = Proto("http", httpclient, http_client)
    data = identity_data(np.random.default_rng(1000), (2, 7))
    # Dyadic doubles are parsed exactly by any JSON reader; arbitrary ones are
    # covered by test_http_json_fp64_input_exact.
    data["fp64"] = ("FP64", np.random.default_rng(1).integers(-(2**20), 2**20, size=(2, 7)) / 1024.0)
    result = identity_infer(proto, data, binary=False)
    for out in result.get_response()["outputs"]:
        assert ("data" in out) == (out["datatype"] != "BF16"), out["name"]
    check_identity(result, data)


@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
def test_http_json_fp64_output_exact(http_client, binary_out):
    """FP64 sent binary comes back bit-exact whether the output is binary or JSON."""
    proto = Proto("http", httpclient, http_client)
    data = identity_data(np.random.default_rng(1001), (1, 200))
    inputs = [proto.input(f"in_{t}", arr, dt, True) for t, (dt, arr) in data.items()]
    result = http_client.infer(
        "identity_all", inputs, outputs=[httpclient.InferRequestedOutput("out_fp64", binary_data=binary_out)]
    )
    np.testing.assert_array_equal(result.as_numpy("out_fp64"), data["fp64"][1])


def test_http_json_fp64_input_exact(http_client):
    proto = Proto("http", httpclient, http_client)
    data = identity_data(np.random.default_rng(1002), (1, 200))
    inputs = [proto.input(f"in_{t}", arr, dt, t != "fp64") for t, (dt, arr) in data.items()]
    result = http_client.infer("identity_all", inputs, outputs=[httpclient.InferRequestedOutput("out_fp64")])
    got, want = result.as_numpy("out_fp64"), data["fp64"][1]
    assert int((got != want).sum()) == 0, f"{int((got != want).sum())} of {want.size} doubles changed"


def test_identity_bytes_non_utf8(proto):
    data = identity_data(np.random.default_rng(1003), (2, 2))
    data["bytes"][1].flat[:] = [bytes(range(1, 256)), b"\xff\xfe", b"\xc3", b"ok"]
    check_identity(identity_infer(proto, data), data)


def test_identity_bytes_with_nul_round_trip(proto):
    """BYTES are byte strings: a NUL inside an element survives the round trip."""
    data = identity_data(np.random.default_rng(1004), (1, 2))
    data["bytes"][1].flat[0] = b"nul\x00inside"
    check_identity(identity_infer(proto, data), data)


# ---------------------------------------------------------------------------- errors


def test_wrong_shape_names_input(proto):
    bad = np.zeros((2, 15), dtype=np.float32)
    with pytest.raises(InferenceServerException) as exc:
        proto.client.infer("mlp", [proto.input("input", bad, "FP32")])
    assert "input" in str(exc.value)
    # The server is still fine afterwards.
    infer_and_compare(proto, "mlp", mlp_data(np.random.default_rng(1), 1))


def test_wrong_shape_names_input_mixed(proto):
    feeds = mixed_data(np.random.default_rng(2), 2)
    feeds["b"] = np.zeros((2, 5), dtype=np.int32)
    inputs = [proto.input(n, a, DTYPES[n]) for n, a in feeds.items()]
    with pytest.raises(InferenceServerException) as exc:
        proto.client.infer("mixed", inputs)
    assert "'b'" in str(exc.value) or '"b"' in str(exc.value) or " b " in str(exc.value), str(exc.value)


def test_batch_too_large(proto):
    with pytest.raises(InferenceServerException):
        proto.client.infer("mlp", [proto.input("input", np.zeros((33, 16), np.float32), "FP32")])


def test_wrong_datatype(proto):
    with pytest.raises(InferenceServerException) as exc:
        proto.client.infer("mlp", [proto.input("input", np.zeros((1, 16), np.float64), "FP64")])
    assert "input" in str(exc.value)


def test_missing_input(proto):
    feeds = mixed_data(np.random.default_rng(3), 1)
    del feeds["mask"]
    with pytest.raises(InferenceServerException) as exc:
        proto.client.infer("mixed", [proto.input(n, a, DTYPES[n]) for n, a in feeds.items()])
    assert "mask" in str(exc.value)


def test_unknown_model(proto):
    with pytest.raises(InferenceServerException) as exc:
        proto.client.infer("no_such_model", [proto.input("input", np.zeros((1, 16), np.float32), "FP32")])
    assert "no_such_model" in str(exc.value)
    with pytest.raises(InferenceServerException):
        proto.json("get_model_metadata", "no_such_model")
    with pytest.raises(InferenceServerException):
        proto.json("get_model_config", "no_such_model")


def test_unknown_version(proto):
    with pytest.raises(InferenceServerException):
        proto.client.infer(
            "mlp", [proto.input("input", np.zeros((1, 16), np.float32), "FP32")], model_version="7"
        )


def test_load_unload_refused_in_none_mode(proto):
    with pytest.raises(InferenceServerException):
        proto.client.unload_model("mlp")
    with pytest.raises(InferenceServerException):
        proto.client.load_model("mlp")
    assert proto.client.is_model_ready("mlp") is True


# ---------------------------------------------------------------------------- latency


def _fastest_latency_ms(proto, batch, n=15):
    """The fastest of n calls: a Nagle / delayed-ACK stall (about 40 ms on
    Linux) would hit every one, while a busy machine slows only some."""
    x = np.zeros((batch, 16), np.float32)
    inputs = [proto.input("input", x, "FP32")]
    proto.client.infer("mlp", inputs)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        proto.client.infer("mlp", inputs)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def test_http_larger_response_has_no_nagle_stall(http_client):
    """mlp batch 16 (640-byte output) answers in well under 20 ms over HTTP."""
    assert _fastest_latency_ms(Proto("http", httpclient, http_client), 16) < 20


def test_grpc_small_response_has_no_nagle_stall(grpc_client):
    assert _fastest_latency_ms(Proto("grpc", grpcclient, grpc_client), 1) < 20


def test_grpc_larger_response_has_no_nagle_stall(grpc_client):
    """mlp batch 16 (640-byte output) over gRPC should be as fast as over HTTP."""
    assert _fastest_latency_ms(Proto("grpc", grpcclient, grpc_client), 16) < 20


# ----------------------------------------------------------------------- compression


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_response_compression(http_client, algorithm):
    proto = Proto("http", httpclient, http_client)
    infer_and_compare(
        proto, "mlp", mlp_data(np.random.default_rng(1300), 3), response_compression_algorithm=algorithm
    )


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_request_compression(http_client, algorithm):
    proto = Proto("http", httpclient, http_client)
    infer_and_compare(
        proto, "mlp", mlp_data(np.random.default_rng(1301), 3), request_compression_algorithm=algorithm
    )


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression(grpc_client, algorithm):
    proto = Proto("grpc", grpcclient, grpc_client)
    infer_and_compare(
        proto, "mlp", mlp_data(np.random.default_rng(1302), 3), compression_algorithm=algorithm
    )


# ------------------------------------------------------------------- gRPC streaming


def test_grpc_stream_infer(grpc_client):
    results = queue.Queue()
    rng = np.random.default_rng(1100)
    feeds = {f"s{i}": mlp_data(rng, 1 + i % 3) for i in range(8)}
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for rid, f in feeds.items():
            inp = grpcclient.InferInput("input", list(f["input"].shape), "FP32")
            inp.set_data_from_numpy(f["input"])
            grpc_client.async_stream_infer("mlp", [inp], request_id=rid)
        seen = {}
        for _ in feeds:
            result, error = results.get(timeout=30)
            assert error is None, error
            rid = result.get_response().id
            assert rid in feeds and rid not in seen
            seen[rid] = result
    finally:
        grpc_client.stop_stream()
    assert set(seen) == set(feeds)
    for rid, f in feeds.items():
        np.testing.assert_allclose(
            seen[rid].as_numpy("probabilities"),
            reference("mlp", f)["probabilities"],
            rtol=RTOL,
            atol=ATOL,
        )


def test_grpc_stream_mixed_models_and_error(grpc_client):
    """One stream, several models; a bad request yields an error and the stream lives on."""
    results = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        rng = np.random.default_rng(1200)
        feeds = mixed_data(rng, 2)
        inputs = []
        for n, a in feeds.items():
            inp = grpcclient.InferInput(n, list(a.shape), DTYPES[n])
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        grpc_client.async_stream_infer("mixed", inputs, request_id="ok-mixed")

        bad = grpcclient.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        grpc_client.async_stream_infer("mlp", [bad], request_id="bad-mlp")

        words = np.array([[b"hello", b"zebra"]], dtype=object)
        winp = grpcclient.InferInput("words", [1, 2], "BYTES")
        winp.set_data_from_numpy(words)
        grpc_client.async_stream_infer("text", [winp], request_id="ok-text")

        got, errors = {}, []
        for _ in range(3):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result
    finally:
        grpc_client.stop_stream()
    assert set(got) == {"ok-mixed", "ok-text"}
    assert len(errors) == 1 and "input" in str(errors[0])
    want = reference("mixed", feeds)
    np.testing.assert_allclose(got["ok-mixed"].as_numpy("sum"), want["sum"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(got["ok-mixed"].as_numpy("count"), want["count"])
    np.testing.assert_array_equal(got["ok-text"].as_numpy("ids"), [[9, 0]])
