//! Canary deploys for one model: a stable version, a canary version and the
//! share of unpinned requests the canary gets, from the config's
//! `stable_version`, `canary_version` and `canary_weight` parameters.
//!
//! Requests that name a version get it. Unpinned requests are split by
//! weight with a seeded generator, so the split is reproducible. Every answer
//! from either version is judged (`Judge`): when the canary clearly does
//! worse than the stable version over the recent window, its weight drops to
//! 0 at once (automatic rollback) and the reason is kept for RepositoryIndex.
//! Promote (the canary becomes the stable version) and rollback are also
//! operator actions (`POST /v2/repository/models/{m}/canary`).

use crate::pb;
use crate::repository::config;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Recent answers kept per version for the comparison.
pub const WINDOW: usize = 200;
/// Canary answers needed before its error rate is judged.
pub const MIN_ERROR_SAMPLES: usize = 20;
/// The canary's errors needed, at the least, to roll it back.
pub const MIN_ERRORS: usize = 5;
/// Error rate that is "clearly worse": at least this much above the stable
/// version's, and at least twice it.
pub const ERROR_RATE_MARGIN: f64 = 0.05;
/// Answers per version needed before p99 latencies are compared.
pub const MIN_LATENCY_SAMPLES: usize = 100;
/// The canary's p99 above this multiple of the stable p99 rolls it back.
pub const LATENCY_RATIO: f64 = 2.0;

/// The canary settings a config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub stable: i64,
    pub canary: i64,
    pub weight: u8,
}

/// Reads `stable_version`, `canary_version` and `canary_weight`; None when
/// the config sets no canary. Both versions must be among `served`.
pub fn plan(config: &pb::ModelConfig, served: &[i64]) -> Result<Option<Plan>, String> {
    let canary = config::parameter(config, "canary_version");
    let stable = config::parameter(config, "stable_version");
    let weight = config::parameter(config, "canary_weight");
    let (Some(canary), Some(stable)) = (canary, stable) else {
        if canary.is_some() || weight.is_some() {
            return Err("a canary needs both stable_version and canary_version".into());
        }
        return Ok(None);
    };
    let (canary, stable) = (canary as i64, stable as i64);
    if canary == stable {
        return Err(format!("canary_version and stable_version are both {canary}"));
    }
    for (what, version) in [("stable_version", stable), ("canary_version", canary)] {
        if !served.contains(&version) {
            return Err(format!(
                "{what} {version} is not among the versions the version policy serves ({served:?}); \
                 serve both, e.g. version_policy {{ specific {{ versions: [{stable}, {canary}] }} }}"
            ));
        }
    }
    let weight = weight.unwrap_or(0);
    if weight > 100 {
        return Err(format!("canary_weight {weight} is over 100"));
    }
    Ok(Some(Plan { stable, canary, weight: weight as u8 }))
}

/// A model's canary while it runs.
pub struct Canary {
    pub stable: i64,
    pub canary: i64,
    weight: AtomicU8,
    draws: AtomicU64,
    judge: Mutex<Judge>,
    /// Why the canary was rolled back, automatically or by hand.
    rolled_back: Mutex<Option<String>>,
}

impl Canary {
    pub fn new(plan: Plan, seed: u64) -> Self {
        Canary {
            stable: plan.stable,
            canary: plan.canary,
            weight: AtomicU8::new(plan.weight),
            draws: AtomicU64::new(seed),
            judge: Mutex::new(Judge::default()),
            rolled_back: Mutex::new(None),
        }
    }

