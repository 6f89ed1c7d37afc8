//! Metric names, the Prometheus recorder, and per-version statistics.
//!
//! Conventions: base unit seconds, `_total` counters, labels `model`,
//! `version`, `code` only (bounded cardinality).

pub mod logs;
mod rollout;
pub mod slo;
mod stats;
pub mod trace;
pub mod triton;

pub use rollout::{publish_shadow, record_shadow_promotion, set_capacity, set_shadow_percent};
pub use stats::{BatchTally, ComputeTimes, Tally, VersionStats};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Requests answered, by model, version and outcome code ("ok" or an error code).
pub const REQUESTS_TOTAL: &str = "ferroserve_requests_total";
/// End-to-end request latency inside the server, seconds.
pub const REQUEST_DURATION: &str = "ferroserve_request_duration_seconds";
/// Time a request waited for an instance, seconds.
pub const QUEUE_DURATION: &str = "ferroserve_queue_duration_seconds";
/// Time an instance spent running the model, seconds.
pub const COMPUTE_DURATION: &str = "ferroserve_compute_duration_seconds";
/// Rows per model execution.
pub const BATCH_SIZE: &str = "ferroserve_batch_size";
/// Requests waiting for an instance, per version.
pub const QUEUE_DEPTH: &str = "ferroserve_queue_depth";
/// Requests refused before any work, by reason (queue_full,
/// concurrency_limit, server_inflight).
pub const SHED_TOTAL: &str = "ferroserve_shed_total";
/// The adaptive concurrency limit of each version.
pub const CONCURRENCY_LIMIT: &str = "ferroserve_concurrency_limit";
/// Requests inside each version (admitted, not yet answered).
pub const IN_FLIGHT: &str = "ferroserve_inflight_requests";
/// Circuit breaker state per version: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "ferroserve_breaker_state";
/// Circuit breaker transitions, by the state entered.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "ferroserve_breaker_transitions_total";
/// Model version loads by outcome ("ok" / "error").
pub const MODEL_LOADS_TOTAL: &str = "ferroserve_model_loads_total";
/// The share of unpinned requests (0–100) a model's canary version gets.
pub const CANARY_WEIGHT: &str = "ferroserve_canary_weight";
/// Canary rollbacks, by who rolled back ("automatic" / "operator").
pub const CANARY_ROLLBACKS_TOTAL: &str = "ferroserve_canary_rollbacks_total";
/// Model versions taken out of service: retired by a reload, or unloaded.
pub const MODEL_UNLOADS_TOTAL: &str = "ferroserve_model_unloads_total";
/// A version's predicted execution time per batch size class (powers of
/// two and max_batch_size), seconds: its cost model.
pub const EXECUTION_SECONDS: &str = "ferroserve_model_execution_seconds";
/// 1 when one execution at batch 1 fits the model's latency SLO, else 0.
pub const SLO_ATTAINABLE: &str = "ferroserve_slo_attainable";
/// Versions currently ready to serve.
pub const MODELS_READY: &str = "ferroserve_models_ready";
/// Inference requests inside the whole server (admitted, not yet answered).
pub const SERVER_IN_FLIGHT: &str = "ferroserve_server_inflight_requests";
/// A model's SLO objectives (ratios), by SLI ("latency" / "availability").
pub const SLO_OBJECTIVE: &str = "ferroserve_slo_objective";
/// A model's latency SLO threshold, seconds.
pub const SLO_LATENCY_THRESHOLD: &str = "ferroserve_slo_latency_threshold_seconds";
/// Error-budget burn rate by SLI and window (5m, 30m, 1h, 6h).
pub const SLO_BURN_RATE: &str = "ferroserve_slo_burn_rate";
/// Error budget left over the SLO period, by SLI (1 whole, 0 spent, < 0 overspent).
pub const SLO_BUDGET_REMAINING: &str = "ferroserve_slo_error_budget_remaining";
/// Repository changes applied in poll mode, by model and action ("load" /
/// "unload").
pub const REPOSITORY_CHANGES_TOTAL: &str = "ferroserve_repository_changes_total";
/// Time one sync of a repository on object storage took (listing and
/// downloads), seconds.
pub const REPOSITORY_SYNC_SECONDS: &str = "ferroserve_repository_sync_seconds";
/// Syncs or units that failed, by reason ("list", "download", "verify", "io").
pub const REPOSITORY_SYNC_ERRORS_TOTAL: &str = "ferroserve_repository_sync_errors_total";
/// Bytes downloaded from object storage.
pub const REPOSITORY_DOWNLOADED_BYTES_TOTAL: &str = "ferroserve_repository_downloaded_bytes_total";
/// Certificate and key reloads, by outcome ("success" / "failure"); a
/// failure leaves the old pair serving.
pub const TLS_RELOADS_TOTAL: &str = "ferroserve_tls_reloads_total";
/// When the served certificate expires, seconds since the epoch.
pub const TLS_CERT_EXPIRY: &str = "ferroserve_tls_cert_expiry_timestamp_seconds";
/// API key file reloads, by outcome ("success" / "failure").
pub const AUTH_KEYS_RELOADS_TOTAL: &str = "ferroserve_auth_keys_reloads_total";
/// Calls refused by the auth layer, by port and reason
/// ("unauthenticated", "permission_denied", "no_route").
pub const AUTH_DENIED_TOTAL: &str = "ferroserve_auth_denied_total";

