//! An adaptive concurrency limit per model version, Vegas style: it learns
//! the no-load latency and keeps the number of requests inside the server
//! near the point where latency starts to grow.
//!
//! For each answered request with latency `rtt`:
//! - `min_rtt` is the no-load baseline: the lowest latency seen, re-learnt
//!   every `WINDOW` samples from the requests that entered at light load
//!   (fewer than limit / 2 others inside), so it follows a model that becomes
//!   slower or faster. Under sustained overload no request enters at light
//!   load and the baseline stays put, rather than creeping up with the
//!   queueing it is meant to detect;
//! - `avg_rtt` is a moving average of recent latencies (each sample weighs
//!   `SMOOTHING`), so one slow outlier does not move the limit;
//! - the requests queued beyond what the model can absorb are estimated as
//!   `queued = limit × (1 − min_rtt / avg_rtt)`;
//! - `queued < min(ALPHA, limit / 3)` (latency under 1.5× the baseline, or
//!   under ALPHA requests of queueing) while the limit is in use (the
//!   request entered with at least limit / 2 − 1 others inside): the limit
//!   grows by 1. A limit that traffic does not reach does not grow, so a
//!   burst after a quiet spell meets a limit learnt under load;
//!   `queued > min(BETA, limit / 2)` (latency over 2× the baseline, or over
//!   BETA requests queued): it shrinks by 1; in between it holds.
//!   The absolute bounds are Vegas's and decide for large limits; the
//!   relative ones decide for small limits, so even a model that runs one
//!   request at a time keeps admitted latency near twice its baseline.
//! - The limit stays within `[min, max]`.
//!
//! Admission is `in_flight < limit`; anything over it is refused at once.

use std::time::Duration;

/// Samples per baseline window.
pub const WINDOW: u32 = 500;
/// Grow below this many estimated queued requests.
pub const ALPHA: f64 = 3.0;
/// Shrink above this many.
pub const BETA: f64 = 6.0;
/// The weight of one sample in the moving average of latency.
pub const SMOOTHING: f64 = 0.125;

/// Bounds and start of the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    pub initial: u32,
    pub min: u32,
    pub max: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig { initial: 2, min: 2, max: 4096 }
    }
}

#[derive(Debug)]
pub struct Limiter {
    config: LimitConfig,
    limit: f64,
    /// The no-load latency (None until the first sample).
    baseline: Option<Duration>,
    /// The lowest latency at light load in the window in progress.
    light_min: Option<Duration>,
    /// The moving average of latency, in seconds.
    avg_rtt: Option<f64>,
    samples: u32,
}

