//! One loaded model version: its completed config, its I/O contract, its
//! scheduler and statistics. Validates requests against the contract and
//! shapes outputs back for the client.

use super::config::{self, IoSpec, ModelIo};
use super::queueing::Queueing;
use super::warmup;
use crate::admission::breaker::BreakerConfig;
use crate::admission::limiter::LimitConfig;
use crate::admission::{BreakerTicket, VersionAdmission, VersionBreaker};
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse, RequestLimits};
use crate::pb;
use crate::runtime::{ModelThreads, Runtime, SessionOptions};
use crate::scheduler::{Labels, Placement, Scheduler};
use crate::telemetry::slo::SloConfig;
use crate::telemetry::{VersionMetrics, VersionStats};
use crate::tensor::{Tensor, shape_matches};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an `attempt` ended: answered (well or not), or refused by the
/// version's open circuit breaker with the request handed back.
pub enum Attempt {
    Done(Result<InferResponse>),
    Broken(InferRequest, Error),
}

pub struct ModelVersion {
    pub name: String,
    pub version: i64,
    /// `version` as clients spell it.
    pub label: String,
    /// The config as completed against the graph (what ModelConfig returns).
    pub config: pb::ModelConfig,
    pub io: ModelIo,
    pub stats: Arc<VersionStats>,
    pub metrics: VersionMetrics,
    /// Refuses calls while the model keeps failing.
    breaker: VersionBreaker,
    /// The adaptive concurrency limit, when the config turns it on.
    admission: Option<Arc<VersionAdmission>>,
    scheduler: Scheduler,
    queueing: Queueing,
    /// The deadline of a request that brings none (`request_timeout_ms`).
    request_timeout: Option<Duration>,
    limits: RequestLimits,
    /// Loaded as a model's shadow: its threads run at SCHED_IDLE.
    pub shadow: bool,
    /// ONNX Runtime's intra-op threads per instance.
    pub intra_op_threads: usize,
    /// Its load as the server's timer samples it (capacity.rs).
    pub load: parking_lot::Mutex<super::capacity::LoadSample>,
    /// Its key in the workers' busy periods (runtime/workers.rs).
    pub busy_key: u32,
}

impl Drop for ModelVersion {
    fn drop(&mut self) {
        crate::runtime::forget_busy_periods(self.busy_key);
    }
}

/// The breaker settings: defaults, overridden by `breaker_*` parameters.
fn breaker_config(config: &pb::ModelConfig) -> BreakerConfig {
    let defaults = BreakerConfig::default();
    let millis = |key| config::parameter(config, key).map(|ms| Duration::from_millis(ms as u64));
    let count = |key, default: usize| config::parameter(config, key).map_or(default, |n| n.max(1));
    let window = count("breaker_window", defaults.window);
    BreakerConfig {
        consecutive_failures: count("breaker_consecutive_failures", defaults.consecutive_failures as usize) as u32,
        window,
        min_calls: count("breaker_min_calls", defaults.min_calls).min(window),
        rate_threshold: config::parameter(config, "breaker_rate_percent")
            .map_or(defaults.rate_threshold, |p| p.clamp(1, 100) as f64 / 100.0),
        slow_call: millis("breaker_slow_call_ms").or(defaults.slow_call),
        open_for: millis("breaker_open_ms").unwrap_or(defaults.open_for),
        probes: count("breaker_probes", defaults.probes as usize) as u32,
    }
}

/// The adaptive limit's bounds: defaults, overridden by
/// `adaptive_concurrency_min` / `_max`; None when the limit is off (the
/// `adaptive_concurrency` parameter, else the server's default). The default
/// floor is two full batches per instance (one running, one forming), so
/// the limit never starves batching or leaves an instance idle.
fn limit_config(config: &pb::ModelConfig, server_default: bool) -> Option<LimitConfig> {
    let on = config::parameter(config, "adaptive_concurrency").map_or(server_default, |v| v != 0);
    let defaults = LimitConfig::default();
    let full_batches = (2 * config::instance_count(config) * config.max_batch_size.max(1) as usize) as u32;
    let min = config::parameter(config, "adaptive_concurrency_min")
        .map_or(defaults.min.max(full_batches), |n| n.max(1) as u32);
    let max = config::parameter(config, "adaptive_concurrency_max").map_or(defaults.max, |n| n as u32).max(min);
    // It starts at the floor and grows while traffic uses it at low latency.
    on.then_some(LimitConfig { initial: min, min, max })
}

