"""The KServe Python SDK's calls against a running ferroserve.

Run with the KServe venv's Python (.deps/kserve-venv, made by
deploy/setup.sh test): the SDK needs protobuf 6, tritonclient 4, so they
cannot share one venv. tests/python/test_kserve.py runs this script and
checks what it prints.

    kserve_calls.py HTTP_HOSTPORT GRPC_HOSTPORT INPUTS.npz

INPUTS.npz holds, per model, its inputs as arrays named "<model>/<input>"
(BYTES inputs as object arrays). The script prints one JSON object: health
answers over REST and gRPC, metadata, each model's outputs over REST (JSON
and binary tensors) and gRPC (as base64 of the raw little-endian bytes, or
lists of strings for BYTES), the errors it got for bad calls, and what the
repository calls (unload, infer while unloaded, load) answered.
"""

import asyncio
import base64
import json
import sys
import time

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
    np.dtype(object): "BYTES",
}


def encode(output):
    """An output as {datatype, shape, data}: raw bytes in base64, or strings."""
    array = output.as_numpy()
    if output.datatype == "BYTES":
        data = [v.decode() if isinstance(v, bytes) else str(v) for v in array.flatten()]
    else:
        data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return {"datatype": output.datatype, "shape": list(output.shape), "data": data}


def request(model, feeds, binary):
    inputs = []
    for name, array in feeds.items():
        infer_input = InferInput(name, list(array.shape), DATATYPES[array.dtype])
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    parameters = {"binary_data_output": True} if binary else None
    return InferRequest(model_name=model, infer_inputs=inputs, parameters=parameters)


async def error_of(call):
    """What a call that should fail raised: HTTP status or gRPC code."""
    try:
        await call
    except httpx.HTTPStatusError as e:
        return {"status": e.response.status_code, "message": str(e)}
    except grpc.aio.AioRpcError as e:
        return {"code": e.code().name, "message": e.details()}
    return None


async def main(http, grpc_target, inputs_path):
    loaded = np.load(inputs_path, allow_pickle=True)
    feeds = {}
    for key in loaded.files:
        model, name = key.split("/", 1)
        feeds.setdefault(model, {})[name] = loaded[key]
    base = f"http://{http}"
    out = {"rest": {}, "grpc": {}, "metadata": {}, "errors": {}, "repository": {}}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    # The SDK's gRPC client, with its default retry policy (UNAVAILABLE is
    # retried, three attempts).
    client = InferenceGRPCClient(grpc_target, timeout=30)
    out["rest"]["live"] = await rest.is_server_live(base)
    out["rest"]["ready"] = await rest.is_server_ready(base)
    out["grpc"]["live"] = await client.is_server_live()
    out["grpc"]["ready"] = await client.is_server_ready()
    out["rest"]["model_ready"] = {m: await rest.is_model_ready(base, m) for m in [*feeds, "no_such_model"]}
    out["grpc"]["model_ready"] = {m: await client.is_model_ready(m) for m in [*feeds, "no_such_model"]}

    out["rest"]["json"], out["rest"]["binary"], out["grpc"]["infer"] = {}, {}, {}
    for model, model_feeds in feeds.items():
        for binary, key in ((False, "json"), (True, "binary")):
            response = await rest.infer(base, request(model, model_feeds, binary), model_name=model)
            out["rest"][key][model] = {o.name: encode(o) for o in response.outputs}
        response = await client.infer(request(model, model_feeds, False))
        out["grpc"]["infer"][model] = {o.name: encode(o) for o in response.outputs}

    channel = grpc.aio.insecure_channel(grpc_target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    server = await stub.ServerMetadata(pb.ServerMetadataRequest())
    out["metadata"]["server"] = {"name": server.name, "extensions": list(server.extensions)}
    for model in feeds:
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        out["metadata"][model] = {
            "name": meta.name,
            "platform": meta.platform,
            "inputs": [i.name for i in meta.inputs],
            "outputs": [o.name for o in meta.outputs],
        }

    first = next(iter(feeds))
    bad = {name: np.concatenate([array, array], axis=-1) for name, array in feeds[first].items()}
    out["errors"]["rest_unknown_model"] = await error_of(
        rest.infer(base, request(first, feeds[first], False), model_name="no_such_model")
    )
    out["errors"]["grpc_unknown_model"] = await error_of(client.infer(request("no_such_model", feeds[first], False)))
    out["errors"]["rest_bad_shape"] = await error_of(rest.infer(base, request(first, bad, False), model_name=first))
    out["errors"]["grpc_bad_shape"] = await error_of(client.infer(request(first, bad, False)))

    # The repository through KServe's own messages: model_name in field 1.
    repo = out["repository"]
    unloaded = await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=first))
    repo["unload"] = {"model_name": unloaded.model_name, "isUnloaded": unloaded.isUnloaded}
    repo["ready_after_unload"] = await client.is_model_ready(first)
    started = time.monotonic()
    repo["infer_unloaded"] = await error_of(client.infer(request(first, feeds[first], False)))
    repo["infer_unloaded_seconds"] = time.monotonic() - started
    loaded_back = await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=first))
    repo["load"] = {"model_name": loaded_back.model_name, "isLoaded": loaded_back.isLoaded}
    repo["ready_after_load"] = await client.is_model_ready(first)
    repo["unload_unknown"] = await error_of(
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="no_such_model"))
    )

    await channel.close()
    await client.close()
    await rest.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
