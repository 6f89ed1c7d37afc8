//! The instance thread: takes jobs off the queue, drops the dead (client gone,
//! deadline passed) and runs the rest on its own session.

use super::{Job, Labels};
use crate::error::Error;
use crate::runtime::{RunInput, Session};
use crate::telemetry::{self, VersionStats};
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Worker {
    pub labels: Labels,
    pub session: Session,
    /// Receiver shared by the instances of one version.
    pub jobs: async_channel::Receiver<Job>,
    pub stats: Arc<VersionStats>,
}

impl Worker {
    pub fn run(mut self) {
        while let Ok(job) = self.jobs.recv_blocking() {
            if job.reply.is_closed() {
                continue; // the client went away: never computed
            }
            let started = Instant::now();
            let queued = started - job.enqueued;
            if job.deadline.is_some_and(|d| d <= started) {
                let _ = job
                    .reply
                    .send(Err(Error::DeadlineExceeded("the request's deadline passed while it was queued".into())));
                continue;
            }
            self.stats.queue.add(queued);
            let inputs: Vec<RunInput<'_>> = job
                .inputs
                .iter()
                .map(|t| RunInput { name: &t.name, datatype: t.datatype, shape: &t.shape, data: &t.data })
                .collect();
            let result = self.session.run(&inputs);
            let compute = started.elapsed();
            let reply = match result {
                Ok((outputs, times)) => {
                    self.stats.record_execution(job.batch_size, times);
                    telemetry::record_execution(&self.labels.model, &self.labels.version, queued, compute);
                    Ok(outputs)
                }
                Err(e) => {
                    tracing::warn!(model = %self.labels.model, version = %self.labels.version, error = %e, "model execution failed");
                    Err(Error::internal(format!("model execution failed: {e}")))
                }
            };
            let _ = job.reply.send(reply);
        }
    }
}
