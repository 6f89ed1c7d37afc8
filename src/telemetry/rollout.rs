//! Metrics of shadow versions and capacity answers. The shadow's are set
//! from its comparison on the server's timer, so copying a request costs
//! no metric work. Labels: model, version, output (the model's own output
//! names), and small fixed sets (outcome, side, quantile).

use crate::repository::shadow::Comparison;

/// The share (0-100) of unpinned requests copied to the model's shadow.
pub const SHADOW_PERCENT: &str = "ferroserve_shadow_percent";
/// Copies for the shadow and what became of them, by outcome (compared,
/// shadow_error, serving_error, shed_pressure, shed_queue, shed_busy,
/// shed_admission).
pub const SHADOW_REQUESTS_TOTAL: &str = "ferroserve_shadow_requests_total";
/// Rows compared per output, and rows beyond tolerance.
pub const SHADOW_ROWS_TOTAL: &str = "ferroserve_shadow_rows_total";
pub const SHADOW_DIFFERING_ROWS_TOTAL: &str = "ferroserve_shadow_differing_rows_total";
/// Over the sliding window, per output: the share of rows within
/// tolerance, the largest and mean absolute difference, top-1 agreement.
pub const SHADOW_AGREEMENT: &str = "ferroserve_shadow_agreement_ratio";
pub const SHADOW_MAX_ABS: &str = "ferroserve_shadow_max_abs_difference";
pub const SHADOW_MEAN_ABS: &str = "ferroserve_shadow_mean_abs_difference";
pub const SHADOW_TOP1: &str = "ferroserve_shadow_top1_agreement_ratio";
/// Latency of the compared pairs over the window, by side (serving /
/// shadow) and quantile (0.5 / 0.99), seconds.
pub const SHADOW_LATENCY: &str = "ferroserve_shadow_latency_seconds";
/// Shadows promoted, by target (canary / stable) and trigger (operator /
/// automatic).
pub const SHADOW_PROMOTIONS_TOTAL: &str = "ferroserve_shadow_promotions_total";
/// The highest request rate a version sustains within its latency SLO at
/// its instance count, from the cost model (repository/capacity.rs).
pub const CAPACITY: &str = "ferroserve_capacity_requests_per_second";

pub(super) fn describe() {
    metrics::describe_gauge!(SHADOW_PERCENT, "Share of unpinned requests (0-100) copied to the shadow version");
    metrics::describe_counter!(SHADOW_REQUESTS_TOTAL, "Copies for the shadow version, by outcome");
    metrics::describe_counter!(SHADOW_ROWS_TOTAL, "Rows compared between the serving and the shadow version");
    metrics::describe_counter!(SHADOW_DIFFERING_ROWS_TOTAL, "Rows whose shadow output differed beyond tolerance");
    metrics::describe_gauge!(SHADOW_AGREEMENT, "Share of rows within tolerance over the sliding window");
    metrics::describe_gauge!(SHADOW_MAX_ABS, "Largest absolute difference over the sliding window");
    metrics::describe_gauge!(SHADOW_MEAN_ABS, "Mean absolute difference over the sliding window");
    metrics::describe_gauge!(SHADOW_TOP1, "Share of rows whose top-1 class agreed over the sliding window");
    metrics::describe_gauge!(SHADOW_LATENCY, "Latency of compared pairs over the window, by side and quantile");
    metrics::describe_counter!(SHADOW_PROMOTIONS_TOTAL, "Shadow versions promoted, by target and trigger");
    metrics::describe_gauge!(CAPACITY, "Highest request rate the version sustains within its latency SLO");
}

pub fn set_shadow_percent(model: &str, version: i64, percent: u8) {
    metrics::gauge!(SHADOW_PERCENT, "model" => model.to_string(), "version" => version.to_string())
        .set(f64::from(percent));
}

pub fn record_shadow_promotion(model: &str, version: i64, to: &'static str, trigger: &'static str) {
    let labels = [
        ("model", model.to_string()),
        ("version", version.to_string()),
        ("to", to.into()),
        ("trigger", trigger.into()),
    ];
    metrics::counter!(SHADOW_PROMOTIONS_TOTAL, &labels).increment(1);
}

/// Sets the shadow's metrics from its comparison.
pub fn publish_shadow(model: &str, version: i64, comparison: &Comparison) {
    let version = version.to_string();
    let c = &comparison.counts;
    for (outcome, count) in [
        ("compared", c.compared),
        ("shadow_error", c.shadow_errors),
        ("serving_error", c.serving_errors),
        ("shed_pressure", c.shed_pressure),
        ("shed_queue", c.shed_queue),
        ("shed_busy", c.shed_busy),
        ("shed_admission", c.shed_admission),
    ] {
        let labels = [("model", model.to_string()), ("version", version.clone()), ("outcome", outcome.to_string())];
        metrics::counter!(SHADOW_REQUESTS_TOTAL, &labels).absolute(count);
    }
    for output in &comparison.outputs {
        let labels = [("model", model.to_string()), ("version", version.clone()), ("output", output.name.clone())];
        metrics::counter!(SHADOW_ROWS_TOTAL, &labels).absolute(output.total.rows);
        metrics::counter!(SHADOW_DIFFERING_ROWS_TOTAL, &labels).absolute(output.total.differing);
        metrics::gauge!(SHADOW_AGREEMENT, &labels).set(output.window.agreement());
        metrics::gauge!(SHADOW_MAX_ABS, &labels).set(output.window.max_abs);
        if let Some(mean) = output.window.mean_abs() {
            metrics::gauge!(SHADOW_MEAN_ABS, &labels).set(mean);
        }
        if let Some(top1) = output.window.top1_agreement() {
            metrics::gauge!(SHADOW_TOP1, &labels).set(top1);
        }
    }
    for (side, latency) in [("serving", &comparison.serving_latency), ("shadow", &comparison.shadow_latency)] {
        for (quantile, value) in [("0.5", latency.p50), ("0.99", latency.p99)] {
            let Some(value) = value else { continue };
            let labels = [
                ("model", model.to_string()),
                ("version", version.clone()),
                ("side", side.to_string()),
                ("quantile", quantile.to_string()),
            ];
            metrics::gauge!(SHADOW_LATENCY, &labels).set(value.as_secs_f64());
        }
    }
}

pub fn set_capacity(model: &str, version: &str, requests_per_second: f64) {
    metrics::gauge!(CAPACITY, "model" => model.to_string(), "version" => version.to_string()).set(requests_per_second);
}