    pub fn weight(&self) -> u8 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The version an unpinned request goes to.
    pub fn pick(&self) -> i64 {
        let weight = u64::from(self.weight());
        if weight == 0 {
            return self.stable;
        }
        let draw = splitmix64(self.draws.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)) % 100;
        if draw < weight { self.canary } else { self.stable }
    }

    /// Sets the weight by hand (0 is a rollback, kept with `reason`).
    pub fn set_weight(&self, weight: u8, reason: Option<String>) {
        self.weight.store(weight.min(100), Ordering::Relaxed);
        *self.rolled_back.lock() = reason;
        if weight > 0 {
            *self.judge.lock() = Judge::default();
        }
    }

    pub fn rolled_back(&self) -> Option<String> {
        self.rolled_back.lock().clone()
    }

    /// Judges one answer of `version`; returns the rollback reason when this
    /// answer tips the canary over (the weight is then already 0).
    pub fn record(&self, version: i64, failed: bool, latency: Duration) -> Option<String> {
        if self.weight() == 0 || (version != self.stable && version != self.canary) {
            return None;
        }
        let mut judge = self.judge.lock();
        judge.record(version == self.canary, failed, latency);
        let reason = judge.verdict()?;
        drop(judge);
        let reason = format!("rolled back automatically: {reason}");
        self.set_weight(0, Some(reason.clone()));
        Some(reason)
    }
}

/// Recent answers of the stable and the canary version, and the rule that
/// says when the canary is clearly worse. Plain data: tested directly.
#[derive(Debug, Default)]
pub struct Judge {
    stable: Window,
    canary: Window,
}

#[derive(Debug, Default)]
struct Window {
    /// (failed, latency), oldest first, at most WINDOW.
    answers: VecDeque<(bool, Duration)>,
}

impl Window {
    fn push(&mut self, failed: bool, latency: Duration) {
        if self.answers.len() == WINDOW {
            self.answers.pop_front();
        }
        self.answers.push_back((failed, latency));
    }

    fn errors(&self) -> usize {
        self.answers.iter().filter(|(failed, _)| *failed).count()
    }

    fn error_rate(&self) -> f64 {
        self.errors() as f64 / self.answers.len().max(1) as f64
    }

    /// p99 of the successful answers' latency.
    fn p99(&self) -> Option<Duration> {
        let mut ok: Vec<Duration> = self.answers.iter().filter(|(f, _)| !f).map(|(_, l)| *l).collect();
        if ok.len() < MIN_LATENCY_SAMPLES {
            return None;
        }
        ok.sort_unstable();
        Some(ok[(ok.len() * 99).div_ceil(100) - 1])
    }
}

impl Judge {
    pub fn record(&mut self, canary: bool, failed: bool, latency: Duration) {
        if canary { &mut self.canary } else { &mut self.stable }.push(failed, latency);
    }

    /// Why the canary should be rolled back, if it should.
    pub fn verdict(&self) -> Option<String> {
        let (canary, stable) = (&self.canary, &self.stable);
        if canary.answers.len() >= MIN_ERROR_SAMPLES && canary.errors() >= MIN_ERRORS {
            let (c, s) = (canary.error_rate(), stable.error_rate());
            if c >= s + ERROR_RATE_MARGIN && c >= 2.0 * s {
                return Some(format!(
                    "canary error rate {:.1}% over its last {} answers vs {:.1}% for the stable version",
                    100.0 * c,
                    canary.answers.len(),
                    100.0 * s
                ));
            }
        }
        if let (Some(c), Some(s)) = (canary.p99(), stable.p99())
            && c.as_secs_f64() > LATENCY_RATIO * s.as_secs_f64()
        {
            return Some(format!(
                "canary p99 latency {:.2} ms vs {:.2} ms for the stable version (over {}x)",
                c.as_secs_f64() * 1e3,
                s.as_secs_f64() * 1e3,
                LATENCY_RATIO
            ));
        }
        None
    }
}

