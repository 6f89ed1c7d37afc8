//! Batch formation as a plain data structure, free of threads and clocks:
//! callers pass `now`, so every rule is tested directly.
//!
//! Rules, per model version:
//! - FIFO: the oldest live request leads the next batch; only requests whose
//!   non-batch dims match it (same `group`) may join, in arrival order, while
//!   the rows fit `max_batch_size`.
//! - A batch runs at once when it is full (max_batch_size or the largest
//!   preferred size), else when its leader has waited `max_delay`, then cut to
//!   the largest preferred size it can reach.
//! - Waiting must pay: the queue tracks whether past waits gathered company
//!   (an average of "the batch grew while its leader waited"). Once waits
//!   stop paying (below 10%), a lone leader runs at once instead of waiting,
//!   except one wait in every 16, which probes whether company is back. So
//!   at low load the delay costs nothing, and under load batches still fill.
//! - Requests whose client went away are dropped unseen; requests whose
//!   deadline passed are handed back to be answered DEADLINE_EXCEEDED.
//! - Without batching (`max_batch_size` 0) each request runs alone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a version batches; derived from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// 0: the model does not batch; every request runs alone.
    pub max_batch_size: usize,
    /// Ascending, each within 1..=max_batch_size.
    pub preferred: Vec<usize>,
    pub max_delay: Duration,
    /// Requests that may wait; more are refused. 0: no limit.
    pub max_queue_size: usize,
}

