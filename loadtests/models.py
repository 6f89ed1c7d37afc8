#!/usr/bin/env python3
"""Generates the load tests' large models at test time, never committed.

    .deps/venv/bin/python loadtests/models.py resnet50 [--slo 0.25] [--delay 500] [--name NAME]
    .deps/venv/bin/python loadtests/models.py mlp_big [--delay 0 --name mlp_big_nodelay]

Each run writes one Triton-layout repository entry, `<out>/<name>/config.pbtxt`
and `<out>/<name>/1/model.onnx` (`--out`, default target/models), and prints
the folder. An entry whose generator and arguments have not changed since it
was written is reused (`<name>/.generated` records both); `--force` rewrites
it. Weights are random with fixed seeds, so a rewrite is byte-identical.

  resnet50  the ResNet-50 architecture (7x7/2 conv 64, 3x3/2 max pool,
            bottleneck stages [3, 4, 6, 3] of widths 64/128/256/512 with
            expansion 4 and projection shortcuts, global average pool, FC 1000;
            `--softmax` adds a softmax), He-initialised, batch norm folded into
            the conv biases. `image` FP32 [N,3,224,224] -> `logits` FP32 [N,1000].
            The heavy CNN: the script times it in onnxruntime and prints the
            milliseconds per image (it must be at least 15 on a 2-core machine).
  mlp_big   256 -> 1024 -> 1024 -> 16 (Gemm+Relu, Gemm+Relu, Gemm).
            `input` FP32 [N,256] -> `output` FP32 [N,16].

Both configs: max_batch_size 32, dynamic batching with
max_queue_delay_microseconds `--delay` (default 500), one CPU instance, and a
`slo_latency_seconds` parameter when `--slo` is given. Every model is checked
with onnx.checker and run once in onnxruntime. Importable: `ensure(...)`
returns the folder.
"""

import argparse
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "target", "models")
OPSET = 17
IR_VERSION = 8
KINDS = ("resnet50", "mlp_big")
# ResNet-50: (blocks, bottleneck width, stride of the stage's first block).
RESNET50_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
EXPANSION = 4
# The folded batch norm's scale on the last conv of each residual branch, so
# that random weights do not make the activations grow block after block.
RESIDUAL_SCALE = 0.2


class Graph:
    """Nodes and initializers of a graph under construction, with fresh names."""

    def __init__(self, seed):
        import numpy as np

        self.np = np
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def weight(self, name, shape, fan_in, scale=1.0):
        from onnx import numpy_helper

        std = scale * (2.0 / fan_in) ** 0.5  # He (Kaiming) normal
        array = (self.rng.standard_normal(shape, dtype=self.np.float32) * self.np.float32(std)).astype(self.np.float32)
        self.inits.append(numpy_helper.from_array(array, name=name))
        return name

    def bias(self, name, size):
        from onnx import numpy_helper

        array = (self.rng.standard_normal(size, dtype=self.np.float32) * self.np.float32(0.01)).astype(self.np.float32)
        self.inits.append(numpy_helper.from_array(array, name=name))
        return name

    def node(self, op, inputs, name, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x, name, cin, cout, k, stride=1, relu=True, scale=1.0):
        w = self.weight(f"{name}.weight", (cout, cin, k, k), cin * k * k, scale)
        b = self.bias(f"{name}.bias", cout)
        pad = k // 2
        y = self.node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride, stride],
                      pads=[pad, pad, pad, pad])
        return self.node("Relu", [y], f"{name}.relu") if relu else y

    def gemm(self, x, name, cin, cout, relu):
        w = self.weight(f"{name}.weight", (cin, cout), cin)
        b = self.bias(f"{name}.bias", cout)
        y = self.node("Gemm", [x, w, b], name)
        return self.node("Relu", [y], f"{name}.relu") if relu else y


