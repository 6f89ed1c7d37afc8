//! When requests are sent: the closed-loop budget shared by workers, and the open-loop schedule
//! (evenly spaced, request i due at t0 + i/rps, or Poisson arrivals from a seed, optionally with
//! a step to another rate) with the ticker thread that releases requests on time.

use crate::config::Stop;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Closed loop: hands out request numbers until `total` are taken or the deadline passes.
pub struct Budget {
    next: AtomicU64,
    total: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    pub fn new(stop: Stop, t0: Instant) -> Self {
        Budget { next: AtomicU64::new(0), total: stop.total, deadline: stop.duration.map(|d| t0 + d) }
    }

    /// The next request number, or `None` when the run is over.
    pub fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        match self.total {
            Some(total) if index >= total => None,
            _ => Some(index),
        }
    }
}

/// How the gaps between open-loop requests are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// Evenly spaced: request i is due at t0 + i/rps.
    #[default]
    Uniform,
    /// A Poisson process: exponential gaps of mean 1/rps, drawn from a seeded generator.
    Poisson,
}

impl Arrivals {
    pub fn name(self) -> &'static str {
        match self {
            Arrivals::Uniform => "uniform",
            Arrivals::Poisson => "poisson",
        }
    }
}

/// A change of rate during the run: from `at` on, requests arrive at `rps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub rps: f64,
}

/// Open loop: when each request is due, counted from the start, for as long as the stop allows.
/// Request 0 is due at the start; the rate is `rps`, or `step.rps` from `step.at` on.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rps: f64,
    pub stop: Stop,
    pub arrivals: Arrivals,
    /// Seeds the Poisson gaps: the same seed gives the same schedule.
    pub seed: u64,
    pub step: Option<Step>,
}

impl Schedule {
    /// Evenly spaced requests at `rps`, no step.
    #[cfg(test)]
    pub fn uniform(rps: f64, stop: Stop) -> Self {
        Schedule { rps, stop, arrivals: Arrivals::Uniform, seed: 0, step: None }
    }

    /// The due offsets of the run's requests, in order.
    pub fn times(&self) -> Times {
        Times {
            schedule: *self,
            index: 0,
            phase: Phase { start_ns: 0.0, rps: self.rps, count: 0 },
            last_ns: 0.0,
            stepped: false,
            rng: SplitMix64(self.seed),
        }
    }

    /// Requests in the run (an estimate when only a duration bounds it, or with Poisson gaps).
    pub fn expected(&self) -> u64 {
        let by_duration = self.stop.duration.map(|d| {
            let secs = d.as_secs_f64();
            let requests = match self.step {
                Some(step) if step.at.as_secs_f64() < secs => {
                    step.at.as_secs_f64() * self.rps + (secs - step.at.as_secs_f64()) * step.rps
                }
                _ => secs * self.rps,
            };
            requests.ceil() as u64
        });
        match (self.stop.total, by_duration) {
            (Some(t), Some(d)) => t.min(d),
            (Some(t), None) => t,
            (None, Some(d)) => d,
            (None, None) => 0,
        }
    }
}

/// A stretch of the run at one rate: it starts at `start_ns` and has had `count` requests so far.
#[derive(Clone, Copy, Debug)]
struct Phase {
    start_ns: f64,
    rps: f64,
    count: u64,
}

/// Iterator over a schedule's due offsets (see `Schedule::times`).
#[derive(Clone, Debug)]
pub struct Times {
    schedule: Schedule,
    index: u64,
    phase: Phase,
    /// The previous request's offset (Poisson gaps add up from it).
    last_ns: f64,
    stepped: bool,
    rng: SplitMix64,
}

