//! The ferroserve binary: parse flags, set up logging (and tracing when an
//! OTLP endpoint is configured), run the server, flush spans on exit.

use clap::Parser;
use ferroserve::config::Config;
use ferroserve::telemetry::{logs, trace};
use std::process::ExitCode;

/// mimalloc: the request path allocates many small, short-lived buffers
/// across threads, where it measurably beats glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `ferroserve plan ...` asks a running server for its capacity.
    if std::env::args().nth(1).as_deref() == Some("plan") {
        return match ferroserve::plan::main(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferroserve plan: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = Config::parse();
    // The workers' busy periods give the capacity answer its CPU per request.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(ferroserve::runtime::worker_unparked)
        .on_thread_unpark(ferroserve::runtime::worker_unparked)
        .on_thread_park(ferroserve::runtime::worker_parked)
        .build()
        .expect("building the tokio runtime");
    // The OTLP exporter's channel runs on the runtime: build it inside.
    let provider = match trace::endpoint(config.otlp_endpoint.as_deref()) {
        Some(endpoint) => match runtime.block_on(async { trace::install(&endpoint, config.trace_sample_ratio) }) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("ferroserve: the OTLP exporter for {endpoint}: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // Off, there is no OpenTelemetry layer at all; on, the server's own
    // `tracing` spans are exported beside the request spans.
    let otel = trace::tracer().map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer.clone()));
    logs::install(config.log_format, config.log_level.as_deref(), otel);
    let result = runtime.block_on(ferroserve::server::run(config));
    // Flush the spans still batched, while the runtime still runs the exporter.
    if let Some(provider) = provider
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "flushing trace spans at exit");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroserve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
