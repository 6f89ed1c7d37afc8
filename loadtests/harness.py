"""What the benchmark and the scenarios share (standard library only): a
ferroserve process on free loopback ports, its metrics and memory, and
ferroload runs.

Everything here targets 127.0.0.1 and is bounded: every wait has a deadline
and a server that is still running when its `with` block ends is killed.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target/release/ferroserve")
LOADGEN = os.path.join(ROOT, "target/release/ferroload")


class Server:
    """ferroserve on `repository` with extra flags, listening on 127.0.0.1 and
    free ports; ready when the constructor returns. Use it as a context manager.
    With `tls` (an ssl.SSLContext trusting the server's CA), the HTTP port is
    asked over HTTPS. `prefix` runs it under another command (e.g.
    `taskset -c 1`)."""

    def __init__(self, repository, *flags, log=os.devnull, ready_timeout=60, tls=None, prefix=()):
        self.log = open(log, "w")
        self.tls = tls
        self.proc = subprocess.Popen(
            [*prefix, SERVER, "--model-repository", repository, "--grpc-port", "0", "--http-port", "0",
             "--metrics-port", "0", "--grpc-address", "127.0.0.1", "--http-address", "127.0.0.1",
             "--metrics-address", "127.0.0.1", *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        line = self.proc.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "grpc" not in fields:
            self.kill()
            raise SystemExit(f"ferroserve did not start (its first line: {line!r}); see {log}")
        self.grpc, self.http, self.metrics = fields["grpc"], fields["http"], fields["metrics"]
        self.http_base = f"{'https' if tls else 'http'}://{self.http}"
        self.pid = self.proc.pid
        self.wait_ready(ready_timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http_status("/v2/health/ready") == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise SystemExit("ferroserve did not become ready")

    def http_status(self, path, timeout=2):
        try:
            with urllib.request.urlopen(f"{self.http_base}{path}", timeout=timeout, context=self.tls) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def stats(self, model):
        """(inference_count, execution_count) from the model's statistics."""
        with urllib.request.urlopen(f"{self.http_base}/v2/models/{model}/stats", timeout=5, context=self.tls) as r:
            s = json.load(r)["model_stats"][0]
        return s["inference_count"], s["execution_count"]

    def get_json(self, path):
        with urllib.request.urlopen(f"{self.http_base}{path}", timeout=30, context=self.tls) as r:
            return json.load(r)

    def post_json(self, path, body):
        request = urllib.request.Request(f"{self.http_base}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60, context=self.tls) as r:
            return json.load(r)

    def metrics_text(self):
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name, **labels):
        """The sum of every series of `name` whose labels include `labels`."""
        total = 0.0
        pattern = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+(\S+)$")
        for line in self.metrics_text().splitlines():
            m = pattern.match(line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def series(self, name):
        """Every series of `name`: a list of ({label: value}, number)."""
        return parse_series(self.metrics_text(), name)

    def _status_kib(self, field):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def rss_kib(self):
        return self._status_kib("VmRSS")

    def peak_rss_kib(self):
        """The high-water mark of resident memory since the server started."""
        return self._status_kib("VmHWM")

    def terminate(self, timeout):
        """SIGTERM; returns (exit code, seconds to exit), or (None, timeout)
        if it did not exit in time (it is then killed)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
            return code, time.monotonic() - start
        except subprocess.TimeoutExpired:
            self.kill()
            return None, timeout

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def parse_series(text, name):
    """The series of metric `name` in Prometheus text: [({label: value}, number), ...]."""
    out = []
    pattern = re.compile(r"^" + re.escape(name) + r"(?:\{([^}]*)\})?\s+(\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def copy_model(source_dir, repository, name, config_edit=None):
    """Copies a model directory into `repository` as `name`; `config_edit`
    rewrites its config.pbtxt text (the name line is fixed up here)."""
    source_name = os.path.basename(os.path.normpath(source_dir))
    target = os.path.join(repository, name)
    shutil.copytree(source_dir, target)
    config_path = os.path.join(target, "config.pbtxt")
    if config_edit or name != source_name:
        text = open(config_path).read() if os.path.exists(config_path) else f'name: "{source_name}"\n'
        text = text.replace(f'name: "{source_name}"', f'name: "{name}"')
        if config_edit:
            text = config_edit(text)
        with open(config_path, "w") as f:
            f.write(text)
    return target


def temp_repository(prefix):
    return tempfile.mkdtemp(prefix=f"ferroserve-{prefix}-")


def ghz_config(base, target, out, model=None, data=None):
    """loadtests/ghz/<base>.json aimed at `target`, optionally for another
    model name or with other request data; returns the written path."""
    with open(os.path.join(ROOT, "loadtests/ghz", f"{base}.json")) as f:
        config = json.load(f)
    if data is not None:
        config["data"] = data
    if model is not None:
        config["data"]["model_name"] = model
    config["host"] = target
    path = os.path.join(out, f"ghz-{model or base}-{abs(hash(json.dumps(config))) % 10**8}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def pinning(enabled=True):
    """(server prefix, load generator prefix): the server on the last core and
    the load generator on the others (taskset), so the two do not take each
    other's CPU; two empty prefixes when `enabled` is false, on one core, or
    without taskset."""
    cores = os.cpu_count() or 1
    if not enabled or cores < 2 or not shutil.which("taskset"):
        return [], []
    return ["taskset", "-c", str(cores - 1)], ["taskset", "-c", f"0-{cores - 2}"]


def ferroload(config, *args, details=False, background=False, prefix=()):
    """Runs ferroload on a ghz config (under `prefix`, e.g. `taskset -c 0`);
    returns its report (a dict), or the Popen with `report_path` set when
    `background`."""
    fd, report_path = tempfile.mkstemp(prefix="ferroload-", suffix=".json")
    os.close(fd)
    cmd = [*prefix, LOADGEN, "--config", config, *args, "--output", report_path]
    if not details:
        cmd.append("--no-details")
    if background:
        proc = subprocess.Popen(cmd, cwd=ROOT)
        proc.report_path = report_path
        return proc
    subprocess.run(cmd, check=True, cwd=ROOT)
    return read_report(report_path)


def read_report(path):
    with open(path) as f:
        report = json.load(f)
    os.unlink(path)
    return report


def percentile(report, p):
    """The report's p-th latency percentile in microseconds."""
    for entry in report.get("latencyDistribution") or []:
        if entry["percentage"] == p:
            return entry["latency"] / 1e3  # ns -> us
    return float("nan")


def quantile(values, q):
    """The q-quantile (0..1) of a list, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def errors(report):
    return sum(v for k, v in (report.get("statusCodeDistribution") or {}).items() if k != "OK")


def detail_time(detail):
    """A report detail's send time as seconds since the epoch."""
    import calendar

    stamp = detail["timestamp"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (float("0." + fraction) if fraction else 0.0)


def run_together(*runs):
    """Starts every (config, args...) ferroload run at once, waits for all,
    and returns their reports (with details) in order."""
    procs = [ferroload(config, *args, details=True, background=True) for config, *args in runs]
    reports = []
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"ferroload failed: {proc.args}")
        reports.append(read_report(proc.report_path))
    return reports


def by_status(report, from_sending=False):
    """{status: [latency in ms, ...]} from a report's details; with
    `from_sending`, from when each request went out rather than when it was
    due (the load generator's own lateness left out)."""
    out = {}
    for d in report["details"]:
        latency = d["latency"] - (d.get("lateness", 0) if from_sending else 0)
        out.setdefault(d["status"], []).append(latency / 1e6)
    return out


def windowed_quantile(report, q, status="OK", window=1.0):
    """The median over `window`-second slices of the run of each slice's
    q-quantile latency (ms): one noisy second on a shared machine does not
    decide it."""
    slices = {}
    for d in report["details"]:
        if d["status"] == status:
            slices.setdefault(int(detail_time(d) // window), []).append(d["latency"] / 1e6)
    per_slice = [quantile(v, q) for v in slices.values() if len(v) >= 100]
    return quantile(per_slice, 0.5)


def scenario_workspace(name):
    """A fresh temporary folder for a scenario and an empty model repository
    inside it: (folder, repository)."""
    work = tempfile.mkdtemp(prefix=f"ferroserve-{name}-")
    repository = os.path.join(work, "models")
    os.makedirs(repository)
    return work, repository


def parameter(key, value):
    """A config.pbtxt `parameters` entry."""
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    print(f"written {path}")