impl Times {
    /// The next offset in nanoseconds, before the stop is applied.
    fn next_ns(&mut self) -> f64 {
        let step = self.schedule.step.filter(|_| !self.stepped);
        let mut due = match self.schedule.arrivals {
            Arrivals::Uniform => self.phase.start_ns + self.phase.count as f64 * 1e9 / self.phase.rps,
            Arrivals::Poisson if self.index == 0 => 0.0,
            Arrivals::Poisson => self.last_ns + self.rng.exponential() * 1e9 / self.phase.rps,
        };
        if let Some(step) = step
            && due >= step.at.as_nanos() as f64
        {
            // The new rate holds from the step on. Poisson gaps have no memory, so the gap that
            // crossed the step is drawn again from the step at the new rate.
            let step_ns = step.at.as_nanos() as f64;
            self.stepped = true;
            self.phase = Phase { start_ns: step_ns, rps: step.rps, count: 0 };
            due = match self.schedule.arrivals {
                Arrivals::Uniform => step_ns,
                Arrivals::Poisson if self.index == 0 => step_ns,
                Arrivals::Poisson => step_ns + self.rng.exponential() * 1e9 / step.rps,
            };
        }
        self.phase.count += 1;
        self.last_ns = due;
        due
    }
}

impl Iterator for Times {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.schedule.stop.total.is_some_and(|total| self.index >= total) {
            return None;
        }
        let due = Duration::from_nanos(self.next_ns().round() as u64);
        if self.schedule.stop.duration.is_some_and(|d| due >= d) {
            self.schedule.stop.total = Some(self.index); // stays ended
            return None;
        }
        self.index += 1;
        Some(due)
    }
}

/// SplitMix64 (Steele, Lea and Flood): a small, fast, seedable generator, good enough to space
/// requests and the same on every platform.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An exponential draw of mean 1: -ln(1 - u) for u uniform in [0, 1).
    fn exponential(&mut self) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        -(1.0 - u).ln()
    }
}

/// A request released by the ticker: its number and the instant it was due.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub index: u64,
    pub due: Instant,
}