/// What `next_batch` decided.
#[derive(Debug)]
pub enum Decision<J> {
    /// Run these now (in this order).
    Run(Vec<J>),
    /// Nothing to run before this instant (or before a new arrival).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

struct Entry<J> {
    job: J,
    rows: usize,
    group: u64,
    enqueued: Instant,
    deadline: Option<Instant>,
    /// Set when the policy chose to wait for company for this leader.
    waited: bool,
}

/// Below this share of waits that gathered company, lone leaders stop waiting.
const PAYING_WAITS: f32 = 0.1;
/// While waits do not pay, one leader in this many still waits, as a probe.
const PROBE_EVERY: u32 = 16;

/// Requests waiting for an instance, in arrival order.
pub struct BatchQueue<J> {
    policy: Policy,
    entries: VecDeque<Entry<J>>,
    /// Moving average of "a wait made the batch grow" (1.0 at start).
    paying: f32,
    /// Leaders run without waiting since the last probe.
    skipped: u32,
}

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull(pub usize);

impl<J> BatchQueue<J> {
    pub fn new(mut policy: Policy) -> Self {
        policy.preferred.sort_unstable();
        policy.preferred.dedup();
        BatchQueue { policy, entries: VecDeque::new(), paying: 1.0, skipped: 0 }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a request of `rows` rows whose non-batch shape hashes to `group`.
    pub fn push(
        &mut self,
        job: J,
        rows: usize,
        group: u64,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<(), (J, QueueFull)> {
        if self.policy.max_queue_size > 0 && self.entries.len() >= self.policy.max_queue_size {
            return Err((job, QueueFull(self.policy.max_queue_size)));
        }
        self.entries.push_back(Entry { job, rows, group, enqueued: now, deadline, waited: false });
        Ok(())
    }

    /// Drops requests `dead` says are abandoned and moves those past their
    /// deadline into `expired`, then decides what runs next.
    pub fn next_batch(&mut self, now: Instant, dead: impl Fn(&J) -> bool, expired: &mut Vec<J>) -> Decision<J> {
        let gone = |e: &Entry<J>| dead(&e.job) || e.deadline.is_some_and(|d| d <= now);
        if self.entries.iter().any(gone) {
            let mut kept = VecDeque::with_capacity(self.entries.len());
            for entry in self.entries.drain(..) {
                if dead(&entry.job) {
                    continue;
                }
                if entry.deadline.is_some_and(|d| d <= now) {
                    expired.push(entry.job);
                    continue;
                }
                kept.push_back(entry);
            }
            self.entries = kept;
        }
        let Some(leader) = self.entries.front() else {
            return Decision::Idle;
        };
        if self.policy.max_batch_size == 0 {
            let entry = self.entries.pop_front().expect("leader exists; this is a bug");
            return Decision::Run(vec![entry.job]);
        }
        let (group, enqueued, leader_waited) = (leader.group, leader.enqueued, leader.waited);
        // Requests that may join the leader, in order, while they fit.
        let mut members = Vec::new();
        let mut rows = 0;
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.group != group {
                continue;
            }
            if rows + entry.rows > self.policy.max_batch_size && !members.is_empty() {
                break;
            }
            rows += entry.rows;
            members.push((index, rows));
        }
        let full = self.policy.preferred.last().copied().unwrap_or(self.policy.max_batch_size);
        let waited_enough = now >= enqueued + self.policy.max_delay;
        let waits_pay = self.paying >= PAYING_WAITS || self.skipped + 1 >= PROBE_EVERY;
        let take = if rows >= full {
            // The longest prefix that stays within the full size (at least one request).
            members.iter().take_while(|(_, r)| *r <= full).count().max(1)
        } else if waited_enough {
            // The longest prefix ending on a preferred size, else everything.
            members.iter().rposition(|(_, r)| self.policy.preferred.contains(r)).map_or(members.len(), |i| i + 1)
        } else if !leader_waited && !waits_pay {
            self.skipped += 1;
            members.len()
        } else {
            if !leader_waited {
                self.skipped = 0;
                self.entries.front_mut().expect("leader exists; this is a bug").waited = true;
            }
            let wake =
                self.entries.iter().filter_map(|e| e.deadline).fold(enqueued + self.policy.max_delay, Instant::min);
            return Decision::WaitUntil(wake);
        };
        if leader_waited {
            let grew = if take > 1 { 1.0 } else { 0.0 };
            self.paying = 0.8 * self.paying + 0.2 * grew;
        }
        let chosen: Vec<usize> = members[..take].iter().map(|(i, _)| *i).collect();
        let mut batch = Vec::with_capacity(chosen.len());
        // Remove from the back so earlier indices stay valid, then restore order.
        for &index in chosen.iter().rev() {
            batch.push(self.entries.remove(index).expect("index from this queue; this is a bug").job);
        }
        batch.reverse();
        Decision::Run(batch)
    }

    /// Empties the queue (shutdown).
    pub fn drain(&mut self) -> Vec<J> {
        self.entries.drain(..).map(|e| e.job).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize, preferred: &[usize], delay_us: u64) -> Policy {
        Policy {
            max_batch_size: max,
            preferred: preferred.to_vec(),
            max_delay: Duration::from_micros(delay_us),
            max_queue_size: 0,
        }
    }

    fn run(decision: Decision<u32>) -> Vec<u32> {
        match decision {
            Decision::Run(batch) => batch,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn next(queue: &mut BatchQueue<u32>, now: Instant) -> Decision<u32> {
        queue.next_batch(now, |_| false, &mut Vec::new())
    }

    #[test]
    fn without_batching_each_request_runs_alone() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(0, &[], 1000));
        for id in 0..3 {
            q.push(id, 1, 0, t, None).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0]);
        assert_eq!(run(next(&mut q, t)), vec![1]);
    }

