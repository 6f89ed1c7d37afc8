//! Capacity answers from live data: each version's cost model
//! (scheduler/capacity.rs does the arithmetic) with what the server
//! measures on its timer: its own CPU per answered request outside the
//! models (the process's CPU time, less the models' share: each version's
//! execution time times the cores one execution keeps busy), and each
//! version's request rate and rows per request. `GET /v2/models/{m}/capacity`,
//! `ferroserve plan` and `ferroserve_capacity_requests_per_second` read it.

use super::{ModelVersion, Repository};
use crate::error::{Error, Result};
use crate::runtime::{BusyPeriods, busy_periods, cores_available, process_cpu};
use crate::scheduler::capacity::{self, Answer, Inputs};
use crate::telemetry;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The overhead assumed until enough requests were measured.
pub const DEFAULT_OVERHEAD: Duration = Duration::from_micros(50);
/// Requests a sample needs before its overhead counts.
const MIN_SAMPLE_REQUESTS: u64 = 200;
/// The samples the overhead is taken over: about the last minute.
const OVERHEAD_SAMPLES: usize = 60;
/// The capacity metric is refreshed every this many samples.
const PUBLISH_EVERY: u64 = 5;
/// How the answer is derived, as it says.
pub const METHOD: &str = "open-loop Poisson arrivals simulated through the version's queue: its instances, \
     the batch size it aims for, the cost model's execution time per batch size, plus the version's \
     overhead per request (overhead_source: marginal, the CPU of one more request on an awake runtime \
     worker, fitted over the last minute's busy periods; else busy_mean, its mean CPU per request on \
     the workers; else mean, the server's CPU per answered request less the models' execution; else \
     assumed); the highest rate at which 99% of requests finish within the latency target and the \
     cores suffice (the overhead per request plus the model's CPU per execution)";

/// The server-wide sample: process CPU against answered requests.
#[derive(Debug, Default)]
pub struct Overhead {
    last: Option<(Duration, u64)>,
    /// (front CPU seconds, requests) per sample, newest last.
    window: VecDeque<(f64, u64)>,
    samples: u64,
}

/// Where the overhead per request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverheadSource {
    /// The CPU of one more request on an awake worker (the busy-period fit).
    Marginal,
    /// The version's mean CPU per request on the workers, wake-ups
    /// included (its busy periods, where they cannot be fitted).
    Busy,
    /// The mean CPU per request outside the models at today's load.
    Mean,
    /// Nothing measured yet: DEFAULT_OVERHEAD.
    Assumed,
}

impl OverheadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OverheadSource::Marginal => "marginal",
            OverheadSource::Busy => "busy_mean",
            OverheadSource::Mean => "mean",
            OverheadSource::Assumed => "assumed",
        }
    }
}

impl Overhead {
    /// Takes one sample: the process's CPU, the models' CPU since the last
    /// sample and the requests answered so far. A sample with too few
    /// requests waits for the next (the window grows until it has enough).
    pub fn sample(&mut self, process: Duration, models: Duration, answered: u64) {
        self.samples += 1;
        let Some((last_process, last_answered)) = self.last else {
            self.last = Some((process, answered));
            return;
        };
        let requests = answered.saturating_sub(last_answered);
        if requests < MIN_SAMPLE_REQUESTS {
            return;
        }
        let front = process.saturating_sub(last_process).saturating_sub(models).as_secs_f64();
        if self.window.len() == OVERHEAD_SAMPLES {
            self.window.pop_front();
        }
        self.window.push_back((front, requests));
        self.last = Some((process, answered));
    }

    /// The mean CPU per request outside the models over the window (busy
    /// moments weigh as many requests as they answered).
    pub fn mean(&self) -> Option<Duration> {
        let (cpu, requests) = self.window.iter().fold((0.0, 0u64), |(c, r), &(cpu, n)| (c + cpu, r + n));
        (requests > 0).then(|| Duration::from_secs_f64((cpu / requests as f64).max(0.0)))
    }
}

/// One version's load, sampled on the timer.
#[derive(Debug, Default)]
pub struct LoadSample {
    last: Option<Counters>,
    /// Requests per second over the latest sample.
    pub rate: f64,
    pub rows_per_request: Option<f64>,
    /// The version's busy-period sums at each sample, oldest first: the
    /// newest less the oldest is the last minute's.
    busy: VecDeque<BusyPeriods>,
}

