//! ferroload: a load generator for ferroserve that reads ghz config files and writes ghz's JSON
//! report, over unary gRPC, gRPC streams or HTTP, in a closed loop or an open loop (--rps).

mod config;
mod driver;
mod grpc;
mod http;
mod report;
mod request;
mod schedule;

use anyhow::{Context, Result};
use clap::Parser;
use config::{GhzConfig, Overrides, Protocol, Settings, parse_duration};
use driver::{Run, run_closed, run_open_cloned};
use schedule::{Arrivals, Schedule};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The same allocator as the server, so the client costs the shared cores less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

/// Load generator for ferroserve: reads a ghz config file, writes ghz's JSON report.
/// Targets only this machine (127.0.0.0/8, ::1, localhost).
#[derive(Parser, Debug)]
#[command(name = "ferroload", version)]
struct Cli {
    /// ghz config file (JSON): call, host, data, total, concurrency, rps, duration, ...
    #[arg(long)]
    config: PathBuf,
    /// gRPC host:port (replaces the config's "host").
    #[arg(long)]
    host: Option<String>,
    /// HTTP host:port for --protocol http.
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_host: String,
    /// How to send: unary gRPC, gRPC streams (ModelStreamInfer) or HTTP/JSON. Default: grpc, or
    /// grpc-stream when the config calls ModelStreamInfer.
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// Stop after this many requests (with --duration: whichever comes first).
    #[arg(short = 'n', long)]
    total: Option<u64>,
    /// Stop sending after this long, e.g. 10s, 1m (with --total: whichever comes first).
    #[arg(short = 'z', long, value_parser = parse_duration_arg)]
    duration: Option<Duration>,
    /// Closed loop: number of workers. Open loop: most requests in flight at once.
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Open loop at this many requests per second (0: closed loop).
    #[arg(short = 'r', long)]
    rps: Option<f64>,
    /// gRPC connections (default: one per 16 workers).
    #[arg(long)]
    connections: Option<usize>,
    /// Open loop: evenly spaced arrivals (request i at t0 + i/rps), or a Poisson process
    /// (exponential gaps from --seed).
    #[arg(long, value_enum)]
    arrivals: Option<Arrivals>,
    /// Seed of the Poisson gaps (default 1): the same seed, the same schedule.
    #[arg(long)]
    seed: Option<u64>,
    /// Open loop: from this offset on (e.g. 4s), send at --step-rps instead of --rps.
    #[arg(long, value_parser = parse_duration_arg, requires = "step_rps")]
    step_at: Option<Duration>,
    /// The rate after --step-at.
    #[arg(long, requires = "step_at")]
    step_rps: Option<f64>,
    /// Per-request timeout, also sent as grpc-timeout, e.g. 2s (default: the config's, else 20s).
    #[arg(short = 't', long, value_parser = parse_duration_arg)]
    timeout: Option<Duration>,
    /// Runtime worker threads (default: the config's "cpus", else every core).
    #[arg(long)]
    cpus: Option<usize>,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Leave the per-request "details" array out of the report.
    #[arg(long)]
    no_details: bool,
    /// Print a one-line summary to stderr.
    #[arg(long)]
    summary: bool,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = GhzConfig::load(&cli.config)?;
    if !config.ignored.is_empty() {
        eprintln!(
            "ferroload: warning: ignoring config keys ferroload does not implement: {}",
            config.ignored.join(", ")
        );
    }
    let overrides = Overrides {
        host: cli.host.clone(),
        http_host: Some(cli.http_host.clone()),
        protocol: cli.protocol,
        total: cli.total,
        duration: cli.duration,
        concurrency: cli.concurrency,
        rps: cli.rps,
        connections: cli.connections,
        timeout: cli.timeout,
        cpus: cli.cpus,
        arrivals: cli.arrivals,
        seed: cli.seed,
        step_at: cli.step_at,
        step_rps: cli.step_rps,
    };
    let settings = Settings::resolve(&config, &overrides)?;
    let requests = request::build(&config.data)?;

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(cpus) = settings.cpus {
        runtime.worker_threads(cpus);
    }
    let runtime = runtime.enable_all().build().context("cannot start the async runtime")?;
    let run = runtime.block_on(drive(&settings, requests))?;