    #[test]
    fn a_full_batch_runs_at_once_and_the_rest_waits() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(4, &[], 1000));
        for id in 0..6 {
            q.push(id, 1, 0, t, None).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0, 1, 2, 3]);
        match next(&mut q, t) {
            Decision::WaitUntil(at) => assert_eq!(at, t + Duration::from_micros(1000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(run(next(&mut q, t + Duration::from_micros(1000))), vec![4, 5]);
        assert!(matches!(next(&mut q, t), Decision::Idle));
    }

    #[test]
    fn zero_delay_runs_whatever_is_queued() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(7, 1, 0, t, None).unwrap();
        q.push(8, 1, 0, t, None).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![7, 8]);
    }

    #[test]
    fn multi_row_requests_count_rows_and_never_overflow() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(1, 5, 0, t, None).unwrap();
        q.push(2, 4, 0, t, None).unwrap();
        q.push(3, 3, 0, t, None).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![1]);
        assert_eq!(run(next(&mut q, t)), vec![2, 3]);
    }

    #[test]
    fn different_shapes_never_share_a_batch() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(1, 1, 10, t, None).unwrap();
        q.push(2, 1, 20, t, None).unwrap();
        q.push(3, 1, 10, t, None).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![1, 3]);
        assert_eq!(run(next(&mut q, t)), vec![2]);
    }

    #[test]
    fn preferred_sizes_cut_batches_after_the_delay() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(16, &[2, 4], 500));
        for id in 0..3 {
            q.push(id, 1, 0, t, None).unwrap();
        }
        // Three rows: below the largest preferred size (4), so wait for more.
        assert!(matches!(next(&mut q, t), Decision::WaitUntil(_)));
        // After the delay: cut to the preferred size 2, then the last alone.
        let later = t + Duration::from_micros(500);
        assert_eq!(run(next(&mut q, later)), vec![0, 1]);
        assert_eq!(run(next(&mut q, later)), vec![2]);
    }

    #[test]
    fn reaching_the_largest_preferred_size_runs_at_once() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(16, &[2, 4], 500));
        for id in 0..5 {
            q.push(id, 1, 0, t, None).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn abandoned_requests_are_skipped_and_expired_ones_returned() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(1, 1, 0, t, None).unwrap();
        q.push(2, 1, 0, t, Some(t + Duration::from_micros(10))).unwrap();
        q.push(3, 1, 0, t, None).unwrap();
        let mut expired = Vec::new();
        let later = t + Duration::from_micros(20);
        assert_eq!(run(q.next_batch(later, |&j| j == 1, &mut expired)), vec![3]);
        assert_eq!(expired, vec![2]);
    }

    #[test]
    fn waiting_wakes_early_for_a_deadline() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 1000));
        q.push(1, 1, 0, t, Some(t + Duration::from_micros(300))).unwrap();
        match next(&mut q, t) {
            Decision::WaitUntil(at) => assert_eq!(at, t + Duration::from_micros(300)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_that_gather_nobody_stop_and_probes_restart_them() {
        let mut t = Instant::now();
        let delay = Duration::from_micros(100);
        let mut q = BatchQueue::new(policy(8, &[], 100));
        // A lone client: every wait ends with a batch of one.
        let mut waits = 0;
        for id in 0..40 {
            q.push(id, 1, 0, t, None).unwrap();
            let batch = match next(&mut q, t) {
                Decision::WaitUntil(_) => {
                    waits += 1;
                    t += delay;
                    run(next(&mut q, t))
                }
                other => run(other),
            };
            assert_eq!(batch, vec![id]);
        }
        // 11 waits drag the average under 10%; then one leader in 16 probes.
        assert_eq!(waits, 12, "waited {waits} times");
        // Company returns: the next probe gathers a second request, and
        // waiting resumes for the leaders after it.
        let mut grown = 0;
        for id in 100..140 {
            q.push(id, 1, 0, t, None).unwrap();
            match next(&mut q, t) {
                Decision::WaitUntil(_) => {
                    q.push(id + 1000, 1, 0, t, None).unwrap();
                    t += delay;
                    grown += usize::from(run(next(&mut q, t)).len() == 2);
                }
                other => assert_eq!(run(other), vec![id]),
            }
        }
        assert!(grown >= 10, "waiting resumed only {grown} times");
    }

    #[test]
    fn a_bounded_queue_refuses_the_overflow() {
        let t = Instant::now();
        let mut q = BatchQueue::new(Policy { max_queue_size: 2, ..policy(8, &[], 0) });
        q.push(1, 1, 0, t, None).unwrap();
        q.push(2, 1, 0, t, None).unwrap();
        assert_eq!(q.push(3, 1, 0, t, None).unwrap_err(), (3, QueueFull(2)));
    }
}
