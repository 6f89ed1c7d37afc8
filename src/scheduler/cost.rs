//! What one model version costs: execution time per batch size (rows),
//! learnt from every batch it runs and seeded at load by a timed run per
//! power-of-two size. The one source for dispatch (which batch size pays),
//! admission (when would a request finish) and the exported gauges.
//!
//! - Sizes up to `EXACT` rows are learnt one by one; above it, per
//!   power-of-two class, a sample scaled linearly to the class's size
//!   (large batches are compute-bound, so time grows with rows there).
//! - Each size keeps its last `SAMPLES` execution times; its estimate is
//!   their lower median, so one outlier never moves it, and two slow runs
//!   in a row (a model that became slower) do.
//! - A size known only from the load-time profile follows what traffic
//!   teaches about the others: its seed is scaled by the drift, the ratio
//!   of the latest live estimate of a seeded size to its seed. A machine
//!   that became busier slows every size, not only the one that runs, and
//!   comparing a live batch-1 time with a quiet profile's batch-2 time
//!   would make batching look better than it is.
//! - Sizes never run are interpolated linearly between the nearest sizes
//!   that were (below the smallest: the smallest's time; above the
//!   largest: its time per row), and the table is kept non-decreasing in
//!   rows: a bigger batch is never predicted to be cheaper.
//!
//! Plain data, no clock: callers pass durations, so every rule is tested
//! directly.

use std::time::Duration;

/// Sizes learnt individually; larger batches are learnt per power of two.
const EXACT: usize = 64;
/// Execution times kept per size.
const SAMPLES: usize = 5;
/// The predicted table is rebuilt when a size's estimate moves by more than
/// 1/REBUILD_BY of the one it was built from: steady noise costs nothing.
const REBUILD_BY: u64 = 32;
/// The batch size chosen for throughput reaches this share of the best rows/s.
const GOOD_ENOUGH: f64 = 0.95;
/// What one execution costs the instance beyond the model itself (waking
/// its thread, assembling the batch, splitting and answering), so that for
/// a model of a few microseconds bigger batches win, as they do in practice.
pub const PER_EXECUTION: Duration = Duration::from_micros(50);

/// Recent execution times of one size, nanoseconds, newest last.
#[derive(Debug, Clone, Default)]
struct Samples {
    times: [u64; SAMPLES],
    len: usize,
    next: usize,
    /// The lower median of `times`, kept as they change.
    estimate: Option<u64>,
    /// The estimate the predicted table was last built from.
    built: Option<u64>,
    /// The load-time profile's time for this size, when it ran there.
    seed: Option<u64>,
    /// Whether traffic ran this size (else only the seed is known).
    live: bool,
}

impl Samples {
    /// Adds a time and updates the estimate.
    fn add(&mut self, ns: u64) {
        self.times[self.next] = ns;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
        let mut sorted = self.times;
        let sorted = &mut sorted[..self.len];
        sorted.sort_unstable();
        // The lower median: with two samples the smaller, so one outlier
        // needs a second before it counts.
        self.estimate = Some(sorted[(self.len - 1) / 2]);
    }

    /// Whether the estimate moved far enough from the one the table was
    /// built from (REBUILD_BY) to rebuild it.
    fn push_moved(&self) -> bool {
        let Some(estimate) = self.estimate else { return false };
        self.built.is_none_or(|built| estimate.abs_diff(built) > built / REBUILD_BY)
    }

    /// What this size is predicted to take (seconds): its own samples when
    /// traffic ran it, else its seed scaled by `drift`.
    fn time(&self, drift: f64) -> Option<f64> {
        let estimate = self.estimate? as f64 / 1e9;
        Some(if self.live { estimate } else { estimate * drift })
    }
}

/// Execution time per batch size of one model version.
#[derive(Debug, Clone)]
pub struct CostModel {
    max_batch: usize,
    /// The size each slot stands for: 1..=min(EXACT, max), then powers of
    /// two above EXACT, then max_batch itself.
    sizes: Vec<usize>,
    samples: Vec<Samples>,
    /// Predicted seconds per slot (empty until the first sample).
    predicted: Vec<f64>,
    /// The smallest size reaching GOOD_ENOUGH of the best rows/s.
    efficient: usize,
    /// How much slower (above 1) traffic runs than the profile did: the
    /// latest live estimate of a seeded size over its seed.
    drift: f64,
    /// The drift the predicted table was last built with.
    built_drift: f64,
}

