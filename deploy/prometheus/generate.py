#!/usr/bin/env python3
"""Writes deploy/prometheus/rules.yml: ferroserve's SLO recording rules and
multi-window, multi-burn-rate alerts.

The SLOs are the server's (src/telemetry/slo.rs): defaults for every model,
overridden per model by the `parameters` of its config.pbtxt
(`slo_latency_seconds`, `slo_latency_objective`, `slo_availability_objective`).
Each recording rule covers every model: models with the default SLO share
one branch of its expression (selected with `model!~"<the others>"`), and
each other threshold or objective gets a branch naming its models. The
alerts read the burn-rate rules, which already divide by each model's error
budget, so one set of alerts covers every model.

Standard library only; the output depends on nothing but the inputs.

    python3 deploy/prometheus/generate.py                  # models/ -> rules.yml
    python3 deploy/prometheus/generate.py --models DIR --out -
"""

import argparse
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Mirrors of the server's constants (tests/python/test_prometheus_rules.py
# checks them against src/telemetry/).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                   0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
FAILURE_CODES = ("internal", "unavailable", "deadline_exceeded", "overloaded")
DEFAULT_LATENCY_SECONDS = 0.025
DEFAULT_LATENCY_OBJECTIVE = 0.99
DEFAULT_AVAILABILITY_OBJECTIVE = 0.999
PERIOD_DAYS = 30

REQUESTS = "ferroserve_requests_total"
DURATION = "ferroserve_request_duration_seconds"
SLIS = ("availability", "latency")
WINDOWS = ("5m", "30m", "1h", "6h", "3d")
# (severity, long window, short window, burn factor, for). Over a 30-day
# period a factor f held for the long window spends f * window / 30d of the
# budget: 2% in 1h, 5% in 6h, 10% in 3d (the SRE workbook's policy).
ALERTS = (
    ("page", "1h", "5m", Decimal("14.4"), "2m"),
    ("page", "6h", "30m", Decimal("6"), "15m"),
    ("ticket", "3d", "6h", Decimal("1"), "1h"),
)
HOURS = {"1h": 1, "6h": 6, "3d": 72}
PARAMETERS = {
    "slo_latency_seconds": "latency_seconds",
    "slo_latency_objective": "latency_objective",
    "slo_availability_objective": "availability_objective",
}

# A quoted string (kept) or a comment (dropped).
PBTXT_COMMENT = re.compile(r'("(?:[^"\\\n]|\\.)*")|#[^\n]*')
# One `parameters` entry: key: "k" value { string_value: "v" }.
PBTXT_PARAMETER = re.compile(
    r'key\s*:\s*"([^"]*)"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*"([^"]*)"\s*,?\s*\}'
)


def errors_rule(sli: str, window: str) -> str:
    """Recording rule name: the SLI's bad / total over the window, per model."""
    return f"model:ferroserve_slo_{sli}_errors:ratio_rate{window}"


def burn_rule(sli: str, window: str) -> str:
    """Recording rule name: errors_rule / (1 - objective), per model."""
    return f"model:ferroserve_slo_{sli}_burn_rate:ratio_rate{window}"


def alert_name(sli: str) -> str:
    return f"Ferroserve{sli.capitalize()}BudgetBurn"


STALE_ALERT = "FerroserveSLORulesStale"


def number(x: float) -> Decimal:
    """The shortest decimal that reads back as x."""
    return Decimal(repr(x))


def fmt(d: Decimal) -> str:
    """A decimal written plainly: 0.025, 1, 0.00005, 99.9."""
    return format(d.normalize(), "f")


@dataclass(frozen=True)
class Slo:
    latency_seconds: float = DEFAULT_LATENCY_SECONDS
    latency_objective: float = DEFAULT_LATENCY_OBJECTIVE
    availability_objective: float = DEFAULT_AVAILABILITY_OBJECTIVE

    def describe(self) -> str:
        return (
            f"latency {fmt(number(self.latency_objective) * 100)}% of requests within "
            f"{fmt(number(self.latency_seconds))} s; "
            f"availability {fmt(number(self.availability_objective) * 100)}%"
        )


def parse_slo(config: Path) -> Slo:
    """The SLO a config.pbtxt sets: its slo_* parameters over the defaults."""
    text = PBTXT_COMMENT.sub(lambda m: m.group(1) or "", config.read_text())
    values = {}
    for key, value in PBTXT_PARAMETER.findall(text):
        if not key.startswith("slo_"):
            continue
        if key not in PARAMETERS:
            raise ValueError(f"{config}: unknown SLO parameter '{key}' (known: {', '.join(PARAMETERS)})")
        if PARAMETERS[key] in values:
            raise ValueError(f"{config}: parameter '{key}' is set twice")
        try:
            values[PARAMETERS[key]] = float(value)
        except ValueError:
            raise ValueError(f"{config}: parameter '{key}' must be a number, got '{value}'") from None
    slo = Slo(**values)
    for key in ("slo_latency_objective", "slo_availability_objective"):
        objective = getattr(slo, PARAMETERS[key])
        if not 0 < objective < 1:
            raise ValueError(f"{config}: {key} must be above 0 and below 1, got {objective}")
    bucket = [b for b in LATENCY_BUCKETS if abs(b - slo.latency_seconds) < 1e-12]
    if not bucket:
        raise ValueError(
            f"{config}: slo_latency_seconds {slo.latency_seconds} is not a histogram bucket "
            f"boundary {LATENCY_BUCKETS}"
        )
    return Slo(bucket[0], slo.latency_objective, slo.availability_objective)


