//! Capacity answers from live data: each version's cost model
//! (scheduler/capacity.rs does the arithmetic) with what the server
//! measures on its timer: its own CPU per answered request outside the
//! models (process CPU minus the model threads' CPU), each version's
//! request rate, rows per request, and the cores one execution keeps busy.
//! `GET /v2/models/{m}/capacity`, `ferroserve plan` and
//! `ferroserve_capacity_requests_per_second` read it.

use super::{ModelVersion, Repository};
use crate::error::{Error, Result};
use crate::runtime::{cores_available, process_cpu};
use crate::scheduler::capacity::{self, Answer, Inputs};
use crate::telemetry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The overhead assumed until enough requests were measured.
pub const DEFAULT_OVERHEAD: Duration = Duration::from_micros(50);
/// Requests a sample needs before its overhead counts.
const MIN_SAMPLE_REQUESTS: u64 = 200;
/// Weight of the newest sample in the smoothed figures.
const SMOOTHING: f64 = 0.3;
/// The capacity metric is refreshed every this many samples.
const PUBLISH_EVERY: u64 = 5;
/// How the answer is derived, as it says.
pub const METHOD: &str = "open-loop Poisson arrivals simulated through the version's queue: its instances, \
     the batch size it aims for, the cost model's execution time per batch size, plus the measured \
     per-request overhead; the highest rate at which 99% of requests finish within the latency target \
     and the cores suffice (overhead CPU per request plus the model's CPU per execution)";

/// The server-wide sample: process CPU against answered requests.
#[derive(Debug, Default)]
pub struct Overhead {
    last: Option<(Instant, Duration, u64)>,
    /// Smoothed CPU per answered request outside the models.
    per_request: Option<f64>,
    samples: u64,
}

impl Overhead {
    /// Takes one sample: the process's CPU, the model threads' CPU since
    /// the last sample, and the requests answered so far.
    pub fn sample(&mut self, now: Instant, process: Duration, model_delta: Duration, answered: u64) {
        if let Some((_, last_process, last_answered)) = self.last {
            let requests = answered.saturating_sub(last_answered);
            if requests >= MIN_SAMPLE_REQUESTS {
                let front = process.saturating_sub(last_process).saturating_sub(model_delta).as_secs_f64();
                let value = front / requests as f64;
                self.per_request = Some(self.per_request.map_or(value, |old| old + SMOOTHING * (value - old)));
            } else {
                return; // too few: the window grows until it holds enough
            }
        }
        self.samples += 1;
        self.last = Some((now, process, answered));
    }

    /// The overhead per request, and whether it was measured.
    pub fn per_request(&self) -> (Duration, bool) {
        match self.per_request {
            Some(seconds) => (Duration::from_secs_f64(seconds.max(0.0)), true),
            None => (DEFAULT_OVERHEAD, false),
        }
    }
}

/// One version's load, sampled on the timer.
#[derive(Debug, Default)]
pub struct LoadSample {
    last: Option<Counters>,
    /// Requests per second over the latest sample.
    pub rate: f64,
    pub rows_per_request: Option<f64>,
    /// Model-thread CPU seconds per second of execution.
    pub cores_per_execution: Option<f64>,
}

/// A version's cumulative counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub at: Instant,
    pub requests: u64,
    pub rows: u64,
    pub execution: Duration,
    pub model_cpu: Duration,
}

impl LoadSample {
    /// Takes the version's counters; returns its model CPU since the last sample.
    pub fn update(&mut self, now: Counters) -> Duration {
        let Some(last) = self.last.replace(now) else { return now.model_cpu };
        let seconds = now.at.saturating_duration_since(last.at).as_secs_f64().max(1e-3);
        let requests = now.requests.saturating_sub(last.requests);
        self.rate = requests as f64 / seconds;
        if requests > 0 {
            self.rows_per_request = Some(now.rows.saturating_sub(last.rows) as f64 / requests as f64);
        }
        let cpu = now.model_cpu.saturating_sub(last.model_cpu);
        let execution = now.execution.saturating_sub(last.execution);
        if execution >= Duration::from_millis(50) {
            let cores = cpu.as_secs_f64() / execution.as_secs_f64();
            self.cores_per_execution =
                Some(self.cores_per_execution.map_or(cores, |old| old + SMOOTHING * (cores - old)));
        }
        cpu
    }
}

