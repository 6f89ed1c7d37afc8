//! Batch formation and admission as a plain data structure, free of
//! threads and clocks: callers pass `now`, so every rule is tested directly.
//!
//! Rules, per model version:
//! - Priority, then FIFO: the oldest request of the highest priority level
//!   leads the next batch; only requests whose non-batch dims match it
//!   (same `group`) may join, highest level first and in arrival order
//!   within a level, while the rows fit `max_batch_size`.
//! - The batch size aimed for is the cost model's efficient size (the
//!   smallest reaching 95% of the best rows/s; cost.rs), raised to the next
//!   preferred size when the config lists some, never above the largest
//!   preferred size or `max_batch_size`, and cut so the leader's
//!   own execution still ends by its target (deadline or SLO). A batch
//!   that reaches it runs at once.
//! - Below it, a batch waits for company only while more rows can be
//!   expected within the leader's remaining `max_delay` (arrivals.rs: the
//!   recent rate, capped by the clients not already inside) and waiting for
//!   them raises rows per second by the cost model, and the leader's target
//!   allows; otherwise it runs now. So a lone request never waits, nor does
//!   a batch that already holds every client's request. When the leader has
//!   waited `max_delay`, the batch is cut to the largest preferred size it
//!   reaches, as in Triton.
//! - At dispatch, a request whose deadline falls before the predicted end
//!   of its batch is handed back to be answered DEADLINE_EXCEEDED unrun,
//!   as are requests whose deadline passed; requests whose client went
//!   away are dropped unseen.
//! - Admission (`push` with a target): a request is refused at once when
//!   its predicted completion (work ahead of it at its priority or higher,
//!   the running batches' remainder, its own execution; spread over the
//!   instances), with the learnt margin added (calibrate.rs), would end
//!   after its target. Never while an instance is idle and nothing is
//!   queued ahead of it.
//! - Without batching (`max_batch_size` 0) each request runs alone.

use super::RUN_HERE_LIMIT;
use super::arrivals::Arrivals;
use super::calibrate;
use super::cost::{CostModel, PER_EXECUTION};
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
    /// Requests that may wait per priority level (index 0 is the highest
    /// level); 0: no limit. One entry when the model has no levels.
    pub max_queue_size: Vec<usize>,
    /// Instances that take batches from the queue.
    pub instances: usize,
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

/// A request as it is queued.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub rows: usize,
    /// Hash of the non-batch dims: only equal groups share a batch.
    pub group: u64,
    /// Priority level, 0 the highest.
    pub level: usize,
    /// Dropped unrun once this passes (or once its batch would end after it).
    pub deadline: Option<Instant>,
    /// When admission is on: the request must be predicted to complete by
    /// this instant, or it is refused. Also bounds the batch it leads.
    pub admit_by: Option<Instant>,
}

struct Entry<J> {
    job: J,
    arrival: Arrival,
    enqueued: Instant,
}

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its priority level's queue holds this many requests, its limit.
    QueueFull(usize),
    /// It would complete this long after arriving, after its target.
    Late { predicted: Duration, rows_ahead: usize },
}

/// The instance running a batch: when it is predicted to end.
#[derive(Debug, Clone, Copy)]
struct Running {
    ends: Instant,
    requests: usize,
}

/// The shortest wait for company, so a wait never spins.
const MIN_WAIT: Duration = Duration::from_micros(10);

/// Requests waiting for an instance, by priority level, in arrival order.
pub struct BatchQueue<J> {
    policy: Policy,
    levels: Vec<VecDeque<Entry<J>>>,
    /// Rows queued per level (admission reads prefix sums in constant time).
    level_rows: Vec<usize>,
    len: usize,
    cost: CostModel,
    arrivals: Arrivals,
    /// Per instance: the batch it runs, if any.
    running: Vec<Option<Running>>,
    /// Added to predicted completions before they are compared with a
    /// target (calibrate.rs).
    margin: Duration,
    /// The latest executions in a row that took at most RUN_HERE_LIMIT.
    quick_streak: u32,
}