/// Starts the ticker: a dedicated thread that sleeps until each request is due (thread sleeps are
/// far finer than tokio's millisecond timer) and sends it on. It stops when the schedule ends or
/// the receiver is dropped. Returns the schedule's start instant and the ticks.
pub fn start_ticker(schedule: Schedule) -> Result<(Instant, mpsc::UnboundedReceiver<Tick>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    std::thread::Builder::new()
        .name("ferroload-ticker".into())
        .spawn(move || {
            for (index, offset) in (0u64..).zip(schedule.times()) {
                let due = t0 + offset;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send(Tick { index, due }).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the ticker thread")?;
    Ok((t0, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(total: Option<u64>, duration_ms: Option<u64>) -> Stop {
        Stop { total, duration: duration_ms.map(Duration::from_millis) }
    }

    fn poisson(rps: f64, seed: u64, stop: Stop) -> Schedule {
        Schedule { arrivals: Arrivals::Poisson, seed, ..Schedule::uniform(rps, stop) }
    }

    #[test]
    fn requests_are_due_at_fixed_intervals() {
        let s = Schedule::uniform(200.0, bounded(Some(5), None));
        let times: Vec<Duration> = s.times().collect();
        assert_eq!(times.len(), 5);
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(times[3], Duration::from_millis(15));
        assert_eq!(s.expected(), 5);
        let timed = Schedule::uniform(100.0, bounded(None, Some(50)));
        assert_eq!(
            timed.times().collect::<Vec<_>>(),
            (0..5).map(|i| Duration::from_millis(10 * i)).collect::<Vec<_>>()
        );
        assert_eq!(timed.expected(), 5);
    }

    #[test]
    fn poisson_arrivals_are_the_same_for_the_same_seed() {
        let stop = bounded(Some(1000), None);
        let a: Vec<Duration> = poisson(500.0, 7, stop).times().collect();
        let b: Vec<Duration> = poisson(500.0, 7, stop).times().collect();
        let other: Vec<Duration> = poisson(500.0, 8, stop).times().collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a[0], Duration::ZERO, "request 0 is due at the start");
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "offsets never go back");
    }

    #[test]
    fn poisson_gaps_are_exponential_at_the_asked_rate() {
        for seed in [1, 2, 3] {
            let n = 100_000;
            let times: Vec<f64> =
                poisson(2000.0, seed, bounded(Some(n), None)).times().map(|d| d.as_secs_f64()).collect();
            let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let rate = 1.0 / mean;
            assert!((rate / 2000.0 - 1.0).abs() < 0.02, "seed {seed}: mean rate {rate}");
            // An exponential's standard deviation equals its mean (evenly spaced gaps have none).
            let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
            assert!((sd / mean - 1.0).abs() < 0.03, "seed {seed}: sd/mean {}", sd / mean);
            // The share of gaps under the mean is 1 - 1/e for an exponential.
            let short = gaps.iter().filter(|&&g| g < mean).count() as f64 / gaps.len() as f64;
            assert!((short - (1.0 - (-1.0f64).exp())).abs() < 0.01, "seed {seed}: {short}");
        }
        // Bounded by a duration, the count is close to rate x duration.
        let count = poisson(5000.0, 9, bounded(None, Some(10_000))).times().count() as f64;
        assert!((count / 50_000.0 - 1.0).abs() < 0.02, "{count}");
    }

    #[test]
    fn a_step_switches_the_rate_at_its_offset() {
        let step = Some(Step { at: Duration::from_secs(1), rps: 1000.0 });
        let even = Schedule { step, ..Schedule::uniform(100.0, bounded(None, Some(2000))) };
        let times: Vec<Duration> = even.times().collect();
        let before = times.iter().filter(|&&t| t < Duration::from_secs(1)).count();
        assert_eq!((before, times.len() - before), (100, 1000));
        assert_eq!(times[99], Duration::from_millis(990));
        assert_eq!(times[100], Duration::from_secs(1), "the first request at the new rate is due at the step");
        assert_eq!(times[101], Duration::from_millis(1001));
        assert_eq!(even.expected(), 1100);

        for seed in [1, 2, 3] {
            let random = Schedule { seed, ..even };
            let random = Schedule { arrivals: Arrivals::Poisson, rps: 2000.0, ..random };
            let times: Vec<f64> = random.times().map(|d| d.as_secs_f64()).collect();
            let before = times.iter().filter(|&&t| t < 1.0).count() as f64;
            let after = times.len() as f64 - before;
            assert!((before / 2000.0 - 1.0).abs() < 0.05, "seed {seed}: {before} before the step");
            assert!((after / 1000.0 - 1.0).abs() < 0.1, "seed {seed}: {after} after the step");
            // Rates measured in 100 ms windows on either side of the step.
            let window = |from: f64| times.iter().filter(|&&t| t >= from && t < from + 0.1).count();
            assert!(window(0.9) > 150 && window(1.0) < 150, "seed {seed}: {} then {}", window(0.9), window(1.0));
        }
        // A step at the start: the step's rate from request 0 on.
        let at_start = Schedule { step: Some(Step { at: Duration::ZERO, rps: 10.0 }), ..even };
        assert_eq!(at_start.times().take(3).collect::<Vec<_>>()[2], Duration::from_millis(200));
    }

    #[test]
    fn budget_stops_at_total_and_deadline() {
        let budget = Budget::new(Stop { total: Some(3), duration: None }, Instant::now());
        assert_eq!([budget.claim(), budget.claim(), budget.claim(), budget.claim()], [Some(0), Some(1), Some(2), None]);
        let t0 = Instant::now() - Duration::from_secs(2);
        let expired = Budget::new(Stop { total: None, duration: Some(Duration::from_secs(1)) }, t0);
        assert_eq!(expired.claim(), None);
    }

    #[tokio::test]
    async fn ticker_releases_each_request_when_due() {
        let schedule = Schedule::uniform(1000.0, Stop { total: Some(20), duration: None });
        let (t0, mut ticks) = start_ticker(schedule).unwrap();
        let mut seen = 0;
        while let Some(tick) = ticks.recv().await {
            assert_eq!(tick.index, seen);
            assert_eq!(tick.due, t0 + Duration::from_millis(seen));
            assert!(Instant::now() >= tick.due);
            seen += 1;
        }
        assert_eq!(seen, 20);
    }
}
