#!/usr/bin/env python3
"""Deterministically generate ferroserve's ONNX models in Triton repository layout.

Usage (from the repository root):

    .deps/venv/bin/python models/generate.py            # shipped + test models
    .deps/venv/bin/python models/generate.py --shipped  # only models/
    .deps/venv/bin/python models/generate.py --tests    # only tests/models/
    .deps/venv/bin/python models/generate.py --out DIR --tests-out DIR2

Every model is checked with onnx.checker and executed in onnxruntime
(CPUExecutionProvider) against a numpy reference; any failure aborts the run.
Output is byte-identical across runs: fixed seeds, no timestamps.
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
PRODUCER = "ferroserve-models"
PRODUCER_VERSION = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = HERE
DEFAULT_TESTS_OUT = os.path.join(ROOT, "tests", "models")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def make_model(graph, ml=False):
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def init(name, array):
    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_model(repo, name, model, version=1):
    data = model.SerializeToString(deterministic=True)
    write_bytes(os.path.join(repo, name, str(version), "model.onnx"), data)
    return data


def write_config(repo, name, text):
    write_bytes(os.path.join(repo, name, "config.pbtxt"),
                text.strip("\n").encode("utf-8") + b"\n")


def session(model, log_severity_level=3):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = log_severity_level
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def check(cond, msg):
    if not cond:
        raise SystemExit(f"verification failed: {msg}")


def check_equal(name, got, want):
    check(got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}")
    check(got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}")
    check(np.array_equal(got, want), f"{name}: values differ")


def check_close(name, got, want, tol=1e-5):
    check(got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}")
    check(got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}")
    check(np.allclose(got, want, rtol=tol, atol=tol), f"{name}: values differ")


# --------------------------------------------------------------------------
# shipped models
# --------------------------------------------------------------------------

def build_mlp():
    rng = np.random.default_rng(1001)
    w1 = (rng.standard_normal((16, 32)) * 0.25).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((32, 10)) * 0.25).astype(np.float32)
    b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1"),
        helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["fc2"], name="fc2"),
        helper.make_node("Softmax", ["fc2"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [tensor("input", TensorProto.FLOAT, ["batch", 16])],
        [tensor("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [init("fc1.weight", w1), init("fc1.bias", b1),
         init("fc2.weight", w2), init("fc2.bias", b2)],
    )
    model = make_model(graph)

    x = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    (out,) = session(model).run(None, {"input": x})
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    check_close("mlp", out, (e / e.sum(axis=1, keepdims=True)).astype(np.float32))
    return model


MLP_CONFIG = """
# Two-layer perceptron classifier: 16 features -> 10 class probabilities.
name: "mlp"
# Executed by the ONNX Runtime backend.
platform: "onnxruntime_onnx"
# Serve only the newest numbered version directory.
version_policy { latest { num_versions: 1 } }
# Requests may batch up to 32 rows; dims below exclude the batch dimension.
max_batch_size: 32
input [
  {
    # One row of 16 float features.
    name: "input"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
output [
  {
    # Softmax probabilities over 10 classes.
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
# Merge concurrent requests into batches of 8 or 16, waiting at most 100us.
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 100
}
# A single model instance running on the CPU.
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
# Backend option: ONNX Runtime intra-op thread pool size.
parameters {
  key: "intra_op_thread_count"
  value { string_value: "1" }
}
# Run one all-zero batch-1 request at load time to warm the session up.
model_warmup [
  {
    name: "zero_batch_1"
    batch_size: 1
    inputs {
      key: "input"
      value {
        data_type: TYPE_FP32
        dims: [ 16 ]
        zero_data: true
      }
    }
    count: 1
  }
]
"""


def build_cnn():
    rng = np.random.default_rng(2002)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) * 0.12).astype(np.float32)
    b2 = (rng.standard_normal(16) * 0.05).astype(np.float32)
    w3 = (rng.standard_normal((16, 10)) * 0.25).astype(np.float32)
    b3 = (rng.standard_normal(10) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1"],
                         name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"],
                         name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [tensor("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [tensor("logits", TensorProto.FLOAT, ["batch", 10])],
        [init("conv1.weight", w1), init("conv1.bias", b1),
         init("conv2.weight", w2), init("conv2.bias", b2),
         init("fc.weight", w3), init("fc.bias", b3)],
    )
    model = make_model(graph)

    x = np.random.default_rng(8).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (out,) = session(model).run(None, {"image": x})
    check_close("cnn", out, cnn_reference(x, w1, b1, w2, b2, w3, b3), tol=1e-4)
    return model


def conv3x3_pad1(x, w, b):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + h, j:j + wd]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def cnn_reference(x, w1, b1, w2, b2, w3, b3):
    y = np.maximum(conv3x3_pad1(x, w1, b1), 0)
    n, c, h, w = y.shape
    y = y.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    y = np.maximum(conv3x3_pad1(y, w2, b2), 0)
    y = y.mean(axis=(2, 3))
    return (y @ w3 + b3).astype(np.float32)


CNN_CONFIG = """
# Small image classifier: 3x32x32 NCHW image -> 10 logits.
name: "cnn"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "image"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 32, 32 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
# Dynamic batching with default settings.
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


VOCAB = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
         "hello", "world"]


def build_text():
    nodes = [
        helper.make_node("LabelEncoder", ["words"], ["ids"], name="vocab",
                         domain="ai.onnx.ml",
                         keys_strings=VOCAB,
                         values_int64s=list(range(1, len(VOCAB) + 1)),
                         default_int64=0),
        helper.make_node("Identity", ["words"], ["words_out"], name="echo"),
    ]
    graph = helper.make_graph(
        nodes, "text",
        [tensor("words", TensorProto.STRING, ["batch", "n"])],
        [tensor("ids", TensorProto.INT64, ["batch", "n"]),
         tensor("words_out", TensorProto.STRING, ["batch", "n"])],
    )
    model = make_model(graph, ml=True)

    words = np.array([["the", "quick", "unknown"], ["dog", "", "world"]], dtype=object)
    ids, echo = session(model).run(None, {"words": words})
    check_equal("text.ids", ids, np.array([[1, 2, 0], [8, 0, 10]], dtype=np.int64))
    check(echo.shape == words.shape and echo.tolist() == words.tolist(),
          "text.words_out differs")
    return model


TEXT_CONFIG = """
# Maps each word to its vocabulary id (unknown words -> 0) and echoes the words.
name: "text"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "words"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
output [
  {
    name: "ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  },
  {
    name: "words_out"
    data_type: TYPE_STRING
    dims: [ -1 ]
  }
]
"""


def build_mixed():
    nodes = [
        helper.make_node("Cast", ["b"], ["b_float"], name="cast_b", to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "b_float"], ["sum"], name="add"),
        helper.make_node("Where", ["mask", "a", "zero"], ["a_masked"], name="where"),
        helper.make_node("Cast", ["a_masked"], ["masked"], name="cast_masked",
                         to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["mask"], ["mask_int"], name="cast_mask",
                         to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask_int", "axes"], ["count"], name="count",
                         keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [tensor("a", TensorProto.FLOAT, ["batch", 4]),
         tensor("b", TensorProto.INT32, ["batch", 4]),
         tensor("mask", TensorProto.BOOL, ["batch", 4])],
        [tensor("sum", TensorProto.FLOAT, ["batch", 4]),
         tensor("masked", TensorProto.DOUBLE, ["batch", 4]),
         tensor("count", TensorProto.INT64, ["batch", 1])],
        [init("zero", np.array(0.0, dtype=np.float32)),
         init("axes", np.array([1], dtype=np.int64))],
    )
    model = make_model(graph)

    rng = np.random.default_rng(9)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.integers(-100, 100, (3, 4)).astype(np.int32)
    mask = rng.integers(0, 2, (3, 4)).astype(bool)
    s, m, c = session(model).run(None, {"a": a, "b": b, "mask": mask})
    check_equal("mixed.sum", s, a + b.astype(np.float32))
    check_equal("mixed.masked", m, np.where(mask, a, np.float32(0)).astype(np.float64))
    check_equal("mixed.count", c, mask.astype(np.int64).sum(axis=1, keepdims=True))
    return model


MIXED_CONFIG = """
# Several inputs and outputs of different data types.
name: "mixed"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "a"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "b"
    data_type: TYPE_INT32
    dims: [ 4 ]
  },
  {
    name: "mask"
    data_type: TYPE_BOOL
    dims: [ 4 ]
  }
]
output [
  {
    # a + float(b)
    name: "sum"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    # double(mask ? a : 0)
    name: "masked"
    data_type: TYPE_FP64
    dims: [ 4 ]
  },
  {
    # number of true mask entries per row
    name: "count"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
# Two CPU instances so two batches can execute concurrently.
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
"""


# --------------------------------------------------------------------------
# test models
# --------------------------------------------------------------------------

# (name suffix, ONNX elem type, Triton type, numpy dtype used for the check)
IDENTITY_TYPES = [
    ("bool", TensorProto.BOOL, "TYPE_BOOL", np.bool_),
    ("uint8", TensorProto.UINT8, "TYPE_UINT8", np.uint8),
    ("uint16", TensorProto.UINT16, "TYPE_UINT16", np.uint16),
    ("uint32", TensorProto.UINT32, "TYPE_UINT32", np.uint32),
    ("uint64", TensorProto.UINT64, "TYPE_UINT64", np.uint64),
    ("int8", TensorProto.INT8, "TYPE_INT8", np.int8),
    ("int16", TensorProto.INT16, "TYPE_INT16", np.int16),
    ("int32", TensorProto.INT32, "TYPE_INT32", np.int32),
    ("int64", TensorProto.INT64, "TYPE_INT64", np.int64),
    ("fp16", TensorProto.FLOAT16, "TYPE_FP16", np.float16),
    ("fp32", TensorProto.FLOAT, "TYPE_FP32", np.float32),
    ("fp64", TensorProto.DOUBLE, "TYPE_FP64", np.float64),
    ("bytes", TensorProto.STRING, "TYPE_STRING", object),
    ("bf16", TensorProto.BFLOAT16, "TYPE_BF16", np.uint16),  # raw bf16 bits
]


def sample_for(t, dtype, shape):
    rng = np.random.default_rng(11)
    count = int(np.prod(shape))
    if dtype is object:
        return np.array([f"s{i}" * (i % 3) for i in range(count)],
                        dtype=object).reshape(shape)
    if dtype is np.bool_:
        return (rng.integers(0, 2, shape) == 1)
    if t == "bf16":
        # bf16 bit patterns of small floats: upper 16 bits of float32.
        f = rng.standard_normal(shape).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def build_identity_all():
    nodes = []
    inputs = []
    outputs = []
    for t, elem, _, _ in IDENTITY_TYPES:
        nodes.append(helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"],
                                      name=f"identity_{t}"))
        inputs.append(tensor(f"in_{t}", elem, ["batch", "n"]))
        outputs.append(tensor(f"out_{t}", elem, ["batch", "n"]))
    graph = helper.make_graph(nodes, "identity_all", inputs, outputs)
    model = make_model(graph)

    import onnxruntime as ort

    # numpy has no bfloat16 and onnxruntime cannot wrap strings in OrtValues,
    # so verify in two steps: (1) run the real model with a bf16 OrtValue feed
    # and check every non-bf16 output; (2) check the bf16 output via IOBinding
    # on a copy of the model without the string input/output.
    shape = (2, 3)
    expected = {t: sample_for(t, dtype, shape) for t, _, _, dtype in IDENTITY_TYPES}

    def bf16_feed():
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            expected["bf16"], TensorProto.BFLOAT16)

    feeds = {f"in_{t}": expected[t] for t, _, _, _ in IDENTITY_TYPES if t != "bf16"}
    feeds["in_bf16"] = bf16_feed()
    others = [t for t, _, _, _ in IDENTITY_TYPES if t != "bf16"]
    results = session(model).run([f"out_{t}" for t in others], feeds)
    for t, got in zip(others, results):
        if t == "bytes":
            check(got.shape == shape and got.tolist() == expected[t].tolist(),
                  "identity_all.out_bytes differs")
        else:
            check_equal(f"identity_all.out_{t}", got, expected[t])

    no_strings = onnx.ModelProto()
    no_strings.CopyFrom(model)
    g = no_strings.graph
    for field in (g.node, g.input, g.output):
        keep = [x for x in field if "bytes" not in x.name]
        del field[:]
        field.extend(keep)
    sess = session(no_strings)
    binding = sess.io_binding()
    for t in others:
        if t != "bytes":
            binding.bind_cpu_input(f"in_{t}", expected[t])
    binding.bind_ortvalue_input("in_bf16", bf16_feed())
    binding.bind_output("out_bf16", "cpu")
    sess.run_with_iobinding(binding)
    (val,) = binding.get_outputs()
    check(val.data_type() == "tensor(bfloat16)",
          f"identity_all.out_bf16: type {val.data_type()}")
    check_equal("identity_all.out_bf16", bf16_bits(val), expected["bf16"])
    return model