/// A version's cumulative counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub at: Instant,
    pub requests: u64,
    pub rows: u64,
    pub execution: Duration,
    pub busy: BusyPeriods,
}

impl LoadSample {
    /// Takes the version's counters; returns its execution time since the
    /// last sample.
    pub fn update(&mut self, now: Counters) -> Duration {
        if self.busy.len() > OVERHEAD_SAMPLES {
            self.busy.pop_front();
        }
        self.busy.push_back(now.busy);
        let Some(last) = self.last.replace(now) else { return Duration::ZERO };
        let seconds = now.at.saturating_duration_since(last.at).as_secs_f64().max(1e-3);
        let requests = now.requests.saturating_sub(last.requests);
        self.rate = requests as f64 / seconds;
        if requests > 0 {
            self.rows_per_request = Some(now.rows.saturating_sub(last.rows) as f64 / requests as f64);
        }
        now.execution.saturating_sub(last.execution)
    }

    /// The marginal CPU of one of this version's requests on the workers
    /// over the last minute (runtime/workers.rs), once it holds
    /// MIN_SAMPLE_REQUESTS requests and the fit can tell it.
    pub fn marginal(&self) -> Option<Duration> {
        self.busy_window()?.marginal().map(Duration::from_secs_f64)
    }

    /// The mean CPU per request of this version on the workers over the
    /// last minute, wake-ups included.
    pub fn busy_mean(&self) -> Option<Duration> {
        self.busy_window()?.mean().map(Duration::from_secs_f64)
    }

    fn busy_window(&self) -> Option<BusyPeriods> {
        let window = self.busy.back()?.since(self.busy.front()?);
        (window.requests() >= MIN_SAMPLE_REQUESTS as f64).then_some(window)
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
    /// The server's CPU per request of this version outside the model.
    pub overhead: Duration,
    pub overhead_source: OverheadSource,
    /// Cores one execution keeps busy: its intra-op threads, within the cores.
    pub cores_per_execution: f64,
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
    /// The server-wide mean CPU per request outside the models at today's load.
    pub overhead_mean: Option<Duration>,
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
        Counters { at, requests, rows, execution, busy: busy_periods(self.busy_key) }
    }

    /// Cores one execution keeps busy: ONNX Runtime's intra-op threads, at
    /// most the cores there are.
    fn cores_per_execution(&self, cores: f64) -> f64 {
        (self.intra_op_threads as f64).min(cores).max(1.0)
    }

    /// The overhead per request of this version the capacity answer uses:
    /// the marginal cost of its requests on the workers where the fit can
    /// tell it (what a request costs near the limit), else their mean on
    /// the workers (an upper bound of it), else the server's `mean` at
    /// today's load (which holds whatever else the process spends), else
    /// the default.
    fn overhead(&self, mean: Option<Duration>) -> (Duration, OverheadSource) {
        let load = self.load.lock();
        if let Some(marginal) = load.marginal() {
            return (marginal, OverheadSource::Marginal);
        }
        match (load.busy_mean(), mean) {
            (Some(busy), _) => (busy, OverheadSource::Busy),
            (None, Some(mean)) => (mean, OverheadSource::Mean),
            (None, None) => (DEFAULT_OVERHEAD, OverheadSource::Assumed),
        }
    }

    /// What this version sustains within its latency target, given the
    /// server's mean overhead per request; None until its cost model has
    /// learnt something.
    pub fn capacity(&self, mean: Option<Duration>, cores: f64, arrivals: usize) -> Option<VersionCapacity> {
        let (cost, instances, batch, target) = self.capacity_inputs()?;
        let (overhead, overhead_source) = self.overhead(mean);
        let (current_rate, rows_per_request) = {
            let load = self.load.lock();
            (load.rate, load.rows_per_request.unwrap_or(1.0).max(1.0))
        };
        let cores_per_execution = self.cores_per_execution(cores);
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
            current_rate,
            rows_per_request,
            overhead,
            overhead_source,
            cores_per_execution,
        })
    }
}