/// Latency buckets from 50 µs to 10 s, roughly ×2 apart (the default of
/// `--latency-buckets`).
pub const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Batch-size buckets: powers of two up to 1024.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the global Prometheus recorder with these latency buckets
/// (`--latency-buckets`); the handle renders /metrics.
pub fn install(latency_buckets: &[f64], triton_metrics: bool) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), latency_buckets)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe();
    if triton_metrics {
        triton::enable();
    }
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(REQUESTS_TOTAL, "Inference requests answered, by outcome code");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Inference request latency inside the server"
    );
    metrics::describe_histogram!(QUEUE_DURATION, metrics::Unit::Seconds, "Time requests waited for an instance");
    metrics::describe_histogram!(COMPUTE_DURATION, metrics::Unit::Seconds, "Model execution time");
    metrics::describe_histogram!(BATCH_SIZE, metrics::Unit::Count, "Rows per model execution");
    metrics::describe_gauge!(QUEUE_DEPTH, "Requests waiting for an instance");
    metrics::describe_counter!(SHED_TOTAL, "Requests refused before any work, by reason");
    metrics::describe_gauge!(CONCURRENCY_LIMIT, "Adaptive concurrency limit per model version");
    metrics::describe_gauge!(IN_FLIGHT, "Requests inside each model version");
    metrics::describe_gauge!(BREAKER_STATE, "Circuit breaker state: 0 closed, 1 open, 2 half-open");
    metrics::describe_counter!(BREAKER_TRANSITIONS_TOTAL, "Circuit breaker transitions, by the state entered");
    metrics::describe_counter!(MODEL_LOADS_TOTAL, "Model version loads, by outcome");
    metrics::describe_gauge!(MODELS_READY, "Model versions ready to serve");
    metrics::describe_gauge!(
        EXECUTION_SECONDS,
        metrics::Unit::Seconds,
        "Predicted execution time per batch size class (the cost model)"
    );
    metrics::describe_gauge!(SLO_ATTAINABLE, "1 when one execution at batch 1 fits the latency SLO, else 0");
    metrics::describe_counter!(MODEL_UNLOADS_TOTAL, "Model versions taken out of service, by cause");
    metrics::describe_gauge!(CANARY_WEIGHT, "Share of unpinned requests (0-100) sent to the canary version");
    metrics::describe_counter!(CANARY_ROLLBACKS_TOTAL, "Canary rollbacks, by who rolled back");
    metrics::describe_gauge!(SERVER_IN_FLIGHT, "Inference requests inside the server");
    metrics::describe_gauge!(SLO_OBJECTIVE, "SLO objective per model and SLI, a ratio");
    metrics::describe_gauge!(SLO_LATENCY_THRESHOLD, "Latency SLO threshold per model, seconds");
    metrics::describe_gauge!(SLO_BURN_RATE, "Error-budget burn rate per model, SLI and window");
    metrics::describe_gauge!(SLO_BUDGET_REMAINING, "Error budget left over the SLO period per model and SLI");
    metrics::describe_counter!(REPOSITORY_CHANGES_TOTAL, "Repository changes applied in poll mode, by action");
    metrics::describe_histogram!(
        REPOSITORY_SYNC_SECONDS,
        metrics::Unit::Seconds,
        "Time one sync of the repository from object storage took"
    );
    metrics::describe_counter!(REPOSITORY_SYNC_ERRORS_TOTAL, "Repository syncs or units that failed, by reason");
    metrics::describe_counter!(
        REPOSITORY_DOWNLOADED_BYTES_TOTAL,
        metrics::Unit::Bytes,
        "Bytes downloaded from object storage"
    );
    metrics::describe_counter!(TLS_RELOADS_TOTAL, "TLS certificate and key reloads, by outcome");
    metrics::describe_gauge!(TLS_CERT_EXPIRY, "When the served TLS certificate expires, seconds since the epoch");
    metrics::describe_counter!(AUTH_KEYS_RELOADS_TOTAL, "API key file reloads, by outcome");
    metrics::describe_counter!(AUTH_DENIED_TOTAL, "Calls refused by the auth layer, by port and reason");
    rollout::describe();
}