def bf16_bits(ort_value):
    """Raw uint16 bit patterns of a CPU bfloat16 OrtValue (numpy has no bf16)."""
    import ctypes

    out = np.empty(ort_value.shape(), dtype=np.uint16)
    check(ort_value.tensor_size_in_bytes() == out.nbytes, "bf16 size mismatch")
    ctypes.memmove(out.ctypes.data, ort_value.data_ptr(), out.nbytes)
    return out


def identity_all_config():
    lines = [
        "# One Identity per supported tensor data type: out_<t> = in_<t>.",
        'name: "identity_all"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 8",
    ]
    for section, prefix in (("input", "in"), ("output", "out")):
        entries = []
        for t, _, triton, _ in IDENTITY_TYPES:
            entries.append(
                "  {\n"
                f'    name: "{prefix}_{t}"\n'
                f"    data_type: {triton}\n"
                "    dims: [ -1 ]\n"
                "  }")
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    return "\n".join(lines)


def build_nobatch():
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"], name="double")]
    graph = helper.make_graph(
        nodes, "nobatch",
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 3])],
        [init("two", np.array(2.0, dtype=np.float32))],
    )
    model = make_model(graph)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = session(model).run(None, {"x": x})
    check_equal("nobatch", y, x * 2)
    return model


NOBATCH_CONFIG = """
# Fixed-shape model without batching: y = 2 * x.
name: "nobatch"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 2, 3 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 2, 3 ]
  }
]
"""