/// Server-wide facts that shape how a version is loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadContext {
    /// CPU cores available to the server.
    pub cores: usize,
    /// The server-wide cap on inference requests in flight (--max-inflight).
    pub max_in_flight: usize,
    /// Bounds on one request's inputs (--max-inputs, --max-tensor-elements).
    pub limits: RequestLimits,
    /// The adaptive concurrency limit for models whose config does not say
    /// (--adaptive-concurrency).
    pub adaptive_concurrency: bool,
    /// The SLOs of models whose config sets none (--slo-*).
    pub slo: SloConfig,
    /// The latency histogram's bucket boundaries (--latency-buckets).
    pub latency_buckets: &'static [f64],
    /// Refuse requests predicted to miss their latency target, for models
    /// whose config does not set `slo_admission` (--slo-admission).
    pub slo_admission: bool,
}

/// A model's SLOs: its `slo_*` parameters over the server's defaults, and
/// whether they are valid (when not, the defaults apply).
pub fn slo_settings(config: &pb::ModelConfig, context: &LoadContext) -> (SloConfig, Result<(), String>) {
    let defaults = context.slo;
    let wanted = SloConfig {
        latency_threshold: config::decimal_parameter(config, "slo_latency_seconds")
            .unwrap_or(defaults.latency_threshold),
        latency_objective: config::decimal_parameter(config, "slo_latency_objective")
            .unwrap_or(defaults.latency_objective),
        availability_objective: config::decimal_parameter(config, "slo_availability_objective")
            .unwrap_or(defaults.availability_objective),
        ..defaults
    };
    let checked = wanted.validate(context.latency_buckets);
    (if checked.is_ok() { wanted } else { defaults }, checked)
}

