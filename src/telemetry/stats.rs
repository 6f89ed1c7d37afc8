//! Per model-version statistics in Triton's ModelStatistics shape: counts and
//! cumulative nanoseconds, updated lock-free on the request path.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the total time of the events counted.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    pub fn add(&self, elapsed: Duration) {
        self.add_many(1, elapsed);
    }

    /// Counts `n` events that each took `elapsed`.
    pub fn add_many(&self, n: u64, elapsed: Duration) {
        self.count.fetch_add(n, Relaxed);
        self.ns.fetch_add(n * elapsed.as_nanos() as u64, Relaxed);
    }

    /// (count, cumulative ns)
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Relaxed), self.ns.load(Relaxed))
    }
}

/// Time spent in the three phases of one model execution.
#[derive(Debug, Default, Clone, Copy)]
pub struct ComputeTimes {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

#[derive(Debug, Default)]
pub struct BatchTally {
    pub compute_input: Tally,
    pub compute_infer: Tally,
    pub compute_output: Tally,
}

/// Statistics of one model version. Written by the fronts (success, fail)
/// and the instance threads (queue, compute, batches); read by
/// ModelStatistics and /stats.
#[derive(Debug, Default)]
pub struct VersionStats {
    pub success: Tally,
    pub fail: Tally,
    /// Failures by Triton's reason (telemetry/triton.rs FAILURE_REASONS).
    pub fail_reasons: [AtomicU64; 4],
    pub queue: Tally,
    pub compute_input: Tally,
    pub compute_infer: Tally,
    pub compute_output: Tally,
    /// Inferences performed (a request of batch 4 counts 4).
    pub inference_count: AtomicU64,
    /// Model executions (one per batch run).
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last inference; 0 for never.
    pub last_inference_ms: AtomicU64,
    /// Per executed batch size.
    pub batches: Mutex<BTreeMap<u64, BatchTally>>,
}

impl VersionStats {
    /// Records one request answered with the error `code`.
    pub fn record_failure(&self, code: &str, elapsed: Duration) {
        self.fail.add(elapsed);
        self.fail_reasons[super::triton::failure_reason(code)].fetch_add(1, Relaxed);
    }

    /// Records one model execution of `requests` requests holding
    /// `batch_size` rows. As in Triton, the inference compute tallies count
    /// each request (with the batch's time); the batch tallies count executions.
    pub fn record_execution(&self, batch_size: u64, requests: u64, times: ComputeTimes) {
        self.compute_input.add_many(requests, times.input);
        self.compute_infer.add_many(requests, times.infer);
        self.compute_output.add_many(requests, times.output);
        self.inference_count.fetch_add(batch_size, Relaxed);
        self.execution_count.fetch_add(1, Relaxed);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now_ms, Relaxed);
        let mut batches = self.batches.lock();
        let tally = batches.entry(batch_size).or_default();
        tally.compute_input.add(times.input);
        tally.compute_infer.add(times.infer);
        tally.compute_output.add(times.output);
    }
}
