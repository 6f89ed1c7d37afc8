//! Command-line flags (Triton's names where Triton has the flag), each with
//! an environment variable, logged once at start-up.

pub use crate::telemetry::logs::LogFormat;
use clap::{Parser, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlMode {
    /// Load every model in the repository at start-up; load/unload requests are refused.
    None,
    /// Load only --load-model models at start-up; RepositoryModelLoad/Unload manage the rest.
    Explicit,
    /// Load every model at start-up, then watch the repository and apply
    /// what changes on disk; load/unload requests are refused.
    Poll,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferroserve",
    version,
    about = "Low-latency ONNX inference server (Open Inference Protocol / Triton compatible)"
)]
pub struct Config {
    /// Directory holding <model>/<version>/model.onnx and optional
    /// <model>/config.pbtxt, or a bucket prefix holding the same:
    /// s3://bucket/prefix, gs://bucket/prefix, az://container/prefix.
    /// Repeatable (comma-separated in the variable): a model's name must be
    /// unique across them.
    #[arg(long, env = "FERROSERVE_MODEL_REPOSITORY", default_value = "models", value_delimiter = ',')]
    pub model_repository: Vec<PathBuf>,

    /// Where a repository on object storage is mirrored (one subfolder per
    /// URL); what it holds survives restarts.
    #[arg(long, env = "FERROSERVE_REPOSITORY_CACHE_DIR", default_value = ".ferroserve-cache")]
    pub repository_cache_dir: PathBuf,

    /// Object storage: a version holding an object of this name (e.g.
    /// READY, uploaded last) is downloaded at once, without waiting for its
    /// listing to hold still across two polls.
    #[arg(long, env = "FERROSERVE_REPOSITORY_READY_MARKER")]
    pub repository_ready_marker: Option<String>,

    /// How models get loaded: all at start-up (none), on request (explicit),
    /// or all at start-up and then as the repository changes on disk (poll).
    #[arg(long, env = "FERROSERVE_MODEL_CONTROL_MODE", value_enum, default_value = "none")]
    pub model_control_mode: ControlMode,

    /// Models to load at start-up in explicit mode (repeatable; "*" loads all).
    #[arg(long = "load-model", env = "FERROSERVE_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,

    /// Poll mode: seconds between full rescans of the repository. Changes
    /// are noticed at once through filesystem events; the rescan catches
    /// what events miss (and serves alone where the filesystem sends none).
    #[arg(long, env = "FERROSERVE_REPOSITORY_POLL_SECS", default_value_t = 15, value_parser = positive_u64())]
    pub repository_poll_secs: u64,

    /// Poll mode: listen for filesystem events beside the rescan. Off leaves
    /// the rescan alone (tests; filesystems whose events mislead).
    #[arg(
        long,
        env = "FERROSERVE_WATCH_EVENTS",
        hide = true,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub repository_watch_events: bool,

    /// Address the HTTP/REST front binds.
    #[arg(long, env = "FERROSERVE_HTTP_ADDRESS", default_value = "0.0.0.0")]
    pub http_address: IpAddr,

    /// HTTP/REST port (KServe V2 REST); 0 picks a free port.
    #[arg(long, env = "FERROSERVE_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,

    /// Address the gRPC front binds.
    #[arg(long, env = "FERROSERVE_GRPC_ADDRESS", default_value = "0.0.0.0")]
    pub grpc_address: IpAddr,

    /// gRPC port (inference.GRPCInferenceService, health, reflection); 0 picks a free port.
    #[arg(long, env = "FERROSERVE_GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,

    /// Address the Prometheus /metrics endpoint binds.
    #[arg(long, env = "FERROSERVE_METRICS_ADDRESS", default_value = "0.0.0.0")]
    pub metrics_address: IpAddr,

    /// Prometheus /metrics port; 0 picks a free port.
    #[arg(long, env = "FERROSERVE_METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,

    /// Seconds to finish in-flight requests after SIGTERM/SIGINT before exiting.
    #[arg(long, env = "FERROSERVE_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,

    /// Report the server ready only when every model in the repository is
    /// (Triton's rule). Off by default so one bad model file does not take
    /// every replica out of its load balancer.
    #[arg(long, env = "FERROSERVE_STRICT_READINESS")]
    pub strict_readiness: bool,

