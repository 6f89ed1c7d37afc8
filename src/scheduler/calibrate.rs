//! How far admission's predictions can be trusted: how much longer than
//! predicted admitted requests actually took (arrival to answer), learnt
//! online. The cost model predicts execution from the recent median; the
//! rest of a request's time inside the server (waking threads, answering,
//! CPU taken by other work on a busy machine) and the spread of execution
//! times around that median show up here.
//!
//! The error is learnt as a time, not a ratio: one stalled execution
//! delays every request queued behind it by the same amount, however long
//! its queue, so a margin scaled by the prediction would refuse a queue of
//! four that finishes well within its target because one execution alone
//! sometimes takes twice its median. Admission adds the margin, a high
//! quantile of the recent errors, and at least `MIN_SHARE` of the
//! prediction: room for a burst of load to slow execution before the
//! window has seen it.
//!
//! Predictions shorter than `MIN_PREDICTED` never raise the margin (for
//! models of microseconds the fixed costs would dominate, and their
//! targets are far away anyway), but they do lower it: a margin learnt
//! while an overload kept the queue long must decay once requests are
//! quick again. (When they taught nothing at all, a model of microseconds
//! kept the 32 ms margin of a burst forever and refused a fifth of its
//! requests at a tenth of the load.)
//!
//! Errors older than `AGE` are forgotten too, however few came since. A
//! margin learnt while something else took the CPU (a storm of refusals
//! on the model's only core) can exceed the target by itself; admission
//! then admits only into an idle instance, a heavy model answers a dozen
//! requests a second, and a window counted in requests alone kept it
//! idle between requests for the 128 of them that it took to forget
//! (ResNet-50 on one core: goodput 76% of its peak at 3x its load over
//! the eight seconds after such a storm).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Errors kept: recent enough to follow a machine that becomes busy.
const WINDOW: usize = 128;
/// An error older than this no longer counts: a machine that was busy a
/// few seconds ago says little about now.
const AGE: Duration = Duration::from_secs(5);
/// The quantile of the errors admission uses (the second largest of the
/// window): one stall does not close admission for a whole window.
const QUANTILE: f64 = 0.99;
/// Recompute the quantile after this many new errors.
const EVERY: usize = 4;
/// Predictions shorter than this may lower the margin, never raise it.
pub const MIN_PREDICTED: Duration = Duration::from_millis(1);
/// The margin is never below this share of the prediction.
pub const MIN_SHARE: f64 = 0.2;

#[derive(Debug)]
struct Errors {
    /// Nanoseconds actual minus predicted (0 when faster than predicted),
    /// and when it was learnt.
    values: Vec<(u64, Instant)>,
    next: usize,
    since: usize,
}

/// The learnt margin; read lock-free on every admission.
#[derive(Debug)]
pub struct Calibration {
    errors: Mutex<Errors>,
    /// Nanoseconds.
    margin: AtomicU64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            errors: Mutex::new(Errors { values: Vec::with_capacity(WINDOW), next: 0, since: 0 }),
            margin: AtomicU64::new(0),
        }
    }
}

/// A prediction with the margin added: `predicted` plus the larger of
/// `margin` and MIN_SHARE of `predicted`.
pub fn padded(predicted: Duration, margin: Duration) -> Duration {
    predicted + margin.max(predicted.mul_f64(MIN_SHARE))
}

impl Calibration {
    /// What admission adds to its predictions (before MIN_SHARE).
    pub fn margin(&self) -> Duration {
        Duration::from_nanos(self.margin.load(Ordering::Relaxed))
    }

