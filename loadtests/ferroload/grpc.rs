//! gRPC transport: tonic channels (one HTTP/2 connection each, TCP_NODELAY), unary ModelInfer
//! callers, and ModelStreamInfer streams for the closed and the open loop.

use crate::driver::{Call, Outcome, Recorder, Run, run_open, with_sources};
use crate::schedule::{Schedule, Tick};
use anyhow::{Context, Result};
use ferroserve::pb;
use ferroserve::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

type Client = GrpcInferenceServiceClient<Channel>;

/// What every gRPC caller shares: the requests to cycle through, metadata and the per-call timeout.
pub struct Shared {
    pub requests: Vec<pb::ModelInferRequest>,
    pub metadata: MetadataMap,
    pub timeout: Duration,
}

impl Shared {
    pub fn new(requests: Vec<pb::ModelInferRequest>, metadata: &[(String, String)], timeout: Duration) -> Result<Self> {
        let mut map = MetadataMap::new();
        for (key, value) in metadata {
            let name = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("metadata key '{key}' is not a valid gRPC header name"))?;
            let value = MetadataValue::try_from(value.as_str())
                .with_context(|| format!("metadata value of '{key}' is not a valid header value"))?;
            map.insert(name, value);
        }
        Ok(Shared { requests, metadata: map, timeout })
    }

    fn message(&self, index: u64) -> pb::ModelInferRequest {
        self.requests[(index % self.requests.len() as u64) as usize].clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        request
    }
}

/// Opens `connections` HTTP/2 connections to `addr`.
pub async fn connect(addr: SocketAddr, connections: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            // Windows large enough that many in-flight requests never stall
            // on HTTP/2 flow control (the default is 64 KiB).
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gRPC server at {addr}"))?;
        clients.push(Client::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX));
    }
    Ok(clients)
}

/// ghz's name for a status code (Go's codes.Code.String()).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A failed call, worded as grpc-go (and so ghz) words it.
fn failure(status: &Status) -> Outcome {
    let name = code_name(status.code());
    let cause = std::error::Error::source(status).map(|e| format!(" ({})", with_sources(e))).unwrap_or_default();
    Outcome::failed(name, format!("rpc error: code = {name} desc = {}{cause}", status.message()))
}

fn deadline_exceeded() -> Outcome {
    Outcome::failed("DeadlineExceeded", "rpc error: code = DeadlineExceeded desc = context deadline exceeded")
}

/// tonic's own enforcement of the grpc-timeout it sends reads CANCELLED; grpc-go (and ghz) say
/// DEADLINE_EXCEEDED.
fn timed_out(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string()
}

fn stream_closed() -> Outcome {
    Outcome::failed("Unavailable", "rpc error: code = Unavailable desc = the server closed the stream")
}

/// A stream answer: OK, or the request's error from `error_message` (which carries no code).
fn stream_outcome(response: &pb::ModelStreamInferResponse) -> Outcome {
    if response.error_message.is_empty() {
        Outcome::ok()
    } else {
        Outcome::failed("Unknown", format!("stream error: {}", response.error_message))
    }
}

/// Unary ModelInfer; cheap to clone (the channel is shared).
#[derive(Clone)]
pub struct Unary {
    client: Client,
    shared: Arc<Shared>,
}

impl Unary {
    /// One caller per worker, spread over the connections.
    pub fn workers(clients: &[Client], shared: &Arc<Shared>, count: usize) -> Vec<Unary> {
        (0..count).map(|i| Unary { client: clients[i % clients.len()].clone(), shared: shared.clone() }).collect()
    }
}

impl Call for Unary {
    fn call(&mut self, index: u64) -> impl Future<Output = Outcome> + Send {
        let mut request = self.shared.request(self.shared.message(index));
        request.set_timeout(self.shared.timeout);
        let mut client = self.client.clone();
        let limit = self.shared.timeout;
        async move {
            match timeout(limit, client.model_infer(request)).await {
                Ok(Ok(_)) => Outcome::ok(),
                Ok(Err(status)) if timed_out(&status) => deadline_exceeded(),
                Ok(Err(status)) => failure(&status),
                Err(_) => deadline_exceeded(),
            }
        }
    }
}

