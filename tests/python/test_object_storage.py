"""A model repository on object storage, against a real S3 server
(SeaweedFS, signature checking on; s3server.py): uploaded with boto3 as a
user would, served from s3:// in poll mode, a new version and a file
replaced in place under traffic with no failed request, a broken file that
leaves the one before serving, a deleted version, the store going down
under traffic (serving goes on, the sync resumes), a restart on a warm cache
that downloads nothing, a store out of reach at start, credentials from the
shared AWS files, a canary from the bucket, explicit mode, an upload in
progress that waits until it holds still, and an object deleted or
overwritten while it downloads.

Bounded: under two minutes; every process is stopped at the end.
"""

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO_ROOT, running_server
from s3server import WEED, seaweedfs

pytestmark = pytest.mark.skipif(not WEED.exists(), reason="SeaweedFS is not unpacked (deploy/setup.sh test)")

BUCKET, PREFIX = "models", "team/repo"
POLL_SECS = 1
# How long the store stays down under traffic (the figure is 30 s).
OUTAGE_SECS = float(os.environ.get("FERROSERVE_TEST_OUTAGE_SECS", 3))
# Version v of this model answers y = x + v: what answers says which file serves.
MODEL = REPO_ROOT / "tests" / "models" / "multiversion"
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]}).encode()


def upload(s3, key, path=None, body=None):
    if path is not None:
        s3.upload_file(str(path), BUCKET, f"{PREFIX}/{key}")
    else:
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=body)


def metric(server, name, labels=None):
    """The sample with exactly `labels` ('{k="v"}'), or the sum over every
    label set when None."""
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10).read().decode()
    label_part = r"(?:\{[^}]*\})?" if labels is None else re.escape(labels)
    pattern = re.compile(rf"^{re.escape(name)}{label_part} (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def status(server, path):
    try:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def answer(server):
    """(version, y) of one unpinned request: y = v when file v serves."""
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/multiversion/infer", data=BODY, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        reply = json.load(r)
    return reply["model_version"], int(reply["outputs"][0]["data"][0])


class Traffic:
    """Unpinned requests over HTTP in a loop, counting what failed and what
    answered: (version, y) pairs."""

    def __init__(self, server):
        self.server, self.failed, self.answered, self.seen = server, [], 0, set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                self.seen.add(answer(self.server))
                self.answered += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(repr(e))
            time.sleep(0.002)

    def __enter__(self):
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)
        self.rate = self.answered / (time.monotonic() - self.started)


def wait_until(what, check, timeout):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seaweedfs")
    with seaweedfs(folder) as server:
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        upload(s3, "multiversion/config.pbtxt", MODEL / "config.pbtxt")
        upload(s3, "multiversion/1/model.onnx", MODEL / "1" / "model.onnx")
        yield server


def serve(store, tmp_path, *flags):
    return running_server(
        tmp_path / "log", "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_SECS),
        "--repository-cache-dir", str(tmp_path / "cache"), *flags,
        url=f"s3://{BUCKET}/{PREFIX}", env=store.environment())  # fmt: skip


def test_versions_from_a_bucket_under_traffic(store, tmp_path):
    s3 = store.client()
    (tmp_path / "log").mkdir()
    with serve(store, tmp_path) as server:
        assert answer(server) == ("1", 1)
        with Traffic(server) as traffic:
            # A new version, uploaded as a user would: served within two
            # polls (the settle rule), the download and the load.
            upload(s3, "multiversion/2/model.onnx", MODEL / "2" / "model.onnx")
            took = wait_until("version 2 to serve", lambda: answer(server) == ("2", 2), timeout=2 * POLL_SECS + 10)
            print(f"version 2 served {took:.2f} s after its upload finished")
            # Replaced in place: the same key, other bytes (a retrained model).
            upload(s3, "multiversion/2/model.onnx", MODEL / "3" / "model.onnx")
            wait_until("version 2's new file to serve", lambda: answer(server) == ("2", 3), timeout=2 * POLL_SECS + 10)
            # Replaced by bytes that are no model: the load fails, the file
            # loaded before keeps serving.
            failures = metric(server, "ferroserve_model_loads_total", '{model="multiversion",version="2",outcome="error"}')
            upload(s3, "multiversion/2/model.onnx", body=b"not an ONNX model")
            wait_until("the broken file's load to fail", lambda: metric(
                server, "ferroserve_model_loads_total", '{model="multiversion",version="2",outcome="error"}') > failures,
                timeout=2 * POLL_SECS + 10)  # fmt: skip
            assert answer(server) == ("2", 3)
            # Deleted: version 1 is the highest again.
            s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/multiversion/2/model.onnx")
            wait_until("version 2 to go", lambda: answer(server) == ("1", 1), timeout=2 * POLL_SECS + 10)
            assert status(server, "/v2/models/multiversion/versions/2/ready") == 404
        print(f"traffic: {traffic.answered} answered at {traffic.rate:.0f}/s, {len(traffic.failed)} failed")
        assert traffic.failed == [], traffic.failed[:5]
        assert traffic.seen == {("1", 1), ("2", 2), ("2", 3)}, traffic.seen
        assert traffic.answered > 50
        assert metric(server, "ferroserve_repository_downloaded_bytes_total") > 0
        assert metric(server, "ferroserve_repository_sync_errors_total") == 0


