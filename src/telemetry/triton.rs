//! Triton's metric families (`nv_inference_*`), beside ferroserve's, so a
//! dashboard or an alert built for Triton shows the same traffic after the
//! switch. Triton's names, types, units (cumulative microsecond counters)
//! and labels (`model`, `version`; `reason` on failures).
//!
//! They are fed from the statistics each version keeps for
//! ModelStatistics, as Triton's own metrics are, and set when /metrics is
//! scraped: the request path does no work for them, except the pending
//! count, set with the queue depth. On by default; `--triton-metrics false`
//! leaves them out.

use super::VersionStats;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

pub const REQUEST_SUCCESS: &str = "nv_inference_request_success";
pub const REQUEST_FAILURE: &str = "nv_inference_request_failure";
pub const INFERENCE_COUNT: &str = "nv_inference_count";
pub const EXEC_COUNT: &str = "nv_inference_exec_count";
pub const REQUEST_DURATION: &str = "nv_inference_request_duration_us";
pub const QUEUE_DURATION: &str = "nv_inference_queue_duration_us";
pub const COMPUTE_INPUT_DURATION: &str = "nv_inference_compute_input_duration_us";
pub const COMPUTE_INFER_DURATION: &str = "nv_inference_compute_infer_duration_us";
pub const COMPUTE_OUTPUT_DURATION: &str = "nv_inference_compute_output_duration_us";
pub const PENDING_REQUEST_COUNT: &str = "nv_inference_pending_request_count";

/// Triton's failure reasons, in `VersionStats::fail_reasons` order.
pub const FAILURE_REASONS: [&str; 4] = ["REJECTED", "CANCELED", "BACKEND", "OTHER"];

static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Turns the families on (at start-up, before any model loads) and
/// describes them.
pub fn enable() {
    ENABLED.store(true, Relaxed);
    let counter = |name: &'static str, help: &'static str| metrics::describe_counter!(name, help);
    counter(REQUEST_SUCCESS, "Triton: successful inference requests, all batch sizes");
    counter(REQUEST_FAILURE, "Triton: failed inference requests, all batch sizes, by reason");
    counter(INFERENCE_COUNT, "Triton: inferences performed (a request of batch 4 counts 4)");
    counter(EXEC_COUNT, "Triton: model executions (one per batch run)");
    counter(REQUEST_DURATION, "Triton: cumulative end-to-end time of successful requests, microseconds");
    counter(QUEUE_DURATION, "Triton: cumulative time requests waited in the queue, microseconds");
    counter(COMPUTE_INPUT_DURATION, "Triton: cumulative time preparing inputs, per request, microseconds");
    counter(COMPUTE_INFER_DURATION, "Triton: cumulative model execution time, per request, microseconds");
    counter(COMPUTE_OUTPUT_DURATION, "Triton: cumulative time extracting outputs, per request, microseconds");
    metrics::describe_gauge!(PENDING_REQUEST_COUNT, "Triton: requests waiting to be executed");
}

/// The index of Triton's failure reason for an outcome code: refused by
/// admission or too late is REJECTED, a model failure is BACKEND.
pub fn failure_reason(code: &str) -> usize {
    match code {
        "overloaded" | "deadline_exceeded" => 0,
        "internal" => 2,
        _ => 3,
    }
}

/// The pending-request gauge of one version, when the families are on.
pub fn pending_gauge(model: &str, version: &str) -> Option<metrics::Gauge> {
    enabled()
        .then(|| metrics::gauge!(PENDING_REQUEST_COUNT, "model" => model.to_string(), "version" => version.to_string()))
}

/// Sets one version's counters from its statistics (called per scrape).
pub fn publish(model: &str, version: &str, stats: &VersionStats) {
    let labels = [("model", model.to_string()), ("version", version.to_string())];
    let set = |name: &'static str, value: u64| metrics::counter!(name, &labels).absolute(value);
    let micros = |(_, ns): (u64, u64)| ns / 1_000;
    set(REQUEST_SUCCESS, stats.success.get().0);
    set(INFERENCE_COUNT, stats.inference_count.load(Relaxed));
    set(EXEC_COUNT, stats.execution_count.load(Relaxed));
    set(REQUEST_DURATION, micros(stats.success.get()));
    set(QUEUE_DURATION, micros(stats.queue.get()));
    set(COMPUTE_INPUT_DURATION, micros(stats.compute_input.get()));
    set(COMPUTE_INFER_DURATION, micros(stats.compute_infer.get()));
    set(COMPUTE_OUTPUT_DURATION, micros(stats.compute_output.get()));
    for (reason, count) in FAILURE_REASONS.iter().zip(&stats.fail_reasons) {
        let labels = [&labels[..], &[("reason", reason.to_string())]].concat();
        metrics::counter!(REQUEST_FAILURE, &labels).absolute(count.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_rejected_and_model_failures_backend() {
        assert_eq!(FAILURE_REASONS[failure_reason("overloaded")], "REJECTED");
        assert_eq!(FAILURE_REASONS[failure_reason("deadline_exceeded")], "REJECTED");
        assert_eq!(FAILURE_REASONS[failure_reason("internal")], "BACKEND");
        assert_eq!(FAILURE_REASONS[failure_reason("invalid_argument")], "OTHER");
    }
}
