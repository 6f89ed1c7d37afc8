#!/usr/bin/env python3
"""Malformed input against a live ferroserve (issue 4): a bounded, seeded
random-garbage run over HTTP, gRPC and raw sockets, with valid requests to
every shipped model interleaved throughout.

    .deps/venv/bin/python loadtests/scenarios/garbage.py [--seconds 20] [--seed 1]
        [--workers 4] [--max-requests 200000] [--timeout 5] [--binary PATH]
        [--kinds grpc.semantic,http.binary] [--log FILE] [--dump DIR]

The server is target/release/ferroserve (cargo build --release) unless
--binary says otherwise; it runs on the shipped models/ on free loopback
ports, and the run stops by itself after --seconds or --max-requests.

It needs grpcio, which the venv from `deploy/setup.sh test` has (tritonclient
brings it); run with another python, it restarts itself under .deps/venv when
that exists. Everything else is the standard library; protobuf messages are
encoded by hand, so no generated code is needed. Loopback only.

What goes out (each worker draws from its own seeded generator):
  * HTTP, well framed (keep-alive): random bodies, byte-mutated JSON, JSON
    with wrong datatypes, shapes that disagree with the data, huge, negative
    or overflowing dims, deep nesting, NaN and strings for numbers, broken
    binary-tensor requests, garbage gzip, random paths and methods.
  * HTTP, raw sockets: random request lines, garbage headers and framing,
    bodies cut off by a close or a reset.
  * gRPC: random and mutated ModelInferRequest bytes, structurally wrong
    requests, garbage to the other methods, ModelStreamInfer streams, and raw
    TCP garbage and hand-made HTTP/2 frames on the gRPC port.
  * Valid requests to every model over HTTP JSON, HTTP binary and gRPC, whose
    answers are checked against known outputs.

Judged per answer: an HTTP 500, 502 or 505+ (501, 503 and 504 are the
server's mapped Unimplemented, Unavailable and DeadlineExceeded) or a gRPC
INTERNAL or UNKNOWN is a server fault; no answer (or close) within --timeout
is a hang; a well-framed HTTP request whose connection ends without an answer
is a fault ("dropped"). An unparseable protobuf message must come back
INVALID_ARGUMENT (the server maps tonic's INTERNAL); INTERNAL is a fault.

Exit 0 only when: the server is alive, live and ready at the end, /metrics
answers, no hang, no fault, every valid request answered correctly, no panic
in the log, RSS at the end within 50% + 64 MiB of its high-water mark during
the first fifth of the garbage (the warm-up; at most 5 s), and SIGTERM ends
the server with exit code 0.
"""

import argparse
import collections
import gzip
import json
import math
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

try:
    import grpc
