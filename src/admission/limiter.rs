//! An adaptive concurrency limit per model version, Vegas style: it learns
//! the no-load latency and keeps the number of requests inside the server
//! near the point where latency starts to grow.
//!
//! For each answered request with latency `rtt`:
//! - `min_rtt` is the lowest latency seen in the current window of
//!   `WINDOW` samples (the no-load baseline; re-learnt every window, so it
//!   follows a model that becomes slower or faster);
//! - the requests queued beyond what the model can absorb are estimated as
//!   `queued = limit × (1 − min_rtt / rtt)`;
//! - `queued < ALPHA` (latency near baseline): the limit grows by 1;
//!   `queued > BETA` (latency rising): it shrinks by 1; in between it holds.
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

/// Bounds and start of the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    pub initial: u32,
    pub min: u32,
    pub max: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig { initial: 64, min: 4, max: 4096 }
    }
}

#[derive(Debug)]
pub struct Limiter {
    config: LimitConfig,
    limit: f64,
    /// The baseline of the previous window (None until one is complete).
    baseline: Option<Duration>,
    /// The lowest latency of the window in progress.
    window_min: Option<Duration>,
    samples: u32,
}

impl Limiter {
    pub fn new(config: LimitConfig) -> Self {
        let initial = config.initial.clamp(config.min, config.max);
        Limiter { config, limit: f64::from(initial), baseline: None, window_min: None, samples: 0 }
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Whether a request may enter with `in_flight` already inside.
    pub fn admits(&self, in_flight: u32) -> bool {
        in_flight < self.limit()
    }

    /// Learns from one answered request.
    pub fn record(&mut self, rtt: Duration) {
        let rtt = rtt.max(Duration::from_nanos(1));
        self.window_min = Some(self.window_min.map_or(rtt, |m| m.min(rtt)));
        self.samples += 1;
        let min_rtt = match (self.baseline, self.window_min) {
            (Some(b), Some(w)) => b.min(w),
            (b, w) => b.or(w).expect("window_min was just set; this is a bug"),
        };
        if self.samples >= WINDOW {
            self.baseline = self.window_min.take();
            self.samples = 0;
        }
        let queued = self.limit * (1.0 - min_rtt.as_secs_f64() / rtt.as_secs_f64());
        if queued < ALPHA {
            self.limit += 1.0;
        } else if queued > BETA {
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

    #[test]
    fn latency_at_baseline_grows_the_limit_up_to_max() {
        let mut l = Limiter::new(LimitConfig { initial: 10, min: 2, max: 12 });
        for _ in 0..5 {
            l.record(ms(10));
        }
        assert_eq!(l.limit(), 12, "grows by one per sample, capped at max");
    }

    #[test]
    fn rising_latency_shrinks_the_limit_down_to_min() {
        let mut l = Limiter::new(LimitConfig { initial: 20, min: 4, max: 100 });
        l.record(ms(10)); // baseline 10 ms; limit 21
        // Twice the baseline: queued = limit / 2 > BETA while limit > 12.
        for _ in 0..100 {
            l.record(ms(20));
        }
        assert_eq!(l.limit(), 12, "shrinks until the estimated queue is within BETA");
        // Ten times the baseline: queued = 0.9 × limit, above BETA down to min... until 6.
        for _ in 0..100 {
            l.record(ms(100));
        }
        assert_eq!(l.limit(), 6);
        let mut floor = Limiter::new(LimitConfig { initial: 20, min: 15, max: 100 });
        floor.record(ms(10));
        for _ in 0..100 {
            floor.record(ms(100));
        }
        assert_eq!(floor.limit(), 15, "never below min");
    }

    #[test]
    fn moderate_queueing_holds_the_limit() {
        let mut l = Limiter::new(LimitConfig { initial: 10, min: 2, max: 100 });
        l.record(ms(10)); // limit 11
        // queued = 11 × (1 − 10/20) = 5.5, between ALPHA and BETA: hold.
        for _ in 0..10 {
            l.record(ms(20));
        }
        assert_eq!(l.limit(), 11);
    }

    #[test]
    fn the_baseline_is_relearnt_every_window() {
        let mut l = Limiter::new(LimitConfig { initial: 10, min: 2, max: 10 });
        l.record(ms(1));
        for _ in 0..WINDOW - 1 {
            l.record(ms(50)); // shrinks toward min against the 1 ms baseline
        }
        assert!(l.limit() <= 6, "limit {}", l.limit());
        // The next window's baseline is 50 ms itself (the 1 ms sample aged out
        // after two windows), so 50 ms latency is "no load" and the limit regrows.
        for _ in 0..2 * WINDOW {
            l.record(ms(50));
        }
        assert_eq!(l.limit(), 10);
    }

    #[test]
    fn admission_compares_in_flight_with_the_limit() {
        let l = Limiter::new(LimitConfig { initial: 3, min: 1, max: 10 });
        assert!(l.admits(2));
        assert!(!l.admits(3));
    }
}
