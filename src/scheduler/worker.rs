//! The instance thread: waits for the policy to release a batch, answers
//! expired requests, runs the batch on its instance's session and splits
//! the outputs back to each request. A request's task may run a batch the
//! same way itself (`run_here`) when batches take microseconds.

use super::{Job, Shared, batch, policy::Decision};
use crate::error::Error;
use crate::runtime::{RunInput, Session};
use crate::telemetry::trace;
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Worker {
    pub shared: Arc<Shared>,
    /// This instance's place among the version's instances.
    pub index: usize,
}

impl Worker {
    pub fn run(self) {
        let threads = self.shared.threads.clone();
        let _member = threads.enter();
        let mut expired = Vec::new();
        while let Some(jobs) = self.next_batch(&mut expired) {
            answer_expired(expired.drain(..));
            if !jobs.is_empty() {
                let mut session = self.shared.sessions[self.index].lock();
                let session = session.as_mut().expect("a session lives as long as its thread; this is a bug");
                execute(&self.shared, self.index, session, jobs);
            }
        }
        // The version is retired and its queue is empty: free the session,
        // and once every instance has, hand the memory back.
        let session = self.shared.sessions[self.index].lock().take();
        drop(session);
        if self.shared.live_workers.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            crate::runtime::return_freed_memory();
        }
    }

    /// Blocks until a batch may run on this instance; None once the queue
    /// is closed and empty. While a request runs a batch on this instance
    /// itself (`run_here`), the thread waits.
    fn next_batch(&self, expired: &mut Vec<Job>) -> Option<Vec<Job>> {
        let mut queue = self.shared.queue.lock();
        loop {
            let now = Instant::now();
            if !queue.jobs.is_idle(self.index) {
                self.shared.wake.wait(&mut queue);
                continue;
            }
            self.shared.publish_on_schedule(&mut queue, now);
            let decision = queue.jobs.next_batch(now, |job| job.reply.is_closed(), expired);
            let more = !queue.jobs.is_empty();
            self.shared.metrics.set_queue_depth(queue.jobs.len());
            match decision {
                Decision::Run(jobs) => {
                    let rows = jobs.iter().map(|j| j.rows).sum();
                    queue.jobs.started(self.index, now, rows, jobs.len());
                    drop(queue);
                    if more {
                        self.shared.wake.notify_one(); // another idle instance may take the rest
                    }
                    return Some(jobs);
                }
                _ if !expired.is_empty() => return Some(Vec::new()),
                Decision::Idle if queue.closed => return None,
                Decision::Idle => self.shared.wake.wait(&mut queue),
                Decision::WaitUntil(at) => {
                    self.shared.wake.wait_until(&mut queue, at);
                }
            }
        }
    }
}

/// Answers requests whose deadline passed before they could run.
pub(super) fn answer_expired(jobs: impl IntoIterator<Item = Job>) {
    for job in jobs {
        let _ =
            job.reply.send(Err(Error::DeadlineExceeded("the request's deadline passed while it was queued".into())));
    }
}

/// Runs `jobs` on instance `index`, already marked started, on the calling
/// thread: a request's own task, for a version whose batches take a few
/// microseconds, where the hand-off to the instance thread and back costs
/// more than the batch. Wakes an instance thread when more is queued.
pub(super) fn run_here(shared: &Shared, index: usize, jobs: Vec<Job>) {
    let mut session = shared.sessions[index].lock();
    let session = session.as_mut().expect("a session lives while its instance is running; this is a bug");
    // The batch is the model's work, not the worker's (runtime/workers.rs).
    if crate::runtime::outside_period(|| execute(shared, index, session, jobs)) {
        shared.wake.notify_one();
    }
}

/// Runs one batch on `session` (instance `index`) and answers its
/// requests; returns whether requests are still queued.
fn execute(shared: &Shared, index: usize, session: &mut Session, jobs: Vec<Job>) -> bool {
    let started = Instant::now();
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let total: usize = rows.iter().sum();
    for job in &jobs {
        shared.stats.queue.add(started - job.enqueued);
    }
    let first = &jobs[0].inputs;
    let shapes: Vec<Vec<i64>> = first.iter().map(|t| batch::batched_shape(&t.shape, total, shared.batching)).collect();
    let parts: Vec<Vec<&[u8]>> =
        (0..first.len()).map(|i| jobs.iter().map(|j| &j.inputs[i].data[..]).collect()).collect();
    let inputs: Vec<RunInput<'_>> = first
        .iter()
        .zip(&shapes)
        .zip(&parts)
        .map(|((t, shape), parts)| RunInput { name: &t.name, datatype: t.datatype, shape, parts })
        .collect();
    let result = session.run(&inputs);
    let compute = started.elapsed();
    if jobs.iter().any(|j| j.trace.is_some()) {
        record_spans(&jobs, started, started + compute, total);
    }
    let labels = &shared.labels;
    // The instance is free again before the answers go out, so a
    // client that answers back at once finds it idle.
    let ran = result.as_ref().ok().map(|_| (total, compute));
    let (more, idle) = {
        let mut queue = shared.queue.lock();
        queue.jobs.finished(index, ran);
        shared.publish_if_attainability_changed(&queue.jobs);
        (!queue.jobs.is_empty(), queue.jobs.is_empty() && queue.jobs.all_idle())
    };
    if idle && shared.idle_waiters.load(std::sync::atomic::Ordering::Acquire) > 0 {
        shared.idle.notify_waiters(); // a shadow's copy may run now
    }
    let outputs = match result {
        Ok((outputs, times)) => {
            shared.stats.record_execution(total as u64, jobs.len() as u64, times);
            let queued = jobs.iter().map(|j| started - j.enqueued).max().unwrap_or_default();
            shared.metrics.record_execution(queued, compute, total);
            batch::split(outputs, &rows, shared.batching)
        }
        Err(e) => {
            // The line names the first traced request of the batch, if any.
            let _scope = jobs
                .iter()
                .find_map(|j| j.trace.as_ref())
                .map(|c| crate::telemetry::logs::request_scope(c.trace_id(), c.span_id()).entered());
            tracing::warn!(model = %labels.model, version = %labels.version, error = %e, "model execution failed");
            Err(Error::internal(format!("model execution failed: {e}")))
        }
    };
    match outputs {
        Ok(per_job) => {
            for (job, outputs) in jobs.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
    more
}

/// Gives each traced request of a batch its `queue` span (enqueued until
/// this instance took the batch) and a `compute` span covering the whole
/// batch execution, with the batch's size.
fn record_spans(jobs: &[Job], started: Instant, finished: Instant, rows: usize) {
    let clock = trace::WallClock::now();
    let (started, finished) = (clock.at(started), clock.at(finished));
    for job in jobs {
        let Some(parent) = &job.trace else { continue };
        trace::child(parent, "queue", clock.at(job.enqueued), started, Vec::new());
        let attributes = vec![
            KeyValue::new("batch.requests", jobs.len() as i64),
            KeyValue::new("batch.rows", rows as i64),
            KeyValue::new("request.rows", job.rows as i64),
        ];
        trace::child(parent, "compute", started, finished, attributes);
    }
}