except ImportError:
    VENV = os.path.join(harness.ROOT, ".deps/venv")
    if os.path.exists(f"{VENV}/bin/python") and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(f"{VENV}/bin/python", [f"{VENV}/bin/python", os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit("garbage.py needs grpcio: run it with .deps/venv/bin/python (deploy/setup.sh test creates it)")

MiB = 1024 * 1024
SERVICE = "/inference.GRPCInferenceService/"
FAULT_GRPC = {"INTERNAL", "UNKNOWN"}

# ---------------------------------------------------------------------------
# The shipped models: one valid request each, and what it must answer.

MODELS = {
    "mlp": [("input", "FP32", [1, 16], [i / 16 for i in range(16)])],
    "cnn": [("image", "FP32", [1, 3, 32, 32], [((i * 37) % 101) / 101 for i in range(3072)])],
    "text": [("words", "BYTES", [1, 3], ["the", "fox", "zzz"])],
    "mixed": [("a", "FP32", [1, 4], [1.5, 2.0, 3.0, 4.0]), ("b", "INT32", [1, 4], [1, 2, 3, -4]),
              ("mask", "BOOL", [1, 4], [True, False, True, False])],
}
EXPECTED = {
    "text": {"ids": ([1, 3], [1, 4, 0]), "words_out": ([1, 3], [b"the", b"fox", b"zzz"])},
    "mixed": {"sum": ([1, 4], [2.5, 4.0, 6.0, 0.0]), "masked": ([1, 4], [1.5, 0.0, 3.0, 0.0]),
              "count": ([1, 1], [2])},
    "mlp": {"probabilities": ([1, 10], None)},  # values: the warm-up answer
    "cnn": {"logits": ([1, 10], None)},
}
PACK = {"FP32": "f", "FP64": "d", "INT32": "i", "INT64": "q", "BOOL": "?", "INT8": "b", "UINT8": "B",
        "INT16": "h", "UINT16": "H", "UINT32": "I", "UINT64": "Q"}


def to_raw(datatype, values):
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in (x.encode() if isinstance(x, str) else x
                                                              for x in values))
    return struct.pack(f"<{len(values)}{PACK[datatype]}", *values)


def from_raw(datatype, data):
    if datatype == "BYTES":
        out, i = [], 0
        while i < len(data):
            (n,) = struct.unpack_from("<I", data, i)
            out.append(bytes(data[i + 4:i + 4 + n]))
            i += 4 + n
        return out
    size = struct.calcsize(PACK[datatype])
    return list(struct.unpack(f"<{len(data) // size}{PACK[datatype]}", data))


def check_outputs(model, outputs, reference):
    """None when `outputs` ({name: (shape, values)}) is the right answer."""
    for name, (shape, expected) in EXPECTED[model].items():
        if name not in outputs:
            return f"output {name} missing (got {sorted(outputs)})"
        got_shape, values = outputs[name]
        if list(got_shape) != shape:
            return f"{name} shape {got_shape}, expected {shape}"
        values = [v.encode() if isinstance(v, str) else v for v in values]
        expected = expected if expected is not None else reference.get(model)
        if expected is None:
            continue
        if any(isinstance(e, bytes) for e in expected):
            if values != expected:
                return f"{name} = {values[:4]}, expected {expected[:4]}"
        elif any(not math.isfinite(v) or abs(v - e) > 1e-4 + 1e-3 * abs(e) for v, e in zip(values, expected)):
            return f"{name} = {values[:4]}..., expected {expected[:4]}..."
    if model == "mlp" and abs(sum(outputs["probabilities"][1]) - 1) > 1e-3:
        return "probabilities do not sum to 1"
    return None


# ---------------------------------------------------------------------------
# Protobuf by hand (inference.ModelInferRequest / ModelInferResponse).

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_len(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def pb_int(num, n):
    return varint(num << 3) + varint(n)


def pb_param(num, key, kind, value):
    """A map<string, InferParameter> entry; kind: bool, int64, string, double, uint64."""
    if kind == "string":
        inner = pb_len(3, value.encode())
    elif kind == "double":
        inner = varint(4 << 3 | 1) + struct.pack("<d", value)
    else:
        inner = pb_int({"bool": 1, "int64": 2, "uint64": 5}[kind], int(value))
    return pb_len(num, pb_len(1, key.encode()) + pb_len(2, inner))


def pb_contents(datatype, values):
    if datatype == "BYTES":
        return b"".join(pb_len(8, v.encode() if isinstance(v, str) else v) for v in values)
    if datatype == "FP32":
        return pb_len(6, struct.pack(f"<{len(values)}f", *values))
    if datatype == "FP64":
        return pb_len(7, struct.pack(f"<{len(values)}d", *values))
    field = {"BOOL": 1, "INT32": 2, "INT64": 3, "UINT32": 4, "UINT64": 5}[datatype]
    return pb_len(field, b"".join(varint(int(v)) for v in values))


def pb_input(name, datatype, shape, contents=None):
    msg = pb_len(1, name.encode()) + pb_len(2, datatype.encode())
    msg += pb_len(3, b"".join(varint(d) for d in shape))
    if contents is not None:
        msg += pb_len(5, contents)
    return pb_len(5, msg)


def grpc_request(model, typed=False, version=""):
    msg = pb_len(1, model.encode()) + (pb_len(2, version.encode()) if version else b"")
    raw = b""
    for name, datatype, shape, values in MODELS[model]:
        if typed:
            msg += pb_input(name, datatype, shape, pb_contents(datatype, values))
        else:
            msg += pb_input(name, datatype, shape)
            raw += pb_len(7, to_raw(datatype, values))
    return msg + raw


def pb_fields(data):
    """[(field number, wire type, value)]; raises ValueError on bad input."""
    out, i = [], 0

    def read_varint():
        nonlocal i
        n = shift = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(data):
        key = read_varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out.append((num, wire, read_varint()))
        elif wire == 2:
            n = read_varint()
            out.append((num, wire, data[i:i + n]))
            i += n
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            out.append((num, wire, data[i:i + size]))
            i += size
        else:
            raise ValueError(f"wire type {wire}")
    return out


def decode_grpc_response(data):
    """{name: (shape, values)} from a ModelInferResponse with raw outputs."""
    specs, raws = [], []
    for num, _, value in pb_fields(data):
        if num == 5:
            name, datatype, shape = "", "", []
            for n, wire, v in pb_fields(value):
                if n == 1:
                    name = v.decode()
                elif n == 2:
                    datatype = v.decode()
                elif n == 3:
                    shape += [x - (1 << 64) if x >= 1 << 63 else x for x in (_varints(v) if wire == 2 else [v])]
            specs.append((name, datatype, shape))
        elif num == 6:
            raws.append(value)
    return {name: (shape, from_raw(datatype, raw)) for (name, datatype, shape), raw in zip(specs, raws)}


def _varints(data):
    out, n, shift = [], 0, 0
    for b in data:
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            out.append(n)
            n = shift = 0
    return out


# ---------------------------------------------------------------------------
# HTTP: requests as bytes, a small keep-alive client, and raw one-shots.

def valid_json(model):
    return {"inputs": [{"name": n, "datatype": d, "shape": list(s), "data": list(v)} for n, d, s, v in MODELS[model]]}


def http_bytes(method, path, body=b"", headers=(), content_length=True):
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [k + b": " + v for k, v in headers]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def infer_path(model):
    return f"/v2/models/{model}/infer".encode()


def binary_request(model, outputs_binary=True):
    """(body, header length) of a valid binary-tensor request."""
    header = {"inputs": [], "parameters": {"binary_data_output": outputs_binary}}
    blobs = []
    for name, datatype, shape, values in MODELS[model]:
        blob = to_raw(datatype, values)
        header["inputs"].append({"name": name, "datatype": datatype, "shape": shape,
                                 "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


class Hang(Exception):
    pass


class Dropped(Exception):
    pass


class HttpConn:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes.
    request() returns (status, headers, body), raises Hang after `timeout`
    and Dropped when the connection ends without an answer."""

    def __init__(self, address, timeout):
        host, port = address.rsplit(":", 1)
        self.address, self.timeout, self.sock = (host, int(port)), timeout, None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, data, head=False):
        for attempt in range(2):
            reused = self.sock is not None
            if not reused:
                try:
                    self.sock = socket.create_connection(self.address, timeout=self.timeout)
                except OSError as e:
                    raise Dropped(f"connect: {e}")
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buf = b""
            self.received = 0
            try:
                self.sock.sendall(data)
                status, headers, body = self._response(head, time.monotonic() + self.timeout)
            except socket.timeout:
                self.close()
                raise Hang()
            except OSError as e:
                self.close()
                if reused and self.received == 0 and attempt == 0:
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise Dropped(type(e).__name__)
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, headers, body
        raise AssertionError("unreachable")

    def _recv(self, deadline):
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionAbortedError("closed")
        self.received += len(chunk)
        self.buf += chunk

    def _take(self, n, deadline):
        while len(self.buf) < n:
            self._recv(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._recv(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _response(self, head, deadline):
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._recv(deadline)
            block, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = block.split(b"\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
            if status >= 200:
                break
        if head or status in (204, 304):
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self._take(int(headers["content-length"]), deadline)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line(deadline).split(b";")[0], 16)
                body += self._take(size + 2, deadline)[:size]
                if size == 0:
                    return status, headers, body
        try:  # neither: the body runs to the close
            while True:
                self._recv(deadline)
        except ConnectionAbortedError:
            body, self.buf = self.buf, b""
            self.close()
            return status, headers, body


def http_status_of(got):
    """'HTTP <status>' of the first final (non-1xx) HTTP/1 response in `got`."""
    for response in got.split(b"HTTP/1.")[1:]:
        parts = response.split(None, 2)
        if len(parts) > 1 and not parts[1].startswith(b"1"):
            return "HTTP " + parts[1].decode("latin-1")
    return None


def raw_exchange(address, data, timeout, mode="half-close"):
    """Sends `data` on a fresh connection. half-close: shut the write side and
    read until the server closes; returns 'HTTP <status>', 'answered' (bytes
    but not HTTP/1), 'closed' or 'reset'; raises Hang. abort/reset: close
    straight after sending (reset sends an RST); returns 'sent'."""
    host, port = address.rsplit(":", 1)
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        raise Dropped(f"connect: {e}")
    try:
        if mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.sendall(data)
        except OSError:
            return "reset"
        if mode != "half-close":
            return "sent"
        got, deadline = b"", time.monotonic() + timeout
        try:
            sock.shutdown(socket.SHUT_WR)
            while len(got) < 1 << 20:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            raise Hang()
        except OSError:
            return http_status_of(got) or "reset"
        return http_status_of(got) or ("answered" if got else "closed")
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# Garbage generators. Each returns an Attempt describing what to send.

class Attempt:
    __slots__ = ("kind", "label", "transport", "payload", "extra")

    def __init__(self, kind, label, transport, payload, extra=None):
        self.kind, self.label, self.transport, self.payload, self.extra = kind, label, transport, payload, extra


JSON_BYTES = b'{}[]",:-+0123456789eE.nultrfas\\ \x00\xff'
DATATYPES = ["FP16", "BF16", "FP64", "INT8", "INT64", "UINT64", "BOOL", "BYTES", "STRING", "TYPE_FP32",
             "fp32", "", "X" * 300, 7, None, ["FP32"]]
SHAPES = [[1, 2 ** 40], [2 ** 40, 2 ** 40], [2 ** 62, 4], [2 ** 63 - 1, 2 ** 63 - 1], [-1, 16], [1, -16],
          [-(2 ** 63), 1], [0, 16], [0], [], [1] * 64, [2 ** 31, 2 ** 31, 2 ** 31], [1.5, 16], ["1", "16"],
          [1, 16, 1], [16], [3, 16], [8, 2], [2 ** 64, 1], [9, 4], [17, 3, 32, 32], [1, 3, 32, 31], None, 5]
VALUES = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"1.0"', '"abc"', "true", "null", "{}",
          "[]", "1.5", "2147483648", "-2147483649", "18446744073709551616", "-0", "1" * 400, '"\\ud800"',
          '"\\u0000"', "0x10"]


def mutate_bytes(rng, data, n=None):
    b = bytearray(data)
    ops = []
    for _ in range(n or rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            i = min(i, len(b) - 1)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[i:i + rng.randint(1, 8)]
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:
            i = min(i, len(b) - 1)
            b[i] = rng.choice(JSON_BYTES)
        elif op == 4:
            del b[i:]
        else:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:4096]
        ops.append(f"{'flip del ins set cut dup'.split()[op]}@{i}")
    return bytes(b), " ".join(ops)


def random_bytes(rng, n):
    return rng.randbytes(n)


def json_semantic(rng, model):
    """A JSON request with one structural fault: (label, body, path)."""
    req = valid_json(model)
    inp = rng.choice(req["inputs"])
    choice = rng.randrange(17)
    raw = None
    if choice == 0:
        inp["datatype"] = rng.choice(DATATYPES)
        label = f"datatype={inp['datatype']!r:.20}"
    elif choice == 1:
        inp["shape"] = rng.choice(SHAPES)
        label = f"shape={inp['shape']}"
    elif choice == 2:
        inp["data"] = inp["data"][:rng.randrange(len(inp["data"]))] + inp["data"][:rng.randrange(3)]
        label = f"data length {len(inp['data'])}"
    elif choice == 3:
        i = rng.randrange(len(inp["data"]))
        token = rng.choice(VALUES)
        inp["data"][i] = "__X__"
        raw = json.dumps(req).replace('"__X__"', token)
        label = f"data[{i}]={token[:20]}"
    elif choice == 4:
        depth = rng.choice([2, 3, 50, 127, 128, 129, 1000, 100000])
        inp["data"] = "__X__"
        raw = json.dumps(req).replace('"__X__"', "[" * depth + "1" + "]" * depth)
        label = f"data nested {depth} deep"
    elif choice == 5:
        shape = inp["shape"]
        flat = inp["data"]
        if len(shape) == 2:
            inp["data"] = [flat[i:i + shape[1]] for i in range(0, len(flat), shape[1])]
            if rng.random() < 0.5 and len(inp["data"][0]) > 1:
                inp["data"][0] = inp["data"][0][:-1]  # ragged
        label = "data nested by shape (maybe ragged)"
    elif choice == 6:
        op = rng.choice(["drop", "dup", "rename", "extra", "empty", "notalist", "noname", "nodata"])
        label = f"inputs {op}"
        if op == "drop":
            req["inputs"].remove(inp)
        elif op == "dup":
            req["inputs"].append(dict(inp))
        elif op == "rename":
            inp["name"] = rng.choice(["", "INPUT0", "input ", "\u00e9", "x" * 1000])
        elif op == "extra":
            req["inputs"].append({"name": "extra", "datatype": "FP32", "shape": [1, 1], "data": [1.0]})
        elif op == "empty":
            req["inputs"] = []
        elif op == "notalist":
            req["inputs"] = {"name": "input"}
        elif op == "noname":
            del inp["name"]
        else:
            del inp["data"]
    elif choice == 7:
        out = rng.choice(list(EXPECTED[model]))
        req["outputs"] = rng.choice([
            [{"name": "nope"}], [{"name": "sum", "parameters": {"classification": 3}}],
            [{"name": "sum", "parameters": {"binary_data": "yes"}}], [{"name": "x"}] * 10000,
            [{"name": 5}], "all", [{"name": out}, {"name": out}]])
        label = f"outputs={str(req['outputs'])[:60]}"
    elif choice == 8:
        req["parameters"] = rng.choice([
            {"timeout": 0}, {"timeout": -1}, {"timeout": "1s"}, {"timeout": 1}, {"timeout": 2 ** 64},
            {"timeout": 1.5}, {"timeout": 2 ** 64 - 1}, {"binary_data_output": "x"}, {"sequence_id": 7},
            {"priority": 1}, [], {"binary_data_output": True}])
        label = f"parameters={req['parameters']}"
    elif choice == 9:
        req["id"] = rng.choice(["x" * 1_000_000, 5, None, {"a": 1}, "\u0000"])
        label = f"id={str(req['id'])[:20]}"
    elif choice == 10:
        model = rng.choice(["nope", "", "..", "mlp/versions/0", "mlp/versions/-1", "mlp/versions/99999999999999999999",
                            "%00", "mlp%2F1", "m" * 5000, "%ff%fe"])
        label = f"path model={model[:30]}"
        return label, json.dumps(req).encode(), infer_path("x").replace(b"x", model.encode())
    elif choice == 11:
        inp["data"] = rng.choice([[], "string", 5, None, {"a": 1}, [[]], [None] * len(inp["data"])])
        label = f"data={str(inp['data'])[:20]}"
    elif choice == 12:
        req = rng.choice([[], [req], "x", 5, None, {}, {"inputs": None}])
        label = f"body={str(req)[:30]}"
    elif choice == 13:
        inp["parameters"] = rng.choice([{"binary_data_size": 10 ** 12}, {"binary_data_size": -1},
                                        {"binary_data_size": "8"}, {"shared_memory_region": "r"}, "x"])
        label = f"input parameters={inp['parameters']}"
    elif choice == 14:
        # BYTES payloads: non-UTF-8, NUL, huge strings, numbers
        req = valid_json("text")
        model = "text"
        words = rng.choice([["\u0000", "a\u0000b", ""], ["\udcff"], ["x" * 1_000_000], [1, 2, 3],
                            ["\u00e9\u4e2d\U0001f600"], [True, None, "x"]])
        req["inputs"][0]["data"] = words
        req["inputs"][0]["shape"] = [1, len(words)]
        raw = json.dumps(req, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        label = f"(to text) words={str(words)[:30]}"
        return label, raw, infer_path(model)
    elif choice == 15:
        inp["shape"] = [8 if inp["shape"][0] == 1 else inp["shape"][0]] + inp["shape"][1:]
        label = "shape batch 8, data for 1"
    else:
        # a batch bigger than max_batch_size, data consistent
        batch = 40
        inp["shape"] = [batch] + inp["shape"][1:]
        inp["data"] = inp["data"] * batch
        label = "batch 40 > max_batch_size"
    body = raw.encode() if isinstance(raw, str) else raw if raw is not None else json.dumps(req).encode()
    return label, body, infer_path(model)


def binary_semantic(rng, model):
    """A binary-extension request with one fault: (label, body, headers, path)."""
    body, hlen = binary_request(model, rng.random() < 0.5)
    header, blobs = json.loads(body[:hlen]), body[hlen:]
    choice = rng.randrange(9)
    claim = str(hlen).encode()
    if choice == 0:
        claim = rng.choice([str(len(body) + rng.randint(1, 10 ** 6)), "-1", "abc", "", "18446744073709551616",
                            " 1", "1e3", "0x10", str(hlen) + "," + str(hlen)]).encode()
        label = f"header length claim {claim!r}"
    elif choice == 1:
        claim = str(max(0, hlen + rng.randint(-20, 20))).encode()
        label = f"header length off: {claim!r} vs {hlen}"
    elif choice == 2:
        inp = rng.choice(header["inputs"])
        inp["parameters"]["binary_data_size"] += rng.choice([-1, 1, 10 ** 9, -inp["parameters"]["binary_data_size"]])
        label = f"binary_data_size {inp['parameters']['binary_data_size']}"
    elif choice == 3:
        blobs += random_bytes(rng, rng.randint(1, 64))
        label = "extra trailing bytes"
    elif choice == 4:
        blobs = blobs[:rng.randrange(len(blobs))]
        label = f"binary cut to {len(blobs)}"
    elif choice == 5:
        header["inputs"][0]["data"] = [1]
        label = "both data and binary_data_size"
    elif choice == 6:
        # text: BYTES elements with lying length prefixes
        model = "text"
        elements = rng.choice([struct.pack("<I", 2 ** 32 - 1) + b"abc", b"\x03\x00\x00", struct.pack("<I", 5) + b"ab",
                               b"".join(struct.pack("<I", 1) + bytes([c]) for c in b"\xff\xfe\x00"),
                               struct.pack("<I", 0) * 3, b""])
        header = {"inputs": [{"name": "words", "datatype": "BYTES", "shape": [1, 3],
                              "parameters": {"binary_data_size": len(elements)}}]}
        blobs = elements
        label = f"(to text) BYTES elements {elements[:12]!r}"
    elif choice == 7:
        inp = rng.choice(header["inputs"])
        inp["datatype"] = rng.choice(["FP64", "INT8", "BYTES", "BOOL", "FP16"])
        label = f"binary with datatype {inp['datatype']}"
    else:
        blobs, _ = mutate_bytes(rng, blobs)
        label = "binary bytes mutated"
    head = json.dumps(header).encode()
    if choice not in (0, 1):
        claim = str(len(head)).encode()
    return label, head + blobs, [(b"Inference-Header-Content-Length", claim)], infer_path(model)


ROUTES = [b"/v2", b"/v2/health/live", b"/v2/health/ready", b"/v2/models/stats", b"/v2/models/mlp",
          b"/v2/models/mlp/versions/1", b"/v2/models/mlp/ready", b"/v2/models/mlp/config",
          b"/v2/models/mlp/stats", b"/v2/models/mlp/infer", b"/v2/repository/index",
          b"/v2/repository/models/mlp/load", b"/v2/repository/models/mlp/unload",
          b"/v2/models/mlp/versions/1/infer", b"/metrics", b"/"]
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"TRACE", b"FOO", b"get"]


def random_path(rng):
    path = bytearray(rng.choice(ROUTES))
    for _ in range(rng.randint(0, 3)):
        op = rng.randrange(5)
        if op == 0:
            path += b"/" + bytes(rng.choice(b"abcXYZ019-._~%") for _ in range(rng.randint(1, 12)))
        elif op == 1:
            path += rng.choice([b"%00", b"%ff", b"%2e%2e", b"/..", b"//", b"?x=%zz", b"#f", b"%", b";a=b"])
        elif op == 2:
            path += b"?" + b"&".join(b"k%d=%d" % (i, i) for i in range(rng.randint(1, 50)))
        elif op == 3:
            path = path.replace(b"mlp", rng.choice([b"nope", b"MLP", b"mlp ", b"%6dlp", b"x" * 300]))
        else:
            path += b"a" * rng.choice([100, 4096, 20000])
    return bytes(path)


GZIP_BOMB = None  # built once: 100 MiB of zeros, gzipped (about 100 KiB)


def http_garbage(rng, kind):
    model = rng.choice(list(MODELS))
    ctype = [(b"Content-Type", b"application/json")]
    if kind == "http.random-body":
        body = random_bytes(rng, rng.choice([0, 1, 16, 256, 4096, 65536]))
        return Attempt(kind, f"{len(body)} random bytes to {model}", "http",
                       http_bytes(b"POST", infer_path(model), body, ctype))
    if kind == "http.json-mutate":
        body, ops = mutate_bytes(rng, json.dumps(valid_json(model)).encode())
        return Attempt(kind, f"{model}: {ops}", "http", http_bytes(b"POST", infer_path(model), body, ctype))
    if kind == "http.json-semantic":
        label, body, path = json_semantic(rng, model)
        return Attempt(kind, f"{model}: {label}", "http", http_bytes(b"POST", path, body, ctype))
    if kind == "http.binary":
        label, body, headers, path = binary_semantic(rng, model)
        return Attempt(kind, f"{model}: {label}", "http",
                       http_bytes(b"POST", path, body, headers + [(b"Content-Type", b"application/octet-stream")]))
    if kind == "http.encoding":
        choice = rng.randrange(5)
        valid = json.dumps(valid_json(model)).encode()
        body, enc, label = {
            0: (random_bytes(rng, 200), b"gzip", "gzip header on random bytes"),
            1: (gzip.compress(valid)[:-rng.randint(1, 20)], b"gzip", "truncated gzip of a valid body"),
            2: (zlib.compress(random_bytes(rng, 300)), b"deflate", "deflate of random bytes"),
            3: (valid, rng.choice([b"br", b"xyz", b"gzip, gzip", b"identity"]), "odd Content-Encoding"),
            4: (GZIP_BOMB, b"gzip", "gzip bomb: 100 MiB of zeros"),
        }[choice]
        return Attempt(kind, f"{model}: {label} ({enc.decode()})", "http",
                       http_bytes(b"POST", infer_path(model), body, ctype + [(b"Content-Encoding", enc)]))
    if kind == "http.path":
        method = rng.choice(METHODS)
        path = random_path(rng)
        body = random_bytes(rng, rng.choice([0, 0, 10, 300])) if rng.random() < 0.5 else b'{"ready": 3}'
        return Attempt(kind, f"{method.decode()} {path[:80]!r}", "http", http_bytes(method, path, body),
                       extra=method == b"HEAD")
    raise AssertionError(kind)


def header_token(rng, n):
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz-_0123456789!#$%&'*+.^`|~") for _ in range(n))


def raw_http_garbage(rng, kind):
    model = rng.choice(list(MODELS))
    valid = json.dumps(valid_json(model)).encode()
    if kind == "raw.request-line":
        choice = rng.randrange(6)
        data, label = {
            0: (random_bytes(rng, rng.randint(1, 512)), "random bytes"),
            1: (random_bytes(rng, rng.randint(1, 200)) + b"\r\n\r\n", "random line + CRLFCRLF"),
            2: (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + random_bytes(rng, 100), "h2 preface + random"),
            3: (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + random_bytes(rng, 64), "TLS ClientHello start"),
            4: (b"GET /" + b"a" * rng.choice([10_000, 100_000, 1_000_000]), "long line, no newline"),
            5: (rng.choice([b"POST /v2 HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\n\n", b"\r\n" * 1000,
                            b"GET\r\n\r\n", b" / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"]), "odd request line"),
        }[choice]
        return Attempt(kind, label, "raw-http", data)
    if kind == "raw.headers":
        choice = rng.randrange(8)
        path = infer_path(model)
        if choice == 0:
            headers = [(header_token(rng, rng.randint(1, 20)), bytes(rng.randrange(32, 256) for _ in range(30)))
                       for _ in range(rng.randint(1, 20))]
            label = "random header names/values"
        elif choice == 1:
            headers = [(b"X-Junk-%d" % i, b"v") for i in range(rng.choice([100, 1000, 5000]))]
            label = f"{len(headers)} headers"
        elif choice == 2:
            headers = [(b"X-Big", b"v" * rng.choice([10_000, 100_000, 1_000_000]))]
            label = f"header of {len(headers[0][1])} bytes"
        elif choice == 3:
            headers = [(b"Content-Length", rng.choice([b"-1", b"abc", b"99999999999999999999", b"1, 2"]))]
            data = http_bytes(b"POST", path, valid, headers, content_length=False)
            return Attempt(kind, f"Content-Length {headers[0][1]!r}", "raw-http", data)
        elif choice == 4:
            chunked = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nx\r\n",
                                  b"%x\r\n" % len(valid) + valid + b"\r\n0\r\n\r\n", b"5\r\nab"])
            data = http_bytes(b"POST", path, chunked, [(b"Transfer-Encoding", b"chunked")], content_length=False)
            return Attempt(kind, f"chunked body {chunked[:20]!r}", "raw-http", data)
        elif choice == 5:
            data = http_bytes(b"POST", path, valid, [(b"Transfer-Encoding", b"chunked"),
                                                     (b"Content-Length", b"%d" % len(valid))])
            return Attempt(kind, "both Transfer-Encoding and Content-Length", "raw-http", data)
        elif choice == 6:
            headers = [(b"Expect", b"100-continue"), (b"Inference-Header-Content-Length", b"\xff\xfe")]
            label = "Expect + non-ASCII header length"
        else:
            data = b"POST " + path + b" HTTP/1.1\r\nHost x\r\nBad Header : v\r\n : empty\r\n\r\n"
            return Attempt(kind, "malformed header lines", "raw-http", data)
        return Attempt(kind, label, "raw-http", http_bytes(b"POST", path, valid, headers))
    if kind == "raw.mid-body":
        declared = len(valid) + rng.choice([0, 100, 10 ** 6])
        head = http_bytes(b"POST", infer_path(model), b"", [(b"Content-Length", b"%d" % declared)],
                          content_length=False)
        cut = rng.randrange(len(valid))
        mode = rng.choice(["abort", "reset"])
        return Attempt(kind, f"{model}: {cut} of {declared} body bytes, then {mode}", mode, head + valid[:cut])
    raise AssertionError(kind)


def h2_frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name, value):
    def string(s):
        return (bytes([len(s)]) if len(s) < 127 else b"\x7f" + varint(len(s) - 127)) + s
    return b"\x00" + string(name) + string(value)


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def grpc_raw_garbage(rng):
    choice = rng.randrange(6)
    settings = h2_frame(4, 0, 0, b"")
    if choice == 0:
        return "random bytes", random_bytes(rng, rng.randint(1, 1024))
    if choice == 1:
        return "preface + random", H2_PREFACE + random_bytes(rng, rng.randint(1, 512))
    if choice == 2:
        frames = b"".join(h2_frame(rng.randrange(12), rng.randrange(256), rng.choice([0, 1, 3, 2 ** 31 - 1]),
                                   random_bytes(rng, rng.randint(0, 64))) for _ in range(rng.randint(1, 8)))
        return "preface + settings + random frames", H2_PREFACE + settings + frames
    headers = b"".join(hpack_literal(k, v) for k, v in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", (SERVICE + "ModelInfer").encode()),
        (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    if choice == 3:
        return "preface + garbage HPACK block", H2_PREFACE + settings + h2_frame(1, 4, 1, random_bytes(rng, 40))
    message = grpc_request(rng.choice(list(MODELS)))
    if choice == 5:
        value = rng.choice([b"99999999H", b"0n", b"1n", b"-1S", b"abc", b"", b"999999999S", b"1m" * 100])
        return (f"h2 ModelInfer, grpc-timeout {value[:20]!r}",
                H2_PREFACE + settings + h2_frame(1, 4, 1, headers + hpack_literal(b"grpc-timeout", value))
                + h2_frame(0, 1, 1, b"\x00" + struct.pack(">I", len(message)) + message))
    prefix, label = rng.choice([(b"\x00" + struct.pack(">I", 2 ** 32 - 1), "length 4 GiB"),
                                (b"\x01" + struct.pack(">I", len(message)), "compressed flag, no encoding"),
                                (b"\x00" + struct.pack(">I", len(message) + 100), "length past the data"),
                                (b"\x07" + struct.pack(">I", len(message)), "flag byte 7")])
    end = rng.choice([0, 1])
    return (f"h2 ModelInfer, {label}, END_STREAM={end}",
            H2_PREFACE + settings + h2_frame(1, 4, 1, headers) + h2_frame(0, end, 1, prefix + message))


OTHER_METHODS = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
                 "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
                 "SystemSharedMemoryStatus", "CudaSharedMemoryRegister", "TraceSetting", "LogSettings"]


def grpc_semantic(rng):
    model = rng.choice(list(MODELS))
    name, datatype, shape, values = MODELS[model][0]
    choice = rng.randrange(14)
    head = pb_len(1, model.encode())
    raw = lambda: b"".join(pb_len(7, to_raw(d, v)) for _, d, _, v in MODELS[model])  # noqa: E731
    rest = b"".join(pb_input(n, d, s) for n, d, s, _ in MODELS[model][1:])
    if choice == 0:
        shape = rng.choice([s for s in SHAPES if isinstance(s, list) and all(isinstance(x, int) and
                                                                           -(2 ** 63) <= x < 2 ** 64 for x in s)])
        return f"{model}: shape {shape}", head + pb_input(name, datatype, shape) + rest + raw()
    if choice == 1:
        dt = rng.choice([d for d in DATATYPES if isinstance(d, str)])
        return f"{model}: datatype {dt[:20]!r}", head + pb_input(name, dt, shape) + rest + raw()
    if choice == 2:
        extra = rng.choice([0, 1, 2])
        blobs = b"".join(pb_len(7, to_raw(d, v)) for _, d, _, v in MODELS[model][:len(MODELS[model]) - 1 + extra])
        return f"{model}: raw_input_contents count off", head + b"".join(
            pb_input(n, d, s) for n, d, s, _ in MODELS[model]) + blobs + (pb_len(7, b"x") if extra == 2 else b"")
    if choice == 3:
        blob = to_raw(datatype, values)
        blob = blob[:rng.randrange(len(blob))] if rng.random() < 0.5 else blob + b"\x00" * rng.randint(1, 7)
        others = b"".join(pb_len(7, to_raw(d, v)) for _, d, _, v in MODELS[model][1:])
        return (f"{model}: raw size {len(blob)}", head + b"".join(pb_input(n, d, s) for n, d, s, _ in MODELS[model])
                + pb_len(7, blob) + others)
    if choice == 4:
        wrong = rng.choice(["BOOL", "INT32", "INT64", "FP64", "BYTES", "UINT64"])
        return (f"{model}: {datatype} values in {wrong} contents",
                head + pb_input(name, datatype, shape, pb_contents(wrong, [1] * 4 if wrong != "BYTES" else ["a"]))
                + b"".join(pb_input(n, d, s, pb_contents(d, v)) for n, d, s, v in MODELS[model][1:]))
    if choice == 5:
        return f"{model}: contents and raw both", head + pb_input(name, datatype, shape, pb_contents(
            datatype, values)) + rest + raw()
    if choice == 6:
        elements = rng.choice([struct.pack("<I", 2 ** 32 - 1) + b"abc", b"\x03\x00", struct.pack("<I", 9) + b"ab",
                               b"".join(struct.pack("<I", 1) + bytes([c]) for c in b"\xff\xfe\x00")])
        return (f"text: BYTES raw {elements[:10]!r}",
                pb_len(1, b"text") + pb_input("words", "BYTES", [1, 3]) + pb_len(7, elements))
    if choice == 7:
        words = rng.choice([[b"\xff\xfe", b"\x00", b""], [b"x" * 1_000_000], [b"\xc3"], [b"a\x00b"] * 3])
        return (f"text: bytes_contents {str(words)[:30]}",
                pb_len(1, b"text") + pb_input("words", "BYTES", [1, len(words)], pb_contents("BYTES", words)))
    if choice == 8:
        params = rng.choice([pb_param(4, "timeout", "int64", -1), pb_param(4, "timeout", "string", "1s"),
                             pb_param(4, "timeout", "uint64", 1), pb_param(4, "timeout", "double", 1.5),
                             pb_param(4, "sequence_id", "int64", 5), pb_param(4, "priority", "bool", 1),
                             pb_param(4, "timeout", "int64", 2 ** 63 - 1), pb_len(4, b"\x12\x00"),
                             pb_param(4, "timeout", "uint64", 2 ** 64 - 1)])
        return f"{model}: parameters {params[:24]!r}", grpc_request(model) + params
    if choice == 9:
        real = rng.choice(list(EXPECTED[model]))
        label, outputs = rng.choice([
            ("unknown output 'nope'", pb_len(6, pb_len(1, b"nope"))),
            ("10000 outputs 'x'", pb_len(6, pb_len(1, b"x")) * 10000),
            (f"output '{real}' with classification", pb_len(6, pb_len(1, real.encode()) + pb_param(
                2, "classification", "int64", 3))),
            (f"output '{real}' requested twice", pb_len(6, pb_len(1, real.encode())) * 2)])
        return f"{model}: {label}", grpc_request(model) + outputs
    if choice == 10:
        version = rng.choice(["0", "-1", "2", "99999999999999999999", "one", "1 "])
        return f"{model}: version {version!r}", grpc_request(model, version=version)
    if choice == 11:
        other = rng.choice(["nope", "", "MLP", "\u00e9" * 3, "x" * 100_000])
        return f"model name {other[:20]!r}", pb_len(1, other.encode()) + grpc_request(model)[len(head):]
    if choice == 12:
        return f"{model}: field with the wrong wire type", grpc_request(model) + rng.choice(
            [pb_int(1, 5), pb_int(5, 1), varint(5 << 3 | 1) + b"\x00" * 8, varint(7 << 3 | 5) + b"\x00" * 4,
             b"\xff" * 11, varint(3 << 3 | 2) + b"\xff\xfe"])
    return f"{model}: input listed twice", grpc_request(model) + pb_input(name, datatype, shape) + pb_len(
        7, to_raw(datatype, values))


def grpc_garbage(rng, kind):
    model = rng.choice(list(MODELS))
    if kind == "grpc.random":
        data = random_bytes(rng, rng.choice([1, 8, 64, 512, 4096]))
        return Attempt(kind, f"{len(data)} random bytes", "grpc", data, SERVICE + "ModelInfer")
    if kind == "grpc.mutate":
        data, ops = mutate_bytes(rng, grpc_request(model, typed=rng.random() < 0.5))
        return Attempt(kind, f"{model}: {ops}", "grpc", data, SERVICE + "ModelInfer")
    if kind == "grpc.semantic":
        label, data = grpc_semantic(rng)
        return Attempt(kind, label, "grpc", data, SERVICE + "ModelInfer")
    if kind == "grpc.other":
        method = rng.choice(OTHER_METHODS + ["Nope", "../ModelInfer"])
        path = "/grpc.health.v1.Health/Check" if rng.random() < 0.1 else SERVICE + method
        data = random_bytes(rng, rng.choice([0, 3, 30])) if rng.random() < 0.5 else pb_len(1, model.encode())
        return Attempt(kind, f"{path}: {data[:20]!r}", "grpc", data, path)
    if kind == "grpc.stream":
        messages = []
        for _ in range(rng.randint(1, 5)):
            r = rng.random()
            messages.append(grpc_request(model) if r < 0.4 else mutate_bytes(rng, grpc_request(model))[0]
                            if r < 0.7 else grpc_semantic(rng)[1] if r < 0.9 else random_bytes(rng, 40))
        return Attempt(kind, f"stream of {len(messages)} messages ({model})", "grpc-stream", messages,
                       SERVICE + "ModelStreamInfer")
    if kind == "raw.grpc":
        label, data = grpc_raw_garbage(rng)
        return Attempt(kind, label, "raw-grpc", data)
    raise AssertionError(kind)


KINDS = {  # kind: weight
    "http.random-body": 6, "http.json-mutate": 10, "http.json-semantic": 14, "http.binary": 8,
    "http.encoding": 2, "http.path": 6, "raw.request-line": 3, "raw.headers": 3, "raw.mid-body": 3,
    "grpc.random": 6, "grpc.mutate": 10, "grpc.semantic": 12, "grpc.other": 4, "grpc.stream": 3, "raw.grpc": 3,
}


def generate(rng, kind):
    if kind.startswith("grpc.") or kind == "raw.grpc":
        return grpc_garbage(rng, kind)
    if kind.startswith("http."):
        return http_garbage(rng, kind)
    return raw_http_garbage(rng, kind)


# ---------------------------------------------------------------------------
# The run: workers send garbage and valid requests; a Tally keeps the score.

class Tally:
    """Counts shared by the workers: garbage by kind and answer, the faults,
    hangs and client errors with what caused them, valid requests by route."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = collections.Counter()
        self.codes = collections.defaultdict(collections.Counter)
        self.faults, self.hangs, self.valid_failures, self.client_errors = [], [], [], []
        self.valid = collections.Counter()
        self.valid_ok = collections.Counter()

    def record(self, attempt, code, detail=""):
        fault = is_fault(code)
        with self.lock:
            self.sent[attempt.kind] += 1
            self.codes[attempt.kind][code] += 1
            if code == "hang":
                self.hangs.append((attempt, code, detail))
            elif code == "client-error":
                self.client_errors.append((attempt, code, detail))
            elif fault:
                self.faults.append((attempt, code, detail))

    def record_valid(self, route, error):
        with self.lock:
            self.valid[route] += 1
            if error is None:
                self.valid_ok[route] += 1
            else:
                self.valid_failures.append((route, error))


def is_fault(code):
    if code.startswith("HTTP "):
        status = int(code.split()[1]) if code.split()[1].isdigit() else 0
        return status >= 500 and status not in (501, 503, 504)
    return code in FAULT_GRPC or code == "dropped"


def grpc_code(error, elapsed, timeout):
    code = error.code().name if error.code() else "UNKNOWN"
    details = error.details() or ""
    if code == "DEADLINE_EXCEEDED" and elapsed >= 0.95 * timeout:
        return "hang", details
    return code, details


class Worker(threading.Thread):
    """One client: its own seeded generator, keep-alive HTTP connection and
    gRPC channel; sends until the deadline or the shared budget runs out."""

    def __init__(self, index, server, args, tally, stop_at, budget, reference):
        super().__init__(daemon=True)
        self.rng = random.Random(args.seed * 1000 + index)
        self.server, self.args, self.tally, self.stop_at, self.budget = server, args, tally, stop_at, budget
        self.reference = reference
        self.http = HttpConn(server.http, args.timeout)
        self.channel = grpc.insecure_channel(server.grpc, options=[("grpc.max_receive_message_length", 64 * MiB)])
        self.kinds, self.weights = list(KINDS), list(KINDS.values())
        self.index = index

    def run(self):
        step = 0
        try:
            while time.monotonic() < self.stop_at and self.budget.take():
                step += 1
                if step % 8 == 0:  # every eighth request is a valid one
                    route = VALID_ROUTES[(step // 8 + self.index) % len(VALID_ROUTES)]
                    valid_request(self.rng.choice(list(MODELS)), route, self.http, self.channel, self.args.timeout,
                                  self.tally, self.reference)
                    continue
                attempt = generate(self.rng, self.rng.choices(self.kinds, self.weights)[0])
                try:
                    code, detail = self.send(attempt)
                except Exception as e:  # a bug here, not in the server
                    code, detail = "client-error", f"{type(e).__name__}: {e}"
                self.tally.record(attempt, code, detail)
                if code in ("hang", "dropped") and not self.server.alive():
                    return
        finally:
            self.http.close()
            self.channel.close()

    def send(self, attempt):
        timeout = self.args.timeout
        if attempt.transport == "http":
            try:
                status, _, body = self.http.request(attempt.payload, head=bool(attempt.extra))
                return f"HTTP {status}", body[:200].decode("latin-1")
            except Hang:
                return "hang", "no HTTP answer"
            except Dropped as e:
                return "dropped", f"connection ended without an answer ({e})"
        if attempt.transport in ("raw-http", "raw-grpc", "abort", "reset"):
            address = self.server.grpc if attempt.transport == "raw-grpc" else self.server.http
            mode = attempt.transport if attempt.transport in ("abort", "reset") else "half-close"
            try:
                return raw_exchange(address, attempt.payload, timeout, mode), ""
            except Hang:
                return "hang", "connection neither answered nor closed"
            except Dropped as e:
                return "dropped", str(e)
        start = time.monotonic()
        if attempt.transport == "grpc":
            try:
                self.channel.unary_unary(attempt.extra)(attempt.payload, timeout=timeout)
                return "OK", ""
            except grpc.RpcError as e:
                return grpc_code(e, time.monotonic() - start, timeout)
        if attempt.transport == "grpc-stream":
            try:
                answers = list(self.channel.stream_stream(attempt.extra)(iter(attempt.payload), timeout=timeout))
                return "OK", f"{len(answers)} answers"
            except grpc.RpcError as e:
                return grpc_code(e, time.monotonic() - start, timeout)
        raise AssertionError(attempt.transport)


VALID_ROUTES = ("http-json", "http-binary", "grpc", "grpc-typed")


def valid_request(model, route, http, channel, timeout, tally, reference, record=True):
    """Sends the model's valid request by `route`; returns its outputs, or
    records the failure."""
    outputs, error = None, None
    try:
        if route == "http-json":
            body = json.dumps(valid_json(model)).encode()
            status, _, body = http.request(http_bytes(b"POST", infer_path(model), body,
                                                      [(b"Content-Type", b"application/json")]))
            if status != 200:
                raise ValueError(f"HTTP {status}: {body[:200]!r}")
            outputs = {o["name"]: (o["shape"], o["data"]) for o in json.loads(body)["outputs"]}
        elif route == "http-binary":
            payload, hlen = binary_request(model)
            status, headers, body = http.request(http_bytes(
                b"POST", infer_path(model), payload, [(b"Inference-Header-Content-Length", b"%d" % hlen)]))
            if status != 200:
                raise ValueError(f"HTTP {status}: {body[:200]!r}")
            n = int(headers.get("inference-header-content-length", len(body)))
            head, blob, outputs = json.loads(body[:n]), body[n:], {}
            for o in head["outputs"]:
                if "data" in o:
                    outputs[o["name"]] = (o["shape"], o["data"])
                else:
                    size = o["parameters"]["binary_data_size"]
                    outputs[o["name"]] = (o["shape"], from_raw(o["datatype"], blob[:size]))
                    blob = blob[size:]
        else:
            start = time.monotonic()
            try:
                answer = channel.unary_unary(SERVICE + "ModelInfer")(
                    grpc_request(model, typed=route == "grpc-typed"), timeout=timeout)
            except grpc.RpcError as e:
                code, details = grpc_code(e, time.monotonic() - start, timeout)
                raise ValueError(f"gRPC {code}: {details[:200]}")
            outputs = decode_grpc_response(answer)
        if record:
            error = check_outputs(model, outputs, reference)
    except Hang:
        error = f"no answer within {timeout} s"
    except Dropped as e:
        error = f"connection ended without an answer ({e})"
    except (ValueError, KeyError, TypeError, struct.error) as e:
        error = str(e)
    if record:
        tally.record_valid(f"{model}/{route}", error)
    return outputs, error


class Budget:
    """The hard cap on requests, shared by the workers."""

    def __init__(self, total):
        self.left, self.lock = total, threading.Lock()

    def take(self):
        with self.lock:
            self.left -= 1
            return self.left >= 0


# ---------------------------------------------------------------------------

def preview(data, n=240):
    """The start and the end of what was sent."""
    if isinstance(data, list):
        return f"[{len(data)} messages] " + preview(data[0], n) if data else "[]"
    if len(data) <= n:
        return repr(data)
    return f"{data[:n // 2]!r} ... {data[-n // 2:]!r} ({len(data)} bytes)"


def report_examples(title, items, dump, limit=3):
    print(f"{title}: {len(items)}")
    by_label = collections.Counter(f"[{a.kind}] {code}: {a.label}" for a, code, _ in items)
    for label, n in by_label.most_common(20):
        print(f"  - {n} x {label[:150]}")
    if items:
        print(f"  examples (at most {limit} per kind and code):")
    shown = collections.Counter()
    for i, (attempt, code, detail) in enumerate(items):
        key = (attempt.kind, code)
        shown[key] += 1
        if shown[key] > limit:
            continue
        print(f"  [{attempt.kind}] {code}: {attempt.label}")
        print(f"      answer: {detail[:200]!r}")
        print(f"      sent:   {preview(attempt.payload)}")
        if dump:
            os.makedirs(dump, exist_ok=True)
            path = os.path.join(dump, f"{title.split()[0]}-{i}-{attempt.kind}.bin")
            with open(path, "wb") as f:
                f.write(b"".join(attempt.payload) if isinstance(attempt.payload, list) else attempt.payload)
            print(f"      saved:  {path}")


def grpc_server_ready(channel):
    try:
        answer = channel.unary_unary(SERVICE + "ServerReady")(b"", timeout=5)
        return any(num == 1 and value == 1 for num, _, value in pb_fields(answer))
    except grpc.RpcError as e:
        return e.code().name


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long to send garbage")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=200_000, help="hard cap on requests")
    parser.add_argument("--timeout", type=float, default=5, help="per-request timeout; past it, a hang")
    parser.add_argument("--binary", help="ferroserve binary (default target/release/ferroserve)")
    parser.add_argument("--repository", default=os.path.join(harness.ROOT, "models"))
    parser.add_argument("--log", help="server log file (default: a temporary file)")
    parser.add_argument("--dump", help="write the full bytes of each fault and hang here")
    parser.add_argument("--kinds", help="comma-separated garbage kinds to send (default: all)")
    args = parser.parse_args()
    if args.kinds:
        unknown = set(args.kinds.split(",")) - set(KINDS)
        if unknown:
            parser.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        for kind in set(KINDS) - set(args.kinds.split(",")):
            del KINDS[kind]
    if args.binary:
        harness.SERVER = os.path.abspath(args.binary)
    log = args.log or tempfile.mkstemp(prefix="ferroserve-garbage-", suffix=".log")[1]

    global GZIP_BOMB
    GZIP_BOMB = gzip.compress(b"\x00" * (100 * MiB), compresslevel=9)
    tally = Tally()
    reference = {}
    failures = []
    print(f"garbage: seed {args.seed}, {args.seconds:g} s, {args.workers} workers, cap {args.max_requests}, "
          f"timeout {args.timeout:g} s, server {harness.SERVER}, log {log}", flush=True)
    # The run judges robustness, not latency: on a small machine that the
    # garbage saturates, the cnn's runs stretch past the default 25 ms
    # SLO and admission would rightly refuse valid requests. A 250 ms SLO
    # keeps admission on, and every valid request answerable.
    with harness.Server(args.repository, "--slo-latency-seconds", "0.25", log=log) as server:
        # Warm-up: the references for mlp and cnn, and every route once.
        http = HttpConn(server.http, args.timeout)
        channel = grpc.insecure_channel(server.grpc)
        for model in MODELS:
            outputs, error = valid_request(model, "http-json", http, channel, args.timeout, tally, reference,
                                           record=False)
            if error:
                sys.exit(f"warm-up request to {model} failed: {error}")
            if EXPECTED[model][next(iter(EXPECTED[model]))][1] is None:
                reference[model] = outputs[next(iter(EXPECTED[model]))][1]
            for route in VALID_ROUTES:
                valid_request(model, route, http, channel, args.timeout, tally, reference)
        rss_before = server.rss_kib()

        # The garbage. Its first fifth (at most 5 s) warms the allocator up:
        # the baseline for the leak check is the highest RSS seen in it.
        started = time.monotonic()
        warm_until = started + min(5, args.seconds / 5)
        budget = Budget(args.max_requests)
        workers = [Worker(i, server, args, tally, started + args.seconds, budget, reference)
                   for i in range(args.workers)]
        for w in workers:
            w.start()
        samples, warm_samples, join_by = [], [rss_before], started + args.seconds + 10 * args.timeout + 30
        while any(w.is_alive() for w in workers) and time.monotonic() < join_by and server.alive():
            time.sleep(0.05)
            try:
                rss = server.rss_kib()
            except OSError:
                break
            if time.monotonic() < warm_until:
                warm_samples.append(rss)
            if time.monotonic() - started >= len(samples) * args.seconds / 10:
                samples.append(rss)
        rss_start = max(warm_samples)
        for w in workers:
            w.join(max(0, join_by - time.monotonic()))
        elapsed = time.monotonic() - started
        stuck = sum(w.is_alive() for w in workers)

        # After the storm: every model still answers, and the server is well.
        alive = server.alive()
        for model in MODELS:
            for route in VALID_ROUTES:
                if alive:
                    valid_request(model, route, http, channel, args.timeout, tally, reference)
        rss_end = server.rss_kib() if alive else 0
        rss_peak = server.peak_rss_kib() if alive else 0
        live = server.http_status("/v2/health/live")
        ready = server.http_status("/v2/health/ready")
        grpc_ready = grpc_server_ready(channel) if alive else None
        try:
            metrics_lines = len([line for line in server.metrics_text().splitlines() if line and line[0] != "#"])
            metrics = f"200, {metrics_lines} series"
        except OSError as e:
            metrics_lines, metrics = 0, f"failed ({e})"
        http.close()
        channel.close()
        code, seconds = server.terminate(30) if alive else (server.proc.returncode, 0)

    # ------------------------------------------------------------------ report
    total = sum(tally.sent.values())
    print(f"\nsent {total} garbage requests in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f}/s), by kind:")
    for kind in KINDS:
        codes = " ".join(f"{c}={n}" for c, n in tally.codes[kind].most_common())
        print(f"  {kind:20} {tally.sent[kind]:7}  {codes}")
    overall = collections.Counter()
    for counter in tally.codes.values():
        overall.update(counter)
    print("answers by code: " + " ".join(f"{c}={n}" for c, n in sorted(overall.items())))
    report_examples("server faults", tally.faults, args.dump)
    report_examples("hangs", tally.hangs, args.dump)
    if tally.client_errors:
        report_examples("client errors (bugs in garbage.py)", tally.client_errors, None)
    valid_total, valid_ok = sum(tally.valid.values()), sum(tally.valid_ok.values())
    by_route = collections.Counter()
    for route, n in tally.valid.items():
        by_route[route.split("/")[1]] += n
    print(f"valid requests: {valid_ok}/{valid_total} OK (" + ", ".join(f"{r} {n}" for r, n in sorted(
        by_route.items())) + ")")
    for route, error in tally.valid_failures[:10]:
        print(f"  {route}: {error[:300]}")
    growth = rss_end - rss_start
    leak = alive and growth > 0.5 * rss_start + 64 * 1024
    end = (f"end {rss_end / 1024:.1f} MiB ({growth / 1024:+.1f} MiB, {100 * growth / max(rss_start, 1):+.1f}%), "
           f"peak (VmHWM) {rss_peak / 1024:.1f} MiB" if alive else "end n/a (the server is gone)")
    print(f"memory: RSS before garbage {rss_before / 1024:.1f} MiB, after warm-up (high-water of the first "
          f"{min(5, args.seconds / 5):g} s) {rss_start / 1024:.1f} MiB, {end}"
          + ("  <-- LEAK? over 50% + 64 MiB" if leak else ""))
    print("RSS during the run (MiB): " + " ".join(f"{kib / 1024:.0f}" for kib in samples))
    print(f"server at the end: alive {alive}, live {live}, ready {ready}, gRPC ServerReady {grpc_ready}, "
          f"/metrics {metrics}")
    with open(log, errors="replace") as f:
        text = f.read()
    panics = [line for line in text.splitlines() if "panicked" in line]
    print(f"log: {len(panics)} panic lines, {text.count(' ERROR ')} ERROR lines ({log})")
    for line in panics[:5]:
        print(f"  {line[:300]}")
    print(f"SIGTERM: exit code {code} after {seconds:.2f} s" if alive else
          f"SIGTERM: not sent, the server had already exited with code {code}")

    checks = [
        (alive, "the server died"), (live == 200, f"live answered {live}"), (ready == 200, f"ready answered {ready}"),
        (grpc_ready is True, f"gRPC ServerReady {grpc_ready}"), (metrics_lines > 0, f"/metrics {metrics}"),
        (not tally.hangs, f"{len(tally.hangs)} hangs"), (not stuck, f"{stuck} workers stuck"),
        (not tally.faults, f"{len(tally.faults)} server faults"),
        (valid_ok == valid_total, f"{valid_total - valid_ok} valid requests failed"),
        (not panics, "panics in the log"), (not tally.client_errors, "errors in garbage.py itself"),
        (not leak, "RSS grew over 50% + 64 MiB"),
        (code == 0, f"exit code {code} after SIGTERM"),
    ]
    failures = [why for ok, why in checks if not ok]
    print("result: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    if not failures and not args.log:
        os.unlink(log)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