def build_multiversion(version):
    nodes = [helper.make_node("Add", ["x", "offset"], ["y"], name="add_version")]
    graph = helper.make_graph(
        nodes, "multiversion",
        [tensor("x", TensorProto.FLOAT, ["batch", 1])],
        [tensor("y", TensorProto.FLOAT, ["batch", 1])],
        [init("offset", np.array(float(version), dtype=np.float32))],
    )
    model = make_model(graph)
    x = np.array([[0.5], [-1.0]], dtype=np.float32)
    (y,) = session(model).run(None, {"x": x})
    check_equal(f"multiversion v{version}", y, x + np.float32(version))
    return model


MULTIVERSION_CONFIG = """
# Three versions; version v computes y = x + v. All versions are served.
name: "multiversion"
platform: "onnxruntime_onnx"
version_policy { all { } }
max_batch_size: 4
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }
]
"""


def build_reshaped():
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="identity")]
    graph = helper.make_graph(
        nodes, "reshaped",
        [tensor("x", TensorProto.FLOAT, ["batch", 2, 2])],
        [tensor("y", TensorProto.FLOAT, ["batch", 2, 2])],
    )
    model = make_model(graph)
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    (y,) = session(model).run(None, {"x": x})
    check_equal("reshaped", y, x)
    return model


