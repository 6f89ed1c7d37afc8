//! OpenTelemetry tracing: the OTLP exporter, the request spans and their
//! W3C trace-context parent.
//!
//! Off unless an OTLP endpoint is configured. Off, nothing is built and
//! [`tracer`] is `None`: the request path skips every span after one load.
//! On, each inference request gets a server span `infer` (parent taken from
//! the client's `traceparent`), and the instance thread that runs it adds
//! `queue` and `compute` children from the span context the job carries.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Set once at start-up when tracing is on; read by every request.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer, when an OTLP endpoint is configured.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The endpoint to export to: `--otlp-endpoint` / FERROSERVE_OTLP_ENDPOINT,
/// else the standard OTEL_EXPORTER_OTLP_ENDPOINT; None turns tracing off.
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    choose_endpoint(configured, std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
}

fn choose_endpoint(configured: Option<&str>, standard: Option<String>) -> Option<String> {
    configured.map(str::to_string).or(standard).filter(|e| !e.trim().is_empty())
}

/// Builds the OTLP/gRPC exporter and the tracer provider, and publishes the
/// tracer. Must run inside the tokio runtime (the exporter's channel lives
/// there). The caller shuts the provider down before exit, which flushes.
pub fn install(endpoint: &str, sample_ratio: f64) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Parent-based: an upstream sampling decision in `traceparent` wins;
        // the ratio decides only for requests that arrive without one.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio))))
        .with_resource(Resource::builder().with_service_name(service.unwrap_or_else(|| "ferroserve".into())).build())
        .build();
    let tracer = provider.tracer("ferroserve");
    TRACER.set(tracer).map_err(|_| anyhow::anyhow!("tracing is installed twice; this is a bug"))?;
    Ok(provider)
}

/// The W3C trace-context headers of an incoming request.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Incoming {
    /// The W3C trace-context headers of a request (HTTP, or gRPC metadata).
    pub fn from_headers(headers: &hyper::HeaderMap) -> Incoming {
        let value = |key: &str| headers.get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
        Incoming { traceparent: value("traceparent"), tracestate: value("tracestate") }
    }
}

impl Extractor for Incoming {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The server span of one inference request, from where it enters the
/// server until it is answered.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    /// The version the request asked for ("" for the routing's choice),
    /// named on the span when the request fails.
    version: String,
}

impl RequestSpan {
    /// Starts the `infer` span (None when tracing is off) as a child of the
    /// client's trace context. `protocol` is "grpc" or "http".
    pub fn start(protocol: &'static str, incoming: impl FnOnce() -> Incoming) -> Option<RequestSpan> {
        let tracer = tracer()?;
        let parent = TraceContextPropagator::new().extract(&incoming());
        let span = tracer
            .span_builder("infer")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("protocol", protocol)])
            .start_with_context(tracer, &parent);
        Some(RequestSpan { span, version: String::new() })
    }

    /// Names the decoded request on the span and hands the request the
    /// span's context, so the scheduler's spans hang under it (only when
    /// the trace is sampled: unsampled children would be dropped anyway).
    pub fn attach(&mut self, request: &mut crate::infer::InferRequest) {
        self.span.set_attributes([
            KeyValue::new("model", request.model_name.clone()),
            KeyValue::new("request.id", request.id.clone()),
        ]);
        self.version.clone_from(&request.model_version);
        let context = self.span.span_context();
        request.trace = context.is_sampled().then(|| context.clone());
    }

    /// A `tracing` span for the lines logged while this request runs, which
    /// gives them its trace and span id (telemetry/logs.rs).
    pub fn log_scope(&self) -> tracing::Span {
        let context = self.span.span_context();
        super::logs::request_scope(context.trace_id(), context.span_id())
    }

    /// Ends the span with the outcome code ("ok" or the error's code) and
    /// the version: the one that answered, else the one asked for.
    pub fn finish(mut self, outcome: Result<&crate::infer::InferResponse, &crate::error::Error>) {
        let (code, version) = match outcome {
            Ok(response) => ("ok", response.model_version.clone()),
            Err(e) => {
                self.span.set_status(Status::error(e.to_string()));
                (e.code(), self.version)
            }
        };
        self.span.set_attributes([KeyValue::new("version", version), KeyValue::new("outcome", code)]);
        self.span.end();
    }
}

/// Maps instants of this process's monotonic clock to wall-clock time
/// (what spans carry), from one reading of both clocks.
pub struct WallClock {
    instant: Instant,
    system: SystemTime,
}

impl WallClock {
    pub fn now() -> WallClock {
        WallClock { instant: Instant::now(), system: SystemTime::now() }
    }

    pub fn at(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.system + after,
            None => self.system - self.instant.duration_since(at),
        }
    }
}

/// Records a finished child span of `parent`, from `start` to `end`, on
/// any thread (no current span needed).
pub fn child(parent: &SpanContext, name: &'static str, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>) {
    let Some(tracer) = tracer() else { return };
    let parent = Context::new().with_remote_span_context(parent.clone());
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    span.end_with_timestamp(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_endpoint_wins_over_the_standard_variable() {
        let standard = Some("http://standard:4317".to_string());
        assert_eq!(choose_endpoint(Some("http://ours:4317"), standard.clone()).as_deref(), Some("http://ours:4317"));
        assert_eq!(choose_endpoint(None, standard).as_deref(), Some("http://standard:4317"));
        assert_eq!(choose_endpoint(None, None), None);
        assert_eq!(choose_endpoint(None, Some(" ".into())), None, "an empty variable leaves tracing off");
    }

    #[test]
    fn the_trace_context_headers_are_extracted() {
        let incoming = Incoming {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("vendor=value".into()),
        };
        let context = TraceContextPropagator::new().extract(&incoming);
        let span = context.span();
        let parent = span.span_context();
        assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().get("vendor"), Some("value"));
    }

    #[test]
    fn the_wall_clock_keeps_the_order_of_instants() {
        let clock = WallClock::now();
        let before = clock.instant - std::time::Duration::from_millis(5);
        let after = clock.instant + std::time::Duration::from_millis(5);
        assert!(clock.at(before) < clock.at(clock.instant) && clock.at(clock.instant) < clock.at(after));
        assert_eq!(clock.at(after).duration_since(clock.at(before)).unwrap(), std::time::Duration::from_millis(10));
    }
}