def build_resnet50(softmax):
    """ResNet-50 (v1.5: the stride sits on each stage's first 3x3 conv)."""
    g = Graph(seed=50)
    x = g.conv("image", "conv1", 3, 64, 7, stride=2)
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for s, (blocks, width, first_stride) in enumerate(RESNET50_STAGES, start=2):
        cout = width * EXPANSION
        for b in range(blocks):
            stride = first_stride if b == 0 else 1
            name = f"stage{s}.block{b + 1}"
            y = g.conv(x, f"{name}.conv1", cin, width, 1)
            y = g.conv(y, f"{name}.conv2", width, width, 3, stride=stride)
            y = g.conv(y, f"{name}.conv3", width, cout, 1, relu=False, scale=RESIDUAL_SCALE)
            shortcut = x
            if b == 0:  # projection: the shape changes (channels, and stride after stage 2)
                shortcut = g.conv(x, f"{name}.shortcut", cin, cout, 1, stride=stride, relu=False)
            x = g.node("Relu", [g.node("Add", [y, shortcut], f"{name}.add")], f"{name}.relu")
            cin = cout
    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    out = "fc_out" if softmax else "logits"
    w = g.weight("fc.weight", (cin, 1000), cin, scale=0.5)
    g.node("Gemm", [x, w, g.bias("fc.bias", 1000)], out)
    if softmax:
        g.node("Softmax", [out], "logits", axis=1)
    return (g, *build_io("resnet50"))


def build_mlp_big():
    g = Graph(seed=256)
    x = g.gemm("input", "fc1", 256, 1024, relu=True)
    x = g.gemm(x, "fc2", 1024, 1024, relu=True)
    g.gemm(x, "output", 1024, 16, relu=False)
    return (g, *build_io("mlp_big"))


def to_model(graph, kind, io):
    import onnx
    from onnx import TensorProto, helper

    (in_name, in_dims), (out_name, out_dims) = io
    proto = helper.make_graph(
        graph.nodes, kind,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", *in_dims])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", *out_dims])],
        graph.inits)
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ferroserve-loadtests", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def config_text(name, io, delay, slo, comment):
    (in_name, in_dims), (out_name, out_dims) = io
    dims = lambda d: ", ".join(str(x) for x in d)  # noqa: E731
    image = "\n    format: FORMAT_NCHW" if len(in_dims) == 3 else ""
    slo_entry = ""
    if slo is not None:
        slo_entry = ("# Latency SLO: admission refuses what it predicts would finish later.\n"
                     f'parameters {{\n  key: "slo_latency_seconds"\n  value {{ string_value: "{slo:g}" }}\n}}\n')
    return f"""# {comment} Generated by loadtests/models.py; not committed.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  {{
    name: "{in_name}"
    data_type: TYPE_FP32{image}
    dims: [ {dims(in_dims)} ]
  }}
]
output [
  {{
    name: "{out_name}"
    data_type: TYPE_FP32
    dims: [ {dims(out_dims)} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {delay}
}}
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
{slo_entry}"""


