//! How many requests per second a version sustains within its latency
//! target, from its cost model (cost.rs) and the server's measured
//! per-request overhead: the answer of `GET /v2/models/{m}/capacity`.
//!
//! The method, as the answer states it: open-loop Poisson arrivals at a
//! trial rate run through a simulation of the version's queue (its
//! instances, each taking up to the batch size the queue aims for as soon
//! as it is free, every batch taking the cost model's time for its rows),
//! each request's latency counted as its wait plus its batch's execution
//! plus the per-request overhead. A rate is sustainable when at least
//! `WITHIN` of the requests finish within the target and the cores suffice
//! (the overhead's CPU per request plus the model's CPU per execution, at
//! the batch sizes the simulation formed). Bisection finds the highest
//! such rate. Plain data: tested directly.

use std::collections::VecDeque;
use std::time::Duration;

/// The share of requests that must meet the target.
pub const WITHIN: f64 = 0.99;
/// Requests simulated per trial rate (the first tenth warms the queue up).
pub const ARRIVALS: usize = 20_000;
/// Bisection steps: the rate is found within 2^-14 of the saturation rate.
const STEPS: usize = 14;

/// What the answer is derived from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Execution time of a batch of 1..=len rows (index rows - 1).
    pub cost: Vec<Duration>,
    pub instances: usize,
    /// Rows the queue takes at most per batch under load.
    pub batch: usize,
    /// The latency target (the SLO, or twice one execution when the SLO
    /// is unattainable).
    pub target: Duration,
    /// The server's own time per request outside the model (latency and CPU).
    pub overhead: Duration,
    /// Rows per request (at least 1).
    pub rows: usize,
    /// Cores the server may use.
    pub cores: f64,
    /// Cores one execution keeps busy (ONNX Runtime's threads while it runs).
    pub cores_per_execution: f64,
}

/// The highest sustainable rate and what it implies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub requests_per_second: f64,
    /// Mean rows per execution at that rate.
    pub batch: f64,
    /// Which bound holds it there: "latency" (the queue) or "cpu".
    pub limited_by: &'static str,
    /// The rate at which the instances would run back to back at `batch`
    /// rows per execution, ignoring the target.
    pub saturation: f64,
}

/// How a trial rate went.
struct Trial {
    within: f64,
    mean_batch: f64,
}

impl Inputs {
    fn exec(&self, rows: usize) -> Duration {
        let rows = rows.clamp(1, self.cost.len().max(1));
        self.cost.get(rows - 1).copied().unwrap_or_default()
    }

    /// Requests per batch at most, and the rate of back-to-back batches.
    fn saturation(&self) -> (usize, f64) {
        let per_batch = (self.batch.max(1) / self.rows.max(1)).max(1);
        let exec = self.exec(per_batch * self.rows.max(1)).as_secs_f64().max(1e-9);
        (per_batch, self.instances.max(1) as f64 * per_batch as f64 / exec)
    }