/// The drift's bounds: a profile further off than this is not scaled further.
const DRIFT_BOUNDS: (f64, f64) = (0.25, 4.0);

impl CostModel {
    /// A model for batches of 1..=`max_batch` rows (0 or 1: no batching).
    pub fn new(max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        let mut sizes: Vec<usize> = (1..=max_batch.min(EXACT)).collect();
        let mut size = EXACT * 2;
        while size < max_batch {
            sizes.push(size);
            size *= 2;
        }
        if max_batch > EXACT {
            sizes.push(max_batch);
        }
        let samples = vec![Samples::default(); sizes.len()];
        CostModel {
            max_batch,
            sizes,
            samples,
            predicted: Vec::new(),
            efficient: max_batch,
            drift: 1.0,
            built_drift: 1.0,
        }
    }

    /// Whether anything was learnt yet.
    #[cfg(test)]
    pub fn is_known(&self) -> bool {
        !self.predicted.is_empty()
    }

    /// The slot holding `rows` (rows within 1..=max_batch).
    fn slot(&self, rows: usize) -> usize {
        if rows <= EXACT {
            return rows - 1;
        }
        self.sizes.partition_point(|&s| s < rows).min(self.sizes.len() - 1)
    }

    /// Learns one execution of `rows` rows that took `elapsed`, in traffic.
    pub fn record(&mut self, rows: usize, elapsed: Duration) {
        let slot = self.sample(rows, elapsed);
        let samples = &mut self.samples[slot];
        samples.live = true;
        let mut moved = samples.push_moved();
        if let (Some(seed), Some(estimate)) = (samples.seed, samples.estimate) {
            self.drift = (estimate as f64 / seed as f64).clamp(DRIFT_BOUNDS.0, DRIFT_BOUNDS.1);
            moved |= (self.drift - self.built_drift).abs() > self.built_drift / REBUILD_BY as f64;
        }
        if moved {
            self.rebuild();
        }
    }

    /// Learns one execution of the load-time profile.
    pub fn seed(&mut self, rows: usize, elapsed: Duration) {
        let slot = self.sample(rows, elapsed);
        let samples = &mut self.samples[slot];
        samples.seed = samples.estimate;
        let moved = samples.push_moved();
        if moved {
            self.rebuild();
        }
    }

    /// Adds one execution time to its size's samples; returns the slot.
    fn sample(&mut self, rows: usize, elapsed: Duration) -> usize {
        let rows = rows.clamp(1, self.max_batch);
        let slot = self.slot(rows);
        let ns = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        // Above EXACT a slot stands for a class: scale to its size.
        let scaled = (ns as f64 * self.sizes[slot] as f64 / rows as f64) as u64;
        self.samples[slot].add(scaled.max(1));
        slot
    }

    /// Recomputes the predicted table and the efficient size.
    fn rebuild(&mut self) {
        let known: Vec<(usize, f64)> =
            self.samples.iter().zip(&self.sizes).filter_map(|(s, &size)| Some((size, s.time(self.drift)?))).collect();
        self.samples.iter_mut().for_each(|s| s.built = s.estimate);
        self.built_drift = self.drift;
        let Some(&(first_size, first_time)) = known.first() else {
            self.predicted.clear();
            return;
        };
        let &(last_size, last_time) = known.last().expect("known is not empty; this is a bug");
        let mut predicted = Vec::with_capacity(self.sizes.len());
        let mut above = 0; // index into known of the first size >= this one
        for &size in &self.sizes {
            while known[above].0 < size && above + 1 < known.len() {
                above += 1;
            }
            let time = if size <= first_size {
                first_time
            } else if size >= last_size {
                last_time * size as f64 / last_size as f64
            } else {
                let (hi_size, hi_time) = known[above];
                let (lo_size, lo_time) = known[above - 1];
                lo_time + (hi_time - lo_time) * (size - lo_size) as f64 / (hi_size - lo_size) as f64
            };
            let floor = predicted.last().copied().unwrap_or(0.0);
            predicted.push(time.max(floor));
        }
        let overhead = PER_EXECUTION.as_secs_f64();
        let rate = |size: usize, time: f64| size as f64 / (time + overhead);
        let best = self.sizes.iter().zip(&predicted).map(|(&s, &t)| rate(s, t)).fold(0.0, f64::max);
        self.efficient = self
            .sizes
            .iter()
            .zip(&predicted)
            .find(|&(&s, &t)| rate(s, t) >= GOOD_ENOUGH * best)
            .map_or(self.max_batch, |(&s, _)| s);
        self.predicted = predicted;
    }