RESHAPED_CONFIG = """
# Clients see flat [4] tensors; the graph works on [2, 2].
name: "reshaped"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
    reshape { shape: [ 2, 2 ] }
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 4 ]
    reshape { shape: [ 2, 2 ] }
  }
]
"""


def build_steady():
    # The failing model's inputs and outputs, but fail is ignored: y = 2 * x
    # always. Version 1 of "canary", whose version 2 is the failing graph.
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"], name="double"),
        helper.make_node("Identity", ["fail"], ["fail_unused"], name="fail_unused"),
    ]
    graph = helper.make_graph(
        nodes, "steady",
        [tensor("x", TensorProto.FLOAT, ["batch", 4]),
         tensor("fail", TensorProto.INT64, ["batch", 1])],
        [tensor("y", TensorProto.FLOAT, ["batch", 4])],
        [init("two", np.array([2.0], dtype=np.float32))],
    )
    model = make_model(graph)
    x = np.random.default_rng(13).standard_normal((3, 4)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x, "fail": np.ones((3, 1), dtype=np.int64)})
    check_equal("steady (fail=1 ignored)", y, x * np.float32(2))
    return model


def build_failing():
    # y = 2 * Reshape(x, [batch, 4 + any(fail != 0)]). A non-zero fail asks
    # Reshape for [batch, 5], which ORT rejects while running the graph (the
    # target shape depends on input data, so loading always succeeds). The
    # extra [0] before ReduceMax keeps an empty batch well defined.
    nodes = [
        helper.make_node("Shape", ["x"], ["batch"], name="batch", start=0, end=1),
        helper.make_node("Equal", ["fail", "zero_i64"], ["fail_is_zero"], name="fail_is_zero"),
        helper.make_node("Not", ["fail_is_zero"], ["fail_set"], name="fail_set"),
        helper.make_node("Cast", ["fail_set"], ["fail_set_i64"], name="fail_set_i64",
                         to=TensorProto.INT64),
        helper.make_node("Reshape", ["fail_set_i64", "flat"], ["fail_set_flat"],
                         name="fail_set_flat"),
        helper.make_node("Concat", ["fail_set_flat", "zero_i64"], ["fail_set_or_zero"],
                         name="fail_set_or_zero", axis=0),
        helper.make_node("ReduceMax", ["fail_set_or_zero"], ["any_fail"], name="any_fail",
                         keepdims=1),
        helper.make_node("Add", ["four", "any_fail"], ["width"], name="width"),
        helper.make_node("Concat", ["batch", "width"], ["target_shape"], name="target_shape",
                         axis=0),
        helper.make_node("Reshape", ["x", "target_shape"], ["x_checked"], name="reshape"),
        helper.make_node("Mul", ["x_checked", "two"], ["y"], name="double"),
    ]
    graph = helper.make_graph(
        nodes, "failing",
        [tensor("x", TensorProto.FLOAT, ["batch", 4]),
         tensor("fail", TensorProto.INT64, ["batch", 1])],
        [tensor("y", TensorProto.FLOAT, ["batch", 4])],
        [init("zero_i64", np.array([0], dtype=np.int64)),
         init("flat", np.array([-1], dtype=np.int64)),
         init("four", np.array([4], dtype=np.int64)),
         init("two", np.array([2.0], dtype=np.float32))],
    )
    model = make_model(graph)

    # Errors are expected below; keep ORT from logging them.
    sess = session(model, log_severity_level=4)
    x = np.random.default_rng(12).standard_normal((3, 4)).astype(np.float32)
    (y,) = sess.run(None, {"x": x, "fail": np.zeros((3, 1), dtype=np.int64)})
    check_equal("failing (fail=0)", y, x * np.float32(2))
    (y,) = sess.run(None, {"x": x[:0], "fail": np.zeros((0, 1), dtype=np.int64)})
    check_equal("failing (empty batch)", y, x[:0] * np.float32(2))
    for fail in ([[0], [1], [0]], [[-1], [0], [0]], [[np.iinfo(np.int64).min]] * 3):
        try:
            sess.run(None, {"x": x, "fail": np.array(fail, dtype=np.int64)})
        except Exception as e:  # onnxruntime's Fail/InvalidArgument
            check("requested shape" in str(e),
                  f"failing (fail={fail}): unexpected error {e}")
        else:
            check(False, f"failing (fail={fail}): run did not fail")
    return model


