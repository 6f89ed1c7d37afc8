//! The ferroserve binary: parse flags, set up logging, run the server.

use clap::Parser;
use ferroserve::config::Config;
use std::process::ExitCode;

/// mimalloc: the request path allocates many small, short-lived buffers
/// across threads, where it measurably beats glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn,notify=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the tokio runtime");
    match runtime.block_on(ferroserve::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroserve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