impl Repository {
    /// On the server's timer: samples the overhead and every version's
    /// load, and refreshes the capacity metric every PUBLISH_EVERY samples.
    pub fn sample_capacity(&self) {
        let now = Instant::now();
        let cores = cores_available();
        let versions = self.all_ready();
        let models: Duration =
            versions.iter().map(|v| v.load.lock().update(v.counters(now)).mul_f64(v.cores_per_execution(cores))).sum();
        let answered = self.answered.load(Ordering::Relaxed);
        let (samples, mean) = {
            let mut overhead = self.overhead.lock();
            overhead.sample(process_cpu(), models, answered);
            (overhead.samples, overhead.mean())
        };
        if samples % PUBLISH_EVERY != 1 {
            return;
        }
        for version in versions.iter().filter(|v| !v.shadow) {
            if let Some(answer) = version.capacity(mean, cores, capacity::ARRIVALS / 2) {
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
        let overhead_mean = self.overhead.lock().mean();
        let versions = versions.iter().filter_map(|v| v.capacity(overhead_mean, cores, capacity::ARRIVALS)).collect();
        Ok(ModelCapacity { cores, overhead_mean, versions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_the_front_cpu_per_request_over_the_window() {
        let mut overhead = Overhead::default();
        assert_eq!(overhead.mean(), None);
        let ms = Duration::from_millis;
        overhead.sample(ms(1000), Duration::ZERO, 0);
        // 1 000 requests in 100 ms of CPU, 40 of them the models': 60 us each.
        overhead.sample(ms(1100), ms(40), 1000);
        assert_eq!(overhead.mean(), Some(Duration::from_micros(60)));
        // Too few requests: the sample waits for the next one.
        overhead.sample(ms(1110), Duration::ZERO, 1100);
        assert_eq!(overhead.mean(), Some(Duration::from_micros(60)));
        // 3 000 more at 20 us: weighted by requests, (60 + 60) ms / 4 000.
        overhead.sample(ms(1160), Duration::ZERO, 4000);
        assert_eq!(overhead.mean(), Some(Duration::from_micros(30)));
    }

    fn counters(at: Instant, secs: u64, requests: u64, rows: u64, ms: u64, busy: BusyPeriods) -> Counters {
        Counters { at: at + Duration::from_secs(secs), requests, rows, execution: Duration::from_millis(ms), busy }
    }

    #[test]
    fn the_load_sample_gives_the_rate_rows_and_execution_since_the_last() {
        let mut load = LoadSample::default();
        let (at, none) = (Instant::now(), BusyPeriods::default());
        assert_eq!(load.update(counters(at, 0, 10, 10, 5, none)), Duration::ZERO);
        assert_eq!(load.update(counters(at, 2, 210, 610, 105, none)), Duration::from_millis(100));
        assert_eq!((load.rate, load.rows_per_request), (100.0, Some(3.0)));
        // A sample without requests keeps the rows it knew.
        load.update(counters(at, 3, 210, 610, 105, none));
        assert_eq!((load.rate, load.rows_per_request), (0.0, Some(3.0)));
    }

    #[test]
    fn the_marginal_cost_is_the_last_minute_of_busy_periods() {
        let mut load = LoadSample::default();
        let at = Instant::now();
        let mut busy = BusyPeriods::default();
        load.update(counters(at, 0, 0, 0, 0, busy));
        assert_eq!(load.marginal(), None);
        // 600 busy periods of 1 to 3 requests: 40 us to wake, 15 us a request.
        for i in 0..600u32 {
            let k = f64::from(1 + i % 3);
            busy.add(40e-6 + 15e-6 * k, k);
        }
        load.update(counters(at, 1, 1200, 1200, 0, busy));
        let cost = load.marginal().unwrap();
        assert!(cost.abs_diff(Duration::from_micros(15)) < Duration::from_nanos(10), "{cost:?}");
        // The mean on the workers holds the wake-ups: 40 us per 2 requests more.
        let mean = load.busy_mean().unwrap();
        assert!(mean.abs_diff(Duration::from_micros(35)) < Duration::from_nanos(10), "{mean:?}");
        // A minute later with no new periods, the window is empty.
        for secs in 2..=(OVERHEAD_SAMPLES as u64 + 2) {
            load.update(counters(at, secs, 1200, 1200, 0, busy));
        }
        assert_eq!((load.marginal(), load.busy_mean()), (None, None));
    }
}