CANARY_CONFIG = """
# Version 1: y = 2 * x whatever fail says. Version 2: the failing model, whose
# run fails when any fail value is non-zero. Both versions are served;
# stable 1, canary 2 at weight 10 (tests and scenarios edit these).
name: "canary"
platform: "onnxruntime_onnx"
# Inputs and outputs come from the graph (the failing model's).
max_batch_size: 8
version_policy { all { } }
parameters [
  { key: "stable_version" value { string_value: "1" } },
  { key: "canary_version" value { string_value: "2" } },
  { key: "canary_weight" value { string_value: "10" } }
]
"""


def build_shadowed(scale):
    # logits = x + scale * [0, 0, relu(x0 - 1)]: version 1 (scale 0) returns
    # x unchanged; version 2 (scale 1) moves the last logit of exactly the
    # rows whose first value is above 1, flipping their top-1 where that
    # lifts it above the largest.
    pick = np.zeros((3, 3), dtype=np.float32)
    pick[0, 2] = 1.0
    nodes = [
        helper.make_node("MatMul", ["x", "pick"], ["picked"], name="first_to_last"),
        helper.make_node("Add", ["picked", "minus_one"], ["shifted"], name="minus_one"),
        helper.make_node("Relu", ["shifted"], ["excess"], name="excess"),
        helper.make_node("Mul", ["excess", "scale"], ["bump"], name="scaled"),
        helper.make_node("Add", ["x", "bump"], ["logits"], name="bumped"),
    ]
    graph = helper.make_graph(
        nodes, "shadowed",
        [tensor("x", TensorProto.FLOAT, ["batch", 3])],
        [tensor("logits", TensorProto.FLOAT, ["batch", 3])],
        [
            init("pick", pick),
            init("minus_one", np.full(3, -1.0, dtype=np.float32)),
            init("scale", np.array([0.0, 0.0, scale], dtype=np.float32)),
        ],
    )
    model = make_model(graph)
    x = np.array([[0.5, 0.2, 0.1], [2.0, 0.5, 0.3], [1.5, 0.2, 1.2]], dtype=np.float32)
    (y,) = session(model).run(None, {"x": x})
    want = x.copy()
    want[:, 2] += np.float32(scale) * np.maximum(x[:, 0] - 1, 0)
    check_close(f"shadowed scale {scale}", y, want, tol=1e-6)
    return model