def read_models(models: Path) -> dict:
    """Model name -> Slo for every model directory with a config.pbtxt."""
    return {config.parent.name: parse_slo(config) for config in sorted(models.glob("*/config.pbtxt"))}


def promql_string(value: str) -> str:
    """value inside a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def promql_regex(value: str) -> str:
    """value as an RE2 literal inside a double-quoted PromQL string."""
    return promql_string(re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value))


def le_matcher(seconds: float) -> str:
    """Matches the `le` label of one bucket however it was written: ferroserve
    writes Rust's `{}` form ("0.025", "1"); Prometheus 3 rewrites it to Go's
    float form on ingestion ("1.0", "5e-05")."""
    forms = sorted({fmt(number(seconds)), repr(float(seconds))})
    if len(forms) == 1:
        return f'le="{forms[0]}"'
    return 'le=~"' + "|".join(promql_regex(f) for f in forms) + '"'


def selector(metric: str, *matchers: str) -> str:
    matchers = [m for m in matchers if m]
    return f"{metric}{{{','.join(matchers)}}}" if matchers else metric


def block(text: str, indent: int) -> str:
    pad = " " * indent
    return "\n".join(pad + line if line else "" for line in text.strip("\n").split("\n"))


def quote(text: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + text.replace("'", "''") + "'"


def branches(slos: dict, field: str) -> list:
    """Splits the models by one SLO field: [(value, model matcher, who)],
    the default value first (every model not named elsewhere), then each
    other value with the models that set it."""
    default = getattr(Slo(), field)
    by_value = {}
    for name, slo in sorted(slos.items()):
        if getattr(slo, field) != default:
            by_value.setdefault(getattr(slo, field), []).append(name)
    others = sorted(n for names in by_value.values() for n in names)
    out = [(default, f'model!~"{"|".join(promql_regex(n) for n in others)}"' if others else "",
            "every model" + (" but " + ", ".join(others) if others else ""))]  # fmt: skip
    for value, names in sorted(by_value.items()):
        matcher = (f'model="{promql_string(names[0])}"' if len(names) == 1
                   else f'model=~"{"|".join(promql_regex(n) for n in names)}"')  # fmt: skip
        out.append((value, matcher, ", ".join(names)))
    return out


def either(parts: list) -> str:
    """PromQL for the union of [(comment, expr)]; one part is written bare."""
    if len(parts) == 1:
        return parts[0][1]
    return "\nor\n".join(f"# {comment}\n(\n{block(expr, 2)}\n)" for comment, expr in parts)


def ratio(bad: str, total: str) -> str:
    """bad / total per model; 0 where the window holds no requests or no bad
    ones (no bad series at all), as the server counts it."""
    return f"{bad}\n/\n({total} > 0)\nor\n0 * {total}"


def availability_errors(window: str) -> str:
    bad = selector(REQUESTS, f'code=~"{"|".join(FAILURE_CODES)}"')
    return ratio(f"sum by (model) (rate({bad}[{window}]))", f"sum by (model) (rate({REQUESTS}[{window}]))")


def latency_errors(slos: dict, window: str) -> str:
    parts = []
    for seconds, model, who in branches(slos, "latency_seconds"):
        count = f"sum by (model) (rate({selector(DURATION + '_count', model)}[{window}]))"
        bucket = selector(DURATION + "_bucket", model, le_matcher(seconds))
        fast = f"sum by (model) (rate({bucket}[{window}]))"
        slow = f"(\n  {count}\n  -\n  {fast}\n)"
        parts.append((f"threshold {fmt(number(seconds))} s: {who}", ratio(slow, count)))
    return either(parts)


def burn_rate(slos: dict, sli: str, window: str) -> str:
    parts = []
    for objective, model, who in branches(slos, f"{sli}_objective"):
        budget = fmt(Decimal(1) - number(objective))
        parts.append((f"objective {fmt(number(objective))}: {who}",
                      f"{selector(errors_rule(sli, window), model)} / {budget}"))  # fmt: skip
    return either(parts)


def rule(record: str, expr: str) -> str:
    if "\n" not in expr:
        return f"      - record: {record}\n        expr: {expr}"
    return f"      - record: {record}\n        expr: |\n{block(expr, 10)}"


def recording_group(slos: dict) -> str:
    """Both SLIs' error ratios and burn rates over every window, per model.
    Burn rates come after the ratios they read: a group runs in order."""
    out = ["  - name: ferroserve-slo", "    rules:"]
    for window in WINDOWS:
        out.append(rule(errors_rule("availability", window), availability_errors(window)))
    for window in WINDOWS:
        out.append(rule(errors_rule("latency", window), latency_errors(slos, window)))
    for sli in SLIS:
        for window in WINDOWS:
            out.append(rule(burn_rule(sli, window), burn_rate(slos, sli, window)))
    return "\n".join(out)


def burn_alert(sli: str, severity: str, long: str, short: str, factor: Decimal, hold: str) -> str:
    spent = fmt(factor * HOURS[long] * 100 / (PERIOD_DAYS * 24))
    what = {
        "availability": "fail (codes " + ", ".join(FAILURE_CODES) + ")",
        "latency": "take longer than its latency threshold",
    }[sli]
    summary = (
        f"ferroserve model {{{{ $labels.model }}}}: {sli} error budget burning "
        f"{{{{ $value | humanize }}}}x too fast over {long}"
    )
    description = (
        f"Too many of the model's requests {what} for its {sli} objective: the burn rate is above "
        f"{factor}x over both the last {long} and the last {short}. Held for {long}, {factor}x "
        f"spends {spent}% of the {PERIOD_DAYS}-day error budget."
    )
    return "\n".join([
        f"      - alert: {alert_name(sli)}",
        "        expr: |",
        f"          {burn_rule(sli, long)} > {factor}",
        "          and",
        f"          {burn_rule(sli, short)} > {factor}",
        f"        for: {hold}",
        "        labels:",
        f"          severity: {severity}",
        f"          slo: {sli}",
        f"          long_window: {long}",
        f"          short_window: {short}",
        "        annotations:",
        f"          summary: {quote(summary)}",
        f"          description: {quote(description)}",
    ])  # fmt: skip


def stale_alert(slos: dict) -> str:
    """Fires when the server's SLO gauges differ from what these rules assume."""
    objective, threshold = "ferroserve_slo_objective", "ferroserve_slo_latency_threshold_seconds"
    checks = (
        ("slo_latency_objective", "latency_objective", objective, 'slo="latency"'),
        ("slo_availability_objective", "availability_objective", objective, 'slo="availability"'),
        ("slo_latency_seconds", "latency_seconds", threshold, ""),
    )
    parts = []
    for parameter, field, metric, slo in checks:
        for value, model, _ in branches(slos, field):
            expected = fmt(number(value))
            parts.append(
                f'label_replace(label_replace({selector(metric, slo, model)} != {expected}, '
                f'"parameter", "{parameter}", "", ""), "expected", "{expected}", "", "")'
            )
    summary = "ferroserve model {{ $labels.model }}: SLO rules out of date"
    description = (
        "The server has {{ $labels.parameter }} = {{ $value }} for model {{ $labels.model }}, "
        "but rules.yml was generated with {{ $labels.expected }}, so the recording rules and "
        "alerts judge it by the wrong SLO. Regenerate with deploy/prometheus/generate.py "
        "--models <the served model repository> and reload Prometheus."
    )
    return "\n".join([
        f"      - alert: {STALE_ALERT}",
        "        expr: |",
        block("\nor\n".join(parts), 10),
        "        for: 10m",
        "        labels:",
        "          severity: ticket",
        "        annotations:",
        f"          summary: {quote(summary)}",
        f"          description: {quote(description)}",
    ])  # fmt: skip


