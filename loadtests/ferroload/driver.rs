//! Closed-loop and open-loop runs, generic over how one request is sent (`Call`).

use crate::config::Stop;
use crate::schedule::{Budget, Schedule, Tick, start_ticker};
use anyhow::Result;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How one request ended: a gRPC status code name ("OK", "Unavailable", …) and the error text.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: &'static str,
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok() -> Self {
        Outcome { status: "OK", error: None }
    }

    pub fn failed(status: &'static str, error: impl Into<String>) -> Self {
        Outcome { status, error: Some(error.into()) }
    }
}

/// One finished request. `start` is when it was sent (closed loop) or due (open loop), from the
/// start of the run; `latency` runs from that instant to the answer.
#[derive(Clone, Debug)]
pub struct Sample {
    pub start: Duration,
    pub latency: Duration,
    /// Open loop: how late the request went out after it was due (so
    /// `latency - lateness` is the server's part); None where not measured.
    pub lateness: Option<Duration>,
    pub outcome: Outcome,
}

/// Everything a run measured.
pub struct Run {
    /// Wall-clock time of the run's start.
    pub started: SystemTime,
    /// From the start until the last answer.
    pub total: Duration,
    pub samples: Vec<Sample>,
}

/// Collects samples from every task of a run.
#[derive(Clone)]
pub struct Recorder {
    t0: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Recorder {
    pub fn new(t0: Instant, capacity: u64) -> Self {
        let capacity = usize::try_from(capacity.min(10_000_000)).unwrap_or(0);
        Recorder { t0, samples: Arc::new(Mutex::new(Vec::with_capacity(capacity))) }
    }

    /// Records a request that started (or was due) at `start` and has just ended.
    pub fn record(&self, start: Instant, outcome: Outcome) {
        self.push(start, None, outcome);
    }

    /// Records a request that was due at `due` and went out at `sent`.
    pub fn record_sent(&self, due: Instant, sent: Instant, outcome: Outcome) {
        self.push(due, Some(sent.saturating_duration_since(due)), outcome);
    }

    fn push(&self, start: Instant, lateness: Option<Duration>, outcome: Outcome) {
        let now = Instant::now();
        let start_offset = start.saturating_duration_since(self.t0);
        self.samples.lock().push(Sample { start: start_offset, latency: now - start, lateness, outcome });
    }

    fn finish(self) -> Run {
        let total = self.t0.elapsed();
        let started = SystemTime::now() - total;
        let samples = std::mem::take(&mut *self.samples.lock());
        Run { started, total, samples }
    }
}

/// Sends one request: `index` picks the data object (index % number of objects).
pub trait Call: Send + 'static {
    fn call(&mut self, index: u64) -> impl Future<Output = Outcome> + Send;
}

/// Closed loop: each worker sends its next request as soon as its previous one is answered.
pub async fn run_closed<C: Call>(workers: Vec<C>, stop: Stop) -> Run {
    let t0 = Instant::now();
    let budget = Arc::new(Budget::new(stop, t0));
    let recorder = Recorder::new(t0, stop.total.unwrap_or(0));
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let (budget, recorder) = (budget.clone(), recorder.clone());
            tokio::spawn(async move {
                while let Some(index) = budget.claim() {
                    let start = Instant::now();
                    let outcome = worker.call(index).await;
                    recorder.record(start, outcome);
                }
            })
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            eprintln!("ferroload: a worker failed: {e}");
        }
    }
    recorder.finish()
}

/// Open loop: requests are released on the schedule whatever the answers, with at most
/// `max_in_flight` outstanding. A request waiting for a free slot is already late, and its latency
/// counts from when it was due, so queueing shows in the numbers (no coordinated omission).
/// `dispatch` sends one request and must drop the permit once it is answered.
pub async fn run_open<D>(schedule: Schedule, max_in_flight: usize, mut dispatch: D) -> Result<Run>
where
    D: FnMut(Tick, OwnedSemaphorePermit, &Recorder),
{
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let (t0, mut ticks) = start_ticker(schedule)?;
    let recorder = Recorder::new(t0, schedule.expected());
    while let Some(tick) = ticks.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        dispatch(tick, permit, &recorder);
    }
    // Every slot back means every request has been answered.
    let _all = slots.acquire_many(max_in_flight as u32).await;
    drop(dispatch);
    Ok(recorder.finish())
}