SHADOWED_CONFIG = """
# Version 1 serves: logits = x. Version 2 is its shadow, whose last logit
# differs on rows whose first value is above 1 (tests edit these).
name: "shadowed"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy { all { } }
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
parameters [
  { key: "shadow_version" value { string_value: "2" } },
  { key: "shadow_percent" value { string_value: "100" } }
]
"""


FAILING_CONFIG = """
# y = 2 * x, but the run fails inside ONNX Runtime when any fail value is non-zero.
name: "failing"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    # 0: compute y; non-zero (anywhere in the batch): Reshape error at run time.
    name: "fail"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
"""


def spin_body():
    # The body of the slow models' Loop: adds 1 to a float, on the order of
    # a microsecond of ORT Loop overhead per iteration.
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Add", ["count_in", "one"], ["count_out"], name="count")],
        "spin_body",
        [tensor("iteration", TensorProto.INT64, []),
         tensor("cond_in", TensorProto.BOOL, []),
         tensor("count_in", TensorProto.FLOAT, [1])],
        [tensor("cond_out", TensorProto.BOOL, []),
         tensor("count_out", TensorProto.FLOAT, [1])],
    )


def build_slow():
    # y = x + 1 + 0 * (Loop of spin iterations adding 1 to a float). Each
    # iteration costs on the order of a microsecond of ORT Loop overhead.
    body = spin_body()
    nodes = [
        helper.make_node("Squeeze", ["spin", "axis0"], ["trip_count"], name="trip_count"),
        helper.make_node("Loop", ["trip_count", "", "count0"], ["count"], name="spin",
                         body=body),
        helper.make_node("Mul", ["count", "zero"], ["nothing"], name="discard"),
        helper.make_node("Add", ["x", "one"], ["x_plus_one"], name="plus_one"),
        helper.make_node("Add", ["x_plus_one", "nothing"], ["y"], name="keep_loop"),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [tensor("x", TensorProto.FLOAT, [1, 1]),
         tensor("spin", TensorProto.INT64, [1])],
        [tensor("y", TensorProto.FLOAT, [1, 1])],
        [init("axis0", np.array([0], dtype=np.int64)),
         init("count0", np.array([0.0], dtype=np.float32)),
         init("one", np.array([1.0], dtype=np.float32)),
         init("zero", np.array([0.0], dtype=np.float32))],
    )
    model = make_model(graph)

    import time

    sess = session(model)
    x = np.array([[2.5]], dtype=np.float32)
    timings = {}
    for spin in (0, 200000):
        feeds = {"x": x, "spin": np.array([spin], dtype=np.int64)}
        sess.run(None, feeds)  # warm up
        start = time.perf_counter()
        (y,) = sess.run(None, feeds)
        timings[spin] = time.perf_counter() - start
        check_equal(f"slow (spin={spin})", y, x + np.float32(1))
    print(f"slow: spin=0 {timings[0] * 1e3:.2f} ms, "
          f"spin=200000 {timings[200000] * 1e3:.1f} ms")
    check(timings[200000] > 0.02, "slow: spin=200000 took under 20 ms")
    check(timings[200000] > 10 * timings[0], "slow: spin=200000 not slower than spin=0")
    return model