/// One open ModelStreamInfer stream.
struct Stream {
    requests: mpsc::UnboundedSender<pb::ModelInferRequest>,
    responses: tonic::Streaming<pb::ModelStreamInferResponse>,
}

async fn open_stream(client: &Client, shared: &Shared) -> Result<Stream, Status> {
    let (tx, rx) = mpsc::unbounded_channel();
    let response = client.clone().model_stream_infer(shared.request(UnboundedReceiverStream::new(rx))).await?;
    Ok(Stream { requests: tx, responses: response.into_inner() })
}

/// Closed loop over ModelStreamInfer: a worker keeps one stream and sends its next request when
/// the previous answer arrives. A broken or timed-out stream is reopened for the next request.
pub struct StreamWorker {
    client: Client,
    shared: Arc<Shared>,
    stream: Option<Stream>,
}

impl StreamWorker {
    /// Opens one stream per worker before the clock starts.
    pub async fn workers(clients: &[Client], shared: &Arc<Shared>, count: usize) -> Result<Vec<StreamWorker>> {
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            let client = clients[i % clients.len()].clone();
            let stream = open_stream(&client, shared).await.context("cannot open a ModelStreamInfer stream")?;
            workers.push(StreamWorker { client, shared: shared.clone(), stream: Some(stream) });
        }
        Ok(workers)
    }

    async fn exchange(&mut self, index: u64) -> Outcome {
        if self.stream.is_none() {
            match open_stream(&self.client, &self.shared).await {
                Ok(stream) => self.stream = Some(stream),
                Err(status) => return failure(&status),
            }
        }
        let Some(stream) = self.stream.as_mut() else { return stream_closed() };
        if stream.requests.send(self.shared.message(index)).is_err() {
            self.stream = None;
            return stream_closed();
        }
        let outcome = match timeout(self.shared.timeout, stream.responses.message()).await {
            Ok(Ok(Some(response))) => return stream_outcome(&response),
            Ok(Ok(None)) => stream_closed(),
            Ok(Err(status)) => failure(&status),
            // A late answer would be taken for the next request's: start a new stream.
            Err(_) => deadline_exceeded(),
        };
        self.stream = None;
        outcome
    }
}

impl Call for StreamWorker {
    fn call(&mut self, index: u64) -> impl Future<Output = Outcome> + Send {
        self.exchange(index)
    }
}

/// Open loop over ModelStreamInfer: requests go out on schedule, round-robin over one stream per
/// connection, many in flight per stream; the server answers a stream in order, so each answer
/// belongs to the oldest request still pending on that stream.
pub async fn run_stream_open(
    clients: &[Client],
    shared: &Arc<Shared>,
    schedule: Schedule,
    max_in_flight: usize,
) -> Result<Run> {
    let mut streams = Vec::with_capacity(clients.len());
    for client in clients {
        streams.push(open_stream(client, shared).await.context("cannot open a ModelStreamInfer stream")?);
    }
    let mut lanes: Vec<Option<mpsc::UnboundedSender<(Tick, OwnedSemaphorePermit)>>> = Vec::new();
    let mut handles = Vec::new();
    let mut next = 0usize;
    let run = run_open(schedule, max_in_flight, |tick, permit, recorder| {
        if lanes.is_empty() {
            // Lanes start inside the run so that they record against its clock.
            for (client, stream) in clients.iter().zip(streams.drain(..)) {
                let (tx, rx) = mpsc::unbounded_channel();
                let lane = Lane { client: client.clone(), shared: shared.clone(), recorder: recorder.clone() };
                handles.push(tokio::spawn(lane.run(stream, rx)));
                lanes.push(Some(tx));
            }
        }
        if let Some(Some(lane)) = lanes.get(next % lanes.len()) {
            // A lane only ends when its sender is dropped, so this send cannot fail.
            let _ = lane.send((tick, permit));
        }
        next += 1;
    })
    .await?;
    drop(lanes);
    for handle in handles {
        let _ = handle.await;
    }
    Ok(run)
}