impl ModelVersion {
    /// Loads `<model_dir>/<version>/<file>`, completes `config` against it,
    /// creates every instance, warms each up. A `shadow` version's threads
    /// then move to SCHED_IDLE for good (repository/shadow.rs). Blocking:
    /// run off the async runtime.
    pub fn load(
        runtime: &Runtime,
        model_dir: &Path,
        version: i64,
        mut config: pb::ModelConfig,
        explicit_config: bool,
        context: LoadContext,
        shadow: bool,
    ) -> Result<ModelVersion, String> {
        let name = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let filename = if config.default_model_filename.is_empty() {
            "model.onnx".to_string()
        } else {
            config.default_model_filename.clone()
        };
        let path = model_dir.join(version.to_string()).join(&filename);
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        let instances = config::instance_count(&config);
        let intra =
            config::parameter(&config, "intra_op_thread_count").unwrap_or_else(|| (context.cores / instances).max(1));
        let options = SessionOptions {
            intra_op_threads: intra,
            inter_op_threads: config::parameter(&config, "inter_op_thread_count").unwrap_or(1),
            spinning: config::parameter(&config, "allow_spinning").is_none_or(|v| v != 0),
            spin_between_runs: config::parameter(&config, "spin_between_runs").is_some_and(|v| v != 0),
            prepacked: Default::default(),
            threads: ModelThreads::new(format!("{name}-{version}-pool")),
        };
        // Sessions are built, warmed up and profiled on a thread of their own.
        let built = std::thread::scope(|scope| {
            let build = std::thread::Builder::new().name(format!("{name}-{version}-load")).spawn_scoped(scope, || {
                let first = runtime.load(&path, &options)?;
                let io = config::complete(&mut config, &name, explicit_config, &first.inputs, &first.outputs)?;
                let instances = config::instance_count(&config);
                let mut sessions = vec![first];
                while sessions.len() < instances {
                    sessions.push(runtime.load(&path, &options)?);
                }
                for session in &mut sessions {
                    warmup::run(session, &config, &io, model_dir)?;
                }
                let queueing = Queueing::from_config(&config, instances);
                // What a batch costs, one run per power-of-two size, before ready.
                let profile = warmup::profile(&mut sessions[0], &io, queueing.policy.max_batch_size);
                Ok::<_, String>((io, sessions, queueing, profile))
            });
            let build = build.map_err(|e| format!("starting the loading thread: {e}"))?;
            build.join().map_err(|_| format!("loading {} panicked", path.display()))?
        });
        let (io, sessions, queueing, profile) = built?;
        let label = version.to_string();
        let stats = Arc::new(VersionStats::default());
        let labels = Labels { model: name.clone(), version: label.clone() };
        let metrics = VersionMetrics::new(&name, &label);
        let slo = Duration::from_secs_f64(slo_settings(&config, &context).0.latency_threshold);
        // A shadow's copies have no client waiting: its own bounded queue
        // (shadow.rs) bounds them, not the latency SLO.
        let admission =
            !shadow && config::decimal_parameter(&config, "slo_admission").map_or(context.slo_admission, |v| v != 0.0);
        let scheduler = Scheduler::start(
            labels,
            sessions,
            queueing.policy.clone(),
            &profile,
            (slo, admission),
            stats.clone(),
            metrics.clone(),
        );
        if shadow {
            // Warmed up and profiled at normal priority, so the cost model is
            // the version's own; from now on it runs on spare cycles only.
            options.threads.idle();
        }
        let (target, attainable) = scheduler.latency_target();
        if !attainable {
            tracing::warn!(
                model = %name,
                version,
                slo_ms = slo.as_secs_f64() * 1e3,
                target_ms = target.as_secs_f64() * 1e3,
                "the latency SLO is shorter than one execution at batch 1; admission aims at twice that execution"
            );
        }
        let admission = limit_config(&config, context.adaptive_concurrency)
            .map(|limits| VersionAdmission::new(&name, &label, limits));
        let breaker = VersionBreaker::new(&name, &label, breaker_config(&config));
        let request_timeout = config::parameter(&config, "request_timeout_ms")
            .filter(|&ms| ms > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        Ok(ModelVersion {
            name,
            version,
            label,
            config,
            io,
            stats,
            metrics,
            breaker,
            admission,
            scheduler,
            queueing,
            request_timeout,
            limits: context.limits,
            shadow,
            intra_op_threads: intra,
            load: Default::default(),
            busy_key: crate::runtime::busy_periods_key(),
        })
    }

    /// Runs one request through the queue. Validation errors come back
    /// before anything is queued.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        match self.attempt(request).await {
            Attempt::Done(result) => result,
            Attempt::Broken(_, refusal) => Err(refusal),
        }
    }

    /// `infer`, except that a request this version's open circuit breaker
    /// refuses comes back untouched, for another version to serve.
    pub async fn attempt(&self, mut request: InferRequest) -> Attempt {
        let prepared = match self.prepare(&request) {
            Ok(prepared) => prepared,
            Err(error) => return Attempt::Done(Err(error)),
        };
        let ticket = match self.breaker.try_acquire() {
            Ok(ticket) => ticket,
            Err(refusal) => return Attempt::Broken(request, refusal),
        };
        request.deadline = self.deadline_or_default(request.deadline, Instant::now());
        Attempt::Done(self.run(request, prepared, ticket).await)
    }

    async fn run(
        &self,
        mut request: InferRequest,
        prepared: Prepared,
        ticket: BreakerTicket<'_>,
    ) -> Result<InferResponse> {
        let permit = self.admission.as_ref().map(|a| a.try_enter()).transpose()?;
        let deadline = self.queueing.deadline(Instant::now(), &request, prepared.level);
        let placement = Placement { rows: prepared.rows, group: prepared.group, level: prepared.level, deadline };
        let outputs = self.scheduler.submit(prepared.inputs, placement, request.trace.take());
        let outputs = match request.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), outputs)
                .await
                .map_err(|_| Error::DeadlineExceeded("the request's deadline passed before it completed".into()))
                .and_then(|r| r),
            None => outputs.await,
        };
        if let Some(permit) = permit {
            permit.finish(outputs.is_ok());
        }
        ticket.finish(&outputs);
        let outputs = outputs?;
        Ok(InferResponse {
            model_name: self.name.clone(),
            model_version: self.label.clone(),
            id: request.id,
            outputs: self.finish(outputs, &request.outputs, prepared.rows)?,
        })
    }

    /// A request's deadline: its own, else `request_timeout_ms` from `now`.
    fn deadline_or_default(&self, asked: Option<Instant>, now: Instant) -> Option<Instant> {
        asked.or_else(|| self.request_timeout.map(|t| now + t))
    }

    /// The refusal admission would give a request of this version whose
    /// first input has `shape` and whose deadline is `deadline`, if it came
    /// now (counted as shed); None when it would be queued, or when the
    /// shape says nothing of its rows. For a request whose body has not
    /// arrived yet (api/grpc/early.rs); priority and timeout parameters are
    /// not known there, so it takes the default level.
    pub fn refusal_now(&self, shape: &[i64], deadline: Option<Instant>) -> Option<Error> {
        let rows = if self.queueing.policy.max_batch_size > 0 { usize::try_from(*shape.first()?).ok()? } else { 1 };
        if rows == 0 || !self.breaker.is_closed() {
            return None;
        }
        let level = self.queueing.level(None).ok()?;
        let now = Instant::now();
        let deadline = self.queueing.deadline_of(now, self.deadline_or_default(deadline, now), None, level);
        self.scheduler.refusal_now(Placement { rows, group: 0, level, deadline })
    }

    /// What RepositoryIndex says of the version's SLO when it cannot be met
    /// at all: one execution at batch 1 takes longer than the threshold.
    pub fn slo_note(&self) -> Option<String> {
        let (target, attainable) = self.scheduler.latency_target();
        let single = self.scheduler.execution_costs().first().and_then(|&(_, t)| t)?;
        (!attainable).then(|| {
            format!(
                "latency SLO unattainable: one execution at batch 1 takes {:.1} ms; admission aims at {:.1} ms",
                single.as_secs_f64() * 1e3,
                target.as_secs_f64() * 1e3
            )
        })
    }

    /// Waits until nothing is queued or running, at most `limit`; whether
    /// that happened (a shadow's copy runs only then).
    pub async fn until_idle(&self, limit: Duration) -> bool {
        self.scheduler.until_idle(limit).await
    }

    /// How loaded the version is, as a share of its latency target (see
    /// `Scheduler::pressure`); 1 while its breaker is not closed.
    pub fn pressure(&self) -> f64 {
        if !self.breaker.is_closed() {
            return 1.0;
        }
        self.scheduler.pressure()
    }

    /// The queue's figures for a capacity answer (Scheduler::capacity_inputs).
    pub fn capacity_inputs(&self) -> Option<(Vec<Duration>, usize, usize, Duration)> {
        self.scheduler.capacity_inputs()
    }

    /// Admission's learnt margin and the batch size aimed for under load.
    pub fn admission_figures(&self) -> (Duration, usize) {
        self.scheduler.admission_figures()
    }

    /// The cost model: predicted execution time per power-of-two batch size.
    pub fn execution_costs(&self) -> Vec<(usize, Option<Duration>)> {
        self.scheduler.execution_costs()
    }

    /// Answers every queued request UNAVAILABLE (shutdown); returns how many.
    pub fn reject_queued(&self, reason: &str) -> usize {
        self.scheduler.reject_queued(reason)
    }

    /// Validates a request against the model's inputs and returns its
    /// tensors in the model's input order, shaped for the graph, with the
    /// key that decides which requests may share a batch.
    fn prepare(&self, request: &InferRequest) -> Result<Prepared> {
        self.limits.check_counts(request)?;
        let level = self.queueing.level(request.priority)?;
        let batching = self.io.max_batch_size > 0;
        let mut batch: Option<i64> = None;
        let mut by_position: Vec<Option<&Tensor>> = vec![None; self.io.inputs.len()];
        for tensor in &request.inputs {
            let position = self.input_position(&tensor.name)?;
            let spec = &self.io.inputs[position];
            if by_position[position].replace(tensor).is_some() {
                return Err(Error::invalid(format!("input '{}' is given more than once", tensor.name)));
            }
            if tensor.datatype != spec.datatype {
                return Err(Error::invalid(format!(
                    "input '{}': expected datatype {}, received {}",
                    tensor.name, spec.datatype, tensor.datatype
                )));
            }
            if !client_shape_matches(spec, batching, &tensor.shape) {
                return Err(Error::invalid(format!(
                    "input '{}': expected shape {:?}, received {:?}",
                    tensor.name,
                    expected_shape(spec, batching),
                    tensor.shape
                )));
            }
            if batching {
                let rows = tensor.shape[0];
                if rows < 1 || rows as usize > self.io.max_batch_size {
                    return Err(Error::invalid(format!(
                        "input '{}': batch size {rows} is outside 1..={} (max_batch_size)",
                        tensor.name, self.io.max_batch_size
                    )));
                }
                if let Some(b) = batch.filter(|&b| b != rows) {
                    return Err(Error::invalid(format!(
                        "input '{}': batch size {rows} differs from the other inputs' {b}",
                        tensor.name
                    )));
                }
                batch = Some(rows);
            }
            tensor.check_len()?;
        }
        let mut inputs = Vec::with_capacity(by_position.len());
        let mut group = DefaultHasher::new();
        for (spec, given) in self.io.inputs.iter().zip(by_position) {
            match given {
                Some(tensor) => {
                    let shape = graph_shape(spec, &tensor.shape, batching);
                    (&spec.name, &shape[usize::from(batching)..]).hash(&mut group);
                    let (name, data) = (tensor.name.clone(), tensor.data.clone());
                    inputs.push(Tensor { name, datatype: tensor.datatype, shape, data });
                }
                None if spec.optional => {}
                None => {
                    return Err(Error::invalid(format!(
                        "missing input '{}' for model '{}' (expects {})",
                        spec.name,
                        self.name,
                        spec_names(&self.io.inputs)
                    )));
                }
            }
        }
        for (i, name) in request.outputs.iter().enumerate() {
            if !self.io.outputs.iter().any(|s| &s.name == name) {
                return Err(Error::invalid(format!(
                    "unknown output '{name}' requested from model '{}' (outputs: {})",
                    self.name,
                    spec_names(&self.io.outputs)
                )));
            }
            if request.outputs[..i].contains(name) {
                return Err(Error::invalid(format!("output '{name}' is requested more than once")));
            }
        }
        self.limits.check_elements(request)?;
        Ok(Prepared { inputs, rows: batch.unwrap_or(1) as usize, group: group.finish(), level })
    }

    fn input_position(&self, name: &str) -> Result<usize> {
        self.io.inputs.iter().position(|s| s.name == name).ok_or_else(|| {
            Error::invalid(format!(
                "unknown input '{name}' for model '{}' (expects {})",
                self.name,
                spec_names(&self.io.inputs)
            ))
        })
    }

    /// Keeps the requested outputs (all declared ones when none are named),
    /// in request order, shaped as the config declares them.
    fn finish(&self, mut produced: Vec<Tensor>, requested: &[String], batch: usize) -> Result<Vec<Tensor>> {
        let wanted: Vec<&IoSpec> = if requested.is_empty() {
            self.io.outputs.iter().collect()
        } else {
            requested.iter().filter_map(|n| self.io.outputs.iter().find(|s| &s.name == n)).collect()
        };
        let batching = self.io.max_batch_size > 0;
        let mut outputs = Vec::with_capacity(wanted.len());
        for spec in wanted {
            let index = produced
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| Error::internal(format!("the model did not produce output '{}'", spec.name)))?;
            let mut tensor = produced.swap_remove(index);
            if !graph_is_declared(spec, batching) && spec.dims.iter().all(|&d| d >= 0) {
                let mut shape = Vec::with_capacity(spec.dims.len() + 1);
                if batching {
                    shape.push(batch as i64);
                }
                shape.extend_from_slice(&spec.dims);
                tensor.shape = shape;
            }
            outputs.push(tensor);
        }
        Ok(outputs)
    }
}

