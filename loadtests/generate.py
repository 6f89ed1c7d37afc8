#!/usr/bin/env python3
"""Writes the ghz config files in loadtests/ghz/ and loadtests/scenarios/.

Deterministic (no randomness, Python standard library only): rerunning it
must not change any file. Run from anywhere: python3 loadtests/generate.py
"""

import base64
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
HOST = "127.0.0.1:8001"
UNARY = "inference.GRPCInferenceService.ModelInfer"


def config(data, call=UNARY, **load):
    """A ghz config: the proto (paths relative to the repository root), the target and the load."""
    out = {
        "proto": "proto/grpc_service.proto",
        "import-paths": ["proto"],
        "call": call,
        "host": HOST,
        "insecure": True,
    }
    out.update(load)
    out["data"] = data
    return out


def tensor(name, datatype, shape, field, values):
    return {"name": name, "datatype": datatype, "shape": shape, "contents": {field: values}}


def request(model, *inputs):
    return {"model_name": model, "id": "ghz", "inputs": list(inputs)}


def b64(text):
    """protobuf JSON writes `bytes` fields as base64."""
    return base64.b64encode(text.encode()).decode()


# mlp: 16 features, -0.8 .. 0.7 in steps of 0.1.
MLP = request("mlp", tensor("input", "FP32", [1, 16], "fp32_contents", [round(i / 10 - 0.8, 1) for i in range(16)]))

# cnn: a 3x32x32 image with values in [-1, 1] from a fixed integer pattern.
CNN = request(
    "cnn",
    tensor("image", "FP32", [1, 3, 32, 32], "fp32_contents", [round((i * 37 % 101) / 50 - 1, 2) for i in range(3 * 32 * 32)]),
)

# text: two vocabulary words and one unknown word.
TEXT = request("text", tensor("words", "BYTES", [1, 3], "bytes_contents", [b64(w) for w in ("hello", "big", "world")]))

MIXED = request(
    "mixed",
    tensor("a", "FP32", [1, 4], "fp32_contents", [0.5, -1.25, 2.0, 3.75]),
    tensor("b", "INT32", [1, 4], "int_contents", [1, -2, 3, 40]),
    tensor("mask", "BOOL", [1, 4], "bool_contents", [True, False, True, True]),
)

FILES = {
    "ghz/mlp.json": config(MLP, total=2000, concurrency=4),
    "ghz/cnn.json": config(CNN, total=1000, concurrency=4),
    "ghz/text.json": config(TEXT, total=2000, concurrency=4),
    "ghz/mixed.json": config(MIXED, total=2000, concurrency=4),
    # Closed loop: 8 workers, each sending its next request when the previous one is answered.
    "scenarios/mlp-steady.json": config(MLP, concurrency=8, duration="10s"),
    # Open loop far above what two cores serve: requests keep coming on schedule; the queue
    # builds up and shows in the latencies (ferroload counts from the scheduled send time).
    "scenarios/mlp-overload.json": config(MLP, rps=50000, concurrency=512, duration="5s", timeout="2s"),
}


def main():
    for name, content in FILES.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
