"""deploy/prometheus and deploy/grafana: the SLO rules, their promtool unit
tests, the example Prometheus config and the Grafana dashboard.

promtool comes from Debian's prometheus package (deploy/setup.sh test
installs it); the promtool tests are skipped only where it is missing and
cannot be installed (no apt-get). Nothing here needs the server running.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "ferroserve.json"
TELEMETRY = REPO_ROOT / "src" / "telemetry"


def _load_generator():
    spec = importlib.util.spec_from_file_location("slo_rules_generate", PROMETHEUS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip("promtool is not installed and apt-get is unavailable to install it (Debian's prometheus)")
    pytest.fail("promtool is not installed: run deploy/setup.sh test (it installs Debian's prometheus package)")


def run(*args, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def run_generator(*args) -> subprocess.CompletedProcess:
    return run(sys.executable, str(PROMETHEUS / "generate.py"), *args)


# --- promtool ---------------------------------------------------------------


def test_rules_pass_promtool_check(promtool):
    result = run(promtool, "check", "rules", "deploy/prometheus/rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # Lint findings (duplicate rules) are reported without failing the exit status.
    assert "FAILED" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", "deploy/prometheus/tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_config_passes_promtool_check(promtool):
    result = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules.yml" in result.stdout, "prometheus.yml must load rules.yml"


def test_unit_tests_catch_a_wrong_threshold(promtool, tmp_path):
    """The alert tests fail when a page threshold is wrong (here 14.4 -> 25)."""
    rules = (PROMETHEUS / "rules.yml").read_text()
    broken = rules.replace("model:ferroserve_slo_latency_burn_rate:ratio_rate1h > 14.4",
                           "model:ferroserve_slo_latency_burn_rate:ratio_rate1h > 25")  # fmt: skip
    assert broken != rules
    (tmp_path / "rules.yml").write_text(broken)
    shutil.copy(PROMETHEUS / "tests.yml", tmp_path / "tests.yml")
    result = run(promtool, "test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode != 0
    assert "FerroserveLatencyBudgetBurn" in result.stdout + result.stderr


def test_per_model_overrides_get_their_own_thresholds(promtool, tmp_path):
    """A model whose config.pbtxt sets its own SLO is judged by it; the others
    keep the defaults. The rules are generated for a temporary repository and
    unit-tested with a test file written here (JSON is YAML)."""
    models = tmp_path / "models"
    (models / "strict").mkdir(parents=True)
    (models / "strict" / "config.pbtxt").write_text(
        'name: "strict"\n'
        "parameters [\n"
        '  { key: "slo_latency_seconds" value { string_value: "0.01" } },\n'
        '  { key: "slo_latency_objective" value { string_value: "0.95" } },\n'
        '  { key: "slo_availability_objective" value { string_value: "0.99" } }\n'
        "]\n"
    )
    (models / "plain").mkdir()
    (models / "plain" / "config.pbtxt").write_text('name: "plain"\n')
    result = run_generator("--models", str(models), "--out", str(tmp_path / "rules.yml"))
    assert result.returncode == 0, result.stderr
    check = run(promtool, "check", "rules", str(tmp_path / "rules.yml"))
    assert check.returncode == 0 and "FAILED" not in check.stdout + check.stderr, check.stdout + check.stderr

    # Per minute for both models: 1000 requests, 20 failed (2%), 30 over
    # 0.01 s, of which 5 over 0.025 s. strict (availability budget 0.01,
    # latency 0.05 over 0.01 s): burn 2 and 0.6. plain (budget 0.001, 0.01
    # over 0.025 s): burn 20 and 0.5.
    series = []
    for model in ("strict", "plain"):
        for code, per_minute in (("ok", 980), ("internal", 20)):
            series.append(
                {"series": f'ferroserve_requests_total{{model="{model}",version="1",code="{code}"}}',
                 "values": f"0+{per_minute}x30"})  # fmt: skip
        for le, per_minute in (("0.01", 970), ("0.025", 995), ("+Inf", 1000)):
            series.append(
                {"series": f'ferroserve_request_duration_seconds_bucket{{model="{model}",version="1",le="{le}"}}',
                 "values": f"0+{per_minute}x30"})  # fmt: skip
        series.append(
            {"series": f'ferroserve_request_duration_seconds_count{{model="{model}",version="1"}}',
             "values": "0+1000x30"})  # fmt: skip

    def expect(rule, strict, plain):
        return {
            "expr": f"round({rule}, 0.0001)",
            "eval_time": "10m",
            "exp_samples": [{"labels": '{model="plain"}', "value": plain},
                            {"labels": '{model="strict"}', "value": strict}],
        }  # fmt: skip

    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                expect(generate.errors_rule("availability", "5m"), 0.02, 0.02),
                expect(generate.burn_rule("availability", "5m"), 2, 20),
                expect(generate.errors_rule("latency", "5m"), 0.03, 0.005),
                expect(generate.burn_rule("latency", "1h"), 0.6, 0.5),
            ],
            "alert_rule_test": [
                {"alertname": "FerroserveLatencyBudgetBurn", "eval_time": "10m", "exp_alerts": []},
                {"alertname": "FerroserveSLORulesStale", "eval_time": "10m", "exp_alerts": []},
            ],
        }],
    }  # fmt: skip
    (tmp_path / "tests.yml").write_text(json.dumps(tests, indent=1))
    result = run(promtool, "test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the generator ----------------------------------------------------------


def test_rules_yml_is_what_generate_py_writes():
    result = run_generator("--out", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (PROMETHEUS / "rules.yml").read_text(), (
        "deploy/prometheus/rules.yml is not what generate.py writes for models/: "
        "run python3 deploy/prometheus/generate.py (never edit rules.yml by hand)"
    )
    assert run_generator("--out", "-").stdout == result.stdout, "generate.py must be deterministic"


def test_generator_mirrors_the_server():
    """generate.py's copies of the server's SLO constants match src/telemetry."""
    mod = (TELEMETRY / "mod.rs").read_text()
    slo = (TELEMETRY / "slo.rs").read_text()
    buckets = re.search(r"LATENCY_BUCKETS: &\[f64\] =\s*&\[([^\]]*)\]", mod).group(1)
    assert tuple(float(b) for b in buckets.split(",") if b.strip()) == generate.LATENCY_BUCKETS
    codes = re.search(r"FAILURE_CODES: \[&str; \d+\] = \[([^\]]*)\]", slo).group(1)
    assert tuple(re.findall(r'"([a-z_]+)"', codes)) == generate.FAILURE_CODES
    default = re.search(r"impl Default for SloConfig \{(.*?)\n\}", slo, re.S).group(1)
    for field, value in (("latency_threshold", generate.DEFAULT_LATENCY_SECONDS),
                         ("latency_objective", generate.DEFAULT_LATENCY_OBJECTIVE),
                         ("availability_objective", generate.DEFAULT_AVAILABILITY_OBJECTIVE)):  # fmt: skip
        assert float(re.search(rf"{field}: ([0-9.]+)", default).group(1)) == value, field
    period = re.search(r"period: Duration::from_secs\((\d+) \* 86_400\)", default).group(1)
    assert int(period) == generate.PERIOD_DAYS


def test_generator_reads_overrides(tmp_path):
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    config.write_text(
        "# parameters { key: \"slo_latency_seconds\" value { string_value: \"5\" } }\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        "parameters {\n"
        '  key: "slo_latency_seconds"\n'
        '  value: { string_value: "1" }\n'
        "}\n"
        'parameters { key: "slo_availability_objective", value { string_value: "0.9990" } }  # comment\n'
    )
    assert generate.parse_slo(config) == generate.Slo(1.0, 0.99, 0.999)
    rules = run_generator("--models", str(tmp_path), "--out", "-").stdout
    # ferroserve writes le="1"; Prometheus 3 stores it as le="1.0".
    assert 'model="m",le=~"1|1\\\\.0"' in rules
    assert 'model!~"m"' in rules


@pytest.mark.parametrize(
    "parameter, value, message",
    [
        ("slo_latency_seconds", "0.02", "not a histogram bucket boundary"),
        ("slo_latency_objective", "1", "must be above 0 and below 1"),
        ("slo_availability_objective", "high", "must be a number"),
        ("slo_latency_second", "0.025", "unknown SLO parameter"),
    ],
)
def test_generator_refuses_bad_overrides(tmp_path, parameter, value, message):
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    config.write_text(f'parameters {{ key: "{parameter}" value {{ string_value: "{value}" }} }}\n')
    result = run_generator("--models", str(tmp_path), "--out", str(tmp_path / "rules.yml"))
    assert result.returncode == 1
    assert message in result.stderr and str(config) in result.stderr
    assert not (tmp_path / "rules.yml").exists()


# --- metric names -----------------------------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan", "atan2"}  # fmt: skip
# Series Prometheus itself writes for the alerts in rules.yml.
PROMETHEUS_SERIES = {"ALERTS"}


def server_metrics() -> set:
    """Every metric name the server exports, from the constants in src/telemetry
    (histograms as their _bucket, _sum and _count series)."""
    consts = {}
    histograms = set()
    for source in sorted(TELEMETRY.glob("*.rs")):
        text = source.read_text()
        consts.update(re.findall(r'pub const ([A-Z_]+): &str = "(ferroserve_[a-z_]+)";', text))
        histograms.update(re.findall(r"describe_histogram!\(\s*([A-Z_]+)", text))
    names = {name for const, name in consts.items() if const not in histograms}
    for const in histograms:
        names |= {consts[const] + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def recording_rules() -> set:
    return set(re.findall(r"^\s*- record: (\S+)$", (PROMETHEUS / "rules.yml").read_text(), re.M))


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    expr = re.sub(r"#[^\n]*", "", expr)  # comments
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end():]
        if re.match(r"\s*\(", rest) or m.group(0).lower() in PROMQL_KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(m.group(0))
    return names


def test_metric_name_parser():
    assert metric_names(
        'histogram_quantile(0.99, sum by (model, le) (rate(ferroserve_request_duration_seconds_bucket'
        '{model=~"$model",le="0.025"}[$__rate_interval]))) > bool 1e-3 or on (model) x:y:z offset 5m'
    ) == {"ferroserve_request_duration_seconds_bucket", "x:y:z"}


def test_rules_read_only_known_metrics():
    known = server_metrics() | recording_rules()
    rules = (PROMETHEUS / "rules.yml").read_text()
    exprs = re.findall(r"^ {8}expr: (?:\|\n((?: {10}.*\n)+)|(.*)\n)", rules, re.M)
    assert len(exprs) == len(re.findall(r"^\s*- (?:record|alert): ", rules, re.M))
    unknown = {name for block, line in exprs for name in metric_names(block or line)} - known
    assert not unknown, f"rules.yml reads metrics the server does not export: {sorted(unknown)}"


def _dashboard_exprs(node, path="$"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield path, value
            else:
                yield from _dashboard_exprs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _dashboard_exprs(value, f"{path}[{i}]")


def test_dashboard_loads_and_reads_only_known_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query" and variables["model"]["multi"]
    known = server_metrics() | recording_rules() | PROMETHEUS_SERIES

    exprs = list(_dashboard_exprs(dashboard))
    assert len(exprs) > 20
    for path, expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, f"{path}: {expr!r} reads unknown metrics {sorted(unknown)}"
    label_values = re.match(r"label_values\((\w+),", variables["model"]["definition"]).group(1)
    assert label_values in known

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert "$model" in target["expr"] or "model" not in target["legendFormat"], (panel["title"], target)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    # What the dashboard is for: every SLO and admission signal is on it.
    used = set().union(*(metric_names(e) for _, e in exprs))
    for name in ("ferroserve_request_duration_seconds_bucket", "ferroserve_requests_total",
                 "ferroserve_shed_total", "ferroserve_breaker_state", "ferroserve_concurrency_limit",
                 "ferroserve_queue_depth",
                 "ferroserve_server_inflight_requests", "ferroserve_slo_error_budget_remaining",
                 "ferroserve_slo_burn_rate", "ferroserve_canary_weight",
                 generate.burn_rule("availability", "1h"), generate.burn_rule("latency", "1h")):  # fmt: skip
        assert name in used, f"the dashboard does not show {name}"