/// Executions in a row within RUN_HERE_LIMIT before a request may run its
/// batch on its own task: a model whose cost depends on its input, or that
/// was seeded by a warm-up cheaper than real requests, proves itself first.
const QUICK_STREAK: u32 = 64;

impl<J> BatchQueue<J> {
    pub fn new(mut policy: Policy) -> Self {
        policy.preferred.sort_unstable();
        policy.preferred.dedup();
        if policy.max_queue_size.is_empty() {
            policy.max_queue_size.push(0);
        }
        policy.instances = policy.instances.max(1);
        let levels = policy.max_queue_size.len();
        BatchQueue {
            cost: CostModel::new(policy.max_batch_size),
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            level_rows: vec![0; levels],
            len: 0,
            arrivals: Arrivals::default(),
            running: vec![None; policy.instances],
            margin: Duration::ZERO,
            quick_streak: 0,
            policy,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn cost(&self) -> &CostModel {
        &self.cost
    }

    /// The largest batch the policy forms on its own: the largest preferred
    /// size, else max_batch_size (1 without batching).
    fn full_size(&self) -> usize {
        self.policy.preferred.last().copied().unwrap_or(self.policy.max_batch_size).max(1)
    }

    /// The batch size aimed for under load: the cost model's efficient
    /// size, raised to the next preferred size when the config lists some
    /// (the user's hint), never above the largest.
    fn target_size(&self) -> usize {
        let efficient = self.cost.efficient_batch();
        let preferred = self.policy.preferred.iter().copied().find(|&p| p >= efficient);
        preferred.unwrap_or(efficient).min(self.full_size()).max(1)
    }

    /// The most rows one batch holds (0 without batching).
    pub fn max_batch_size(&self) -> usize {
        self.policy.max_batch_size
    }

    /// The batch size aimed for under load (target_size), for the statistics.
    pub fn batch_size_aimed(&self) -> usize {
        self.target_size()
    }

    /// Predicts how long after `now` a request of `rows` rows at `level`
    /// would complete if queued now; None while the cost is unknown.
    /// Constant time in the queue's length.
    pub fn predict(&self, rows: usize, level: usize, now: Instant) -> Option<(Duration, usize)> {
        let cost = &self.cost;
        let ahead: usize = self.level_rows[..=level.min(self.level_rows.len() - 1)].iter().sum();
        let busy = self.running.iter().flatten();
        let idle = self.running.iter().filter(|r| r.is_none()).count();
        if ahead == 0 && idle > 0 {
            return Some((cost.predict(rows)?, 0));
        }
        let size = self.target_size();
        let total = ahead + rows;
        let batches = total.div_ceil(size);
        let last_rows = total - (batches - 1) * size;
        let remainder: Duration = busy.map(|r| r.ends.saturating_duration_since(now)).sum();
        let before = (remainder + cost.predict(size)? * (batches - 1) as u32) / self.policy.instances as u32;
        Some((before + cost.predict(last_rows)?, ahead))
    }

    /// The margin admission adds to predictions (calibrate.rs).
    pub fn set_margin(&mut self, margin: Duration) {
        self.margin = margin;
    }

    /// Queues a request and returns its predicted completion (from now),
    /// when the cost is known. Refuses it when its level's queue is full,
    /// or when `admit_by` is set and its predicted completion (with the
    /// margin) would fall after it.
    pub fn push(&mut self, job: J, arrival: Arrival, now: Instant) -> Result<Option<Duration>, (J, Refusal)> {
        let level = arrival.level.min(self.levels.len() - 1);
        let prediction = match self.admit(&arrival, now) {
            Ok(prediction) => prediction,
            Err(refusal) => return Err((job, refusal)),
        };
        let inside = self.len + self.running_requests() + 1;
        self.arrivals.arrived(now, arrival.rows, inside);
        self.levels[level].push_back(Entry { job, arrival: Arrival { level, ..arrival }, enqueued: now });
        self.level_rows[level] += arrival.rows;
        self.len += 1;
        Ok(prediction)
    }

    /// Whether a request would be queued now (`push`'s checks, without
    /// queueing it): its predicted completion when known, or why not.
    pub fn admit(&self, arrival: &Arrival, now: Instant) -> Result<Option<Duration>, Refusal> {
        let level = arrival.level.min(self.levels.len() - 1);
        let limit = self.policy.max_queue_size[level];
        if limit > 0 && self.levels[level].len() >= limit {
            return Err(Refusal::QueueFull(limit));
        }
        let prediction = self.predict(arrival.rows, level, now);
        if let (Some(admit_by), Some((predicted, rows_ahead))) = (arrival.admit_by, prediction) {
            let padded = calibrate::padded(predicted, self.margin);
            if now + padded > admit_by && !(rows_ahead == 0 && self.running.iter().any(Option::is_none)) {
                return Err(Refusal::Late { predicted: padded, rows_ahead });
            }
        }
        Ok(prediction.map(|(predicted, _)| predicted))
    }

    fn running_requests(&self) -> usize {
        self.running.iter().flatten().map(|r| r.requests).sum()
    }

    /// An instance running nothing, if any.
    pub fn idle_instance(&self) -> Option<usize> {
        self.running.iter().position(Option::is_none)
    }

    /// Whether the version holds one request (queued or running) and has
    /// lately never held more: a client at a time, with nobody to batch with.
    pub fn alone(&self) -> bool {
        self.len + self.running_requests() == 1 && self.arrivals.population() <= 1
    }

    /// Whether no instance runs anything now.
    pub fn all_idle(&self) -> bool {
        self.running.iter().all(Option::is_none)
    }

    /// Whether instance `instance` runs nothing now.
    pub fn is_idle(&self, instance: usize) -> bool {
        self.running.get(instance).is_some_and(Option::is_none)
    }

    /// Instance `instance` started a batch of `rows` rows and `requests` requests.
    pub fn started(&mut self, instance: usize, now: Instant, rows: usize, requests: usize) {
        let ends = now + self.cost.predict(rows).unwrap_or_default();
        if let Some(slot) = self.running.get_mut(instance) {
            *slot = Some(Running { ends, requests });
        }
    }

    /// Instance `instance` finished its batch; `ran` is the rows and the
    /// execution time when it succeeded (the cost model learns it).
    pub fn finished(&mut self, instance: usize, ran: Option<(usize, Duration)>) {
        if let Some(slot) = self.running.get_mut(instance) {
            *slot = None;
        }
        if let Some((rows, elapsed)) = ran {
            self.cost.record(rows, elapsed);
            self.quick_streak = if elapsed <= RUN_HERE_LIMIT { self.quick_streak.saturating_add(1) } else { 0 };
        }
    }

    /// Whether the latest QUICK_STREAK executions all took at most
    /// RUN_HERE_LIMIT.
    pub fn reliably_quick(&self) -> bool {
        self.quick_streak >= QUICK_STREAK
    }

    /// Seeds the cost model (the load-time profile).
    pub fn learn(&mut self, rows: usize, elapsed: Duration) {
        self.cost.seed(rows, elapsed);
    }

    /// Removes the entry at (level, index), keeping the row counts.
    fn remove(&mut self, level: usize, index: usize) -> Entry<J> {
        let entry = self.levels[level].remove(index).expect("index from this queue; this is a bug");
        self.level_rows[level] -= entry.arrival.rows;
        self.len -= 1;
        entry
    }

    /// Drops requests `dead` says are abandoned and moves those past their
    /// deadline into `expired`.
    fn purge(&mut self, now: Instant, dead: &impl Fn(&J) -> bool, expired: &mut Vec<J>) {
        for level in 0..self.levels.len() {
            let gone = |e: &Entry<J>| dead(&e.job) || e.arrival.deadline.is_some_and(|d| d <= now);
            if !self.levels[level].iter().any(gone) {
                continue;
            }
            let before = self.levels[level].len();
            let mut kept = VecDeque::with_capacity(before);
            for entry in std::mem::take(&mut self.levels[level]) {
                if dead(&entry.job) {
                    continue;
                }
                if entry.arrival.deadline.is_some_and(|d| d <= now) {
                    expired.push(entry.job);
                    continue;
                }
                kept.push_back(entry);
            }
            self.len -= before - kept.len();
            self.level_rows[level] = kept.iter().map(|e| e.arrival.rows).sum();
            self.levels[level] = kept;
        }
    }

    /// Drops abandoned and expired requests, then decides what runs next.
    /// Members of the chosen batch whose deadline falls before its
    /// predicted end go to `expired` too.
    pub fn next_batch(&mut self, now: Instant, dead: impl Fn(&J) -> bool, expired: &mut Vec<J>) -> Decision<J> {
        self.purge(now, &dead, expired);
        loop {
            let chosen = match self.choose(now) {
                Ok(chosen) => chosen,
                Err(decision) => return decision,
            };
            let rows: usize = chosen.iter().map(|&(l, i)| self.levels[l][i].arrival.rows).sum();
            let ends = self.cost.predict(rows).map(|t| now + t);
            let mut batch = Vec::with_capacity(chosen.len());
            // Remove from the back so earlier indices stay valid, then restore order.
            for &(level, index) in chosen.iter().rev() {
                let entry = self.remove(level, index);
                match (entry.arrival.deadline, ends) {
                    (Some(deadline), Some(ends)) if deadline < ends => expired.push(entry.job),
                    _ => batch.push(entry.job),
                }
            }
            if !batch.is_empty() {
                batch.reverse();
                return Decision::Run(batch);
            }
        }
    }

    /// The (level, index) of each member of the next batch, in order; or
    /// what to do instead.
    fn choose(&self, now: Instant) -> Result<Vec<(usize, usize)>, Decision<J>> {
        let Some((leader_level, leader)) = self.levels.iter().enumerate().find_map(|(l, q)| q.front().map(|e| (l, e)))
        else {
            return Err(Decision::Idle);
        };
        if self.policy.max_batch_size == 0 {
            return Ok(vec![(leader_level, 0)]);
        }
        let group = leader.arrival.group;
        // Requests that may join the leader, in order, while they fit.
        let mut members = Vec::new();
        let mut rows = 0;
        'levels: for (level, queue) in self.levels.iter().enumerate().skip(leader_level) {
            for (index, entry) in queue.iter().enumerate() {
                if entry.arrival.group != group {
                    continue;
                }
                if rows + entry.arrival.rows > self.policy.max_batch_size && !members.is_empty() {
                    break 'levels;
                }
                rows += entry.arrival.rows;
                members.push(((level, index), rows));
            }
        }
        let positions = |take: usize| members[..take].iter().map(|&(p, _)| p).collect();
        let target = self.sized_for(leader, now);
        if rows >= target {
            // The longest prefix that stays within the target (at least one request).
            return Ok(positions(members.iter().take_while(|(_, r)| *r <= target).count().max(1)));
        }
        let waited_out = now >= leader.enqueued + self.policy.max_delay;
        if waited_out && !self.policy.preferred.is_empty() {
            // The longest prefix ending on a preferred size, else everything.
            let take =
                members.iter().rposition(|(_, r)| self.policy.preferred.contains(r)).map_or(members.len(), |i| i + 1);
            return Ok(positions(take));
        }
        if waited_out {
            return Ok(positions(members.len()));
        }
        match self.wait_for_company(leader, rows, target, now) {
            Some(until) => {
                let deadline = self.levels.iter().flatten().filter_map(|e| e.arrival.deadline).min();
                Err(Decision::WaitUntil(deadline.map_or(until, |d| d.min(until))))
            }
            None => Ok(positions(members.len())),
        }
    }

    /// The batch size aimed for with this leader: the target size, cut so
    /// the leader's own execution still ends by its admission target.
    fn sized_for(&self, leader: &Entry<J>, now: Instant) -> usize {
        let mut size = self.target_size();
        let bound = leader.arrival.admit_by.into_iter().chain(leader.arrival.deadline).min();
        let late = |rows: usize| self.cost.predict(rows).is_some_and(|t| now + t > bound.expect("checked"));
        // Only a cut that lets the leader make it: one already late gains
        // nothing from a smaller batch, and the queue behind it loses.
        if bound.is_some() && !late(1) {
            while size > 1 && late(size) {
                size /= 2;
            }
        }
        size
    }

    /// Until when a batch of `rows` rows led by `leader` should wait for
    /// company, or None to run now: only while more rows are expected
    /// within the remaining delay, and waiting for them raises rows per
    /// second of the instance (waiting included) by the cost model.
    fn wait_for_company(&self, leader: &Entry<J>, rows: usize, target: usize, now: Instant) -> Option<Instant> {
        let until = leader.enqueued + self.policy.max_delay;
        let remaining = until.saturating_duration_since(now);
        let inside = self.len + self.running_requests();
        let expected = self.arrivals.expected_rows(now, remaining, inside).min((target - rows) as f64);
        if expected < 1.0 {
            return None;
        }
        let (Some(now_cost), Some(gather)) = (self.cost.predict(rows), self.arrivals.time_for(expected.floor())) else {
            return Some(until); // nothing learnt yet: Triton's rule
        };
        let extra = expected.floor() as usize;
        // The time `extra` more rows take to arrive at the recent pace.
        let gather = gather.clamp(MIN_WAIT, remaining.max(MIN_WAIT));
        let later_cost = self.cost.predict(rows + extra)?;
        let rate = |rows: usize, time: Duration| rows as f64 / (time + PER_EXECUTION).as_secs_f64();
        let pays = rate(rows + extra, gather + later_cost) > rate(rows, now_cost);
        let bound = leader.arrival.admit_by.into_iter().chain(leader.arrival.deadline).min();
        let in_time = bound.is_none_or(|b| now + gather + later_cost <= b);
        (pays && in_time).then(|| (now + gather).min(until))
    }

    /// Removes the first queued request `which` picks: one whose deadline
    /// passed while every instance was busy leaves without waiting for the
    /// next decision.
    pub fn take(&mut self, which: impl Fn(&J) -> bool) -> Option<J> {
        for level in 0..self.levels.len() {
            if let Some(index) = self.levels[level].iter().position(|e| which(&e.job)) {
                return Some(self.remove(level, index).job);
            }
        }
        None
    }

    /// Empties the queue (shutdown).
    pub fn drain(&mut self) -> Vec<J> {
        self.level_rows.iter_mut().for_each(|r| *r = 0);
        self.len = 0;
        self.levels.iter_mut().flat_map(|q| q.drain(..)).map(|e| e.job).collect()
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
            max_queue_size: vec![0],
            instances: 1,
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn one(rows: usize) -> Arrival {
        Arrival { rows, group: 0, level: 0, deadline: None, admit_by: None }
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

    /// A queue whose model costs `fixed + per_row * rows`.
    fn costed(policy: Policy, fixed: Duration, per_row: Duration) -> BatchQueue<u32> {
        let max = policy.max_batch_size.max(1);
        let mut q = BatchQueue::new(policy);
        let mut rows = 1;
        while rows <= max {
            q.learn(rows, fixed + per_row * rows as u32);
            rows *= 2;
        }
        q.learn(max, fixed + per_row * max as u32);
        q
    }

    /// Teaches the queue an open-loop stream: `clients` requests inside at
    /// once at most, one arrival every `gap`, ending at the returned instant.
    fn stream(q: &mut BatchQueue<u32>, start: Instant, clients: usize, gap: Duration) -> Instant {
        let mut t = start;
        for id in 0..clients as u32 {
            q.push(1000 + id, one(1), t).unwrap();
        }
        q.drain();
        for id in 0..20 {
            t += gap;
            q.push(2000 + id, one(1), t).unwrap();
            q.drain();
        }
        t
    }

    #[test]
    fn a_request_may_run_its_own_batch_only_alone_and_after_a_streak_of_quick_runs() {
        let mut q = costed(policy(8, &[], 0), us(5), us(1));
        let t = Instant::now();
        for i in 0..QUICK_STREAK {
            assert!(!q.reliably_quick(), "the warm-up profile and {i} runs prove nothing yet");
            q.started(0, t, 1, 1);
            q.finished(0, Some((1, us(8))));
        }
        assert!(q.reliably_quick());
        q.push(1, one(1), t).unwrap();
        assert!(q.alone(), "one request, nothing running, one client lately");
        q.push(2, one(1), t).unwrap();
        assert!(!q.alone(), "two queued");
        q.drain();
        // One slow execution (an input that costs more) starts the streak over.
        q.started(0, t, 1, 1);
        q.finished(0, Some((1, RUN_HERE_LIMIT + us(1))));
        assert!(!q.reliably_quick());
    }

    #[test]
    fn without_batching_each_request_runs_alone() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(0, &[], 1000));
        for id in 0..3 {
            q.push(id, one(1), t).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0]);
        assert_eq!(run(next(&mut q, t)), vec![1]);
    }

