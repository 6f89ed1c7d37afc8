//! Service-level objectives per model, computed in the server.
//!
//! Two SLIs, over every answered request of the model (all versions):
//! - latency: a request is bad when it took longer than the threshold (a
//!   histogram bucket boundary, so Prometheus can compute the same from
//!   `ferroserve_request_duration_seconds_bucket{le=threshold}`);
//! - availability: a request is bad when the server failed it: codes
//!   internal, unavailable, deadline_exceeded, overloaded.
//!
//! Burn rate over a window = (bad / total) / (1 − objective). Counts live in
//! fixed rings of time slots (10 s slots for the 5m…6h windows, 1 h slots
//! for the budget period), so memory per model is constant. Callers pass
//! `now`: every computation is tested with explicit time.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// The burn-rate windows exported, with their labels.
pub const WINDOWS: [(&str, Duration); 4] = [
    ("5m", Duration::from_secs(300)),
    ("30m", Duration::from_secs(1800)),
    ("1h", Duration::from_secs(3600)),
    ("6h", Duration::from_secs(6 * 3600)),
];
/// Slot width of the burn-rate ring (its length covers the longest window).
const SLOT: Duration = Duration::from_secs(10);
/// Slot width of the budget-period ring.
const PERIOD_SLOT: Duration = Duration::from_secs(3600);

/// The outcome codes the availability SLI counts as the server's failures.
pub const FAILURE_CODES: [&str; 4] = ["internal", "unavailable", "deadline_exceeded", "overloaded"];

/// A model's objectives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloConfig {
    /// Requests slower than this (seconds) are bad for the latency SLI.
    pub latency_threshold: f64,
    /// Share of requests that must be at or under the threshold.
    pub latency_objective: f64,
    /// Share of requests the server must not fail.
    pub availability_objective: f64,
    /// The error-budget period.
    pub period: Duration,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            latency_threshold: 0.025,
            latency_objective: 0.99,
            availability_objective: 0.999,
            period: Duration::from_secs(30 * 86_400),
        }
    }
}

