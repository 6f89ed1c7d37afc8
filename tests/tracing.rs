//! OpenTelemetry tracing against the real server and an in-test OTLP/gRPC
//! collector: request spans continue the client's W3C trace context, the
//! scheduler's spans hang under them, and nothing is sent when tracing is off.

mod common;
mod grpc_support;

use common::{Server, shipped_models, temp_repository};
use grpc_support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Spans received, with the `service.name` of their resource.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service = string_attribute(&attributes, "service.name").unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Starts the collector on a free port; returns its endpoint.
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (collector, endpoint)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (at most 30 s) until the trace `trace_id` holds an `infer`,
    /// a `queue` and a `compute` span; returns them in that order.
    async fn wait_for_request(&self, trace_id: &[u8]) -> [Span; 3] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Span> =
                self.spans().into_iter().map(|(_, s)| s).filter(|s| s.trace_id == trace_id).collect();
            let find = |name: &str| spans.iter().find(|s| s.name == name).cloned();
            if let (Some(infer), Some(queue), Some(compute)) = (find("infer"), find("queue"), find("compute")) {
                return [infer, queue, compute];
            }
            assert!(Instant::now() < deadline, "the spans of trace {} did not arrive: {spans:?}", hex(trace_id));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|a| a.key == key).and_then(|a| match &a.value {
        Some(AnyValue { value: Some(any_value::Value::StringValue(s)) }) => Some(s.clone()),
        _ => None,
    })
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes.iter().find(|a| a.key == key).and_then(|a| match &a.value {
        Some(AnyValue { value: Some(any_value::Value::IntValue(i)) }) => Some(*i),
        _ => None,
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn traceparent(trace_id: &str, parent: &str) -> String {
    format!("00-{trace_id}-{parent}-01")
}

/// Checks one request's spans: the server span continues the client's
/// trace under its parent, queue and compute are its children.
#[track_caller]
fn check_request(spans: &[Span; 3], trace_id: &str, parent: &str, protocol: &str, id: &str) {
    let [infer, queue, compute] = spans;
    assert_eq!(infer.parent_span_id, unhex(parent), "the server span's parent is the client's span");
    assert_eq!(infer.kind, SpanKind::Server as i32);
    assert_eq!(string_attribute(&infer.attributes, "model").as_deref(), Some("mlp"));
    assert_eq!(string_attribute(&infer.attributes, "version").as_deref(), Some("1"));
    assert_eq!(string_attribute(&infer.attributes, "protocol").as_deref(), Some(protocol));
    assert_eq!(string_attribute(&infer.attributes, "request.id").as_deref(), Some(id));
    assert_eq!(string_attribute(&infer.attributes, "outcome").as_deref(), Some("ok"));
    for child in [queue, compute] {
        assert_eq!(child.trace_id, unhex(trace_id));
        assert_eq!(child.parent_span_id, infer.span_id, "{} is a child of the server span", child.name);
        assert!(child.start_time_unix_nano >= infer.start_time_unix_nano, "{child:?} starts inside {infer:?}");
        assert!(child.end_time_unix_nano <= infer.end_time_unix_nano, "{child:?} ends inside {infer:?}");
    }
    assert!(queue.end_time_unix_nano <= compute.start_time_unix_nano, "queue precedes compute");
    assert!(int_attribute(&compute.attributes, "batch.requests").is_some_and(|n| n >= 1), "{compute:?}");
}

fn with_traceparent<T>(message: T, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", value.parse().unwrap());
    request
}

async fn http_infer(server: &Server, id: &str, traceparent: Option<&str>) {
    let body = serde_json::json!({
        "id": id,
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16], "data": mlp_rows(1, 0.5) }],
    });
    let mut request = reqwest::Client::new().post(server.http_url("/v2/models/mlp/infer")).json(&body);
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// A short export delay, so spans arrive while the test waits.
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "50")];

#[tokio::test]
async fn request_spans_continue_the_callers_trace() {
    let (collector, endpoint) = Collector::start().await;
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start_with_env(repo.path(), &["--otlp-endpoint", &endpoint], &FAST_EXPORT);
    let mut client = server.grpc_client().await;

    let (grpc_trace, grpc_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let request = ferroserve::pb::ModelInferRequest { id: "grpc-1".into(), ..mlp_request(1) };
    client.model_infer(with_traceparent(request, &traceparent(grpc_trace, grpc_parent))).await.unwrap();

    let (stream_trace, stream_parent) = ("1bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7");
    let request = ferroserve::pb::ModelInferRequest { id: "stream-1".into(), ..mlp_request(1) };
    let messages = tokio_stream::iter(vec![request]);
    let mut answers = client
        .model_stream_infer(with_traceparent(messages, &traceparent(stream_trace, stream_parent)))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one streamed answer");
    assert_eq!(answer.error_message, "");

    let (http_trace, http_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    http_infer(&server, "http-1", Some(&traceparent(http_trace, http_parent))).await;

    check_request(&collector.wait_for_request(&unhex(grpc_trace)).await, grpc_trace, grpc_parent, "grpc", "grpc-1");
    let stream = collector.wait_for_request(&unhex(stream_trace)).await;
    check_request(&stream, stream_trace, stream_parent, "grpc", "stream-1");
    check_request(&collector.wait_for_request(&unhex(http_trace)).await, http_trace, http_parent, "http", "http-1");
    let services: Vec<String> = collector.spans().into_iter().map(|(service, _)| service).collect();
    assert!(services.iter().all(|s| s == "ferroserve"), "{services:?}");
}

#[tokio::test]
async fn an_unsampled_caller_is_honoured() {
    let (collector, endpoint) = Collector::start().await;
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start_with_env(repo.path(), &["--otlp-endpoint", &endpoint], &FAST_EXPORT);
    let unsampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    http_infer(&server, "unsampled", Some(unsampled)).await;
    // A sampled request after it: once its spans are in, the unsampled
    // request's would have been too.
    let (trace, parent) = ("6bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    http_infer(&server, "sampled", Some(&traceparent(trace, parent))).await;
    collector.wait_for_request(&unhex(trace)).await;
    let unsampled_trace = unhex("5bf92f3577b34da6a3ce929d0e0e4736");
    assert!(collector.spans().iter().all(|(_, s)| s.trace_id != unsampled_trace));
}

#[tokio::test]
async fn nothing_is_sent_without_an_endpoint() {
    let (collector, endpoint) = Collector::start().await;
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    // Only the per-signal variable, which ferroserve does not read: tracing stays off.
    let env = [FAST_EXPORT[0], ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str())];
    let server = Server::start_with_env(repo.path(), &[], &env);
    let mut client = server.grpc_client().await;
    let request =
        with_traceparent(mlp_request(1), &traceparent("7bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"));
    client.model_infer(request).await.unwrap();
    http_infer(&server, "untraced", Some("00-8bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(server);
    assert!(collector.spans().is_empty(), "spans were exported: {:?}", collector.spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_batched_are_flushed_at_exit() {
    let (collector, endpoint) = Collector::start().await;
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    // An export delay far beyond the test: only the flush at exit sends.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "600000")];
    let server = Server::start_with_env(repo.path(), &["--otlp-endpoint", &endpoint], &env);
    let (trace, parent) = ("9bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    http_infer(&server, "flushed", Some(&traceparent(trace, parent))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(collector.spans().is_empty(), "nothing is exported before the delay");
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let spans = collector.wait_for_request(&unhex(trace)).await;
    check_request(&spans, trace, parent, "http", "flushed");
}