def build_slow_batch():
    # The slow model with a batch dimension: y = x + 1 (x of any width)
    # after a Loop of max(spin) iterations, so one request with a large spin
    # keeps the only instance busy while batchable requests queue behind it.
    body = spin_body()
    nodes = [
        helper.make_node("ReduceMax", ["spin"], ["trip_count"], keepdims=0, name="trip_count"),
        helper.make_node("Loop", ["trip_count", "", "count0"], ["count"], name="spin", body=body),
        helper.make_node("Mul", ["count", "zero"], ["nothing"], name="discard"),
        helper.make_node("Add", ["x", "one"], ["x_plus_one"], name="plus_one"),
        helper.make_node("Add", ["x_plus_one", "nothing"], ["y"], name="keep_loop"),
    ]
    graph = helper.make_graph(
        nodes, "slow_batch",
        [tensor("x", TensorProto.FLOAT, ["N", "W"]),
         tensor("spin", TensorProto.INT64, ["N", 1])],
        [tensor("y", TensorProto.FLOAT, ["N", "W"])],
        [init("count0", np.array([0.0], dtype=np.float32)),
         init("one", np.array([1.0], dtype=np.float32)),
         init("zero", np.array([0.0], dtype=np.float32))],
    )
    model = make_model(graph)
    sess = session(model)
    x = np.array([[2.5], [4.0]], dtype=np.float32)
    (y,) = sess.run(None, {"x": x, "spin": np.array([[0], [1000]], dtype=np.int64)})
    check_equal("slow_batch", y, x + np.float32(1))
    return model


