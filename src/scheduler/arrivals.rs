//! How many more requests a waiting batch can expect: the recent arrival
//! rate, and how many requests the clients keep in flight at most.
//!
//! A closed-loop client population of N never has more than N requests
//! inside at once, so once all of them are queued or running, nothing more
//! can come until a batch answers, however high the rate looked a moment
//! ago. Both estimates are plain data; callers pass `now`.

use std::time::{Duration, Instant};

/// Weight of one gap in the moving average of gaps between arrivals.
const SMOOTHING: f64 = 0.125;
/// Arrivals per window of the in-flight high-water mark.
const WINDOW: u32 = 256;

#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    last: Option<Instant>,
    /// Moving average of the gaps between arrivals, seconds.
    gap: Option<f64>,
    /// Moving average of rows per request.
    rows: f64,
    /// The most requests inside at an arrival, this window and the last.
    peak: u32,
    previous_peak: u32,
    seen: u32,
}

impl Arrivals {
    /// One request of `rows` rows arrived with `inside` requests of this
    /// version (itself included) queued or running.
    pub fn arrived(&mut self, now: Instant, rows: usize, inside: usize) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            self.gap = Some(self.gap.map_or(gap, |avg| avg + (gap - avg) * SMOOTHING));
        }
        self.last = Some(now);
        self.rows = if self.rows == 0.0 { rows as f64 } else { self.rows + (rows as f64 - self.rows) * SMOOTHING };
        self.peak = self.peak.max(inside as u32);
        self.seen += 1;
        if self.seen >= WINDOW {
            self.previous_peak = self.peak;
            self.peak = inside as u32;
            self.seen = 0;
        }
    }

    /// The most requests the clients have had inside at once, lately.
    pub fn population(&self) -> u32 {
        self.peak.max(self.previous_peak)
    }

    /// Rows expected to arrive within `within` from `now` while `inside`
    /// requests are queued or running: the recent rate (slowed by a silence
    /// longer than the usual gap), capped by the clients not inside.
    pub fn expected_rows(&self, now: Instant, within: Duration, inside: usize) -> f64 {
        let (Some(last), Some(gap)) = (self.last, self.gap) else { return 0.0 };
        let silence = now.saturating_duration_since(last).as_secs_f64();
        let gap = gap.max(silence).max(1e-9);
        let by_rate = within.as_secs_f64() / gap;
        let outside = f64::from(self.population().saturating_sub(inside as u32));
        by_rate.min(outside) * self.rows.max(1.0)
    }

    /// How long `rows` more rows take to arrive at the recent pace, when known.
    pub fn time_for(&self, rows: f64) -> Option<Duration> {
        self.gap.map(|gap| Duration::from_secs_f64(gap * rows / self.rows.max(1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn nothing_is_expected_from_clients_that_are_all_inside() {
        let t = Instant::now();
        let mut a = Arrivals::default();
        // Four closed-loop clients: bursts of four, 10 us apart.
        for burst in 0..10u64 {
            for i in 0..4u64 {
                a.arrived(t + us(burst * 300 + i * 10), 1, i as usize + 1);
            }
        }
        assert_eq!(a.population(), 4);
        let now = t + us(9 * 300 + 35);
        assert!(a.expected_rows(now, us(500), 2) >= 1.0, "two clients are still out");
        assert_eq!(a.expected_rows(now, us(500), 4), 0.0, "every client is inside");
    }

    #[test]
    fn a_lone_client_expects_no_company() {
        let t = Instant::now();
        let mut a = Arrivals::default();
        for i in 0..20 {
            a.arrived(t + us(i * 200), 1, 1);
        }
        assert_eq!(a.expected_rows(t + us(3810), us(500), 1), 0.0);
    }

    #[test]
    fn a_sparse_stream_expects_little_within_the_delay_and_silence_lowers_the_rate() {
        let t = Instant::now();
        let mut a = Arrivals::default();
        // Open loop: many clients, one arrival every 2 ms, bursts of 8 inside once.
        a.arrived(t, 1, 8);
        for i in 1..50 {
            a.arrived(t + us(i * 2000), 1, 1);
        }
        let last = t + us(49 * 2000);
        let expected = a.expected_rows(last, us(500), 1);
        assert!((0.2..0.3).contains(&expected), "{expected}");
        assert!(a.expected_rows(last + us(10_000), us(500), 1) < 0.06);
    }

    #[test]
    fn the_population_forgets_an_old_peak() {
        let t = Instant::now();
        let mut a = Arrivals::default();
        a.arrived(t, 1, 64);
        for i in 0..(2 * WINDOW as u64) {
            a.arrived(t + us(i), 1, 2);
        }
        assert_eq!(a.population(), 2);
    }
}