def test_the_store_down_under_traffic_fails_nothing(store, tmp_path):
    (tmp_path / "log").mkdir()
    with serve(store, tmp_path) as server:
        with Traffic(server) as traffic:
            store.stop()
            try:
                wait_until("a failed sync", lambda: metric(server, "ferroserve_repository_sync_errors_total") > 0,
                           timeout=10 * POLL_SECS + 10)  # fmt: skip
                time.sleep(OUTAGE_SECS)
                assert status(server, "/v2/health/ready") == 200, "an outage leaves readiness alone"
            finally:
                store.start()
            # Sync resumes: a version uploaded after the outage is served.
            upload(store.client(), "multiversion/3/model.onnx", MODEL / "3" / "model.onnx")
            wait_until("version 3 after the outage", lambda: answer(server) == ("3", 3), timeout=8 * POLL_SECS + 15)
        store.client().delete_object(Bucket=BUCKET, Key=f"{PREFIX}/multiversion/3/model.onnx")
        assert traffic.failed == [], traffic.failed[:5]
        assert traffic.answered > 50


def test_a_restart_on_a_warm_cache_downloads_nothing(store, tmp_path):
    (tmp_path / "log").mkdir()
    with serve(store, tmp_path) as server:
        assert metric(server, "ferroserve_repository_downloaded_bytes_total") > 0
    with serve(store, tmp_path) as server:
        assert answer(server) == ("1", 1)
        assert metric(server, "ferroserve_repository_downloaded_bytes_total") == 0
        # An unchanged repository: polls list and read nothing.
        time.sleep(3 * POLL_SECS)
        assert metric(server, "ferroserve_repository_downloaded_bytes_total") == 0
        assert metric(server, "ferroserve_repository_sync_seconds_count") >= 3


def test_serving_without_the_store_from_what_the_cache_holds(store, tmp_path):
    (tmp_path / "log").mkdir()
    with serve(store, tmp_path):
        pass
    store.stop()
    try:
        with serve(store, tmp_path) as server:
            assert answer(server) == ("1", 1)
            assert metric(server, "ferroserve_repository_sync_errors_total", '{reason="list"}') >= 1
    finally:
        store.start()


def test_credentials_from_the_shared_aws_files(store, tmp_path):
    # No AWS_* variable: the profile of ~/.aws/credentials and ~/.aws/config.
    (tmp_path / "log").mkdir()
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    env = store.environment()
    (aws / "credentials").write_text(
        f"[models]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\naws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n")
    (aws / "config").write_text(f"[profile models]\nregion = us-east-1\nendpoint_url = {env['AWS_ENDPOINT_URL']}\n")
    shared = {**{k: None for k in os.environ if k.startswith("AWS_")}, "HOME": str(tmp_path / "home"),
              "AWS_PROFILE": "models"}  # fmt: skip
    with running_server(tmp_path / "log", "--repository-cache-dir", str(tmp_path / "cache"),
                        url=f"s3://{BUCKET}/{PREFIX}", env=shared) as server:  # fmt: skip
        assert answer(server) == ("1", 1)
        assert metric(server, "ferroserve_repository_downloaded_bytes_total") > 0


def test_a_canary_from_the_bucket(store, tmp_path):
    s3 = store.client()
    (tmp_path / "log").mkdir()
    config = (MODEL / "config.pbtxt").read_text()
    with serve(store, tmp_path) as server:
        # Version 2 beside 1 and, in the same upload, a config naming it the
        # canary for every unpinned request.
        upload(s3, "multiversion/2/model.onnx", MODEL / "2" / "model.onnx")
        upload(s3, "multiversion/config.pbtxt", body=(config + CANARY).encode())
        took = wait_until("the canary to take its share", lambda: canary(server).get("canary_version") == "2",
                          timeout=2 * POLL_SECS + 10)  # fmt: skip
        print(f"canary running {took:.2f} s after its upload")
        assert canary(server)["weight"] == 100
        assert answer(server) == ("2", 2)
        # Its config removed from the bucket: version 2 serves as the highest.
        upload(s3, "multiversion/config.pbtxt", MODEL / "config.pbtxt")
        wait_until("the canary to end", lambda: canary(server).get("canary") is None and "canary_version" not in canary(server),
                   timeout=2 * POLL_SECS + 10)  # fmt: skip
        s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/multiversion/2/model.onnx")
        wait_until("version 2 to go", lambda: answer(server) == ("1", 1), timeout=2 * POLL_SECS + 10)