    #[test]
    fn a_full_batch_runs_at_once_and_the_rest_waits_out_the_delay_while_company_is_expected() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(4, &[], 1000));
        let t = stream(&mut q, t, 16, us(10));
        for id in 0..6 {
            q.push(id, one(1), t).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0, 1, 2, 3]);
        // Nothing learnt of the cost: with company expected, Triton's rule.
        match next(&mut q, t) {
            Decision::WaitUntil(at) => assert_eq!(at, t + us(1000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(run(next(&mut q, t + us(1000))), vec![4, 5]);
    }

    #[test]
    fn a_lone_request_never_waits() {
        let mut t = Instant::now();
        let mut q = costed(policy(8, &[], 500), us(100), us(10));
        for id in 0..20 {
            q.push(id, one(1), t).unwrap();
            assert_eq!(run(next(&mut q, t)), vec![id], "a lone client never waits");
            t += us(300);
        }
    }

    #[test]
    fn a_batch_holding_every_clients_request_runs_at_once() {
        let mut t = Instant::now();
        let mut q = costed(policy(32, &[], 500), us(100), us(10));
        // Four closed-loop clients: each batch holds all four.
        for round in 0..10 {
            for i in 0..4 {
                q.push(round * 4 + i, one(1), t + us(u64::from(i) * 5)).unwrap();
            }
            t += us(20);
            assert_eq!(run(next(&mut q, t)).len(), 4, "round {round}: nothing more can come");
            t += us(200);
        }
        // The first of the next round: three clients are out, so it waits
        // for them, briefly, since their requests pay for the wait.
        q.push(99, one(1), t).unwrap();
        match next(&mut q, t) {
            Decision::WaitUntil(at) => assert!(at > t && at < t + us(500), "{:?}", at - t),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn waiting_that_would_not_raise_throughput_is_skipped() {
        // Compute-bound: each row costs the same at any batch size.
        let mut q = costed(policy(32, &[], 2000), us(1), ms(5));
        let t = stream(&mut q, Instant::now(), 16, us(100));
        q.push(1, one(1), t).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![1]);
    }

    #[test]
    fn the_batch_size_aims_at_the_efficient_size() {
        let t = Instant::now();
        // Compute-bound: batching buys nothing, so batches of one.
        let mut q = costed(policy(8, &[], 0), us(1), ms(5));
        for id in 0..3 {
            q.push(id, one(1), t).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0]);
        // Memory-bound: the whole batch.
        let mut q = costed(policy(8, &[], 0), ms(5), us(1));
        for id in 0..3 {
            q.push(id, one(1), t).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0, 1, 2]);
    }

    #[test]
    fn the_leaders_target_cuts_the_batch() {
        let t = Instant::now();
        let mut q = costed(policy(8, &[], 0), ms(1), ms(2));
        // 8 rows would take 17 ms; the leader must be done within 6 ms.
        q.push(0, Arrival { admit_by: Some(t + ms(6)), ..one(1) }, t).unwrap();
        for id in 1..8 {
            q.push(id, one(1), t).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0, 1]);
    }

    #[test]
    fn a_leader_already_late_keeps_the_full_batch() {
        let t = Instant::now();
        let mut q = costed(policy(8, &[], 0), ms(1), ms(2));
        q.push(0, Arrival { admit_by: Some(t + ms(6)), ..one(1) }, t).unwrap();
        for id in 1..8 {
            q.push(id, one(1), t).unwrap();
        }
        let efficient = q.cost().efficient_batch();
        assert!(efficient > 2, "{efficient}");
        assert_eq!(run(next(&mut q, t + ms(10))).len(), efficient, "not cut for a target already missed");
    }

    #[test]
    fn requests_with_several_rows_count_them_all() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(1, one(5), t).unwrap();
        q.push(2, one(4), t).unwrap();
        q.push(3, one(3), t).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![1]);
        assert_eq!(run(next(&mut q, t)), vec![2, 3]);
    }

    #[test]
    fn different_shapes_never_share_a_batch() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(1, Arrival { group: 10, ..one(1) }, t).unwrap();
        q.push(2, Arrival { group: 20, ..one(1) }, t).unwrap();
        q.push(3, Arrival { group: 10, ..one(1) }, t).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![1, 3]);
        assert_eq!(run(next(&mut q, t)), vec![2]);
    }

    #[test]
    fn preferred_sizes_cut_batches_after_the_delay() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(16, &[2, 4], 500));
        let t = stream(&mut q, t, 16, us(10));
        for id in 0..3 {
            q.push(id, one(1), t).unwrap();
        }
        // Three rows: below the largest preferred size (4), with more expected: wait.
        assert!(matches!(next(&mut q, t), Decision::WaitUntil(_)));
        // After the delay: cut to the preferred size 2, then the last alone.
        let later = t + us(500);
        assert_eq!(run(next(&mut q, later)), vec![0, 1]);
        assert_eq!(run(next(&mut q, later)), vec![2]);
    }

    #[test]
    fn reaching_the_largest_preferred_size_runs_at_once() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(16, &[2, 4], 500));
        for id in 0..5 {
            q.push(id, one(1), t).unwrap();
        }
        assert_eq!(run(next(&mut q, t)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn abandoned_requests_are_skipped_and_expired_ones_returned() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 0));
        q.push(1, one(1), t).unwrap();
        q.push(2, Arrival { deadline: Some(t + us(10)), ..one(1) }, t).unwrap();
        q.push(3, one(1), t).unwrap();
        let mut expired = Vec::new();
        let later = t + us(20);
        assert_eq!(run(q.next_batch(later, |&j| j == 1, &mut expired)), vec![3]);
        assert_eq!(expired, vec![2]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_request_its_batch_would_finish_too_late_for_is_dropped_at_dispatch() {
        let t = Instant::now();
        let mut q = costed(policy(8, &[], 0), ms(10), us(10));
        q.push(1, one(1), t).unwrap();
        q.push(2, Arrival { deadline: Some(t + ms(5)), ..one(1) }, t).unwrap();
        q.push(3, Arrival { deadline: Some(t + ms(50)), ..one(1) }, t).unwrap();
        let mut expired = Vec::new();
        assert_eq!(run(q.next_batch(t, |_| false, &mut expired)), vec![1, 3]);
        assert_eq!(expired, vec![2], "10 ms of execution cannot end within its 5 ms");
        // A batch left empty by the drop: the next one is chosen instead.
        q.push(4, Arrival { deadline: Some(t + ms(5)), ..one(1) }, t).unwrap();
        let mut expired = Vec::new();
        assert!(matches!(q.next_batch(t, |_| false, &mut expired), Decision::Idle));
        assert_eq!(expired, vec![4]);
    }

    #[test]
    fn a_request_can_leave_the_queue_by_itself() {
        let t = Instant::now();
        let mut q = BatchQueue::new(Policy { max_queue_size: vec![0, 0], ..policy(8, &[], 0) });
        q.push(1, one(2), t).unwrap();
        q.push(2, Arrival { level: 1, ..one(3) }, t).unwrap();
        assert_eq!(q.take(|&j| j == 2), Some(2));
        assert_eq!(q.take(|&j| j == 2), None);
        assert_eq!((q.len(), q.level_rows.clone()), (1, vec![2, 0]));
    }

    #[test]
    fn waiting_wakes_early_for_a_deadline() {
        let t = Instant::now();
        let mut q = BatchQueue::new(policy(8, &[], 1000));
        let t = stream(&mut q, t, 16, us(10));
        q.push(1, Arrival { deadline: Some(t + us(300)), ..one(1) }, t).unwrap();
        match next(&mut q, t) {
            Decision::WaitUntil(at) => assert_eq!(at, t + us(300)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn higher_priority_leads_and_lower_fills() {
        let t = Instant::now();
        let mut q = BatchQueue::new(Policy { max_queue_size: vec![0, 0, 0], ..policy(3, &[], 0) });
        q.push(1, Arrival { level: 2, ..one(1) }, t).unwrap();
        q.push(2, Arrival { level: 1, ..one(1) }, t).unwrap();
        q.push(3, Arrival { level: 0, ..one(1) }, t).unwrap();
        q.push(4, Arrival { level: 2, ..one(1) }, t).unwrap();
        q.push(5, Arrival { level: 0, ..one(1) }, t).unwrap();
        assert_eq!(run(next(&mut q, t)), vec![3, 5, 2]);
        assert_eq!(run(next(&mut q, t)), vec![1, 4]);
    }

    #[test]
    fn admission_refuses_what_would_finish_after_its_target_and_never_into_an_idle_instance() {
        let t = Instant::now();
        // 10 ms per batch of up to 4 rows (batching buys everything).
        let mut q = costed(policy(4, &[], 0), ms(10), Duration::ZERO);
        let by = |ms_from_now: u64| Arrival { admit_by: Some(t + ms(ms_from_now)), ..one(1) };
        // Idle, nothing queued: admitted even with a target it cannot meet.
        q.push(0, by(1), t).unwrap();
        let batch = run(next(&mut q, t));
        q.started(0, t, batch.len(), batch.len());
        // Running 10 ms; four rows queued next run 10 ms more: a fifth
        // needs a third batch, 30 ms (plus the 8 ms margin) from now.
        q.set_margin(ms(8));
        for id in 1..=4 {
            q.push(id, by(30), t).unwrap();
        }
        assert!(matches!(q.push(5, by(37), t), Err((5, Refusal::Late { rows_ahead: 4, .. }))));
        q.push(5, by(38), t).unwrap();
        // Half the running batch later, a third batch ends 5 ms sooner:
        // 5 + 10 + 10 ms, plus 8, from t + 5 ms.
        let later = t + ms(5);
        assert!(matches!(q.push(6, by(37), later), Err((6, Refusal::Late { rows_ahead: 5, .. }))));
        assert!(q.push(6, by(38), later).is_ok());
    }

    #[test]
    fn under_overload_lower_priority_is_refused_first() {
        let t = Instant::now();
        let mut q = costed(Policy { max_queue_size: vec![0, 0], ..policy(1, &[], 0) }, ms(10), Duration::ZERO);
        q.set_margin(ms(2));
        q.started(0, t, 1, 1);
        let at = |level| Arrival { level, admit_by: Some(t + ms(50)), ..one(1) };
        for id in 0..3 {
            q.push(id, at(1), t).unwrap(); // 20, 30, 40 ms (24, 36, 48 padded): admitted
        }
        assert!(matches!(q.push(9, at(1), t), Err((_, Refusal::Late { .. }))), "low: 50 ms, 60 padded");
        // The high level sees only its own work ahead of it.
        for id in 10..13 {
            q.push(id, at(0), t).unwrap();
        }
        assert!(matches!(q.push(19, at(0), t), Err((_, Refusal::Late { .. }))));
    }

    #[test]
    fn each_level_bounds_its_own_queue() {
        let t = Instant::now();
        let mut q = BatchQueue::new(Policy { max_queue_size: vec![2, 1], ..policy(8, &[], 0) });
        q.push(1, one(1), t).unwrap();
        q.push(2, one(1), t).unwrap();
        assert_eq!(q.push(3, one(1), t).unwrap_err(), (3, Refusal::QueueFull(2)));
        q.push(4, Arrival { level: 1, ..one(1) }, t).unwrap();
        assert_eq!(q.push(5, Arrival { level: 1, ..one(1) }, t).unwrap_err(), (5, Refusal::QueueFull(1)));
    }
}
