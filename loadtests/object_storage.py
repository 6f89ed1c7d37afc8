#!/usr/bin/env python3
"""What a repository on object storage costs, against a real S3 server
(SeaweedFS from .deps/seaweedfs, as the tests use it), with the release
build:

    .deps/venv/bin/python loadtests/object_storage.py [--size-mb 500] [--models 100]

1. Download: one object of --size-mb random bytes, read by boto3's own
   transfer manager (download_file, its defaults) and then by ferroserve's
   mirror (a server polling an empty prefix, the object copied in): MB/s
   of each, and the server's RSS growth while it downloads (sampled every
   20 ms).
2. An unchanged repository of --models models: what a poll costs (syncs,
   bytes read, time per sync), and a restart on the warm cache (bytes read).

Loopback only; the processes stop at the end.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtests"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
import harness  # noqa: E402
from s3server import seaweedfs  # noqa: E402

BUCKET = "bench"


def wait_for(what, check, timeout, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    sys.exit(f"timed out waiting for {what}")


def download(store, folder, size_mb):
    s3 = store.client()
    big = folder / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    s3.upload_file(str(big), BUCKET, "upload/big/1/model.onnx")
    size = big.stat().st_size
    started = time.monotonic()
    s3.download_file(BUCKET, "upload/big/1/model.onnx", str(folder / "by-boto3.bin"))
    boto = size / (time.monotonic() - started) / 1e6
    (folder / "by-boto3.bin").unlink()
    flags = ["--model-control-mode", "poll", "--repository-poll-secs", "1",
             "--repository-cache-dir", str(folder / "cache")]  # fmt: skip
    with harness.Server(f"s3://{BUCKET}/served", *flags) as server:
        before = server.rss_kib()
        sync_before = server.metric("ferroserve_repository_sync_seconds_sum")
        s3.copy_object(Bucket=BUCKET, Key="served/big/1/model.onnx",
                       CopySource={"Bucket": BUCKET, "Key": "upload/big/1/model.onnx"})  # fmt: skip
        peak, first = before, None
        while server.metric("ferroserve_repository_downloaded_bytes_total") < size:
            if first is None and server.metric("ferroserve_repository_downloaded_bytes_total") > 0:
                first = time.monotonic()
            peak = max(peak, server.rss_kib())
            time.sleep(0.02)
        done = time.monotonic()
        # Installed, the load is tried (random bytes: it fails, as it
        # should). Syncs since the copy: the one that downloaded, and
        # listings of a few milliseconds.
        wait_for("the load after the sync", lambda: server.metric("ferroserve_model_loads_total", model="big") >= 1, 60)
        took = server.metric("ferroserve_repository_sync_seconds_sum") - sync_before
        mirror = size / took / 1e6
        print(f"download of {size_mb} MB: boto3 {boto:.0f} MB/s, ferroserve {mirror:.0f} MB/s "
              f"({mirror / boto:.2f}x; first byte to last {done - (first or done):.2f} s, sync {took:.2f} s); "
              f"RSS growth {(peak - before) / 1024:.1f} MiB")  # fmt: skip


def many(store, folder, models):
    s3 = store.client()
    onnx = (ROOT / "tests" / "models" / "mlp_auto" / "1" / "model.onnx").read_bytes()
    for i in range(models):
        s3.put_object(Bucket=BUCKET, Key=f"many/m{i:03d}/1/model.onnx", Body=onnx)
    flags = ["--model-control-mode", "poll", "--repository-poll-secs", "1",
             "--repository-cache-dir", str(folder / "cache-many")]  # fmt: skip
    with harness.Server(f"s3://{BUCKET}/many", *flags, ready_timeout=300) as server:
        cold = server.metric("ferroserve_repository_downloaded_bytes_total")
        syncs = server.metric("ferroserve_repository_sync_seconds_count")
        seconds = server.metric("ferroserve_repository_sync_seconds_sum")
        bytes_before = cold
        time.sleep(10)
        polls = server.metric("ferroserve_repository_sync_seconds_count") - syncs
        per_poll = (server.metric("ferroserve_repository_sync_seconds_sum") - seconds) / max(polls, 1)
        read = server.metric("ferroserve_repository_downloaded_bytes_total") - bytes_before
    with harness.Server(f"s3://{BUCKET}/many", *flags, ready_timeout=300) as server:
        warm = server.metric("ferroserve_repository_downloaded_bytes_total")
    print(f"{models} models unchanged: {polls:.0f} polls in 10 s, {read:.0f} bytes read, "
          f"{per_poll * 1e3:.1f} ms a poll (one listing); cold start read {cold / 1e6:.1f} MB, "
          f"warm restart read {warm:.0f} bytes")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--models", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with seaweedfs(folder / "weed") as store:
            os.environ.update(store.environment())
            store.client().create_bucket(Bucket=BUCKET)
            download(store, folder, args.size_mb)
            many(store, folder, args.models)


if __name__ == "__main__":
    main()