/// What one version sustains, and the figures it came from.
#[derive(Debug, Clone)]
pub struct VersionCapacity {
    pub version: String,
    pub instances: usize,
    pub intra_op_threads: usize,
    pub batch_size_aimed: usize,
    pub latency_target: Duration,
    pub answer: Answer,
    pub current_rate: f64,
    pub rows_per_request: f64,
    pub cores_per_execution: f64,
    /// Whether cores_per_execution was measured (else assumed: the intra-op threads).
    pub cores_measured: bool,
}

impl VersionCapacity {
    /// Replicas of this server needed for `target` requests per second.
    pub fn replicas_for(&self, target: f64) -> Option<u64> {
        (self.answer.requests_per_second > 0.0)
            .then(|| (target / self.answer.requests_per_second).ceil().max(1.0) as u64)
    }
}

/// The capacity answer for a model.
pub struct ModelCapacity {
    pub cores: f64,
    pub overhead: Duration,
    pub overhead_measured: bool,
    pub versions: Vec<VersionCapacity>,
}

impl ModelVersion {
    /// The counters the load sample takes.
    fn counters(&self, at: Instant) -> Counters {
        let requests = self.stats.success.get().0 + self.stats.fail.get().0;
        let rows = self.stats.inference_count.load(Ordering::Relaxed);
        let execution: u64 = self
            .stats
            .batches
            .lock()
            .values()
            .map(|b| b.compute_input.get().1 + b.compute_infer.get().1 + b.compute_output.get().1)
            .sum();
        let execution = Duration::from_nanos(execution);
        Counters { at, requests, rows, execution, model_cpu: self.model_cpu() }
    }

    /// What this version sustains within its latency target; None until
    /// its cost model has learnt something.
    pub fn capacity(&self, overhead: Duration, cores: f64, arrivals: usize) -> Option<VersionCapacity> {
        let (cost, instances, batch, target) = self.capacity_inputs()?;
        let load = self.load.lock();
        let rows_per_request = load.rows_per_request.unwrap_or(1.0).max(1.0);
        let assumed = (self.intra_op_threads as f64).min(cores).max(1.0);
        let cores_per_execution = load.cores_per_execution.unwrap_or(assumed);
        let inputs = Inputs {
            cost,
            instances,
            batch,
            target,
            overhead,
            rows: rows_per_request.round() as usize,
            cores,
            cores_per_execution,
        };
        Some(VersionCapacity {
            version: self.label.clone(),
            instances,
            intra_op_threads: self.intra_op_threads,
            batch_size_aimed: batch,
            latency_target: target,
            answer: inputs.sustainable(arrivals),
            current_rate: load.rate,
            rows_per_request,
            cores_per_execution,
            cores_measured: load.cores_per_execution.is_some(),
        })
    }
}

impl Repository {
    /// On the server's timer: samples the overhead and every version's
    /// load, and refreshes the capacity metric every PUBLISH_EVERY samples.
    pub fn sample_capacity(&self) {
        let now = Instant::now();
        let versions = self.all_ready();
        let model_delta: Duration = versions.iter().map(|v| v.load.lock().update(v.counters(now))).sum();
        let answered = self.answered.load(Ordering::Relaxed);
        let mut overhead = self.overhead.lock();
        overhead.sample(now, process_cpu(), model_delta, answered);
        let ((per_request, _), samples) = (overhead.per_request(), overhead.samples);
        drop(overhead);
        if samples % PUBLISH_EVERY != 1 {
            return;
        }
        let cores = cores_available();
        for version in versions.iter().filter(|v| !v.shadow) {
            if let Some(answer) = version.capacity(per_request, cores, capacity::ARRIVALS / 2) {
                telemetry::set_capacity(&version.name, &version.label, answer.answer.requests_per_second);
            }
        }
    }

    /// The capacity answer for every ready version of a model (its shadow
    /// apart: it runs on spare cycles only).
    pub fn capacity(&self, name: &str) -> Result<ModelCapacity> {
        let versions: Vec<Arc<ModelVersion>> = self.ready_versions(name).into_iter().filter(|v| !v.shadow).collect();
        if versions.is_empty() {
            self.get(name, "")?;
            return Err(Error::unavailable(format!("model '{name}' has no ready version"), Duration::from_secs(1)));
        }
        let cores = cores_available();
        let (overhead, overhead_measured) = self.overhead.lock().per_request();
        let versions = versions.iter().filter_map(|v| v.capacity(overhead, cores, capacity::ARRIVALS)).collect();
        Ok(ModelCapacity { cores, overhead, overhead_measured, versions })
    }
}
