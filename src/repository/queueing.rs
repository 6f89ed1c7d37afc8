//! How a version's requests wait, from its config: the batching policy,
//! Triton's priority levels (`priority_levels`, `default_priority_level`,
//! `priority_queue_policy`) and each level's queue policy (size bound,
//! timeout, timeout action, override).

use crate::error::{Error, Result};
use crate::infer::InferRequest;
use crate::pb;
use crate::scheduler::policy::Policy;
use std::time::{Duration, Instant};

/// Requests that may wait per priority level before more are refused,
/// when the queue policy sets no max_queue_size.
const DEFAULT_QUEUE_SIZE: usize = 1024;

/// The timeout rules of one priority level's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LevelTimeout {
    /// How long a request may wait before it is rejected; None: no limit.
    default_timeout: Option<Duration>,
    /// Whether a request's own `timeout` parameter may shorten it.
    allow_override: bool,
    /// DELAY: a request past its queue timeout still runs (only a client
    /// deadline drops it); REJECT: it is answered DEADLINE_EXCEEDED.
    reject_on_timeout: bool,
}

impl LevelTimeout {
    fn from_policy(queue: &pb::ModelQueuePolicy) -> Self {
        LevelTimeout {
            default_timeout: (queue.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(queue.default_timeout_microseconds)),
            allow_override: queue.allow_timeout_override,
            reject_on_timeout: queue.timeout_action == pb::model_queue_policy::TimeoutAction::Reject as i32,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Queueing {
    pub policy: Policy,
    /// Per level, index 0 the highest (Triton's priority 1).
    timeouts: Vec<LevelTimeout>,
    /// The level of a request that names none (index).
    default_level: usize,
    /// Triton's priority_levels; 0: the model has none.
    levels: u64,
}

impl Queueing {
    pub fn from_config(config: &pb::ModelConfig, instances: usize) -> Self {
        let batching =
            config.scheduling_choice.as_ref().map(|pb::model_config::SchedulingChoice::DynamicBatching(b)| b);
        let default_queue = batching.and_then(|b| b.default_queue_policy).unwrap_or_default();
        let levels = batching.map_or(0, |b| b.priority_levels);
        let queues: Vec<pb::ModelQueuePolicy> = (1..=levels.max(1))
            .map(|level| batching.and_then(|b| b.priority_queue_policy.get(&level).copied()).unwrap_or(default_queue))
            .collect();
        let policy = Policy {
            // Without dynamic_batching every request runs alone, as in Triton.
            max_batch_size: if batching.is_some() { config.max_batch_size.max(0) as usize } else { 0 },
            preferred: batching.map_or_else(Vec::new, |b| b.preferred_batch_size.iter().map(|&s| s as usize).collect()),
            max_delay: Duration::from_micros(batching.map_or(0, |b| b.max_queue_delay_microseconds)),
            max_queue_size: queues
                .iter()
                .map(|q| if q.max_queue_size > 0 { q.max_queue_size as usize } else { DEFAULT_QUEUE_SIZE })
                .collect(),
            instances,
        };
        let default_level = batching.map_or(0, |b| b.default_priority_level.saturating_sub(1) as usize);
        Queueing { policy, timeouts: queues.iter().map(LevelTimeout::from_policy).collect(), default_level, levels }
    }

    /// The queue level of a request's `priority`: 0 or none is the model's
    /// default level, 1..=priority_levels that level. A model without
    /// priority levels ignores the parameter, as Triton does.
    pub fn level(&self, priority: Option<u64>) -> Result<usize> {
        match priority {
            _ if self.levels == 0 => Ok(0),
            None | Some(0) => Ok(self.default_level),
            Some(p) if p <= self.levels => Ok(p as usize - 1),
            Some(p) => Err(Error::invalid(format!(
                "priority {p} is outside 1..={} (the model's priority_levels; 0 selects the default level {})",
                self.levels,
                self.default_level + 1
            ))),
        }
    }

    /// When a request admitted at `now` at `level` is dropped from the
    /// queue: the earlier of the client's deadline and the level's queue
    /// policy timeout.
    pub fn deadline(&self, now: Instant, request: &InferRequest, level: usize) -> Option<Instant> {
        self.deadline_of(now, request.deadline, request.timeout, level)
    }

    /// `deadline` for a request whose own deadline is `asked_deadline` and
    /// whose `timeout` parameter is `asked_timeout`.
    pub fn deadline_of(
        &self,
        now: Instant,
        asked_deadline: Option<Instant>,
        asked_timeout: Option<Duration>,
        level: usize,
    ) -> Option<Instant> {
        let rules = self.timeouts[level.min(self.timeouts.len() - 1)];
        let timeout = match (rules.default_timeout, asked_timeout) {
            (Some(default), Some(asked)) if rules.allow_override => Some(asked.min(default)),
            (Some(default), _) => Some(default),
            // No queue policy timeout: the request's own applies.
            (None, asked) => asked,
        };
        let queue_deadline =
            timeout.filter(|_| rules.reject_on_timeout || rules.default_timeout.is_none()).map(|t| now + t);
        match (asked_deadline, queue_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::config;

    fn queueing(text: &str) -> Queueing {
        Queueing::from_config(&config::parse(text).expect("a valid config"), 1)
    }

    #[test]
    fn priorities_map_to_levels_and_out_of_range_is_named() {
        let q = queueing("max_batch_size: 8\ndynamic_batching { priority_levels: 3 default_priority_level: 2 }");
        assert_eq!(q.level(None).unwrap(), 1);
        assert_eq!(q.level(Some(0)).unwrap(), 1);
        assert_eq!(q.level(Some(1)).unwrap(), 0);
        assert_eq!(q.level(Some(3)).unwrap(), 2);
        let e = q.level(Some(4)).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("1..=3")), "{e}");
        assert_eq!(q.policy.max_queue_size, vec![DEFAULT_QUEUE_SIZE; 3]);
        let none = queueing("max_batch_size: 8\ndynamic_batching { }");
        assert_eq!(none.level(Some(7)).unwrap(), 0, "no levels: ignored, as Triton does");
    }

    #[test]
    fn each_level_has_its_own_queue_policy() {
        let q = queueing(
            "max_batch_size: 8\ndynamic_batching { priority_levels: 2 default_priority_level: 1 \
             default_queue_policy { max_queue_size: 5 } \
             priority_queue_policy { key: 2 value { max_queue_size: 3 default_timeout_microseconds: 1000 } } }",
        );
        assert_eq!(q.policy.max_queue_size, vec![5, 3]);
        let now = Instant::now();
        let request = InferRequest::default();
        assert_eq!(q.deadline(now, &request, 0), None);
        assert_eq!(q.deadline(now, &request, 1), Some(now + Duration::from_micros(1000)));
    }
}
