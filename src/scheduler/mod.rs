//! Per model-version execution: a bounded queue and N instance threads, each
//! owning one ONNX Runtime session (`Session::run` takes `&mut self`). The
//! async side only sends and awaits a oneshot; no tokio worker thread ever
//! blocks on the model.

mod worker;

use crate::error::{Error, Result};
use crate::runtime::Session;
use crate::telemetry::VersionStats;
use crate::tensor::Tensor;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// One unit of work: inputs already validated and shaped for the graph.
pub struct Job {
    pub inputs: Vec<Tensor>,
    /// Rows in this request (1 when the model does not batch).
    pub batch_size: u64,
    pub deadline: Option<Instant>,
    enqueued: Instant,
    /// Sender: the instance thread; receiver: the request's task. A closed
    /// receiver means the client went away and the job is skipped.
    reply: oneshot::Sender<Result<Vec<Tensor>>>,
}

/// Labels of the version a scheduler serves, for metrics and logs.
#[derive(Clone)]
pub struct Labels {
    pub model: String,
    pub version: String,
}

/// The handle the request path holds. Dropping it closes the queue: the
/// instance threads finish what is queued, then exit and drop their sessions.
pub struct Scheduler {
    /// Sender: request tasks; receivers: the instance threads.
    queue: async_channel::Sender<Job>,
}

impl Scheduler {
    /// Starts one OS thread per session.
    pub fn start(labels: Labels, sessions: Vec<Session>, queue_size: usize, stats: Arc<VersionStats>) -> Self {
        let (queue, jobs) = async_channel::bounded(queue_size.max(1));
        for (index, session) in sessions.into_iter().enumerate() {
            let worker = worker::Worker { labels: labels.clone(), session, jobs: jobs.clone(), stats: stats.clone() };
            std::thread::Builder::new()
                .name(format!("{}-{}-{index}", labels.model, labels.version))
                .spawn(move || worker.run())
                .expect("spawning an instance thread");
        }
        Scheduler { queue }
    }

    /// Queues `inputs` and waits for the outputs (in the graph's output order).
    pub async fn submit(&self, inputs: Vec<Tensor>, batch_size: u64, deadline: Option<Instant>) -> Result<Vec<Tensor>> {
        let (reply, outputs) = oneshot::channel();
        let job = Job { inputs, batch_size, deadline, enqueued: Instant::now(), reply };
        self.queue.send(job).await.map_err(|_| Error::Unavailable("the model version is unloading".into()))?;
        outputs.await.map_err(|_| Error::internal("the model instance stopped before answering"))?
    }

    /// Jobs waiting for an instance.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.queue.close();
    }
}