SLOW_BATCH_CONFIG = """
# y = x + 1 (rows of any width) after a Loop of max(spin) iterations (about
# 1 us each on CPU), batching: a request with a large spin holds the
# instance while others queue behind it.
name: "slow_batch"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ -1 ]
  },
  {
    name: "spin"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


SLOW_CONFIG = """
# y = x + 1 after a Loop of spin iterations (about 1 us each on CPU).
name: "slow"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 1, 1 ]
  },
  {
    # Loop trip count: 0 is fast, 200000 takes tens to hundreds of ms.
    name: "spin"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 1, 1 ]
  }
]
# One instance, so a slow request holds up the ones behind it.
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def generate_shipped(out):
    write_model(out, "mlp", MLP_MODEL())
    write_config(out, "mlp", MLP_CONFIG)
    write_model(out, "cnn", build_cnn())
    write_config(out, "cnn", CNN_CONFIG)
    write_model(out, "text", build_text())
    write_config(out, "text", TEXT_CONFIG)
    write_model(out, "mixed", build_mixed())
    write_config(out, "mixed", MIXED_CONFIG)


def generate_tests(out):
    write_model(out, "identity_all", build_identity_all())
    write_config(out, "identity_all", identity_all_config())
    write_model(out, "nobatch", build_nobatch())
    write_config(out, "nobatch", NOBATCH_CONFIG)
    # Same graph as "mlp" but without config.pbtxt: exercises auto-completion.
    write_model(out, "mlp_auto", MLP_MODEL())
    for v in (1, 2, 3):
        write_model(out, "multiversion", build_multiversion(v), version=v)
    write_config(out, "multiversion", MULTIVERSION_CONFIG)
    write_model(out, "reshaped", build_reshaped())
    write_config(out, "reshaped", RESHAPED_CONFIG)
    write_model(out, "failing", build_failing())
    write_config(out, "failing", FAILING_CONFIG)
    write_model(out, "slow", build_slow())
    write_config(out, "slow", SLOW_CONFIG)
    write_model(out, "slow_batch", build_slow_batch())
    write_config(out, "slow_batch", SLOW_BATCH_CONFIG)
    # A canary pair: version 1 never fails, version 2 fails whenever fail != 0.
    write_model(out, "canary", build_steady(), version=1)
    write_model(out, "canary", build_failing(), version=2)
    write_config(out, "canary", CANARY_CONFIG)
    # A shadow pair: version 2 differs from version 1 on planted rows.
    write_model(out, "shadowed", build_shadowed(0.0), version=1)
    write_model(out, "shadowed", build_shadowed(1.0), version=2)
    write_config(out, "shadowed", SHADOWED_CONFIG)


_MLP_CACHE = []


def MLP_MODEL():
    if not _MLP_CACHE:
        _MLP_CACHE.append(build_mlp())
    return _MLP_CACHE[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shipped", action="store_true", help="write only the shipped models")
    p.add_argument("--tests", action="store_true", help="write only the test models")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="repository for shipped models (default: models/)")
    p.add_argument("--tests-out", default=DEFAULT_TESTS_OUT,
                   help="repository for test models (default: tests/models/)")
    args = p.parse_args(argv)
    both = args.shipped == args.tests
    if both or args.shipped:
        generate_shipped(args.out)
        print(f"shipped models written to {args.out}")
    if both or args.tests:
        generate_tests(args.tests_out)
        print(f"test models written to {args.tests_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
