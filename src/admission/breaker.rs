//! A circuit breaker per model version, as a plain state machine: callers
//! pass `now`, so every transition is tested directly.
//!
//! - Closed: calls flow. It opens on `consecutive_failures` runtime failures
//!   in a row, or when the last `window` calls (at least `min_calls`) hold a
//!   failure rate or a slow-call rate at or above `rate_threshold`.
//! - Open: calls are refused at once until `open_for` has passed.
//! - Half-open: up to `probes` calls go through; if all succeed the breaker
//!   closes (with a fresh window), and any failure opens it again.
//!
//! Only the model's own failures count: client errors and shed requests are
//! never recorded.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub window: usize,
    pub min_calls: usize,
    pub rate_threshold: f64,
    /// A call slower than this counts as slow; None: slowness never opens.
    pub slow_call: Option<Duration>,
    pub open_for: Duration,
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            window: 50,
            min_calls: 20,
            rate_threshold: 0.5,
            slow_call: None,
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

impl State {
    /// The `ferroserve_breaker_state` value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(&self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen { .. } => 2.0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Slow,
    Failure,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    consecutive: u32,
    /// Recent outcomes while closed, oldest first.
    window: VecDeque<Outcome>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker { config, state: State::Closed, consecutive: 0, window: VecDeque::new() }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Classifies a finished call by its latency.
    pub fn outcome(&self, ok: bool, latency: Duration) -> Outcome {
        match (ok, self.config.slow_call) {
            (false, _) => Outcome::Failure,
            (true, Some(slow)) if latency > slow => Outcome::Slow,
            (true, _) => Outcome::Success,
        }
    }

    /// Whether a call may go through now; Err holds how long until a retry
    /// may be let through.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            State::Closed => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                self.state = State::HalfOpen { admitted: 1, succeeded: 0 };
                Ok(())
            }
            State::HalfOpen { admitted, succeeded } if admitted < self.config.probes => {
                self.state = State::HalfOpen { admitted: admitted + 1, succeeded };
                Ok(())
            }
            State::HalfOpen { .. } => Err(Duration::ZERO),
        }
    }

    /// An admitted call ended without an outcome (cancelled): in half-open
    /// its probe slot frees.
    pub fn release(&mut self) {
        if let State::HalfOpen { admitted, succeeded } = self.state {
            self.state = State::HalfOpen { admitted: admitted.saturating_sub(1), succeeded };
        }
    }

    /// Records an admitted call's outcome; returns the new state if it changed.
    pub fn record(&mut self, now: Instant, outcome: Outcome) -> Option<State> {
        let before = self.state;
        match self.state {
            State::Closed => {
                self.consecutive = if outcome == Outcome::Failure { self.consecutive + 1 } else { 0 };
                self.window.push_back(outcome);
                if self.window.len() > self.config.window {
                    self.window.pop_front();
                }
                if self.consecutive >= self.config.consecutive_failures || self.rates_exceeded() {
                    self.open(now);
                }
            }
            State::HalfOpen { admitted, succeeded } => {
                if outcome == Outcome::Failure {
                    self.open(now);
                } else if succeeded + 1 >= self.config.probes {
                    self.state = State::Closed;
                    self.consecutive = 0;
                    self.window.clear();
                } else {
                    self.state = State::HalfOpen { admitted, succeeded: succeeded + 1 };
                }
            }
            State::Open { .. } => {} // a call admitted before it opened
        }
        (self.state.name() != before.name()).then_some(self.state)
    }

    fn rates_exceeded(&self) -> bool {
        let n = self.window.len();
        if n < self.config.min_calls {
            return false;
        }
        let share = |o: Outcome| self.window.iter().filter(|&&x| x == o).count() as f64 / n as f64;
        share(Outcome::Failure) >= self.config.rate_threshold || share(Outcome::Slow) >= self.config.rate_threshold
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open { until: now + self.config.open_for };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            window: 10,
            min_calls: 4,
            rate_threshold: 0.5,
            slow_call: Some(Duration::from_millis(100)),
            open_for: Duration::from_secs(1),
            probes: 2,
        }
    }

    /// A breaker opened at `t` by three failures.
    fn opened(t: Instant) -> Breaker {
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            b.record(t, Outcome::Failure);
        }
        b
    }

    #[test]
    fn consecutive_failures_open_it_and_it_refuses_until_the_wait_ends() {
        let t = Instant::now();
        let mut b = Breaker::new(config());
        assert_eq!(b.record(t, Outcome::Failure), None);
        assert_eq!(b.record(t, Outcome::Failure), None);
        assert!(matches!(b.record(t, Outcome::Failure), Some(State::Open { .. })));
        assert_eq!(b.try_acquire(t + Duration::from_millis(400)), Err(Duration::from_millis(600)));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t = Instant::now();
        let mut b = Breaker::new(BreakerConfig { min_calls: 100, ..config() });
        for _ in 0..10 {
            b.record(t, Outcome::Failure);
            b.record(t, Outcome::Failure);
            b.record(t, Outcome::Success);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn the_failure_rate_opens_it_once_enough_calls_were_seen() {
        let t = Instant::now();
        let mut b = Breaker::new(BreakerConfig { consecutive_failures: 100, ..config() });
        b.record(t, Outcome::Failure);
        b.record(t, Outcome::Success);
        assert_eq!(b.record(t, Outcome::Failure), None, "3 calls: below min_calls");
        assert!(matches!(b.record(t, Outcome::Success), Some(State::Open { .. })), "2 of 4 failed");
    }

    #[test]
    fn the_slow_call_rate_opens_it() {
        let t = Instant::now();
        let mut b = Breaker::new(config());
        let slow = b.outcome(true, Duration::from_millis(150));
        assert_eq!(slow, Outcome::Slow);
        assert_eq!(b.outcome(true, Duration::from_millis(50)), Outcome::Success);
        assert_eq!(b.outcome(false, Duration::ZERO), Outcome::Failure);
        for _ in 0..3 {
            b.record(t, slow);
        }
        assert!(matches!(b.record(t, Outcome::Success), Some(State::Open { .. })), "3 of 4 slow");
    }

    #[test]
    fn half_open_admits_probes_and_closes_when_they_succeed() {
        let t = Instant::now();
        let mut b = opened(t);
        let later = t + Duration::from_secs(1);
        assert_eq!(b.try_acquire(later), Ok(()));
        assert_eq!(b.state(), State::HalfOpen { admitted: 1, succeeded: 0 });
        assert_eq!(b.try_acquire(later), Ok(()));
        assert_eq!(b.try_acquire(later), Err(Duration::ZERO), "only two probes at once");
        assert_eq!(b.record(later, Outcome::Success), None);
        assert_eq!(b.record(later, Outcome::Success), Some(State::Closed));
        assert_eq!(b.try_acquire(later), Ok(()));
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let t = Instant::now();
        let mut b = opened(t);
        let later = t + Duration::from_secs(1);
        b.try_acquire(later).unwrap();
        assert!(
            matches!(b.record(later, Outcome::Failure), Some(State::Open { until }) if until == later + Duration::from_secs(1))
        );
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot() {
        let t = Instant::now();
        let mut b = opened(t);
        let later = t + Duration::from_secs(1);
        b.try_acquire(later).unwrap();
        b.try_acquire(later).unwrap();
        b.release();
        assert_eq!(b.try_acquire(later), Ok(()));
    }
}
