//! Per model-version execution: a bounded queue shared by N instance
//! threads, each owning one ONNX Runtime session (`Session::run` takes
//! `&mut self`). An idle instance takes the next batch the policy allows
//! (policy.rs), so batches form only when they can run and grow while every
//! instance is busy. The async side only pushes under a short lock and
//! awaits a oneshot; no tokio worker thread ever waits on the model.

mod arrivals;
pub mod batch;
mod calibrate;
pub mod capacity;
pub mod cost;
pub mod policy;
mod worker;

use crate::error::{Error, Result};
use crate::runtime::{ModelThreads, Session};
use crate::telemetry::{self, VersionMetrics, VersionStats};
use crate::tensor::Tensor;
use opentelemetry::trace::SpanContext;
use parking_lot::{Condvar, Mutex};
use policy::{Arrival, BatchQueue, Decision, Policy, Refusal};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One request, validated, with inputs in the model's input order and
/// shaped for the graph.
pub struct Job {
    /// Unique within the version: how a request finds itself in the queue.
    id: u64,
    pub inputs: Vec<Tensor>,
    /// Rows along the batch dimension (1 when the model does not batch).
    pub rows: usize,
    enqueued: Instant,
    /// Sender: the instance thread; receiver: the request's task. A closed
    /// receiver means the client went away: the job is dropped unrun.
    reply: oneshot::Sender<Result<Vec<Tensor>>>,
    /// The request's server span when it is traced: the instance thread
    /// records `queue` and `compute` under it. None when tracing is off.
    trace: Option<SpanContext>,
}

/// Labels of the version a scheduler serves, for metrics and logs.
#[derive(Clone)]
pub struct Labels {
    pub model: String,
    pub version: String,
}

/// State shared by the request path and the instance threads.
struct Shared {
    /// Pushed to by request tasks, taken from by idle instances.
    queue: Mutex<Queue>,
    /// Signalled on a push while an instance is idle, when a batch run by a
    /// request leaves more queued, and on close; idle instance threads
    /// wait on it.
    wake: Condvar,
    /// One session per instance, used by whoever runs that instance's
    /// batch: its thread, or a request's task (`worker::run_here`). Taken
    /// by the thread when it exits.
    sessions: Vec<Mutex<Option<Session>>>,
    /// Whether batches have a batch dimension (max_batch_size > 0).
    batching: bool,
    labels: Labels,
    stats: Arc<VersionStats>,
    metrics: VersionMetrics,
    /// Instance threads still running; the last to exit returns the memory.
    live_workers: std::sync::atomic::AtomicUsize,
    /// The model's latency SLO threshold; admission aims requests at it.
    slo: Duration,
    /// Whether requests are refused at arrival when predicted late.
    admission: bool,
    /// `ferroserve_model_execution_seconds` per size class and
    /// `ferroserve_slo_attainable`, refreshed by the instances.
    cost_gauges: telemetry::CostGauges,
    /// Written by request tasks once answered, read by admission.
    calibration: calibrate::Calibration,
    /// What `ferroserve_slo_attainable` says now.
    attainable: std::sync::atomic::AtomicBool,
    /// The next job id.
    next_id: std::sync::atomic::AtomicU64,
    /// The version's threads, moved to background priority once one
    /// execution takes BACKGROUND_FROM or more.
    threads: ModelThreads,
    /// When admission last refused a request: a shadow copies nothing
    /// for a while after (`pressure`).
    last_refusal: Mutex<Option<Instant>>,
    /// Notified by an instance that leaves the version idle (nothing
    /// queued, nothing running) while `idle_waiters` is above 0: a shadow's
    /// copy waits for it before it runs (`until_idle`).
    idle: tokio::sync::Notify,
    idle_waiters: std::sync::atomic::AtomicUsize,
}

/// The server's own time around one execution (decode, queueing,
/// answering), added where a target is derived from execution times.
pub const OVERHEAD: Duration = Duration::from_millis(1);

/// What a version aims its requests at: its SLO threshold, or, when one
/// execution at batch 1 already takes longer, twice that execution plus the
/// server's overhead (the SLO is then not attainable).
pub fn latency_target(slo: Duration, single: Option<Duration>) -> (Duration, bool) {
    match single {
        Some(single) if single > slo => (2 * single + OVERHEAD, false),
        _ => (slo, true),
    }
}