struct Prepared {
    inputs: Vec<Tensor>,
    rows: usize,
    group: u64,
    /// The priority level's queue, 0 the highest.
    level: usize,
}

/// Whether `shape` is one a client may send: [rows, dims...] when
/// batching, dims alone otherwise (-1 in dims matches any size).
fn client_shape_matches(spec: &IoSpec, batching: bool, shape: &[i64]) -> bool {
    match (batching, shape.split_first()) {
        (false, _) => shape_matches(&spec.dims, shape),
        (true, Some((_, dims))) => shape_matches(&spec.dims, dims),
        (true, None) => false,
    }
}

/// Whether the graph takes the shape the config declares (no reshape):
/// its dims are `expected_shape`.
fn graph_is_declared(spec: &IoSpec, batching: bool) -> bool {
    match (batching, spec.graph_dims.split_first()) {
        (false, _) => spec.graph_dims == spec.dims,
        (true, Some((&first, rest))) => first == -1 && rest == &spec.dims[..],
        (true, None) => false,
    }
}

/// The shape a client must send: [-1, dims...] when batching.
fn expected_shape(spec: &IoSpec, batching: bool) -> Vec<i64> {
    let mut shape = Vec::with_capacity(spec.dims.len() + 1);
    if batching {
        shape.push(-1);
    }
    shape.extend_from_slice(&spec.dims);
    shape
}

