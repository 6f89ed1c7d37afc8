//! Start-up and shutdown of the whole server: ONNX Runtime, metrics, the
//! repository, the three listeners, and the bounded drain on a signal.

use crate::api;
use crate::config::{Config, ControlMode};
use crate::infer::RequestLimits;
use crate::repository::{LoadContext, Repository};
use crate::runtime::{Runtime, locate_library};
use crate::security::{self, Security};
use crate::shutdown;
use crate::storage::{self, Location, Mirror};
use crate::telemetry::slo::SloConfig;
use crate::watch::Watcher;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Everything the fronts share.
pub struct State {
    pub repository: Arc<Repository>,
    pub config: Config,
    /// TLS material and the auth policy, replaced in place by reloads.
    pub security: Arc<Security>,
    /// The bucket mirrors, one per repository on object storage.
    pub mirrors: Vec<Arc<Mirror>>,
}

/// ONNX Runtime, the metrics recorder and the repository, built from
/// `config` with no model loaded and nothing listening: what `run` starts
/// from, and what an in-process driver (benches/instructions.rs) calls.
pub fn prepare(config: &Config) -> anyhow::Result<(Arc<State>, PrometheusHandle)> {
    let library = locate_library(config.onnxruntime_library.as_deref()).map_err(anyhow::Error::msg)?;
    let runtime = Runtime::init(&library)?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    if config.latency_buckets.is_empty() || config.latency_buckets.windows(2).any(|w| w[0] >= w[1]) {
        anyhow::bail!("--latency-buckets must be ascending seconds, got {:?}", config.latency_buckets);
    }
    let metrics = crate::telemetry::install(&config.latency_buckets, config.triton_metrics)?;
    let security = Arc::new(Security::from_config(config)?);
    let (mut roots, mut mirrors) = (Vec::new(), Vec::new());
    for value in &config.model_repository {
        match Location::parse(value)? {
            Location::Local(path) => {
                if !path.is_dir() {
                    anyhow::bail!("the model repository {} is not a directory", path.display());
                }
                roots.push(path);
            }
            Location::Remote(remote) => {
                let folder = storage::cache_folder(&config.repository_cache_dir, &remote.url);
                let mirror = Mirror::new(remote, folder, config.repository_ready_marker.clone())?;
                roots.push(mirror.models());
                mirrors.push(Arc::new(mirror));
            }
        }
    }
    if roots.is_empty() {
        anyhow::bail!("--model-repository names no repository");
    }
    let default_slo = SloConfig {
        latency_threshold: config.slo_latency_seconds,
        latency_objective: config.slo_latency_objective,
        availability_objective: config.slo_availability_objective,
        period: Duration::from_secs(config.slo_period_days * 86_400),
    };
    default_slo.validate(&config.latency_buckets).map_err(|e| anyhow::anyhow!("--slo-*: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let repository = Arc::new(Repository::new(
        roots,
        runtime,
        LoadContext {
            cores,
            max_in_flight: config.max_inflight,
            limits: RequestLimits { max_inputs: config.max_inputs, max_tensor_elements: config.max_tensor_elements },
            adaptive_concurrency: config.adaptive_concurrency,
            slo: default_slo,
            // Read by every load for the life of the process.
            latency_buckets: Vec::leak(config.latency_buckets.clone()),
            slo_admission: config.slo_admission,
        },
        config.strict_readiness,
    ));
    Ok((Arc::new(State { repository, config: config.clone(), security, mirrors }), metrics))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting ferroserve {}", env!("CARGO_PKG_VERSION"));
    let (state, metrics) = prepare(&config)?;
    let repository = state.repository.clone();

    // Bind first, so liveness answers while models load (readiness waits).
    let grpc = bind(config.grpc_address, config.grpc_port, "gRPC").await?;
    let http = bind(config.http_address, config.http_port, "HTTP").await?;
    let metrics_listener = bind(config.metrics_address, config.metrics_port, "metrics").await?;
    println!(
        "ferroserve listening grpc={} http={} metrics={}",
        grpc.local_addr()?,
        http.local_addr()?,
        metrics_listener.local_addr()?
    );

    let (stop_accepting, accept_until) = shutdown::channel();
    let (close_connections, serve_until) = shutdown::channel();
    let phases = shutdown::Phases { accept_until, serve_until };
    let grpc_task = tokio::spawn(api::grpc::serve(grpc, state.clone(), phases.clone()));
    let http_task = tokio::spawn(api::http::serve(http, state.clone(), phases.clone()));
    let limits = api::listen::Limits::from(&config);
    let watch_until = phases.accept_until.clone();
    let reload_until = phases.accept_until.clone();
    let mirror_until = phases.accept_until.clone();
    let metrics_task = tokio::spawn(api::http::serve_metrics(metrics_listener, metrics, state.clone(), limits, phases));
    let reload_every = Duration::from_secs(config.security_reload_secs);
    let reload_task = tokio::spawn(security::reload::run(state.security.clone(), reload_every, reload_until));

    // A repository on object storage: the cache is brought up to date
    // before anything loads (a store out of reach leaves it as it was), then
    // kept so every poll period in poll and explicit modes.
    for mirror in &state.mirrors {
        mirror.initial_sync().await;
    }
    let mirror_tasks: Vec<_> = match config.model_control_mode {
        ControlMode::Poll | ControlMode::Explicit => state
            .mirrors
            .iter()
            .map(|mirror| {
                tokio::spawn(mirror.clone().run(Duration::from_secs(config.repository_poll_secs), mirror_until.clone()))
            })
            .collect(),
        ControlMode::None => Vec::new(),
    };

    // Poll mode: the watch starts (events, baseline fingerprints) before the
    // initial load, so a change made while models load is applied after it;
    // it applies changes from the moment the server is ready until the
    // shutdown signal (accept_until).
    let watcher = match config.model_control_mode {
        ControlMode::Poll => Some(Watcher::start(repository.clone(), &config).await),
        ControlMode::None | ControlMode::Explicit => None,
    };
    load_initial(&repository, &config).await;
    repository.set_ready(true);
    tracing::info!("ready");
    // Burn rates move with time: the SLO gauges are refreshed on a timer.
    let slo_task = tokio::spawn({
        let repository = repository.clone();
        async move {
            let mut every = tokio::time::interval(SLO_REFRESH);
            loop {
                every.tick().await;
                repository.publish_slos();
            }
        }
    });
    // Shadows' metrics and promotions, and the samples capacity answers use.
    let rollout_task = tokio::spawn({
        let repository = repository.clone();
        async move {
            let mut every = tokio::time::interval(ROLLOUT_REFRESH);
            loop {
                every.tick().await;
                repository.tend_shadows();
                // The capacity simulation takes milliseconds: off the workers.
                let sampler = repository.clone();
                let _ = tokio::task::spawn_blocking(move || sampler.sample_capacity()).await;
            }
        }
    });
    let watch_task = watcher.map(|w| tokio::spawn(w.run(watch_until)));

    let signal = shutdown::signal().await;
    let exit_timeout = Duration::from_secs(config.exit_timeout_secs);
    tracing::info!(signal, timeout_secs = config.exit_timeout_secs, "shutting down: draining in-flight requests");
    let deadline = Instant::now() + exit_timeout;
    let grace = (exit_timeout / 4).min(Duration::from_millis(500));
    // 1. Not ready at once, listeners close (new connections are refused),
    //    and new inference requests on open connections are answered
    //    UNAVAILABLE. Open connections stay up: closing them now would race
    //    with requests already on the wire.
    repository.begin_drain();
    //    The repository watch stops too, once the change it may be
    //    applying is done.
    let _ = stop_accepting.send(true);
    // 2. Queued and running requests finish, until shortly before the deadline.
    if !all_answered(&repository, deadline - grace).await {
        // 3. What is still queued is answered UNAVAILABLE, never dropped
        //    silently.
        let rejected = repository.reject_queued("the server is shutting down");
        tracing::warn!(rejected, "exit timeout reached: queued requests answered UNAVAILABLE");
        all_answered(&repository, deadline - grace / 2).await;
    }
    // 4. Connections close: HTTP/2 GOAWAY, HTTP/1 after the response in
    //    progress; the fronts get until the deadline to finish writing.
    let _ = close_connections.send(true);
    let fronts = async {
        let _ = grpc_task.await;
        let _ = http_task.await;
        if let Some(task) = watch_task {
            let _ = task.await;
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), fronts).await;
    metrics_task.abort();
    slo_task.abort();
    rollout_task.abort();
    for task in mirror_tasks {
        task.abort();
    }
    reload_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// How often the SLO gauges are recomputed.
const SLO_REFRESH: Duration = Duration::from_secs(5);

/// How often shadows are tended and capacity samples taken.
const ROLLOUT_REFRESH: Duration = Duration::from_secs(1);

/// Waits until no inference request is inside the server, or `until`;
/// returns whether they all were answered.
async fn all_answered(repository: &Repository, until: Instant) -> bool {
    while repository.in_flight() > 0 {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

async fn bind(address: std::net::IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(address, port);
    TcpListener::bind(addr).await.with_context(|| format!("binding the {what} port {addr}"))
}

/// Loads the models `config` names at start-up (all of them unless explicit
/// mode lists some).
pub async fn load_initial(repository: &Arc<Repository>, config: &Config) {
    let all = match repository.scan() {
        Ok(names) => names,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the model repository");
            return;
        }
    };
    let names: Vec<String> = match config.model_control_mode {
        ControlMode::None | ControlMode::Poll => all,
        ControlMode::Explicit if config.load_model.iter().any(|m| m == "*") => all,
        ControlMode::Explicit => config.load_model.clone(),
    };
    for name in names {
        // Failures are logged and shown in RepositoryIndex; the rest load on.
        let _ = repository.load(&name).await;
    }
}
