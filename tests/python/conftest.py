"""Shared fixtures: one ferroserve process for the whole test session.

The server binary comes from $FERROSERVE_BIN (default <repo>/target/debug/ferroserve).
It serves a temporary model repository holding the four shipped models plus
tests/models/identity_all, on OS-chosen ports bound to 127.0.0.1.
"""

import contextlib
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODELS = ("mlp", "cnn", "text", "mixed")
TEST_MODELS = ("identity_all",)
STARTUP_TIMEOUT_S = 60.0

LISTEN_RE = re.compile(
    r"ferroserve listening grpc=(?P<grpc>\S+) http=(?P<http>\S+) metrics=(?P<metrics>\S+)"
)


@dataclass(frozen=True)
class Server:
    grpc_url: str  # host:port, as tritonclient.grpc expects
    http_url: str  # host:port, as tritonclient.http expects
    metrics_url: str
    model_repository: Path
    process: subprocess.Popen


def model_path(name: str) -> Path:
    """The ONNX file of a model as shipped in the source tree (version 1)."""
    for base in (REPO_ROOT / "models", REPO_ROOT / "tests" / "models"):
        p = base / name / "1" / "model.onnx"
        if p.exists():
            return p
    raise FileNotFoundError(name)


def _server_binary() -> Path:
    return Path(
        os.environ.get("FERROSERVE_BIN", REPO_ROOT / "target" / "debug" / "ferroserve")
    )


def _drain(stream, sink: list):
    for line in iter(stream.readline, ""):
        sink.append(line)
    stream.close()


def _stop(proc: subprocess.Popen):
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(repo: Path, *flags: str, tls: "ssl.SSLContext | None" = None, url: "str | None" = None,
                   env: "dict | None" = None):
    """ferroserve on `repo` (plus `flags`) on free 127.0.0.1 ports, ready;
    stopped when the block ends. With `tls` (a client context trusting the
    server's CA, with a client certificate where mTLS is on), readiness is
    asked over HTTPS. With `url` (a bucket: s3://…), that is the repository
    and `repo` only names the log (beside it) and the working directory's
    cache; `env` adds environment variables (None removes one)."""
    binary = _server_binary()
    if not binary.exists():
        pytest.fail(
            f"ferroserve binary not found at {binary}: run `cargo build` or set FERROSERVE_BIN"
        )
    cmd = [
        str(binary),
        "--model-repository", url or str(repo),
        "--grpc-port", "0",
        "--http-port", "0",
        "--metrics-port", "0",
        "--grpc-address", "127.0.0.1",
        "--http-address", "127.0.0.1",
        "--metrics-address", "127.0.0.1",
        *flags,
    ]  # fmt: skip
    log_path = repo.parent / f"ferroserve-{repo.name}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        # First stdout line announces the bound ports. Read it on a thread so a
        # server that never prints cannot hang the session.
        first: list = []
        reader = threading.Thread(
            target=lambda: first.append(proc.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(STARTUP_TIMEOUT_S)
        line = first[0] if first else ""
        m = LISTEN_RE.search(line)
        if not m:
            _stop(proc)
            log.flush()
            pytest.fail(
                f"ferroserve did not announce its ports (first line {line!r}); "
                f"log tail:\n{log_path.read_text()[-4000:]}"
            )
        # Keep draining stdout so the pipe never fills up.
        rest: list = []
        threading.Thread(target=_drain, args=(proc.stdout, rest), daemon=True).start()

        srv = Server(
            grpc_url=m["grpc"],
            http_url=m["http"],
            metrics_url=m["metrics"],
            model_repository=repo,
            process=proc,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"ferroserve exited with {proc.returncode} during start-up; "
                    f"log tail:\n{log_path.read_text()[-4000:]}"
                )
            try:
                scheme = "https" if tls else "http"
                with urllib.request.urlopen(
                    f"{scheme}://{srv.http_url}/v2/health/ready", timeout=2, context=tls
                ) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ferroserve not ready after {STARTUP_TIMEOUT_S} s")
            time.sleep(0.1)

        yield srv
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    repo = tmp_path_factory.mktemp("model_repository")
    for name in SHIPPED_MODELS:
        shutil.copytree(REPO_ROOT / "models" / name, repo / name)
    for name in TEST_MODELS:
        shutil.copytree(REPO_ROOT / "tests" / "models" / name, repo / name)
    with running_server(repo) as srv:
        yield srv