def render(slos: dict, models_dir: str) -> str:
    own = {name: slo for name, slo in sorted(slos.items()) if slo != Slo()}
    out = [
        f"# Generated by deploy/prometheus/generate.py from {models_dir}/*/config.pbtxt; do not edit.",
        "# Regenerate after changing a model's slo_* parameters: python3 deploy/prometheus/generate.py",
        "# Rule names and the alert policy: deploy/prometheus/README.md.",
        "#",
        f"# Default SLO: {Slo().describe()}.",
    ]
    out += [f"# {name}, from its config.pbtxt: {slo.describe()}." for name, slo in own.items()]
    out += ["groups:", recording_group(slos), "  - name: ferroserve-slo-alerts", "    rules:"]
    for sli in SLIS:
        for severity, long, short, factor, hold in ALERTS:
            out.append(burn_alert(sli, severity, long, short, factor, hold))
    out.append(stale_alert(slos))
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="model repository (default models/)")
    parser.add_argument("--out", default=str(HERE / "rules.yml"), help="output file, - for stdout")
    args = parser.parse_args()
    try:
        slos = read_models(args.models)
    except ValueError as e:
        print(f"generate.py: {e}", file=sys.stderr)
        return 1
    try:
        shown = args.models.resolve().relative_to(ROOT)
    except ValueError:
        shown = args.models
    text = render(slos, str(shown))
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