impl Limiter {
    pub fn new(config: LimitConfig) -> Self {
        let initial = config.initial.clamp(config.min, config.max);
        Limiter { config, limit: f64::from(initial), baseline: None, light_min: None, avg_rtt: None, samples: 0 }
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Whether a request may enter with `in_flight` already inside.
    pub fn admits(&self, in_flight: u32) -> bool {
        in_flight < self.limit()
    }

    /// Learns from one answered request that entered with `others` requests
    /// already inside.
    pub fn record(&mut self, rtt: Duration, others: u32) {
        let rtt = rtt.max(Duration::from_nanos(1));
        let min_rtt = self.baseline.map_or(rtt, |b| b.min(rtt));
        self.baseline = Some(min_rtt);
        if f64::from(others) < self.limit / 2.0 {
            self.light_min = Some(self.light_min.map_or(rtt, |m| m.min(rtt)));
        }
        self.samples += 1;
        if self.samples >= WINDOW {
            // Relearn (up or down) from this window's light-load requests.
            if let Some(light) = self.light_min.take() {
                self.baseline = Some(light);
            }
            self.samples = 0;
        }
        let rtt = rtt.as_secs_f64();
        let avg_rtt = self.avg_rtt.map_or(rtt, |avg| avg + (rtt - avg) * SMOOTHING);
        self.avg_rtt = Some(avg_rtt);
        let queued = self.limit * (1.0 - min_rtt.as_secs_f64() / avg_rtt);
        let in_use = f64::from(others) + 1.0 >= self.limit / 2.0;
        if queued < ALPHA.min(self.limit / 3.0) && in_use {
            self.limit += 1.0;
        } else if queued > BETA.min(self.limit / 2.0) {
            self.limit -= 1.0;
        }
        self.limit = self.limit.clamp(f64::from(self.config.min), f64::from(self.config.max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` samples from a simulated model that runs `capacity` requests
    /// at once, each in `service`: with `offered` requests wanting in,
    /// `min(limit, offered)` are inside and each takes
    /// `service × max(1, inside / capacity)`. Returns the limit after each sample.
    fn drive(l: &mut Limiter, n: usize, offered: u32, capacity: u32, service: Duration) -> Vec<u32> {
        (0..n)
            .map(|_| {
                let inside = l.limit().min(offered).max(1);
                l.record(service.mul_f64((f64::from(inside) / f64::from(capacity)).max(1.0)), inside - 1);
                l.limit()
            })
            .collect()
    }

    #[test]
    fn latency_at_baseline_grows_the_limit_up_to_max() {
        let mut l = Limiter::new(LimitConfig { initial: 10, min: 2, max: 12 });
        for _ in 0..5 {
            let full = l.limit() - 1;
            l.record(ms(10), full);
        }
        assert_eq!(l.limit(), 12, "grows by one per sample, capped at max");
    }

    #[test]
    fn a_limit_that_traffic_does_not_reach_does_not_grow() {
        let mut l = Limiter::new(LimitConfig { initial: 10, min: 2, max: 100 });
        for _ in 0..100 {
            l.record(ms(10), 3); // 4 inside of 10 allowed
        }
        assert_eq!(l.limit(), 10);
        l.record(ms(10), 4); // 5 inside: half the limit is in use
        assert_eq!(l.limit(), 11);
    }

    #[test]
    fn rising_latency_shrinks_the_limit_down_to_min() {
        let mut l = Limiter::new(LimitConfig { initial: 20, min: 4, max: 100 });
        l.record(ms(10), 0); // baseline 10 ms
        // Twice the baseline: queued = limit / 2, over BETA while limit > 12.
        for _ in 0..100 {
            l.record(ms(20), 0);
        }
        assert_eq!(l.limit(), 12, "shrinks until the estimated queue is within BETA");
        // Ten times the baseline: queued = 0.9 × limit, over limit / 2: down to min.
        for _ in 0..100 {
            l.record(ms(100), 0);
        }
        assert_eq!(l.limit(), 4);
        let mut floor = Limiter::new(LimitConfig { initial: 20, min: 15, max: 100 });
        floor.record(ms(10), 0);
        for _ in 0..100 {
            floor.record(ms(100), 0);
        }
        assert_eq!(floor.limit(), 15, "never below min");
    }

    #[test]
    fn latency_between_one_and_a_half_and_twice_the_baseline_holds_the_limit() {
        let mut l = Limiter::new(LimitConfig { initial: 8, min: 2, max: 100 });
        l.record(ms(10), 0);
        for _ in 0..100 {
            l.record(ms(16), 0); // queued = 0.375 × limit: neither under limit/3 nor over limit/2
        }
        let held = l.limit();
        for _ in 0..100 {
            l.record(ms(16), 0);
        }
        assert_eq!(l.limit(), held, "holds once the average has settled");
    }

    #[test]
    fn one_request_at_a_time_settles_near_twice_the_baseline() {
        let mut l = Limiter::new(LimitConfig { initial: 20, min: 1, max: 100 });
        drive(&mut l, 10, 1, 1, ms(10)); // unloaded: learns the 10 ms baseline
        let limits = drive(&mut l, 2000, 1000, 1, ms(10)); // 1000 clients want in
        let tail = &limits[1000..];
        assert!(tail.iter().all(|&limit| (1..=3).contains(&limit)), "limits {:?}", &tail[..20]);
        let mean = tail.iter().map(|&x| f64::from(x)).sum::<f64>() / tail.len() as f64;
        assert!((1.5..=2.5).contains(&mean), "mean limit {mean}: admitted latency ≈ limit × 10 ms");
    }

    #[test]
    fn a_model_that_runs_many_at_once_keeps_a_vegas_queue() {
        let mut l = Limiter::new(LimitConfig { initial: 4, min: 1, max: 1000 });
        drive(&mut l, 10, 1, 32, ms(10));
        let limits = drive(&mut l, 3000, 1000, 32, ms(10));
        // Capacity 32: queued = limit − 32, held between ALPHA and BETA.
        assert!(limits[2000..].iter().all(|&limit| (34..=39).contains(&limit)), "limits {:?}", &limits[2000..2020]);
    }

    #[test]
    fn the_limit_recovers_when_the_overload_ends() {
        let mut l = Limiter::new(LimitConfig { initial: 20, min: 1, max: 50 });
        drive(&mut l, 10, 1, 4, ms(10));
        drive(&mut l, 1000, 1000, 4, ms(10));
        assert!(l.limit() < 12, "shed under overload: {}", l.limit());
        // The model gets faster (capacity 64): 40 clients at baseline latency.
        drive(&mut l, 300, 40, 64, ms(10));
        assert_eq!(l.limit(), 50, "grows back to max while traffic uses it");
    }

    #[test]
    fn the_baseline_is_relearnt_every_window() {
        let mut l = Limiter::new(LimitConfig { initial: 10, min: 2, max: 10 });
        l.record(ms(1), 0);
        for _ in 0..WINDOW - 1 {
            l.record(ms(50), 0); // shrinks toward min against the 1 ms baseline
        }
        assert!(l.limit() <= 6, "limit {}", l.limit());
        // The next window's baseline is 50 ms itself (the light-load requests
        // of the last window all took 50 ms), so 50 ms is "no load" and the
        // limit regrows.
        for _ in 0..WINDOW {
            l.record(ms(50), 0); // at light load: the baseline is relearnt
            l.record(ms(50), 9); // busy: the limit may grow
        }
        assert_eq!(l.limit(), 10);
    }

    #[test]
    fn sustained_overload_does_not_raise_the_baseline() {
        let mut l = Limiter::new(LimitConfig { initial: 20, min: 1, max: 100 });
        drive(&mut l, 10, 1, 1, ms(10));
        drive(&mut l, 10 * WINDOW as usize, 1000, 1, ms(10));
        assert_eq!(l.baseline, Some(ms(10)), "no light-load request, no relearning");
        assert!(l.limit() <= 3, "limit {}", l.limit());
    }

    #[test]
    fn admission_compares_in_flight_with_the_limit() {
        let l = Limiter::new(LimitConfig { initial: 3, min: 1, max: 10 });
        assert!(l.admits(2));
        assert!(!l.admits(3));
    }
}