    /// Runs `arrivals` Poisson arrivals at `rate` per second through the queue.
    fn trial(&self, rate: f64, arrivals: usize, seed: u64) -> Trial {
        let (per_batch, _) = self.saturation();
        let rows = self.rows.max(1);
        let target = (self.target.as_secs_f64() - self.overhead.as_secs_f64()).max(0.0);
        let mut random = seed;
        let mut uniform = move || {
            random = random.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = random;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut next = 0.0f64;
        let times: Vec<f64> = (0..arrivals)
            .map(|_| {
                next += -(1.0 - uniform()).ln() / rate;
                next
            })
            .collect();
        let warm = arrivals / 10;
        let mut free = vec![0.0f64; self.instances.max(1)];
        let mut queue: VecDeque<usize> = VecDeque::new();
        let (mut arrived, mut within, mut counted, mut batches, mut batched) = (0usize, 0usize, 0usize, 0usize, 0usize);
        loop {
            let (instance, free_at) =
                free.iter().copied().enumerate().min_by(|a, b| a.1.total_cmp(&b.1)).expect("one instance");
            let next_arrival = times.get(arrived).copied();
            match (queue.front(), next_arrival) {
                (Some(&front), next) if next.is_none_or(|n| free_at.max(times[front]) < n) => {
                    let start = free_at.max(times[front]);
                    let mut members = Vec::with_capacity(per_batch);
                    while members.len() < per_batch && queue.front().is_some_and(|&i| times[i] <= start) {
                        members.push(queue.pop_front().expect("checked"));
                    }
                    let end = start + self.exec(members.len() * rows).as_secs_f64();
                    free[instance] = end;
                    for &member in &members {
                        if member >= warm {
                            counted += 1;
                            within += usize::from(end - times[member] <= target);
                        }
                    }
                    batches += 1;
                    batched += members.len() * rows;
                }
                (_, Some(_)) => {
                    queue.push_back(arrived);
                    arrived += 1;
                }
                (_, None) => break,
            }
        }
        Trial { within: within as f64 / counted.max(1) as f64, mean_batch: batched as f64 / batches.max(1) as f64 }
    }

    /// Whether `rate` is sustainable; the trial, and the bound that fails.
    fn feasible(&self, rate: f64, arrivals: usize) -> (Trial, Option<&'static str>) {
        let trial = self.trial(rate, arrivals, 0x5eed);
        if trial.within < WITHIN {
            return (trial, Some("latency"));
        }
        let per_request = self.overhead.as_secs_f64()
            + self.cores_per_execution * self.exec(trial.mean_batch.round() as usize).as_secs_f64() * self.rows as f64
                / trial.mean_batch.max(1.0);
        if rate * per_request > self.cores {
            return (trial, Some("cpu"));
        }
        (trial, None)
    }

    /// The highest sustainable rate, by bisection between 0 and saturation.
    pub fn sustainable(&self, arrivals: usize) -> Answer {
        let (_, saturation) = self.saturation();
        let (mut low, mut high) = (0.0, saturation);
        let (mut batch, mut limited_by) = (1.0, "latency");
        for _ in 0..STEPS {
            let middle = (low + high) / 2.0;
            match self.feasible(middle, arrivals) {
                (trial, None) => {
                    low = middle;
                    batch = trial.mean_batch;
                }
                (_, Some(bound)) => {
                    high = middle;
                    limited_by = bound;
                }
            }
        }
        Answer { requests_per_second: low, batch, limited_by, saturation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    fn inputs(cost: Vec<Duration>, instances: usize, target: Duration) -> Inputs {
        let batch = cost.len();
        Inputs {
            cost,
            instances,
            batch,
            target,
            overhead: Duration::ZERO,
            rows: 1,
            cores: 64.0,
            cores_per_execution: 1.0,
        }
    }

    #[test]
    fn one_instance_without_batching_follows_the_m_d_1_queue() {
        // 10 ms per request, target 100 ms: M/D/1's p99 response reaches
        // 10 service times near utilisation 0.8 (its tail is about
        // exponential with the queue's decay rate).
        let answer = inputs(vec![ms(10.0)], 1, ms(100.0)).sustainable(ARRIVALS);
        assert_eq!(answer.saturation, 100.0);
        assert!((70.0..90.0).contains(&answer.requests_per_second), "{answer:?}");
        assert_eq!(answer.limited_by, "latency");
    }

    #[test]
    fn batching_and_instances_raise_the_rate_and_the_target_caps_it() {
        // Batches of up to 8 cost 10 ms + 1 ms per row.
        let cost: Vec<Duration> = (1..=8).map(|rows| ms(10.0 + rows as f64)).collect();
        let one = inputs(cost.clone(), 1, ms(100.0)).sustainable(ARRIVALS);
        let two = inputs(cost.clone(), 2, ms(100.0)).sustainable(ARRIVALS);
        assert!(one.requests_per_second > 300.0 && one.batch > 3.0, "{one:?}");
        assert!(two.requests_per_second > 1.6 * one.requests_per_second, "{one:?} {two:?}");
        let tight = inputs(cost, 1, ms(25.0)).sustainable(ARRIVALS);
        assert!(tight.requests_per_second < one.requests_per_second, "{tight:?}");
        // A target shorter than one execution sustains nothing.
        assert!(inputs(vec![ms(10.0)], 1, ms(5.0)).sustainable(2_000).requests_per_second < 1.0);
    }

    #[test]
    fn the_cores_bound_a_model_of_microseconds() {
        let mut fast = inputs(vec![Duration::from_micros(5)], 1, ms(25.0));
        fast.overhead = Duration::from_micros(50);
        fast.cores = 2.0;
        let answer = fast.sustainable(ARRIVALS);
        // 55 us of CPU per request on 2 cores: about 36 000 per second.
        assert_eq!(answer.limited_by, "cpu");
        assert!((answer.requests_per_second - 2.0 / 55e-6).abs() < 2_000.0, "{answer:?}");
    }
}