    /// Path of libonnxruntime.so; default: .deps/onnxruntime/ (deploy/setup.sh), /usr/local/lib, /usr/lib.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime_library: Option<PathBuf>,

    /// Inference requests the whole server holds at once; more are refused at
    /// once (RESOURCE_EXHAUSTED / 429) so memory stays bounded under overload.
    #[arg(long, env = "FERROSERVE_MAX_INFLIGHT", default_value_t = 8192)]
    pub max_inflight: usize,

    /// Largest gRPC message or HTTP body accepted, in bytes.
    #[arg(long, env = "FERROSERVE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// A compressed HTTP body or gRPC message may inflate to at most this
    /// many times its compressed size (above 4 MiB inflated), beside
    /// --max-message-bytes: a small bomb is refused before it costs much.
    #[arg(long, env = "FERROSERVE_MAX_DECOMPRESSION_RATIO", default_value_t = 100, value_parser = positive_u64())]
    pub max_decompression_ratio: u64,

    /// Most inputs (and most requested outputs) in one inference request.
    #[arg(long, env = "FERROSERVE_MAX_INPUTS", default_value_t = 1024)]
    pub max_inputs: usize,

    /// Most elements in one input tensor (the product of its shape).
    #[arg(long, env = "FERROSERVE_MAX_TENSOR_ELEMENTS", default_value_t = 1 << 26)]
    pub max_tensor_elements: u64,

    /// Turn the adaptive concurrency limit on for every model whose config
    /// does not set the `adaptive_concurrency` parameter.
    #[arg(long, env = "FERROSERVE_ADAPTIVE_CONCURRENCY")]
    pub adaptive_concurrency: bool,