/// How a request enters the queue, beyond its tensors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement {
    pub rows: usize,
    /// Hash of the non-batch dims: only equal groups share a batch.
    pub group: u64,
    /// Priority level, 0 the highest.
    pub level: usize,
    /// Dropped unrun once passed, or once its batch would end after it.
    pub deadline: Option<Instant>,
}

struct Queue {
    jobs: BatchQueue<Job>,
    closed: bool,
    /// When the cost gauges are refreshed next.
    publish_at: Instant,
}

/// A version whose execution at batch 1 takes at least this long runs its
/// threads at background priority (runtime/threads.rs): its runs are long
/// against the fronts' work per request, which then goes first.
pub const BACKGROUND_FROM: Duration = Duration::from_millis(1);

/// How long after a refusal the version counts as under pressure.
const PRESSURE_MEMORY: Duration = Duration::from_secs(1);

/// How often the cost gauges are refreshed.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The shortest retry hint an overloaded refusal gives.
const MIN_RETRY: Duration = Duration::from_millis(1);

/// When to retry a request refused by a version being retired or unloaded:
/// at once, routed anew (to the version that replaced it, if any).
const RETIRED_RETRY: Duration = Duration::from_millis(10);

/// A request alone in its version runs its batch on its own task, with no
/// hand-off to the instance thread, when that batch is predicted to take at
/// most this long: for a model of microseconds the two thread wake-ups
/// cost more than the model, and a tokio worker held this long is not a
/// stall (tokio's own guidance is 10-100 us between awaits).
pub const RUN_HERE_LIMIT: Duration = Duration::from_micros(100);

