//! When requests are sent: the closed-loop budget shared by workers, and the open-loop schedule
//! (request i is due at t0 + i/rps) with the ticker thread that releases requests on time.

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

/// Open loop: request i is due `i / rps` after the start, for as long as the stop allows.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rps: f64,
    pub stop: Stop,
}

impl Schedule {
    /// When request `index` is due, counted from the start.
    pub fn offset(&self, index: u64) -> Duration {
        Duration::from_nanos((index as f64 * 1e9 / self.rps).round() as u64)
    }

    /// Whether request `index` belongs to the run.
    pub fn includes(&self, index: u64) -> bool {
        self.stop.total.is_none_or(|total| index < total) && self.stop.duration.is_none_or(|d| self.offset(index) < d)
    }

    /// Requests in the run (an estimate when only a duration bounds it).
    pub fn expected(&self) -> u64 {
        let by_duration = self.stop.duration.map(|d| (d.as_secs_f64() * self.rps).ceil() as u64);
        match (self.stop.total, by_duration) {
            (Some(t), Some(d)) => t.min(d),
            (Some(t), None) => t,
            (None, Some(d)) => d,
            (None, None) => 0,
        }
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
            let mut index = 0;
            while schedule.includes(index) {
                let due = t0 + schedule.offset(index);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send(Tick { index, due }).is_err() {
                    break;
                }
                index += 1;
            }
        })
        .context("cannot start the ticker thread")?;
    Ok((t0, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_fixed_intervals() {
        let s = Schedule { rps: 200.0, stop: Stop { total: Some(5), duration: None } };
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(3), Duration::from_millis(15));
        assert!(s.includes(4) && !s.includes(5));
        assert_eq!(s.expected(), 5);
        let timed = Schedule { rps: 100.0, stop: Stop { total: None, duration: Some(Duration::from_millis(50)) } };
        assert!(timed.includes(4) && !timed.includes(5));
        assert_eq!(timed.expected(), 5);
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
        let schedule = Schedule { rps: 1000.0, stop: Stop { total: Some(20), duration: None } };
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