/// Open loop for callers that can be cloned per request (unary gRPC, HTTP).
pub async fn run_open_cloned<C: Call + Clone>(caller: C, schedule: Schedule, max_in_flight: usize) -> Result<Run> {
    run_open(schedule, max_in_flight, |tick, permit, recorder| {
        let (mut caller, recorder) = (caller.clone(), recorder.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = caller.call(tick.index).await;
            recorder.record_sent(tick.due, sent, outcome);
            drop(permit);
        });
    })
    .await
}

/// An error and its chain of causes, "outer: inner: innermost" (transport
/// errors hide whether a request was ever sent in their causes).
pub fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers after a fixed service time, one request at a time.
    #[derive(Clone)]
    struct Slow(Arc<tokio::sync::Mutex<()>>, Duration);

    impl Call for Slow {
        fn call(&mut self, _index: u64) -> impl Future<Output = Outcome> + Send {
            let (lock, service) = (self.0.clone(), self.1);
            async move {
                let _one_at_a_time = lock.lock().await;
                tokio::time::sleep(service).await;
                Outcome::ok()
            }
        }
    }

    fn slow(service_ms: u64) -> Slow {
        Slow(Arc::new(tokio::sync::Mutex::new(())), Duration::from_millis(service_ms))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_latency_counts_from_the_scheduled_time() {
        // 20 requests due every 2 ms against a server that needs 10 ms each: a closed loop would
        // see 10 ms every time; the open loop must see the queue grow by ~8 ms per request.
        let schedule = Schedule::uniform(500.0, Stop { total: Some(20), duration: None });
        let run = run_open_cloned(slow(10), schedule, 64).await.unwrap();
        let mut samples = run.samples;
        assert_eq!(samples.len(), 20);
        samples.sort_by_key(|s| s.start);
        for (sample, due) in samples.iter().zip(schedule.times()) {
            assert_eq!(sample.start, due, "start is the scheduled time");
        }
        // The tasks may take the server's lock in any order, so compare answers in the order they
        // came: the k-th answer needs k + 1 services of 10 ms, and its latency counted from its
        // scheduled time must reach that far. Latency counted from anything later falls short.
        let mut answered: Vec<Duration> = samples.iter().map(|s| s.start + s.latency).collect();
        answered.sort();
        for (k, at) in answered.iter().enumerate() {
            let floor = Duration::from_millis(10 * (k as u64 + 1));
            assert!(*at >= floor, "answer {k} at {at:?} < {floor:?}");
        }
        let longest = samples.iter().map(|s| s.latency).max().unwrap();
        assert!(longest >= Duration::from_millis(200 - 2 * 19), "the queue grew: {longest:?}");
        assert!(run.total >= Duration::from_millis(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_a_free_slot_counts_as_latency() {
        // One slot: later requests wait on the client side, and that wait is in their latency.
        let schedule = Schedule::uniform(1000.0, Stop { total: Some(5), duration: None });
        let run = run_open_cloned(slow(5), schedule, 1).await.unwrap();
        let worst = run.samples.iter().map(|s| s.latency).max().unwrap();
        assert!(worst >= Duration::from_millis(5 * 5 - 4), "{worst:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_measures_from_the_send() {
        let run = run_closed(vec![slow(3)], Stop { total: Some(5), duration: None }).await;
        assert_eq!(run.samples.len(), 5);
        for sample in &run.samples {
            assert!(sample.latency >= Duration::from_millis(3) && sample.latency < Duration::from_secs(5));
        }
        let timed =
            run_closed(vec![slow(1), slow(1)], Stop { total: None, duration: Some(Duration::from_millis(300)) });
        let timed = timed.await;
        assert!(!timed.samples.is_empty() && timed.total < Duration::from_secs(5));
    }
}