impl SloConfig {
    /// Checks the objectives are ratios below 1 and the threshold is one of
    /// the histogram's bucket boundaries.
    pub fn validate(&self, buckets: &[f64]) -> Result<(), String> {
        for (what, objective) in [
            ("slo_latency_objective", self.latency_objective),
            ("slo_availability_objective", self.availability_objective),
        ] {
            if !(objective > 0.0 && objective < 1.0) {
                return Err(format!("{what} must be above 0 and below 1, got {objective}"));
            }
        }
        if !buckets.iter().any(|b| (b - self.latency_threshold).abs() < 1e-12) {
            return Err(format!(
                "slo_latency_seconds {} is not a histogram bucket boundary ({buckets:?}), so Prometheus could not \
                 compute the same SLI",
                self.latency_threshold
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    total: u64,
    slow: u64,
    failed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.total += other.total;
        self.slow += other.slow;
        self.failed += other.failed;
    }
}

/// Counts per time slot in a ring; a slot is reused once it is older than
/// the ring covers.
#[derive(Debug)]
struct Ring {
    width: Duration,
    slots: Vec<(u64, Counts)>,
}

impl Ring {
    fn new(width: Duration, covers: Duration) -> Self {
        let n = (covers.as_secs_f64() / width.as_secs_f64()).ceil() as usize + 1;
        Ring { width, slots: vec![(u64::MAX, Counts::default()); n] }
    }

    fn index(&self, since_start: Duration) -> u64 {
        (since_start.as_nanos() / self.width.as_nanos()) as u64
    }

    fn add(&mut self, since_start: Duration, counts: Counts) {
        let index = self.index(since_start);
        let n = self.slots.len();
        let slot = &mut self.slots[(index % n as u64) as usize];
        if slot.0 != index {
            *slot = (index, Counts::default());
        }
        slot.1 += counts;
    }

    /// The counts of the slots that overlap the last `window` before `now`.
    fn sum(&self, since_start: Duration, window: Duration) -> Counts {
        let last = self.index(since_start);
        let span = (window.as_nanos() / self.width.as_nanos()) as u64;
        let first = last.saturating_sub(span.saturating_sub(1));
        let mut sum = Counts::default();
        for (index, counts) in &self.slots {
            if *index != u64::MAX && (first..=last).contains(index) {
                sum += *counts;
            }
        }
        sum
    }
}

/// One model's SLO bookkeeping.
pub struct SloTracker {
    config: Mutex<SloConfig>,
    started: Instant,
    rings: Mutex<(Ring, Ring)>,
}

/// What the tracker exports at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct SloReport {
    /// (window label, latency burn rate, availability burn rate)
    pub burn: Vec<(&'static str, f64, f64)>,
    /// Error budget left over the period (1 = untouched, 0 = spent,
    /// negative = overspent), latency then availability.
    pub budget: (f64, f64),
}

impl SloTracker {
    pub fn new(config: SloConfig, now: Instant) -> Self {
        let longest = WINDOWS.iter().map(|(_, d)| *d).max().unwrap_or(SLOT);
        SloTracker {
            config: Mutex::new(config),
            started: now,
            rings: Mutex::new((Ring::new(SLOT, longest), Ring::new(PERIOD_SLOT, config.period))),
        }
    }

    pub fn config(&self) -> SloConfig {
        *self.config.lock()
    }

    /// A reload may change the objectives; the counts carry on.
    pub fn set_config(&self, config: SloConfig) {
        let period_changed = self.config.lock().period != config.period;
        *self.config.lock() = config;
        if period_changed {
            self.rings.lock().1 = Ring::new(PERIOD_SLOT, config.period);
        }
    }

    /// Counts one answered request.
    pub fn record(&self, now: Instant, latency: Duration, code: &str) {
        let threshold = self.config.lock().latency_threshold;
        let counts = Counts {
            total: 1,
            slow: u64::from(latency.as_secs_f64() > threshold),
            failed: u64::from(FAILURE_CODES.contains(&code)),
        };
        let since = now.saturating_duration_since(self.started);
        let mut rings = self.rings.lock();
        rings.0.add(since, counts);
        rings.1.add(since, counts);
    }

    pub fn report(&self, now: Instant) -> SloReport {
        let config = self.config();
        let since = now.saturating_duration_since(self.started);
        let rings = self.rings.lock();
        let ratio = |bad: u64, total: u64| if total == 0 { 0.0 } else { bad as f64 / total as f64 };
        let burn = WINDOWS
            .iter()
            .map(|&(label, window)| {
                let c = rings.0.sum(since, window);
                (
                    label,
                    ratio(c.slow, c.total) / (1.0 - config.latency_objective),
                    ratio(c.failed, c.total) / (1.0 - config.availability_objective),
                )
            })
            .collect();
        let period = rings.1.sum(since, config.period);
        let budget = (
            1.0 - ratio(period.slow, period.total) / (1.0 - config.latency_objective),
            1.0 - ratio(period.failed, period.total) / (1.0 - config.availability_objective),
        );
        SloReport { burn, budget }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn burn(report: &SloReport, window: &str) -> (f64, f64) {
        let (_, latency, availability) = report.burn.iter().find(|(w, ..)| *w == window).unwrap();
        (*latency, *availability)
    }

    #[test]
    fn burn_rates_are_the_bad_share_over_the_allowed_share() {
        let t0 = Instant::now();
        let slo = SloTracker::new(SloConfig::default(), t0);
        // 1000 requests in the last minute: 20 slow (2%), 5 failed (0.5%).
        for i in 0..1000u64 {
            let latency = if i < 20 { ms(30) } else { ms(10) };
            let code = if i % 200 == 0 {
                "internal"
            } else if i % 200 == 1 {
                "invalid_argument"
            } else {
                "ok"
            };
            slo.record(t0 + Duration::from_millis(60 * i), latency, code);
        }
        let report = slo.report(t0 + Duration::from_secs(60));
        let (latency, availability) = burn(&report, "5m");
        assert!((latency - 2.0).abs() < 1e-9, "2% slow against a 1% allowance: {latency}");
        assert!((availability - 5.0).abs() < 1e-9, "0.5% failed against 0.1%: {availability}");
        assert_eq!(burn(&report, "6h"), burn(&report, "5m"), "everything is inside every window");
        assert!((report.budget.0 - (1.0 - 2.0)).abs() < 1e-9, "the budget is overspent: {:?}", report.budget);
    }

    #[test]
    fn requests_leave_a_window_once_it_has_passed_them() {
        let t0 = Instant::now();
        let slo = SloTracker::new(SloConfig::default(), t0);
        for _ in 0..100 {
            slo.record(t0, ms(100), "unavailable"); // all slow and failed, at t0
        }
        let later = t0 + Duration::from_secs(400); // past 5m, inside 30m
        for _ in 0..100 {
            slo.record(later, ms(1), "ok");
        }
        let report = slo.report(later);
        assert_eq!(burn(&report, "5m"), (0.0, 0.0));
        let (latency, availability) = burn(&report, "30m");
        assert!((latency - 50.0).abs() < 1e-9 && (availability - 500.0).abs() < 1e-9, "{report:?}");
        // Seven hours on, only the budget period remembers.
        let much_later = t0 + Duration::from_secs(7 * 3600);
        let report = slo.report(much_later);
        assert_eq!(burn(&report, "6h"), (0.0, 0.0));
        assert!(report.budget.1 < 0.0, "half failed: budget overspent {:?}", report.budget);
    }

    #[test]
    fn no_traffic_burns_nothing_and_leaves_the_budget_whole() {
        let t0 = Instant::now();
        let report = SloTracker::new(SloConfig::default(), t0).report(t0 + Duration::from_secs(3600));
        assert!(report.burn.iter().all(|(_, l, a)| *l == 0.0 && *a == 0.0));
        assert_eq!(report.budget, (1.0, 1.0));
    }

    #[test]
    fn a_threshold_off_the_bucket_boundaries_or_a_bad_objective_is_refused() {
        let buckets = [0.01, 0.025, 0.05];
        assert!(SloConfig::default().validate(&buckets).is_ok());
        let off = SloConfig { latency_threshold: 0.03, ..SloConfig::default() };
        assert!(off.validate(&buckets).unwrap_err().contains("bucket boundary"));
        let one = SloConfig { availability_objective: 1.0, ..SloConfig::default() };
        assert!(one.validate(&buckets).unwrap_err().contains("slo_availability_objective"));
    }

    #[test]
    fn the_ring_reuses_slots_and_never_counts_a_stale_one() {
        let mut ring = Ring::new(Duration::from_secs(10), Duration::from_secs(30));
        let one = Counts { total: 1, slow: 0, failed: 0 };
        ring.add(Duration::from_secs(0), one);
        ring.add(Duration::from_secs(45), one); // reuses slot 0's place (4 slots)
        assert_eq!(ring.sum(Duration::from_secs(45), Duration::from_secs(30)).total, 1);
        assert_eq!(ring.slots.len(), 4, "constant memory");
    }
}