CANARY = """
parameters [
  { key: "stable_version" value { string_value: "1" } },
  { key: "canary_version" value { string_value: "2" } },
  { key: "canary_weight" value { string_value: "100" } }
]
"""


def canary(server):
    with urllib.request.urlopen(f"http://{server.http_url}/v2/repository/models/multiversion/canary", timeout=10) as r:
        return json.load(r)


def test_explicit_mode_loads_what_the_bucket_holds(store, tmp_path):
    s3 = store.client()
    (tmp_path / "log").mkdir()
    upload(s3, "later/1/model.onnx", MODEL / "1" / "model.onnx")
    with running_server(tmp_path / "log", "--model-control-mode", "explicit", "--load-model", "multiversion",
                        "--repository-poll-secs", str(POLL_SECS), "--repository-cache-dir", str(tmp_path / "cache"),
                        url=f"s3://{BUCKET}/{PREFIX}", env=store.environment()) as server:  # fmt: skip
        assert status(server, "/v2/models/later/ready") == 404, "not loaded until asked"
        request = urllib.request.Request(f"http://{server.http_url}/v2/repository/models/later/load", method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.load(r) == {"name": "later", "load": True}
        assert status(server, "/v2/models/later/ready") == 200
    s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/later/1/model.onnx")


def test_an_upload_in_progress_is_not_loaded(store, tmp_path):
    # A version whose listing changes between polls (files still arriving)
    # waits; once it holds still it loads whole.
    s3 = store.client()
    (tmp_path / "log").mkdir()
    with serve(store, tmp_path) as server:
        upload(s3, "multiversion/3/model.onnx", MODEL / "3" / "model.onnx")
        for part in range(12):  # a file every 0.25 s for 3 s: no two listings agree
            upload(s3, f"multiversion/3/part-{part}", body=b"x" * 1000)
            assert answer(server) == ("1", 1), f"version 3 loaded while part {part} was arriving"
            time.sleep(0.25)
        took = wait_until("version 3 once whole", lambda: answer(server) == ("3", 3), timeout=2 * POLL_SECS + 10)
        print(f"version 3 served {took:.2f} s after its last part")
        cached = tmp_path / "cache" / f"s3___{BUCKET}_{PREFIX.replace('/', '_')}" / "models" / "multiversion" / "3"
        assert sorted(p.name for p in cached.iterdir()) == sorted(["model.onnx", *(f"part-{i}" for i in range(12))])
        for key in ["model.onnx", *(f"part-{i}" for i in range(12))]:
            s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/multiversion/3/{key}")
        wait_until("version 3 to go", lambda: answer(server) == ("1", 1), timeout=2 * POLL_SECS + 10)


@pytest.mark.parametrize("change,reason", [("vanishes", "download"), ("is replaced", "verify")])
def test_an_object_that_changes_mid_download_is_not_installed(store, tmp_path, change, reason):
    # A large object (many ranged reads) deleted or overwritten once its
    # download has begun: the reads that follow fail or no longer match
    # its listed ETag; nothing is installed, version 1 keeps serving, and
    # the failure is counted.
    s3 = store.client()
    (tmp_path / "log").mkdir()
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(256 << 20))
    with serve(store, tmp_path, "--repository-ready-marker", "READY") as server:
        with Traffic(server) as traffic:
            upload(s3, "multiversion/5/model.onnx", big)
            upload(s3, "multiversion/5/READY", body=b"")
            wait_until("the download to begin",
                       lambda: metric(server, "ferroserve_repository_downloaded_bytes_total") > 10 << 20, timeout=30)
            if change == "vanishes":
                s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/multiversion/5/model.onnx")
            else:
                upload(s3, "multiversion/5/model.onnx", body=b"another object entirely")
            wait_until("the failure to be counted",
                       lambda: metric(server, "ferroserve_repository_sync_errors_total") > 0, timeout=30)
            assert answer(server) == ("1", 1)
        assert traffic.failed == [], traffic.failed[:5]
        cached = tmp_path / "cache" / f"s3___{BUCKET}_{PREFIX.replace('/', '_')}" / "models" / "multiversion"
        assert not (cached / "5" / "model.onnx").exists() or (cached / "5" / "model.onnx").stat().st_size < 100
        # Gone: the reads after it fail. Replaced: the store refuses the
        # reads whose If-Match names the listed ETag.
        assert metric(server, "ferroserve_repository_sync_errors_total", f'{{reason="{reason}"}}') > 0
    for key in ("model.onnx", "READY"):
        s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/multiversion/5/{key}")