/// The handle the request path holds. Dropping it closes the queue: the
/// instances finish what is queued, then exit and drop their sessions.
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Starts one OS thread per session. `profile` seeds the cost model
    /// (rows, execution time); `slo` is the model's latency threshold and
    /// `admission` whether requests predicted to miss it are refused.
    pub fn start(
        labels: Labels,
        sessions: Vec<Session>,
        policy: Policy,
        profile: &[(usize, Duration)],
        (slo, admission): (Duration, bool),
        stats: Arc<VersionStats>,
        metrics: VersionMetrics,
    ) -> Self {
        let batching = policy.max_batch_size > 0;
        let mut jobs = BatchQueue::new(policy);
        for &(rows, elapsed) in profile {
            jobs.learn(rows, elapsed);
        }
        let cost_gauges = telemetry::CostGauges::new(&labels.model, &labels.version, &jobs.cost().classes());
        let instances = sessions.len();
        let threads = sessions.first().map_or_else(|| ModelThreads::new(String::new()), |s| s.threads().clone());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs, closed: false, publish_at: Instant::now() + PUBLISH_EVERY }),
            wake: Condvar::new(),
            sessions: sessions.into_iter().map(|s| Mutex::new(Some(s))).collect(),
            batching,
            labels: labels.clone(),
            stats,
            metrics,
            live_workers: std::sync::atomic::AtomicUsize::new(instances),
            slo,
            admission,
            cost_gauges,
            calibration: calibrate::Calibration::default(),
            attainable: std::sync::atomic::AtomicBool::new(true),
            next_id: std::sync::atomic::AtomicU64::new(0),
            threads,
            last_refusal: Mutex::new(None),
            idle: tokio::sync::Notify::new(),
            idle_waiters: std::sync::atomic::AtomicUsize::new(0),
        });
        shared.publish_cost(&shared.queue.lock().jobs);
        for index in 0..instances {
            let worker = worker::Worker { shared: shared.clone(), index };
            std::thread::Builder::new()
                .name(format!("{}-{}-{index}", labels.model, labels.version))
                .spawn(move || worker.run())
                .expect("spawning an instance thread");
        }
        Scheduler { shared }
    }

    /// Queues `inputs` and waits for the outputs (in the graph's output
    /// order). `trace` is the request's span, when traced. Refuses at once
    /// when the queue is full or, with admission on, when the request is
    /// predicted to complete after the earlier of its deadline and its
    /// latency target.
    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        placement: Placement,
        trace: Option<SpanContext>,
    ) -> Result<Vec<Tensor>> {
        let (reply, outputs) = oneshot::channel();
        let now = Instant::now();
        let id = self.shared.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = Job { id, inputs, rows: placement.rows, enqueued: now, reply, trace };
        let (predicted, run_here, wake);
        let mut expired = Vec::new();
        {
            let mut queue = self.shared.queue.lock();
            if queue.closed {
                // A retry is routed anew, to the version that replaced this one.
                return Err(Error::unavailable("the model version is unloading", RETIRED_RETRY));
            }
            let (arrival, target) = self.arrival(&mut queue, &placement, now);
            match queue.jobs.push(job, arrival, now) {
                Ok(prediction) => predicted = prediction.filter(|_| self.shared.admission),
                Err((_, refusal)) => {
                    drop(queue);
                    return Err(self.refused(refusal, placement.deadline.is_some_and(|d| d < now + target), target));
                }
            }
            run_here = self.shared.take_batch_here(&mut queue, placement.rows, now, &mut expired);
            self.shared.metrics.set_queue_depth(queue.jobs.len());
            // An instance thread is told only when one is idle to take it;
            // a busy one looks at the queue again when its batch ends.
            wake = run_here.is_none() && queue.jobs.idle_instance().is_some();
        }
        worker::answer_expired(expired);
        match run_here {
            Some((index, jobs)) => worker::run_here(&self.shared, index, jobs),
            None if wake => {
                self.shared.wake.notify_one();
            }
            None => {}
        }
        // If the caller stops waiting (client gone, deadline), wake an
        // instance so the abandoned job leaves the queue now, not at the
        // next decision.
        let abandoned = Abandoned { shared: &self.shared, armed: true };
        let result = match placement.deadline {
            None => outputs.await,
            Some(deadline) => {
                tokio::pin!(outputs);
                tokio::select! {
                    result = &mut outputs => result,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        // Still queued (every instance busy): it leaves unrun,
                        // answered now rather than at the next decision.
                        let left = {
                            let mut queue = self.shared.queue.lock();
                            let left = queue.jobs.take(|job| job.id == id);
                            self.shared.metrics.set_queue_depth(queue.jobs.len());
                            left
                        };
                        if left.is_some() {
                            abandoned.disarm();
                            return Err(Error::DeadlineExceeded(
                                "the request's deadline passed while it was queued".into(),
                            ));
                        }
                        outputs.await
                    }
                }
            }
        };
        abandoned.disarm();
        if let (Some(predicted), Ok(Ok(_))) = (predicted, &result) {
            let answered = Instant::now();
            self.shared.calibration.record(predicted, answered - now, answered);
        }
        result.map_err(|_| Error::internal("the model instance stopped before answering"))?
    }

    /// The request as the queue sees it (its admission bound from the
    /// deadline and the latency target), and the latency target.
    fn arrival(&self, queue: &mut Queue, placement: &Placement, now: Instant) -> (Arrival, Duration) {
        let (target, _) = latency_target(self.shared.slo, queue.jobs.cost().predict(1));
        let by_slo = now + target;
        let admit_by = self.shared.admission.then(|| placement.deadline.map_or(by_slo, |d| d.min(by_slo)));
        queue.jobs.set_margin(self.shared.calibration.margin());
        let arrival = Arrival {
            rows: placement.rows,
            group: placement.group,
            level: placement.level,
            deadline: placement.deadline,
            admit_by,
        };
        (arrival, target)
    }

    /// The refusal a request placed so would get if it came now, counted
    /// as shed as `submit` counts it; None when it would be queued. Nothing
    /// is queued: the request's body has not arrived yet (api/grpc/early.rs).
    pub fn refusal_now(&self, placement: Placement) -> Option<Error> {
        let now = Instant::now();
        let (refusal, target) = {
            let mut queue = self.shared.queue.lock();
            if queue.closed {
                return None;
            }
            let (arrival, target) = self.arrival(&mut queue, &placement, now);
            (queue.jobs.admit(&arrival, now).err()?, target)
        };
        Some(self.refused(refusal, placement.deadline.is_some_and(|d| d < now + target), target))
    }

    /// Whether nothing is queued and no instance runs.
    pub fn is_idle(&self) -> bool {
        let queue = self.shared.queue.lock();
        queue.jobs.is_empty() && queue.jobs.all_idle()
    }

    /// Waits until the version is idle, at most `limit`; whether it was.
    pub async fn until_idle(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        let shared = &self.shared;
        shared.idle_waiters.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _waiting = Waiting(&shared.idle_waiters);
        loop {
            let notified = shared.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so an instance going idle in
            // between is not missed.
            notified.as_mut().enable();
            if self.is_idle() {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.is_idle();
            }
        }
    }

    /// How loaded the version is: the predicted completion of a one-row
    /// request arriving now behind everything queued, as a share of the
    /// latency target; 1 or more within PRESSURE_MEMORY of a refusal. 0
    /// while the cost is unknown.
    pub fn pressure(&self) -> f64 {
        let now = Instant::now();
        if self.shared.last_refusal.lock().is_some_and(|at| now.duration_since(at) < PRESSURE_MEMORY) {
            return 1.0;
        }
        let queue = self.shared.queue.lock();
        let (target, _) = latency_target(self.shared.slo, queue.jobs.cost().predict(1));
        queue
            .jobs
            .predict(1, usize::MAX, now)
            .map_or(0.0, |(predicted, _)| predicted.as_secs_f64() / target.as_secs_f64())
    }

    /// Counts and words a refusal; `by_deadline` when the request's own
    /// deadline was the tighter bound.
    fn refused(&self, refusal: Refusal, by_deadline: bool, target: Duration) -> Error {
        *self.shared.last_refusal.lock() = Some(Instant::now());
        let Labels { model, version } = &self.shared.labels;
        match refusal {
            Refusal::QueueFull(size) => {
                telemetry::record_shed(model, version, "queue_full");
                // A full queue holds at least a latency target's work.
                Error::overloaded(
                    format!("the queue of model '{model}' version {version} is full ({size} requests)"),
                    target,
                )
            }
            Refusal::Late { predicted, rows_ahead } => {
                let predicted_ms = predicted.as_secs_f64() * 1e3;
                // By then the work queued past the target has run.
                let retry = predicted.saturating_sub(target).max(MIN_RETRY);
                if by_deadline {
                    telemetry::record_shed(model, version, "deadline");
                    Error::overloaded(
                        format!(
                            "model '{model}' version {version} cannot answer before the request's deadline: \
                             predicted {predicted_ms:.1} ms with {rows_ahead} rows queued ahead"
                        ),
                        retry,
                    )
                } else {
                    telemetry::record_shed(model, version, "slo");
                    Error::overloaded(
                        format!(
                            "model '{model}' version {version} cannot answer within its latency target of {:.1} ms: \
                             predicted {predicted_ms:.1} ms with {rows_ahead} rows queued ahead",
                            target.as_secs_f64() * 1e3
                        ),
                        retry,
                    )
                }
            }
        }
    }

    /// The model's latency target and whether its SLO is attainable, from
    /// the cost learnt so far.
    pub fn latency_target(&self) -> (Duration, bool) {
        latency_target(self.shared.slo, self.shared.queue.lock().jobs.cost().predict(1))
    }

    /// What admission adds to its predictions (calibrate.rs), and the
    /// batch size the queue aims for under load (the cost model's efficient
    /// size within the config's hints).
    pub fn admission_figures(&self) -> (Duration, usize) {
        (self.shared.calibration.margin(), self.shared.queue.lock().jobs.batch_size_aimed())
    }

    /// What the capacity answer needs from the queue: the execution time
    /// of 1..=max rows, the instances, the batch size aimed for and the
    /// latency target; None while nothing was learnt.
    pub fn capacity_inputs(&self) -> Option<(Vec<Duration>, usize, usize, Duration)> {
        let queue = self.shared.queue.lock();
        let cost = queue.jobs.cost();
        let max = self.shared.sessions.len().max(1);
        let rows = queue.jobs.max_batch_size().max(1);
        let table: Option<Vec<Duration>> = (1..=rows).map(|r| cost.predict(r)).collect();
        let (target, _) = latency_target(self.shared.slo, cost.predict(1));
        Some((table?, max, queue.jobs.batch_size_aimed(), target))
    }

    /// The predicted execution time per power-of-two batch size class.
    pub fn execution_costs(&self) -> Vec<(usize, Option<Duration>)> {
        let queue = self.shared.queue.lock();
        let cost = queue.jobs.cost();
        cost.classes().into_iter().map(|rows| (rows, cost.predict(rows))).collect()
    }

    /// Closes the queue and answers everything in it UNAVAILABLE with
    /// `reason`; batches already running finish. Returns how many.
    pub fn reject_queued(&self, reason: &str) -> usize {
        let jobs = {
            let mut queue = self.shared.queue.lock();
            queue.closed = true;
            queue.jobs.drain()
        };
        self.shared.metrics.set_queue_depth(0);
        self.shared.wake.notify_all();
        let count = jobs.len();
        for job in jobs {
            let _ = job.reply.send(Err(Error::unavailable(reason, RETIRED_RETRY)));
        }
        count
    }
}