pub(super) const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a well-mixed value from a counter.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(params: &[(&str, &str)]) -> pb::ModelConfig {
        let text: String = params
            .iter()
            .map(|(k, v)| format!("parameters {{ key: \"{k}\" value {{ string_value: \"{v}\" }} }}\n"))
            .collect();
        config::parse(&text).unwrap()
    }

    #[test]
    fn a_plan_needs_both_versions_served_and_a_weight_up_to_100() {
        let both = [("stable_version", "1"), ("canary_version", "2"), ("canary_weight", "10")];
        assert_eq!(plan(&config(&both), &[1, 2]), Ok(Some(Plan { stable: 1, canary: 2, weight: 10 })));
        assert_eq!(plan(&config(&[]), &[1]), Ok(None));
        assert!(plan(&config(&both), &[2]).unwrap_err().contains("stable_version 1"));
        assert!(plan(&config(&[("canary_version", "2")]), &[1, 2]).unwrap_err().contains("both"));
        let heavy = [("stable_version", "1"), ("canary_version", "2"), ("canary_weight", "101")];
        assert!(plan(&config(&heavy), &[1, 2]).unwrap_err().contains("101"));
        let same = [("stable_version", "2"), ("canary_version", "2")];
        assert!(plan(&config(&same), &[2]).is_err());
    }

    #[test]
    fn the_split_follows_the_weight_and_the_seed_fixes_it() {
        for weight in [0u8, 1, 10, 50, 90, 100] {
            let canary = Canary::new(Plan { stable: 1, canary: 2, weight }, 42);
            let n = 100_000;
            let hits = (0..n).filter(|_| canary.pick() == 2).count();
            let share = hits as f64 / n as f64;
            let expected = f64::from(weight) / 100.0;
            // Binomial: 5 standard deviations at n = 100 000 is under 0.8%.
            assert!((share - expected).abs() < 0.008, "weight {weight}: canary share {share}");
        }
        let picks = |seed| {
            let c = Canary::new(Plan { stable: 1, canary: 2, weight: 30 }, seed);
            (0..64).map(|_| c.pick()).collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7), "the same seed, the same split");
        assert_ne!(picks(7), picks(8));
    }

    #[test]
    fn a_canary_that_fails_clearly_more_is_rolled_back() {
        let canary = Canary::new(Plan { stable: 1, canary: 2, weight: 10 }, 1);
        for _ in 0..200 {
            assert_eq!(canary.record(1, false, ms(1)), None);
        }
        // 3 of 10 canary answers fail: judged once 20 answers and 5 errors are in.
        let mut reason = None;
        for i in 0..40 {
            reason = reason.or(canary.record(2, i % 10 < 3, ms(1)));
        }
        let reason = reason.expect("rolled back");
        assert!(reason.contains("error rate") && reason.contains("0.0%"), "{reason}");
        assert_eq!(canary.weight(), 0);
        assert_eq!(canary.pick(), 1, "every unpinned request goes to stable");
        assert_eq!(canary.rolled_back(), Some(reason));
    }

    #[test]
    fn a_canary_no_worse_than_stable_stays() {
        let mut judge = Judge::default();
        for i in 0..WINDOW {
            judge.record(false, i % 20 == 0, ms(10)); // stable: 5% errors
            judge.record(true, i % 20 == 0, ms(12)); // canary: the same, a little slower
        }
        assert_eq!(judge.verdict(), None);
        let mut few = Judge::default();
        for _ in 0..MIN_ERRORS - 1 {
            few.record(true, true, ms(1)); // every answer failed, but too few to judge
        }
        assert_eq!(few.verdict(), None);
    }

    #[test]
    fn a_canary_twice_as_slow_at_p99_is_rolled_back() {
        let mut judge = Judge::default();
        for _ in 0..MIN_LATENCY_SAMPLES {
            judge.record(false, false, ms(10));
            judge.record(true, false, ms(15));
        }
        assert_eq!(judge.verdict(), None, "1.5x is within the tolerance");
        for _ in 0..WINDOW {
            judge.record(true, false, ms(25));
        }
        let reason = judge.verdict().expect("2.5x is not");
        assert!(reason.contains("p99"), "{reason}");
    }

    #[test]
    fn setting_the_weight_by_hand_resets_the_judgement() {
        let canary = Canary::new(Plan { stable: 1, canary: 2, weight: 10 }, 1);
        canary.set_weight(0, Some("rolled back by the operator".into()));
        assert_eq!(canary.record(2, true, ms(1)), None, "a stopped canary is not judged");
        canary.set_weight(25, None);
        assert_eq!(canary.weight(), 25);
        assert_eq!(canary.rolled_back(), None);
    }
}