def time_per_row(model_bytes, io, batch, runs):
    """One onnxruntime session (default threads, as the server gives one
    instance every core): checks the output shape and returns the median
    seconds per row at `batch`."""
    import numpy as np
    import onnxruntime as ort

    (in_name, in_dims), (_, out_dims) = io
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).standard_normal((batch, *in_dims), dtype=np.float32)
    (y,) = session.run(None, {in_name: x})
    if y.shape != (batch, *out_dims) or not np.isfinite(y).all():
        raise SystemExit(f"onnxruntime run gave shape {y.shape} (want {(batch, *out_dims)}) or non-finite values")
    for _ in range(3):  # the first runs grow the arena and wake the thread pool
        session.run(None, {in_name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {in_name: x})
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / batch


def report_speed(say, name, kind, data, io=None):
    """Runs the model in onnxruntime (the output checked), prints and returns the seconds per row."""
    if io is None:
        io = build_io(kind)
    if kind == "resnet50":
        per_image = time_per_row(data, io, batch=1, runs=7)
        verdict = "ok" if per_image >= 0.015 else "UNDER the 15 ms a heavy CNN needs"
        say(f"{name}: onnxruntime {per_image * 1e3:.1f} ms per image at batch 1 ({verdict})")
        return per_image
    per_row = time_per_row(data, io, batch=8, runs=20)
    say(f"{name}: onnxruntime {per_row * 1e6:.0f} us per row at batch 8")
    return per_row


def build_io(kind):
    """The model's (input, dims without the batch) and (output, dims)."""
    if kind == "resnet50":
        return ("image", [3, 224, 224]), ("logits", [1000])
    return ("input", [256]), ("output", [16])


def stamp_of(kind, name, delay, slo, softmax):
    with open(os.path.abspath(__file__), "rb") as f:
        source = hashlib.sha256(f.read()).hexdigest()
    return {"generator_sha256": source,
            "args": {"kind": kind, "name": name, "delay": delay, "slo": slo, "softmax": softmax}}


def ensure(kind, name=None, delay=500, slo=None, softmax=False, out=DEFAULT_OUT, force=False, quiet=False,
           retime=False):
    """Writes (or reuses) `<out>/<name>`; returns the folder. Prints what it did;
    `retime` times a reused entry again."""
    if kind not in KINDS:
        raise SystemExit(f"unknown model {kind!r} (one of {', '.join(KINDS)})")
    name = name or kind
    folder = os.path.join(out, name)
    stamp_path = os.path.join(folder, ".generated")
    want = stamp_of(kind, name, delay, slo, softmax)
    say = (lambda *a: None) if quiet else print
    if not force and os.path.exists(os.path.join(folder, "1", "model.onnx")):
        try:
            with open(stamp_path) as f:
                have = json.load(f)
        except (OSError, ValueError):
            have = {}
        if {k: have.get(k) for k in want} == want:
            measured = have.get("ms_per_image")
            note = f" (at generation: {measured:.1f} ms per image)" if measured else ""
            say(f"{name}: reused{note}")
            if retime:
                with open(os.path.join(folder, "1", "model.onnx"), "rb") as f:
                    report_speed(say, name, kind, f.read())
            return folder

    started = time.monotonic()
    graph, *io = build_resnet50(softmax) if kind == "resnet50" else build_mlp_big()
    model = to_model(graph, kind, io)
    data = model.SerializeToString(deterministic=True)
    record = dict(want)
    per_row = report_speed(say, name, kind, data, io)
    if kind == "resnet50":
        record["ms_per_image"] = per_row * 1e3
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    # Written under a temporary name, then renamed: a reader never sees half a file.
    for path, content in ((os.path.join(folder, "1", "model.onnx"), data),
                          (os.path.join(folder, "config.pbtxt"),
                           config_text(name, io, delay, slo, describe(kind, softmax)).encode())):
        with open(path + ".part", "wb") as f:
            f.write(content)
        os.replace(path + ".part", path)
    with open(stamp_path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    say(f"{name}: written in {time.monotonic() - started:.1f} s ({len(data) / 2**20:.0f} MiB)")
    return folder


def describe(kind, softmax):
    if kind == "resnet50":
        return f"ResNet-50, random He weights{', softmax output' if softmax else ''}: the heavy CNN."
    return "MLP 256 -> 1024 -> 1024 -> 16, random He weights."


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=KINDS)
    parser.add_argument("--name", help="the repository entry's name (default: the model's)")
    parser.add_argument("--delay", type=int, default=500, help="max_queue_delay_microseconds (default 500)")
    parser.add_argument("--slo", type=float, help="slo_latency_seconds parameter (e.g. 0.25); none by default")
    parser.add_argument("--softmax", action="store_true", help="resnet50: softmax over the logits")
    parser.add_argument("--out", default=DEFAULT_OUT, help="cache folder (default target/models)")
    parser.add_argument("--force", action="store_true", help="rewrite even when the entry is up to date")
    parser.add_argument("--time", action="store_true", help="time a reused entry in onnxruntime again")
    args = parser.parse_args(argv)
    print(ensure(args.model, args.name, args.delay, args.slo, args.softmax, args.out, args.force,
                 retime=args.time))
    return 0


if __name__ == "__main__":
    sys.exit(main())