    /// One admitted request, answered at `now`, took `actual`; `predicted`
    /// was its prediction.
    pub fn record(&self, predicted: Duration, actual: Duration, now: Instant) {
        let mut error = actual.saturating_sub(predicted).as_nanos().min(u128::from(u64::MAX)) as u64;
        if predicted < MIN_PREDICTED {
            error = error.min(self.margin.load(Ordering::Relaxed));
        }
        let mut errors = self.errors.lock();
        if errors.values.len() < WINDOW {
            errors.values.push((error, now));
        } else {
            let next = errors.next;
            errors.values[next] = (error, now);
        }
        errors.next = (errors.next + 1) % WINDOW;
        errors.since += 1;
        if errors.since < EVERY {
            return;
        }
        errors.since = 0;
        let oldest = now.checked_sub(AGE);
        let mut values: Vec<u64> =
            errors.values.iter().filter(|(_, at)| oldest.is_none_or(|o| *at >= o)).map(|(e, _)| *e).collect();
        drop(errors);
        let rank = ((values.len() as f64 * QUANTILE).ceil() as usize).clamp(1, values.len()) - 1;
        let (_, &mut quantile, _) = values.select_nth_unstable(rank);
        self.margin.store(quantile, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Records `n` requests answered 1 ms apart from `*clock` on.
    fn record(c: &Calibration, clock: &mut Instant, n: usize, mut request: impl FnMut(usize) -> (Duration, Duration)) {
        for i in 0..n {
            *clock += ms(1);
            let (predicted, actual) = request(i);
            c.record(predicted, actual, *clock);
        }
    }

    #[test]
    fn the_margin_is_a_high_quantile_of_recent_errors_whatever_the_prediction() {
        let c = Calibration::default();
        let mut clock = Instant::now();
        assert_eq!(c.margin(), Duration::ZERO);
        // Requests queued behind one to four executions of 40 ms: most
        // take 10 ms longer than predicted; two met a stalled execution
        // (40 ms more), one two of them (80 ms more).
        record(&c, &mut clock, WINDOW, |i| {
            let predicted = ms(40 * (1 + i as u64 % 4));
            let error = match i {
                7 | 70 => ms(40),
                99 => ms(80),
                _ => ms(10),
            };
            (predicted, predicted + error)
        });
        assert_eq!(c.margin(), ms(40));
        // A queue of four (160 ms) keeps a 250 ms target; a ratio of the
        // same requests (up to 2x for the shortest) would have refused it.
        assert_eq!(padded(ms(160), c.margin()), ms(200));
        // The machine calms down: the window forgets. Faster than
        // predicted counts as no error.
        record(&c, &mut clock, WINDOW, |_| (ms(100), ms(90)));
        assert_eq!(c.margin(), Duration::ZERO);
        assert_eq!(padded(ms(100), c.margin()), ms(120), "never below MIN_SHARE of the prediction");
    }

    #[test]
    fn a_margin_learnt_in_an_overload_decays_once_requests_are_quick_again() {
        let c = Calibration::default();
        let mut clock = Instant::now();
        // A burst: queued requests of a model of microseconds took 32 ms more than predicted.
        record(&c, &mut clock, WINDOW, |_| (ms(2), ms(34)));
        assert_eq!(c.margin(), ms(32));
        // Then quick requests, predicted 50 us, answered in 200 us: they lower it.
        record(&c, &mut clock, WINDOW, |_| (Duration::from_micros(50), Duration::from_micros(200)));
        assert_eq!(c.margin(), Duration::from_micros(150));
    }

    #[test]
    fn tiny_predictions_never_raise_the_margin() {
        let c = Calibration::default();
        record(&c, &mut Instant::now(), WINDOW, |_| (Duration::from_micros(20), ms(5)));
        assert_eq!(c.margin(), Duration::ZERO);
    }

    #[test]
    fn a_margin_outlives_its_cause_by_at_most_age_however_few_requests_follow() {
        let c = Calibration::default();
        let mut clock = Instant::now();
        // A heavy model starved of its core: 20 answers 300 ms later than predicted.
        record(&c, &mut clock, 20, |_| (ms(230), ms(530)));
        assert_eq!(c.margin(), ms(300));
        // A margin that large admits only into an idle instance: one request
        // at a time, each on time, about 13 a second.
        let on_time = |c: &Calibration, at: Instant| c.record(ms(60), ms(61), at);
        let storm_ended = clock;
        for i in 1..=64 {
            on_time(&c, storm_ended + ms(75 * i));
        }
        assert!(storm_ended + ms(75 * 64) < storm_ended + AGE);
        assert_eq!(c.margin(), ms(300), "within AGE the storm still counts");
        for i in 65..=80 {
            on_time(&c, storm_ended + ms(75 * i));
        }
        // 80 on-time answers, 6 s after the storm: it is forgotten, where a
        // window of WINDOW requests alone would keep it for 128.
        assert_eq!(c.margin(), ms(1));
    }
}