    /// The predicted execution time of a batch of `rows` rows; None until
    /// something was learnt.
    pub fn predict(&self, rows: usize) -> Option<Duration> {
        if self.predicted.is_empty() {
            return None;
        }
        let rows = rows.max(1);
        let seconds = if rows > self.max_batch {
            // More rows than one batch holds: that many full batches in a row.
            self.predicted[self.predicted.len() - 1] * rows as f64 / self.max_batch as f64
        } else {
            let slot = self.slot(rows);
            let size = self.sizes[slot];
            if size == rows || slot == 0 {
                self.predicted[slot]
            } else {
                let (lo_size, lo) = (self.sizes[slot - 1], self.predicted[slot - 1]);
                lo + (self.predicted[slot] - lo) * (rows - lo_size) as f64 / (size - lo_size) as f64
            }
        };
        Some(Duration::from_secs_f64(seconds))
    }

    /// The smallest batch size whose throughput (rows per second of
    /// execution, PER_EXECUTION included) reaches 95% of the best size's:
    /// larger batches only add latency. `max_batch` until something was
    /// learnt.
    pub fn efficient_batch(&self) -> usize {
        self.efficient
    }

    /// The power-of-two sizes up to max_batch (and max_batch itself), the
    /// label values of `ferroserve_model_execution_seconds`.
    pub fn classes(&self) -> Vec<usize> {
        let mut classes: Vec<usize> =
            std::iter::successors(Some(1usize), |&s| s.checked_mul(2)).take_while(|&s| s < self.max_batch).collect();
        classes.push(self.max_batch);
        classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    fn predicted_ms(cost: &CostModel, rows: usize) -> f64 {
        cost.predict(rows).expect("learnt").as_secs_f64() * 1e3
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn nothing_is_predicted_before_the_first_sample() {
        let cost = CostModel::new(8);
        assert!(!cost.is_known());
        assert_eq!(cost.predict(1), None);
        assert_eq!(cost.efficient_batch(), 8);
    }

    #[test]
    fn sizes_between_samples_are_interpolated_and_outside_extrapolated() {
        let mut cost = CostModel::new(32);
        for (rows, time) in [(2, 2.0), (4, 3.0), (16, 9.0)] {
            cost.record(rows, ms(time));
        }
        assert!(close(predicted_ms(&cost, 1), 2.0), "below the smallest: its time");
        assert!(close(predicted_ms(&cost, 3), 2.5));
        assert!(close(predicted_ms(&cost, 10), 6.0));
        assert!(close(predicted_ms(&cost, 32), 18.0), "above the largest: its time per row");
        assert!(close(predicted_ms(&cost, 64), 36.0), "two full batches");
    }

    #[test]
    fn a_bigger_batch_is_never_predicted_cheaper() {
        let mut cost = CostModel::new(8);
        cost.record(4, ms(5.0));
        cost.record(8, ms(3.0)); // noise
        assert!(predicted_ms(&cost, 8) >= predicted_ms(&cost, 4));
        assert!(predicted_ms(&cost, 6) >= predicted_ms(&cost, 4));
    }

    #[test]
    fn one_outlier_does_not_move_an_estimate_and_a_slow_down_does() {
        let mut cost = CostModel::new(8);
        cost.record(8, ms(10.0));
        cost.record(8, ms(200.0)); // one outlier
        assert!(close(predicted_ms(&cost, 8), 10.0));
        cost.record(8, ms(10.0));
        cost.record(8, ms(10.0));
        cost.record(8, ms(200.0)); // another, among five
        assert!(close(predicted_ms(&cost, 8), 10.0));
        // The model becomes twice as slow: three runs of five follow it.
        for _ in 0..3 {
            cost.record(8, ms(20.0));
        }
        assert!(close(predicted_ms(&cost, 8), 20.0), "{}", predicted_ms(&cost, 8));
    }

    #[test]
    fn the_efficient_batch_is_the_smallest_near_the_best_throughput() {
        // Fixed cost 1 ms plus 0.1 ms per row: throughput keeps rising,
        // so the largest batch is best and the efficient one near it.
        let mut memory_bound = CostModel::new(32);
        for rows in [1, 2, 4, 8, 16, 32] {
            memory_bound.record(rows, ms(1.0 + 0.1 * rows as f64));
        }
        let best = 32.0 / 4.25;
        let chosen = memory_bound.efficient_batch();
        let rate = chosen as f64 / (predicted_ms(&memory_bound, chosen) + 0.05);
        assert!(rate >= 0.95 * best && chosen < 32, "chose {chosen}");
        // Compute-bound: time grows with rows, so batching buys nothing.
        let mut compute_bound = CostModel::new(32);
        for rows in [1, 2, 4, 8, 16, 32] {
            compute_bound.record(rows, ms(25.0 * rows as f64));
        }
        assert_eq!(compute_bound.efficient_batch(), 1);
        // A model of microseconds: the per-execution cost decides, and
        // noise in its tiny times does not make small batches look best.
        let mut tiny = CostModel::new(8);
        for (rows, us) in [(1, 20), (2, 8), (4, 30), (8, 25)] {
            tiny.record(rows, Duration::from_micros(us));
        }
        assert_eq!(tiny.efficient_batch(), 8);
    }

    #[test]
    fn sizes_known_only_from_the_profile_follow_a_slowdown_seen_in_traffic() {
        let mut cost = CostModel::new(4);
        for (rows, time) in [(1, 40.0), (2, 78.0), (4, 160.0)] {
            cost.seed(rows, ms(time));
        }
        assert_eq!(cost.efficient_batch(), 1, "compute-bound: batching buys under 5%");
        // Traffic runs batch 1 only, 15% slower than the profile did (a
        // busier machine). One run is an outlier; three are a slowdown.
        cost.record(1, ms(46.0));
        assert!(close(predicted_ms(&cost, 2), 78.0));
        cost.record(1, ms(46.0));
        cost.record(1, ms(46.0));
        assert!(close(predicted_ms(&cost, 1), 46.0));
        assert!(close(predicted_ms(&cost, 2), 78.0 * 46.0 / 40.0), "{}", predicted_ms(&cost, 2));
        assert!(close(predicted_ms(&cost, 4), 160.0 * 46.0 / 40.0));
        // Batching still buys under 5%: a quiet profile of batch 2 beside a
        // busy batch 1 would have made it look like 18%.
        assert_eq!(cost.efficient_batch(), 1);
        // A size that traffic ran keeps its own estimate.
        for _ in 0..3 {
            cost.record(2, ms(90.0));
        }
        assert!(close(predicted_ms(&cost, 2), 90.0), "{}", predicted_ms(&cost, 2));
    }

    #[test]
    fn large_batches_are_learnt_per_power_of_two() {
        let mut cost = CostModel::new(300);
        cost.record(100, ms(100.0)); // class 128: 128 ms at 128 rows
        assert!(close(predicted_ms(&cost, 128), 128.0));
        cost.record(300, ms(300.0));
        assert!(close(predicted_ms(&cost, 300), 300.0));
        assert!(close(predicted_ms(&cost, 214), 214.0), "between classes: interpolated");
        assert_eq!(cost.classes(), vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(CostModel::new(0).classes(), vec![1]);
        assert_eq!(CostModel::new(16).classes(), vec![1, 2, 4, 8, 16]);
    }
}