/// Records one answered inference request.
pub fn record_request(model: &str, version: &str, code: &'static str, elapsed: Duration) {
    let labels = [("model", model.to_string()), ("version", version.to_string())];
    metrics::counter!(REQUESTS_TOTAL, &[&labels[..], &[("code", code.to_string())]].concat()).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// Counts one refused request.
pub fn record_shed(model: &str, version: &str, reason: &'static str) {
    metrics::counter!(SHED_TOTAL, "model" => model.to_string(), "version" => version.to_string(), "reason" => reason)
        .increment(1);
}

pub fn breaker_gauge(model: &str, version: &str) -> metrics::Gauge {
    metrics::gauge!(BREAKER_STATE, "model" => model.to_string(), "version" => version.to_string())
}

pub fn record_breaker_transition(model: &str, version: &str, to: &'static str) {
    let labels = [("model", model.to_string()), ("version", version.to_string()), ("to", to.to_string())];
    metrics::counter!(BREAKER_TRANSITIONS_TOTAL, &labels).increment(1);
}

/// The concurrency-limit and in-flight gauges of one version.
pub struct AdmissionGauges {
    limit: metrics::Gauge,
    in_flight: metrics::Gauge,
}

impl AdmissionGauges {
    pub fn new(model: &str, version: &str) -> Self {
        let labels = [("model", model.to_string()), ("version", version.to_string())];
        AdmissionGauges {
            limit: metrics::gauge!(CONCURRENCY_LIMIT, &labels),
            in_flight: metrics::gauge!(IN_FLIGHT, &labels),
        }
    }

    pub fn set(&self, limit: u32, in_flight: u32) {
        self.limit.set(f64::from(limit));
        self.in_flight.set(f64::from(in_flight));
    }
}

/// The cost model's gauges of one version.
pub struct CostGauges {
    /// One per batch size class, in the order of `classes`.
    execution: Vec<metrics::Gauge>,
    attainable: metrics::Gauge,
}

impl CostGauges {
    pub fn new(model: &str, version: &str, classes: &[usize]) -> Self {
        let gauge = |rows: usize| metrics::gauge!(EXECUTION_SECONDS, "model" => model.to_string(), "version" => version.to_string(), "batch" => rows.to_string());
        CostGauges {
            execution: classes.iter().map(|&rows| gauge(rows)).collect(),
            attainable: metrics::gauge!(SLO_ATTAINABLE, "model" => model.to_string(), "version" => version.to_string()),
        }
    }

    /// Sets each class's predicted time (in `new`'s order; unknown ones are
    /// left alone) and whether the SLO is attainable.
    pub fn set(&self, predicted: impl Iterator<Item = Option<Duration>>, attainable: bool) {
        for (gauge, time) in self.execution.iter().zip(predicted) {
            if let Some(time) = time {
                gauge.set(time.as_secs_f64());
            }
        }
        self.attainable.set(if attainable { 1.0 } else { 0.0 });
    }
}

/// Metric handles of one model version, registered once so the hot path
/// records without building labels.
#[derive(Clone)]
pub struct VersionMetrics {
    model: String,
    version: String,
    ok: metrics::Counter,
    duration: metrics::Histogram,
    queue: metrics::Histogram,
    compute: metrics::Histogram,
    batch: metrics::Histogram,
    depth: metrics::Gauge,
    /// Triton's `nv_inference_pending_request_count`, when its families are on.
    pending: Option<metrics::Gauge>,
}

impl VersionMetrics {
    pub fn new(model: &str, version: &str) -> Self {
        let labels = [("model", model.to_string()), ("version", version.to_string())];
        let ok = [&labels[..], &[("code", "ok".to_string())]].concat();
        VersionMetrics {
            model: model.to_string(),
            version: version.to_string(),
            ok: metrics::counter!(REQUESTS_TOTAL, &ok),
            duration: metrics::histogram!(REQUEST_DURATION, &labels),
            queue: metrics::histogram!(QUEUE_DURATION, &labels),
            compute: metrics::histogram!(COMPUTE_DURATION, &labels),
            batch: metrics::histogram!(BATCH_SIZE, &labels),
            depth: metrics::gauge!(QUEUE_DEPTH, &labels),
            pending: triton::pending_gauge(model, version),
        }
    }

    /// One answered request of this version.
    pub fn record_request(&self, code: &'static str, elapsed: Duration) {
        if code == "ok" {
            self.ok.increment(1);
            self.duration.record(elapsed.as_secs_f64());
        } else {
            record_request(&self.model, &self.version, code, elapsed);
        }
    }

    /// One execution: the longest queue wait in the batch, the compute time
    /// and the rows run.
    pub fn record_execution(&self, queue: Duration, compute: Duration, rows: usize) {
        self.queue.record(queue.as_secs_f64());
        self.compute.record(compute.as_secs_f64());
        self.batch.record(rows as f64);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.depth.set(depth as f64);
        if let Some(pending) = &self.pending {
            pending.set(depth as f64);
        }
    }
}

pub fn record_load(model: &str, version: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(MODEL_LOADS_TOTAL, "model" => model.to_string(), "version" => version.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Counts one version taken out of service; `cause` is "retired" (a reload
/// left it out) or "unloaded".
pub fn record_unload(model: &str, version: &str, cause: &'static str) {
    metrics::counter!(MODEL_UNLOADS_TOTAL, "model" => model.to_string(), "version" => version.to_string(), "cause" => cause)
        .increment(1);
}

pub fn set_canary_weight(model: &str, canary_version: i64, weight: u8) {
    metrics::gauge!(CANARY_WEIGHT, "model" => model.to_string(), "version" => canary_version.to_string())
        .set(f64::from(weight));
}

pub fn record_canary_rollback(model: &str, canary_version: i64, by: &'static str) {
    let labels = [("model", model.to_string()), ("version", canary_version.to_string()), ("by", by.to_string())];
    metrics::counter!(CANARY_ROLLBACKS_TOTAL, &labels).increment(1);
}

/// Counts one repository change applied in poll mode.
pub fn record_repository_change(model: &str, action: &'static str) {
    metrics::counter!(REPOSITORY_CHANGES_TOTAL, "model" => model.to_string(), "action" => action).increment(1);
}

/// Exports one model's objectives, burn rates and budgets.
pub fn publish_slo(model: &str, config: &slo::SloConfig, report: &slo::SloReport) {
    let m = || model.to_string();
    metrics::gauge!(SLO_OBJECTIVE, "model" => m(), "slo" => "latency").set(config.latency_objective);
    metrics::gauge!(SLO_OBJECTIVE, "model" => m(), "slo" => "availability").set(config.availability_objective);
    metrics::gauge!(SLO_LATENCY_THRESHOLD, "model" => m()).set(config.latency_threshold);
    for &(window, latency, availability) in &report.burn {
        metrics::gauge!(SLO_BURN_RATE, "model" => m(), "slo" => "latency", "window" => window).set(latency);
        metrics::gauge!(SLO_BURN_RATE, "model" => m(), "slo" => "availability", "window" => window).set(availability);
    }
    metrics::gauge!(SLO_BUDGET_REMAINING, "model" => m(), "slo" => "latency").set(report.budget.0);
    metrics::gauge!(SLO_BUDGET_REMAINING, "model" => m(), "slo" => "availability").set(report.budget.1);
}

/// Counts one failed repository sync or unit, by reason.
pub fn record_sync_error(reason: &'static str) {
    metrics::counter!(REPOSITORY_SYNC_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub fn record_downloaded_bytes(bytes: u64) {
    metrics::counter!(REPOSITORY_DOWNLOADED_BYTES_TOTAL).increment(bytes);
}

pub fn set_models_ready(count: usize) {
    metrics::gauge!(MODELS_READY).set(count as f64);
}