    /// Concurrent HTTP/2 streams per connection on the gRPC and HTTP fronts
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); clients queue the rest.
    #[arg(long, env = "FERROSERVE_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 1024, value_parser = positive_u32())]
    pub http2_max_concurrent_streams: u32,

    /// Largest request head accepted, in bytes: the HTTP/2 header list, and
    /// the HTTP/1 request line and headers (never below 8 KiB); more is
    /// refused (HTTP/1: 431) so one client cannot make the server buffer
    /// headers without bound.
    #[arg(long, env = "FERROSERVE_MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = positive_u32())]
    pub max_header_bytes: u32,

    /// Seconds a client may take to send its request head (HTTP/1; also how
    /// long a keep-alive connection may idle, and how soon a new connection
    /// must send its first bytes) or leave its request body without data
    /// (HTTP: 408), so stalled clients cannot hold connections for ever.
    #[arg(long, env = "FERROSERVE_REQUEST_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = positive_u64())]
    pub request_read_timeout_secs: u64,

    /// Latency SLO threshold in seconds for models whose config does not set
    /// `slo_latency_seconds`; must be a histogram bucket boundary.
    #[arg(long, env = "FERROSERVE_SLO_LATENCY_SECONDS", default_value_t = 0.025)]
    pub slo_latency_seconds: f64,

    /// Refuse at arrival (RESOURCE_EXHAUSTED / 429) a request predicted to
    /// complete after the earlier of its deadline and the model's latency
    /// SLO threshold, from what the model costs per batch size, for models
    /// whose config does not set the `slo_admission` parameter.
    #[arg(
        long,
        env = "FERROSERVE_SLO_ADMISSION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub slo_admission: bool,

    /// Share of requests that must finish within the latency threshold.
    #[arg(long, env = "FERROSERVE_SLO_LATENCY_OBJECTIVE", default_value_t = 0.99)]
    pub slo_latency_objective: f64,

    /// Share of requests the server must not fail (internal, unavailable,
    /// deadline exceeded, overloaded).
    #[arg(long, env = "FERROSERVE_SLO_AVAILABILITY_OBJECTIVE", default_value_t = 0.999)]
    pub slo_availability_objective: f64,

    /// Latency histogram bucket boundaries in seconds, ascending
    /// (request, queue and compute durations); SLO thresholds must be one of them.
    #[arg(long, env = "FERROSERVE_LATENCY_BUCKETS", value_delimiter = ',', default_values_t = crate::telemetry::LATENCY_BUCKETS.to_vec())]
    pub latency_buckets: Vec<f64>,

    /// The error-budget period, in days.
    #[arg(long, env = "FERROSERVE_SLO_PERIOD_DAYS", default_value_t = 30, value_parser = positive_u64())]
    pub slo_period_days: u64,

    /// OTLP/gRPC collector to export trace spans to (e.g.
    /// http://otel-collector:4317). Unset, the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT is used; both unset, tracing is off.
    #[arg(long, env = "FERROSERVE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// TLS certificate chain (PEM) served on every port; with --tls-key
    /// turns TLS on (1.2 and 1.3 only). Reloaded when it changes.
    #[arg(long, env = "FERROSERVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "FERROSERVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to (mTLS):
    /// required on the gRPC and HTTP ports, and on the metrics port unless
    /// --metrics-tls-client-auth optional.
    #[arg(long, env = "FERROSERVE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca: whether the metrics port requires a client
    /// certificate or verifies one only when presented.
    #[arg(long, env = "FERROSERVE_METRICS_TLS_CLIENT_AUTH", value_enum, default_value = "required")]
    pub metrics_tls_client_auth: crate::security::tls::ClientAuth,

    /// Serve the metrics port in plaintext even with TLS on (behind a mesh
    /// that encrypts for it).
    #[arg(long, env = "FERROSERVE_METRICS_PLAINTEXT")]
    pub metrics_plaintext: bool,

    /// API key file: one `ID GROUPS SHA256HEX` line per key. Set, every API
    /// group but health needs `authorization: Bearer <key>` with a key
    /// that has the group. Reloaded when it changes.
    #[arg(long, env = "FERROSERVE_AUTH_KEYS")]
    pub auth_keys: Option<PathBuf>,

    /// With --auth-keys: API groups callers may use without a key, beside
    /// health (comma-separated), e.g. `metadata,model-config,statistics`
    /// for perf_analyzer, which sends its -H headers on inference calls
    /// only.
    #[arg(long, env = "FERROSERVE_AUTH_OPEN_GROUPS")]
    pub auth_open_groups: Option<String>,

    /// Triton's spelling: `<groups>:<header>=<value>` — gRPC calls in those
    /// API groups must carry the header with that value (repeatable).
    #[arg(long, env = "FERROSERVE_GRPC_RESTRICTED_PROTOCOL")]
    pub grpc_restricted_protocol: Vec<String>,

    /// Triton's spelling for the HTTP port, as --grpc-restricted-protocol.
    #[arg(long, env = "FERROSERVE_HTTP_RESTRICTED_API")]
    pub http_restricted_api: Vec<String>,

    /// Seconds between re-reads of the certificate, key, client CA and key
    /// file, beside the reload on a file change and on SIGHUP.
    #[arg(long, env = "FERROSERVE_SECURITY_RELOAD_SECS", default_value_t = 60, value_parser = positive_u64())]
    pub security_reload_secs: u64,

    /// Share of traces started here that are sampled (0.0–1.0); a sampling
    /// decision in the client's `traceparent` wins.
    #[arg(long, env = "FERROSERVE_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = ratio)]
    pub trace_sample_ratio: f64,

    /// Log lines on stderr: `text` (key="value", colour only on a terminal)
    /// or `json` (one object per line, for log collectors).
    #[arg(long, env = "FERROSERVE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// What is logged: a level (error, warn, info, debug, trace) or filter
    /// directives such as `info,ferroserve::audit=warn`. Unset, RUST_LOG
    /// decides, else `info`.
    #[arg(long, env = "FERROSERVE_LOG_LEVEL", value_parser = crate::telemetry::logs::parse_filter)]
    pub log_level: Option<String>,

    /// Export Triton's metric families (`nv_inference_*`) beside ferroserve's,
    /// so dashboards built for Triton keep working.
    #[arg(
        long,
        env = "FERROSERVE_TRITON_METRICS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub triton_metrics: bool,
}

fn ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{value} is not a ratio between 0.0 and 1.0")),
    }
}

fn positive_u32() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

impl Config {
    /// How far a compressed request may inflate (api/inflate.rs).
    pub fn inflate_bounds(&self) -> crate::api::inflate::Bounds {
        crate::api::inflate::Bounds {
            max_bytes: self.max_message_bytes,
            max_ratio: usize::try_from(self.max_decompression_ratio).unwrap_or(usize::MAX),
        }
    }
}

fn positive_u64() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}