/// Counts a task waiting in `until_idle` while it waits.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Wakes the instances when a waiting request is dropped unanswered.
struct Abandoned<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Abandoned<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.wake.notify_all();
        }
    }
}

impl Shared {
    /// For a version whose batches take microseconds (RUN_HERE_LIMIT, and
    /// so did the latest executions) and that has one client at a time
    /// (`alone`): the batch the policy releases now,
    /// claimed for the calling task to run on an idle instance. None leaves
    /// the queue to the instance threads: under load they run batches back
    /// to back, one hand-off shared by a whole batch.
    fn take_batch_here(
        &self,
        queue: &mut Queue,
        rows: usize,
        now: Instant,
        expired: &mut Vec<Job>,
    ) -> Option<(usize, Vec<Job>)> {
        // Alone in the version, the request is the whole batch.
        let quiet = queue.jobs.alone() && queue.jobs.reliably_quick() && !queue.closed;
        let cost = queue.jobs.cost().predict(rows).filter(|_| quiet)?;
        let index = queue.jobs.idle_instance().filter(|_| cost <= RUN_HERE_LIMIT)?;
        self.publish_on_schedule(queue, now);
        match queue.jobs.next_batch(now, |job| job.reply.is_closed(), expired) {
            Decision::Run(jobs) => {
                let rows = jobs.iter().map(|j| j.rows).sum();
                queue.jobs.started(index, now, rows, jobs.len());
                Some((index, jobs))
            }
            Decision::Idle | Decision::WaitUntil(_) => None,
        }
    }

