//! Per model-version execution: a bounded queue shared by N instance
//! threads, each owning one ONNX Runtime session (`Session::run` takes
//! `&mut self`). An idle instance takes the next batch the policy allows
//! (policy.rs), so batches form only when they can run and grow while every
//! instance is busy. The async side only pushes under a short lock and
//! awaits a oneshot; no tokio worker thread ever waits on the model.

pub mod batch;
pub mod policy;
mod worker;

use crate::error::{Error, Result};
use crate::runtime::Session;
use crate::telemetry::{self, VersionMetrics, VersionStats};
use crate::tensor::Tensor;
use opentelemetry::trace::SpanContext;
use parking_lot::{Condvar, Mutex};
use policy::{BatchQueue, Policy};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// One request, validated, with inputs in the model's input order and
/// shaped for the graph.
pub struct Job {
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
    /// Signalled on every push and on close; idle instances wait on it.
    wake: Condvar,
    labels: Labels,
    stats: Arc<VersionStats>,
    metrics: VersionMetrics,
    /// Instance threads still running; the last to exit returns the memory.
    live_workers: std::sync::atomic::AtomicUsize,
}

struct Queue {
    jobs: BatchQueue<Job>,
    closed: bool,
}

/// The handle the request path holds. Dropping it closes the queue: the
/// instances finish what is queued, then exit and drop their sessions.
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Starts one OS thread per session.
    pub fn start(
        labels: Labels,
        sessions: Vec<Session>,
        policy: Policy,
        stats: Arc<VersionStats>,
        metrics: VersionMetrics,
    ) -> Self {
        let batching = policy.max_batch_size > 0;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs: BatchQueue::new(policy), closed: false }),
            wake: Condvar::new(),
            labels: labels.clone(),
            stats,
            metrics,
            live_workers: std::sync::atomic::AtomicUsize::new(sessions.len()),
        });
        for (index, session) in sessions.into_iter().enumerate() {
            let worker = worker::Worker { shared: shared.clone(), session, batching };
            std::thread::Builder::new()
                .name(format!("{}-{}-{index}", labels.model, labels.version))
                .spawn(move || worker.run())
                .expect("spawning an instance thread");
        }
        Scheduler { shared }
    }

    /// Queues `inputs` and waits for the outputs (in the graph's output
    /// order). `group` keys the non-batch shape; `deadline` drops the job
    /// unrun once passed; `trace` is the request's span, when traced.
    /// Refuses at once when the queue is full.
    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        group: u64,
        deadline: Option<Instant>,
        trace: Option<SpanContext>,
    ) -> Result<Vec<Tensor>> {
        let (reply, outputs) = oneshot::channel();
        let now = Instant::now();
        let job = Job { inputs, rows, enqueued: now, reply, trace };
        {
            let mut queue = self.shared.queue.lock();
            if queue.closed {
                return Err(Error::Unavailable("the model version is unloading".into()));
            }
            if let Err((_, full)) = queue.jobs.push(job, rows, group, now, deadline) {
                telemetry::record_shed(&self.shared.labels.model, &self.shared.labels.version, "queue_full");
                return Err(Error::Overloaded(format!(
                    "the queue of model '{}' version {} is full ({} requests)",
                    self.shared.labels.model, self.shared.labels.version, full.0
                )));
            }
            self.shared.metrics.set_queue_depth(queue.jobs.len());
        }
        self.shared.wake.notify_one();
        // If the caller stops waiting (client gone, deadline), wake an
        // instance so the abandoned job leaves the queue now, not at the
        // next decision.
        let abandoned = Abandoned { shared: &self.shared, armed: true };
        let result = outputs.await;
        abandoned.disarm();
        result.map_err(|_| Error::internal("the model instance stopped before answering"))?
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
            let _ = job.reply.send(Err(Error::Unavailable(reason.to_string())));
        }
        count
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

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
    }
}
