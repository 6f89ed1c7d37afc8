//! How far admission's predictions can be trusted: the ratio of what
//! admitted requests actually took (arrival to answer) to what was
//! predicted for them, learnt online. The cost model predicts execution
//! from the recent median; the rest of a request's time inside the server
//! (waking threads, answering, CPU taken by other work on a busy machine)
//! and the spread of execution times around that median show up here, so
//! admission scales its predictions by this ratio's high quantile and the
//! admitted requests keep their target whatever the machine does.
//!
//! Only predictions of at least `MIN_PREDICTED` count: for models of
//! microseconds the fixed costs would dominate the ratio, and their
//! targets are far away anyway.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Ratios kept: recent enough to follow a machine that becomes busy.
const WINDOW: usize = 128;
/// The quantile of the ratios admission uses (the second largest of the
/// window): one stall does not close admission for a whole window.
const QUANTILE: f64 = 0.99;
/// Recompute the quantile after this many new ratios.
const EVERY: usize = 4;
/// Predictions shorter than this teach nothing.
pub const MIN_PREDICTED: Duration = Duration::from_millis(1);
/// The factor before anything was learnt, and its bounds.
pub const INITIAL: f64 = 1.2;
/// Never below: room for a burst of load to slow execution before the
/// window has seen it.
const FLOOR: f64 = 1.2;
const CEILING: f64 = 2.0;

#[derive(Debug)]
struct Ratios {
    values: Vec<f32>,
    next: usize,
    since: usize,
}

/// The learnt factor; read lock-free on every admission.
#[derive(Debug)]
pub struct Calibration {
    ratios: Mutex<Ratios>,
    /// f64 bits of the factor.
    factor: AtomicU64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            ratios: Mutex::new(Ratios { values: Vec::with_capacity(WINDOW), next: 0, since: 0 }),
            factor: AtomicU64::new(INITIAL.to_bits()),
        }
    }
}

impl Calibration {
    /// What admission multiplies its predictions by.
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor.load(Ordering::Relaxed))
    }

    /// One admitted request took `actual`; `predicted` was its prediction.
    pub fn record(&self, predicted: Duration, actual: Duration) {
        if predicted < MIN_PREDICTED {
            return;
        }
        let ratio = (actual.as_secs_f64() / predicted.as_secs_f64()) as f32;
        let mut ratios = self.ratios.lock();
        if ratios.values.len() < WINDOW {
            ratios.values.push(ratio);
        } else {
            let next = ratios.next;
            ratios.values[next] = ratio;
        }
        ratios.next = (ratios.next + 1) % WINDOW;
        ratios.since += 1;
        if ratios.since < EVERY {
            return;
        }
        ratios.since = 0;
        let mut values = ratios.values.clone();
        drop(ratios);
        let rank = ((values.len() as f64 * QUANTILE).ceil() as usize).clamp(1, values.len()) - 1;
        let (_, &mut quantile, _) = values.select_nth_unstable_by(rank, f32::total_cmp);
        let factor = f64::from(quantile).clamp(FLOOR, CEILING);
        self.factor.store(factor.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_factor_is_a_high_quantile_of_recent_actual_over_predicted() {
        let c = Calibration::default();
        assert_eq!(c.factor(), INITIAL);
        // Most requests take 1.3x their prediction, two 1.6x, one 1.9x.
        for i in 0..WINDOW {
            let actual = match i {
                7 | 70 => ms(160),
                99 => ms(190),
                _ => ms(130),
            };
            c.record(ms(100), actual);
        }
        assert!((c.factor() - 1.6).abs() < 1e-6, "{}", c.factor());
        // The machine calms down: the window forgets, down to the floor.
        for _ in 0..WINDOW {
            c.record(ms(100), ms(100));
        }
        assert_eq!(c.factor(), FLOOR);
    }

    #[test]
    fn tiny_predictions_teach_nothing_and_the_factor_is_bounded() {
        let c = Calibration::default();
        for _ in 0..WINDOW {
            c.record(Duration::from_micros(20), ms(5));
        }
        assert_eq!(c.factor(), INITIAL);
        for _ in 0..WINDOW {
            c.record(ms(10), ms(100));
        }
        assert_eq!(c.factor(), CEILING);
    }
}