/// One stream of the open loop and the requests pending on it, oldest first.
struct Lane {
    client: Client,
    shared: Arc<Shared>,
    recorder: Recorder,
}

impl Lane {
    async fn run(self, first: Stream, mut jobs: mpsc::UnboundedReceiver<(Tick, OwnedSemaphorePermit)>) {
        let mut stream = Some(first);
        let mut pending: VecDeque<(Tick, OwnedSemaphorePermit)> = VecDeque::new();
        let mut jobs_open = true;
        while jobs_open || !pending.is_empty() {
            let oldest_deadline = pending.front().map(|(tick, _)| Instant::from_std(tick.due) + self.shared.timeout);
            tokio::select! {
                job = jobs.recv(), if jobs_open => match job {
                    Some(job) => self.send(&mut stream, &mut pending, job).await,
                    None => jobs_open = false,
                },
                answer = next_answer(&mut stream), if !pending.is_empty() => match answer {
                    Ok(Some(response)) => {
                        if let Some((tick, permit)) = pending.pop_front() {
                            self.recorder.record(tick.due, stream_outcome(&response));
                            drop(permit);
                        }
                    }
                    Ok(None) => self.fail_all(&mut stream, &mut pending, stream_closed()),
                    Err(status) => self.fail_all(&mut stream, &mut pending, failure(&status)),
                },
                _ = sleep_until(oldest_deadline.unwrap_or_else(Instant::now)), if oldest_deadline.is_some() => {
                    self.fail_all(&mut stream, &mut pending, deadline_exceeded());
                }
            }
        }
    }

    async fn send(
        &self,
        stream: &mut Option<Stream>,
        pending: &mut VecDeque<(Tick, OwnedSemaphorePermit)>,
        (tick, permit): (Tick, OwnedSemaphorePermit),
    ) {
        if stream.is_none() {
            match open_stream(&self.client, &self.shared).await {
                Ok(opened) => *stream = Some(opened),
                Err(status) => return self.recorder.record(tick.due, failure(&status)),
            }
        }
        let sent = stream.as_ref().is_some_and(|s| s.requests.send(self.shared.message(tick.index)).is_ok());
        if sent {
            pending.push_back((tick, permit));
        } else {
            pending.push_back((tick, permit));
            self.fail_all(stream, pending, stream_closed());
        }
    }

    /// Ends every pending request with `outcome` and drops the stream (it is reopened on demand).
    fn fail_all(
        &self,
        stream: &mut Option<Stream>,
        pending: &mut VecDeque<(Tick, OwnedSemaphorePermit)>,
        outcome: Outcome,
    ) {
        *stream = None;
        for (tick, permit) in pending.drain(..) {
            self.recorder.record(tick.due, outcome.clone());
            drop(permit);
        }
    }
}

/// The next answer on `stream`; never resolves when there is no stream.
async fn next_answer(stream: &mut Option<Stream>) -> Result<Option<pb::ModelStreamInferResponse>, Status> {
    match stream {
        Some(stream) => stream.responses.message().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_grpc_go() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::ResourceExhausted), "ResourceExhausted");
        let outcome = failure(&Status::unavailable("not ready"));
        assert_eq!(outcome.status, "Unavailable");
        assert_eq!(outcome.error.as_deref(), Some("rpc error: code = Unavailable desc = not ready"));
        assert!(timed_out(&Status::from_error(Box::new(tonic::TimeoutExpired(())))));
        assert!(!timed_out(&Status::cancelled("client went away")));
    }

    #[test]
    fn metadata_must_be_valid_headers() {
        let good = Shared::new(Vec::new(), &[("X-Tenant".into(), "a".into())], Duration::from_secs(1)).unwrap();
        assert_eq!(good.metadata.get("x-tenant").unwrap(), "a");
        assert!(Shared::new(Vec::new(), &[("bad key".into(), "a".into())], Duration::from_secs(1)).is_err());
    }
}