/// The shape the graph receives: the request's, or the config's reshape
/// with the request's batch size.
fn graph_shape(spec: &IoSpec, shape: &[i64], batching: bool) -> Vec<i64> {
    if graph_is_declared(spec, batching) {
        return shape.to_vec();
    }
    let mut out = spec.graph_dims.clone();
    if batching {
        out[0] = shape[0];
    }
    out
}

fn spec_names(specs: &[IoSpec]) -> String {
    let names: Vec<_> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_parameters(text: &str) -> pb::ModelConfig {
        config::parse(text).expect("a valid config")
    }

    #[test]
    fn breaker_parameters_override_each_default() {
        let defaults = BreakerConfig::default();
        assert_eq!(breaker_config(&pb::ModelConfig::default()), defaults);
        let config = with_parameters(
            r#"parameters [
                { key: "breaker_consecutive_failures" value { string_value: "2" } },
                { key: "breaker_window" value { string_value: "10" } },
                { key: "breaker_min_calls" value { string_value: "40" } },
                { key: "breaker_rate_percent" value { string_value: "25" } },
                { key: "breaker_slow_call_ms" value { string_value: "7" } },
                { key: "breaker_open_ms" value { string_value: "300" } },
                { key: "breaker_probes" value { string_value: "1" } }
            ]"#,
        );
        let got = breaker_config(&config);
        assert_eq!(
            got,
            BreakerConfig {
                consecutive_failures: 2,
                window: 10,
                min_calls: 10, // never more than the window holds
                rate_threshold: 0.25,
                slow_call: Some(Duration::from_millis(7)),
                open_for: Duration::from_millis(300),
                probes: 1,
            }
        );
    }

    #[test]
    fn the_adaptive_limit_defaults_to_two_full_batches_per_instance() {
        let config = with_parameters("max_batch_size: 8\ninstance_group [ { count: 3 } ]");
        assert_eq!(limit_config(&config, false), None, "off unless asked");
        let on = limit_config(&config, true).expect("the server flag turns it on");
        assert_eq!((on.initial, on.min, on.max), (48, 48, 4096));
        let bounded = with_parameters(
            r#"parameters [
                { key: "adaptive_concurrency" value { string_value: "1" } },
                { key: "adaptive_concurrency_min" value { string_value: "5" } },
                { key: "adaptive_concurrency_max" value { string_value: "3" } }
            ]"#,
        );
        let on = limit_config(&bounded, false).expect("the parameter turns it on");
        assert_eq!((on.initial, on.min, on.max), (5, 5, 5), "max is never below min");
        let off = with_parameters(r#"parameters [ { key: "adaptive_concurrency" value { string_value: "0" } } ]"#);
        assert_eq!(limit_config(&off, true), None, "the parameter overrides the flag");
    }
}