    let report = report::Report::new(&run, options(&config, &settings), !cli.no_details);
    if cli.summary {
        let mode = match settings.rps {
            Some(rps) => {
                let step = settings.step.map(|s| format!(" then {} rps from {:?}", s.rps, s.at)).unwrap_or_default();
                let arrivals = match settings.arrivals {
                    Arrivals::Uniform => String::new(),
                    Arrivals::Poisson => format!(" poisson seed {}", settings.seed),
                };
                format!("open loop {rps} rps{step}{arrivals}, at most {} in flight", settings.concurrency)
            }
            None => format!("closed loop c={}", settings.concurrency),
        };
        eprintln!("{}", report.summary(&format!("{} {mode}", settings.protocol.name())));
    }
    let json = serde_json::to_vec_pretty(&report)?;
    match &cli.output {
        Some(path) => std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&json)?;
            stdout.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Connects, then runs the closed or open loop over the chosen protocol.
async fn drive(settings: &Settings, requests: Vec<ferroserve::pb::ModelInferRequest>) -> Result<Run> {
    let open = settings.rps.map(|rps| Schedule {
        rps,
        stop: settings.stop,
        arrivals: settings.arrivals,
        seed: settings.seed,
        step: settings.step,
    });
    let workers = settings.concurrency;
    match settings.protocol {
        Protocol::Http => {
            let prepared = requests.iter().map(http::encode).collect::<Result<Vec<_>>>()?;
            tokio::net::TcpStream::connect(settings.target)
                .await
                .with_context(|| format!("cannot connect to the HTTP server at {}", settings.target))?;
            let caller =
                http::HttpCaller::new(settings.target, prepared, &settings.metadata, settings.timeout, workers)?;
            match open {
                Some(schedule) => run_open_cloned(caller, schedule, workers).await,
                None => Ok(run_closed(vec![caller; workers], settings.stop).await),
            }
        }
        Protocol::Grpc | Protocol::GrpcStream => {
            let clients = grpc::connect(settings.target, settings.connections).await?;
            let shared = Arc::new(grpc::Shared::new(requests, &settings.metadata, settings.timeout)?);
            match (settings.protocol, open) {
                (Protocol::GrpcStream, Some(schedule)) => {
                    grpc::run_stream_open(&clients, &shared, schedule, workers).await
                }
                (Protocol::GrpcStream, None) => {
                    let streams = grpc::StreamWorker::workers(&clients, &shared, workers).await?;
                    Ok(run_closed(streams, settings.stop).await)
                }
                (_, Some(schedule)) => {
                    let caller = grpc::Unary::workers(&clients, &shared, 1).remove(0);
                    run_open_cloned(caller, schedule, workers).await
                }
                (_, None) => Ok(run_closed(grpc::Unary::workers(&clients, &shared, workers), settings.stop).await),
            }
        }
    }
}

/// The report's "options": the config as given, with the values actually used.
fn options(config: &GhzConfig, settings: &Settings) -> Value {
    let mut options = config.raw.clone();
    let nanos = |d: Duration| Value::from(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    options.insert("host".into(), Value::from(settings.target.to_string()));
    options.insert("protocol".into(), Value::from(settings.protocol.name()));
    options.insert("concurrency".into(), Value::from(settings.concurrency));
    options.insert("connections".into(), Value::from(settings.connections));
    options.insert("timeout".into(), nanos(settings.timeout));
    options.remove("qps");
    match settings.rps {
        Some(rps) => options.insert("rps".into(), Value::from(rps)),
        None => options.remove("rps"),
    };
    if settings.rps.is_some() {
        // Not in ghz: how the open loop spaced its requests.
        options.insert("arrivals".into(), Value::from(settings.arrivals.name()));
        if settings.arrivals == Arrivals::Poisson {
            options.insert("seed".into(), Value::from(settings.seed));
        }
    }
    if let Some(step) = settings.step {
        options.insert("step-at".into(), nanos(step.at));
        options.insert("step-rps".into(), Value::from(step.rps));
    }
    match settings.stop.total {
        Some(total) => options.insert("total".into(), Value::from(total)),
        None => options.remove("total"),
    };
    match settings.stop.duration {
        Some(duration) => options.insert("duration".into(), nanos(duration)),
        None => options.remove("duration"),
    };
    options.insert(
        "CPUs".into(),
        Value::from(settings.cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))),
    );
    Value::Object(options)
}