    /// Refreshes the cost gauges when PUBLISH_EVERY has passed.
    fn publish_on_schedule(&self, queue: &mut Queue, now: Instant) {
        if now >= queue.publish_at {
            queue.publish_at = now + PUBLISH_EVERY;
            self.publish_cost(&queue.jobs);
        }
    }

    /// Exports the cost model's predictions and whether the SLO is
    /// attainable, and moves a version that became heavy to the background.
    fn publish_cost(&self, jobs: &BatchQueue<Job>) {
        let cost = jobs.cost();
        if !self.threads.is_background() && cost.predict(1).is_some_and(|single| single >= BACKGROUND_FROM) {
            self.threads.background();
            tracing::debug!(
                model = %self.labels.model,
                version = %self.labels.version,
                "one execution takes a millisecond or more: the model's threads run at background priority"
            );
        }
        let classes = cost.classes().into_iter().map(|rows| cost.predict(rows));
        let (_, attainable) = latency_target(self.slo, cost.predict(1));
        self.attainable.store(attainable, std::sync::atomic::Ordering::Relaxed);
        self.cost_gauges.set(classes, attainable);
    }

    /// Exports the cost at once when the SLO's attainability changed (the
    /// regular refresh is every second).
    fn publish_if_attainability_changed(&self, jobs: &BatchQueue<Job>) {
        let (_, attainable) = latency_target(self.slo, jobs.cost().predict(1));
        if attainable != self.attainable.load(std::sync::atomic::Ordering::Relaxed) {
            self.publish_cost(jobs);
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_slo_shorter_than_one_execution_aims_at_twice_it() {
        let ms = Duration::from_millis;
        assert_eq!(latency_target(ms(25), Some(ms(5))), (ms(25), true));
        assert_eq!(latency_target(ms(25), None), (ms(25), true), "nothing learnt: the SLO");
        assert_eq!(latency_target(ms(25), Some(ms(40))), (ms(81), false));
    }
}
