//! The model repository: Triton's layout on disk
//! (`<root>/<model>/<version>/model.onnx` plus an optional
//! `<root>/<model>/config.pbtxt`), the versions each model serves, and which
//! of them are loaded, failed or unloaded.

pub mod canary;
pub mod capacity;
pub mod config;
mod queueing;
mod scan;
pub mod shadow;
mod steer;
mod version;
mod warmup;

pub use version::{Attempt, LoadContext, ModelVersion};

use crate::admission::ServerCap;
use crate::error::{Error, Result, Retry};
use crate::infer::{InferRequest, InferResponse};
use crate::pb;
use crate::runtime::Runtime;
use crate::telemetry;
use crate::telemetry::slo::SloTracker;
use canary::Canary;
use parking_lot::RwLock;
use shadow::Shadow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
pub use steer::{CanaryAction, PromoteTo, ShadowAction};

/// How long an unload waits for the model's requests to finish before it
/// answers.
const UNLOAD_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// When to retry a request for a model that is still loading.
const LOADING_RETRY: Duration = Duration::from_secs(1);

/// When to retry a request refused because the server is shutting down: by
/// then the client has reconnected to another replica.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(100);

/// Where a request goes: the version, and the model's canary and SLOs.
/// Where an inference request goes, and what judges its answer.
struct Routed {
    version: Arc<ModelVersion>,
    canary: Option<Arc<Canary>>,
    slo: Option<Arc<SloTracker>>,
    /// The stable version, when the split sent an unpinned request to the
    /// canary: it serves the request while the canary's breaker is open.
    fallback: Option<Arc<ModelVersion>>,
    /// The model's shadow and its version, for an unpinned request.
    shadow: Option<(Arc<Shadow>, Arc<ModelVersion>)>,
}

/// What RepositoryIndex says of a ready version that is part of a canary
/// or is the model's shadow.
fn canary_note(canary: Option<&Canary>, shadow: Option<&Shadow>, version: i64) -> String {
    if let Some(s) = shadow.filter(|s| s.version == version) {
        return format!("shadow, {}% of unpinned requests copied, answers compared and dropped", s.percent());
    }
    match canary {
        Some(c) if c.canary == version => match c.rolled_back() {
            Some(reason) => format!("canary, weight 0: {reason}"),
            None => format!("canary, weight {} (stable: version {})", c.weight(), c.stable),
        },
        Some(c) if c.stable == version => format!("stable (canary: version {}, weight {})", c.canary, c.weight()),
        _ => String::new(),
    }
}

/// The split's seed: fixed per model name, so a run is reproducible.
fn canary_seed(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

/// What a loaded version was made from: its files and the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    files: u64,
    config: u64,
    /// Loaded as the model's shadow (its threads at SCHED_IDLE for good):
    /// a version that becomes or stops being the shadow is loaded anew.
    shadow: bool,
}

/// State of one model as RepositoryIndex reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// READY, UNAVAILABLE or LOADING (Triton's names).
    pub state: String,
    pub reason: String,
}

/// One version of a model: what serves it, and how the latest attempt to
/// load it went. A version whose new file (or config) fails to load keeps
/// serving the old one.
#[derive(Default)]
struct VersionSlot {
    serving: Option<Serving>,
    /// Why the latest load of this version failed, if it did.
    failure: Option<String>,
}

struct Serving {
    version: Arc<ModelVersion>,
    /// What it was loaded from; a load with the same source is skipped.
    source: Source,
}

#[derive(Default)]
struct ModelState {
    versions: BTreeMap<i64, VersionSlot>,
    /// The canary split, when the config asks for one.
    canary: Option<Arc<Canary>>,
    /// The config text the canary came from: an unchanged config keeps the
    /// canary as it runs (its weight after a rollback included).
    canary_config: u64,
    /// The model's shadow while it runs.
    shadow: Option<Arc<Shadow>>,
    /// The shadow plan in force and the config text it holds for: the
    /// config's, or an operator's until the config changes.
    shadow_plan: Option<(u64, Option<shadow::Plan>)>,
    /// The shadow that ran last, stopped or promoted, for its report.
    shadow_last: Option<Arc<Shadow>>,
    /// The hash of the config text the model was last loaded with.
    config_hash: u64,
    /// The JSON config of the latest load request that gave one, so an
    /// operator's reload (steer.rs) uses it again.
    config_json: Option<String>,
    /// The model's SLO bookkeeping; it survives reloads and unloads.
    slo: Option<Arc<SloTracker>>,
    /// Why the model as a whole could not load (bad config, no versions), or
    /// that it was unloaded.
    problem: Option<String>,
    loading: bool,
    /// Taken out of service on request; --strict-readiness ignores it.
    unloaded: bool,
}

pub struct Repository {
    /// The folders read (one per --model-repository; a bucket's mirror for
    /// one on object storage).
    roots: Vec<PathBuf>,
    runtime: Runtime,
    context: LoadContext,
    /// Written by load/unload; read per request (never held across .await).
    models: RwLock<BTreeMap<String, ModelState>>,
    /// Set once start-up loading is done; cleared on shutdown.
    ready: AtomicBool,
    /// Server ready only when every model is (Triton's rule).
    strict_readiness: bool,
    /// Set on shutdown: new inference requests are refused.
    draining: AtomicBool,
    /// The server-wide cap on inference requests in flight.
    cap: ServerCap,
    /// Loads run one at a time, so a swap holds at most one extra copy of
    /// one model version in memory.
    loads: tokio::sync::Mutex<()>,
    /// Inference requests answered, refusals included (capacity.rs reads it).
    answered: std::sync::atomic::AtomicU64,
    /// The server's own CPU per answered request, sampled on the timer.
    overhead: parking_lot::Mutex<capacity::Overhead>,
}

impl Repository {
    /// The folders the repository is read from (a bucket's mirror, for one
    /// on object storage).
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn new(roots: Vec<PathBuf>, runtime: Runtime, context: LoadContext, strict_readiness: bool) -> Self {
        Repository {
            roots,
            runtime,
            context,
            models: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            strict_readiness,
            draining: AtomicBool::new(false),
            cap: ServerCap::new(context.max_in_flight),
            loads: tokio::sync::Mutex::new(()),
            answered: Default::default(),
            overhead: Default::default(),
        }
    }

    /// Names of the model directories in the repositories.
    pub fn scan(&self) -> std::io::Result<Vec<String>> {
        scan::model_names_in(&self.roots)
    }

    /// The directory of a model, in whichever repository holds it.
    pub fn model_dir(&self, name: &str) -> std::result::Result<PathBuf, String> {
        scan::model_dir(&self.roots, name)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Shutdown begins: not ready, and new inference requests are refused
    /// UNAVAILABLE while admitted ones finish.
    pub fn begin_drain(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Inference requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.cap.in_flight()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Answers every queued request UNAVAILABLE with `reason`; returns how
    /// many there were. Running batches finish.
    pub fn reject_queued(&self, reason: &str) -> usize {
        self.all_ready().iter().map(|v| v.reject_queued(reason)).sum()
    }

    pub fn is_ready(&self) -> bool {
        if !self.ready.load(Ordering::SeqCst) {
            return false;
        }
        if !self.strict_readiness {
            return true;
        }
        let models = self.models.read();
        models
            .values()
            .filter(|m| !m.unloaded)
            .all(|m| m.problem.is_none() && !m.versions.is_empty() && m.versions.values().all(|v| v.serving.is_some()))
    }

    /// Loads a model from disk, or brings a loaded one up to date: reads its
    /// config and version folders again, loads each version that is new or
    /// whose files or config changed (off the request path, warmed up), and
    /// switches that version's routing to it at once; the copy it replaces
    /// stops receiving requests, finishes what it holds, and is freed.
    /// Versions no longer on disk or chosen by the version policy are
    /// retired the same way. A version whose new files fail to load keeps
    /// serving the old ones. Returns the first failure, if any.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<()> {
        self.load_with(name, None).await
    }

    /// `load` with the config given as JSON instead of the model's
    /// config.pbtxt (a load request's `config` parameter). A later load
    /// without it reads config.pbtxt again.
    pub async fn load_with(self: &Arc<Self>, name: &str, config_json: Option<String>) -> Result<()> {
        let dir = self.model_dir(name).map_err(Error::NotFound)?;
        let _one_at_a_time = self.loads.lock().await;
        {
            let mut models = self.models.write();
            let state = models.entry(name.to_string()).or_default();
            state.loading = true;
            if state.unloaded {
                *state = ModelState { loading: true, slo: state.slo.take(), ..Default::default() };
            }
            state.config_json.clone_from(&config_json);
        }
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || this.reconcile(&dir, config_json.as_deref()))
            .await
            .map_err(|e| Error::internal(format!("loading '{name}' panicked: {e}")))?;
        if let Some(state) = self.models.write().get_mut(name) {
            state.loading = false;
        }
        self.publish_ready_count();
        self.publish_slos();
        outcome.map_err(|problem| Error::invalid(format!("failed to load '{name}': {problem}")))
    }

    /// The blocking part of `load`. Errors name what failed.
    fn reconcile(&self, dir: &std::path::Path, config_json: Option<&str>) -> Result<(), String> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let model_problem = |problem: String| {
            tracing::error!(model = %name, %problem, "model failed to load");
            telemetry::record_load(&name, "", false);
            let mut models = self.models.write();
            let state = models.entry(name.clone()).or_default();
            let serving = state.versions.values().any(|v| v.serving.is_some());
            state.problem = Some(if serving {
                format!("{problem} (the versions loaded before keep serving)")
            } else {
                problem.clone()
            });
            Err(problem)
        };
        let read = match config_json {
            Some(json) => config::parse_json(json).map(|c| (c, true, scan::hash(json))),
            None => scan::read_config(dir),
        };
        let (config, explicit, config_hash) = match read {
            Ok(found) => found,
            Err(problem) => return model_problem(problem),
        };
        let wanted = match scan::select_versions(dir, config.version_policy.as_ref()) {
            Ok(v) if v.is_empty() => {
                return model_problem(format!("no version folder of {} matches its version policy", dir.display()));
            }
            Ok(v) => v,
            Err(problem) => return model_problem(problem),
        };
        self.models.write().entry(name.clone()).or_default().problem = None;
        let mut first_failure = None;
        // The shadow is set up first, so a version loaded as the shadow never
        // takes unpinned traffic, not even for a moment.
        let shadow_plan = self.shadow_plan(&name, &config, &wanted, config_hash);
        let shadow_version = {
            let mut models = self.models.write();
            let state = models.entry(name.clone()).or_default();
            if let Err(problem) = steer::set_up_shadow(&name, state, &config, config_hash, shadow_plan) {
                tracing::error!(model = %name, %problem, "shadow settings refused");
                state.problem = Some(format!("shadow settings refused: {problem}"));
                first_failure = Some(problem);
            }
            state.shadow.as_ref().map(|s| s.version)
        };
        for &version in &wanted {
            let shadow = shadow_version == Some(version);
            let source = Source { files: scan::version_stamp(dir, version), config: config_hash, shadow };
            let current =
                self.models.read().get(&name).and_then(|m| {
                    m.versions.get(&version).and_then(|v| v.serving.as_ref().map(|s| s.source == source))
                });
            if current == Some(true) {
                continue; // unchanged: keeps serving, nothing to load
            }
            let started = Instant::now();
            let loaded =
                ModelVersion::load(&self.runtime, dir, version, config.clone(), explicit, self.context, shadow);
            let mut models = self.models.write();
            let slot = models.entry(name.clone()).or_default().versions.entry(version).or_default();
            match loaded {
                Ok(loaded) => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    let swapped = slot.serving.is_some();
                    tracing::info!(model = %name, version, elapsed_ms, swapped, "model version ready");
                    telemetry::record_load(&name, &version.to_string(), true);
                    // The old copy, if any, leaves routing here; requests
                    // holding it finish, then its instances exit.
                    slot.serving = Some(Serving { version: Arc::new(loaded), source });
                    slot.failure = None;
                }
                Err(reason) => {
                    let keeps = slot.serving.is_some();
                    tracing::error!(model = %name, version, %reason, keeps_serving_old = keeps, "model version failed to load");
                    telemetry::record_load(&name, &version.to_string(), false);
                    first_failure.get_or_insert_with(|| format!("version {version}: {reason}"));
                    slot.failure = Some(reason);
                }
            }
        }
        let mut models = self.models.write();
        if let Some(state) = models.get_mut(&name) {
            let retired: Vec<i64> = state.versions.keys().copied().filter(|v| !wanted.contains(v)).collect();
            for version in retired {
                state.versions.remove(&version);
                tracing::info!(model = %name, version, "model version retired");
                telemetry::record_unload(&name, &version.to_string(), "retired");
            }
            if let Err(problem) = self.set_up_slo(state, &config) {
                tracing::error!(model = %name, %problem, "SLO settings refused; the server's defaults apply");
                state.problem = Some(format!("SLO settings refused: {problem}"));
                first_failure.get_or_insert(problem);
            }
            if let Err(problem) = self.set_up_canary(&name, state, &config, &wanted, config_hash) {
                tracing::error!(model = %name, %problem, "canary settings refused");
                state.problem = Some(format!("canary settings refused: {problem}"));
                first_failure.get_or_insert(problem);
            }
            state.config_hash = config_hash;
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// The model's SLOs from its `slo_*` parameters over the server's
    /// defaults; refused (the defaults apply) unless valid.
    fn set_up_slo(&self, state: &mut ModelState, config: &pb::ModelConfig) -> Result<(), String> {
        let (slo, checked) = version::slo_settings(config, &self.context);
        match &state.slo {
            Some(tracker) => tracker.set_config(slo),
            None => state.slo = Some(Arc::new(SloTracker::new(slo, Instant::now()))),
        }
        checked
    }

    /// Exports every model's SLO gauges (burn rates move with time, so this
    /// runs on a timer as well as after loads).
    pub fn publish_slos(&self) {
        let now = Instant::now();
        let trackers: Vec<(String, Arc<SloTracker>)> =
            self.models.read().iter().filter_map(|(name, s)| Some((name.clone(), s.slo.clone()?))).collect();
        for (name, tracker) in trackers {
            telemetry::publish_slo(&name, &tracker.config(), &tracker.report(now));
        }
    }

    /// Starts, keeps or ends a model's canary as its config says. A config
    /// that did not change keeps the running canary (and its weight).
    fn set_up_canary(
        &self,
        name: &str,
        state: &mut ModelState,
        config: &pb::ModelConfig,
        served: &[i64],
        config_hash: u64,
    ) -> Result<(), String> {
        if state.canary.is_some() && state.canary_config == config_hash {
            return Ok(());
        }
        let plan = canary::plan(config, served);
        if let Some(old) = state.canary.take() {
            telemetry::set_canary_weight(name, old.canary, 0);
        }
        state.canary_config = config_hash;
        let Some(plan) = plan? else { return Ok(()) };
        tracing::info!(model = %name, stable = plan.stable, canary = plan.canary, weight = plan.weight, "canary");
        telemetry::set_canary_weight(name, plan.canary, plan.weight);
        state.canary = Some(Arc::new(Canary::new(plan, canary_seed(name))));
        Ok(())
    }

    /// The running canary of a model, if it has one.
    pub fn canary(&self, name: &str) -> Result<Option<Arc<Canary>>> {
        let models = self.models.read();
        let state = models.get(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        Ok(state.canary.clone())
    }

    /// Takes a model out of service: new requests are refused at once;
    /// requests already admitted finish on the version they hold, and the
    /// call returns once they have (or after UNLOAD_DRAIN; they still finish
    /// after that), when the versions' instances exit and free their memory.
    pub async fn unload(&self, name: &str) -> Result<()> {
        let draining: Vec<std::sync::Weak<ModelVersion>> = {
            let mut models = self.models.write();
            let state = models.get_mut(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
            let slo = state.slo.clone();
            let old = std::mem::replace(
                state,
                ModelState { problem: Some("unloaded".into()), unloaded: true, slo, ..Default::default() },
            );
            let serving: Vec<_> = old.versions.into_iter().filter_map(|(n, v)| Some((n, v.serving?))).collect();
            for (number, _) in &serving {
                telemetry::record_unload(name, &number.to_string(), "unloaded");
            }
            serving.into_iter().map(|(_, s)| Arc::downgrade(&s.version)).collect()
        };
        self.publish_ready_count();
        let deadline = Instant::now() + UNLOAD_DRAIN;
        while draining.iter().any(|v| v.strong_count() > 0) {
            if Instant::now() >= deadline {
                tracing::warn!(model = %name, "unload: requests still running; they finish in the background");
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// The version a request names; else the stable version of a model with a
    /// canary; else the highest ready version.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>> {
        self.route(name, version, false).map(|routed| routed.version)
    }

    /// `get` for an inference request: an unpinned request to a model with a
    /// canary goes to the canary or the stable version by weight (to the
    /// stable one whenever the pick is not serving, or, see `infer`, its
    /// breaker is open). Also returns the canary, to judge the answer.
    fn route(&self, name: &str, version: &str, split: bool) -> Result<Routed> {
        let models = self.models.read();
        let state = models.get(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        let serving = |number: i64| state.versions.get(&number).and_then(|v| v.serving.as_ref()).map(|s| &s.version);
        let shadow = state
            .shadow
            .as_ref()
            .filter(|_| split && version.is_empty())
            .and_then(|s| Some((s.clone(), serving(s.version)?.clone())));
        if version.is_empty()
            && let Some(canary) = &state.canary
        {
            let pick = if split { canary.pick() } else { canary.stable };
            if let Some(v) = serving(pick).or_else(|| serving(canary.stable)) {
                let fallback = if v.version == canary.stable { None } else { serving(canary.stable).cloned() };
                let (canary, slo) = (Some(canary.clone()), state.slo.clone());
                return Ok(Routed { version: v.clone(), canary, slo, fallback, shadow });
            }
        }
        let version = self.lookup(name, version, state)?;
        Ok(Routed { version, canary: state.canary.clone(), slo: state.slo.clone(), fallback: None, shadow })
    }

    fn lookup(&self, name: &str, version: &str, state: &ModelState) -> Result<Arc<ModelVersion>> {
        if version.is_empty() {
            // The shadow never takes unpinned traffic.
            let shadow = state.shadow.as_ref().map(|s| s.version);
            return state
                .versions
                .iter()
                .rev()
                .filter(|(number, _)| Some(**number) != shadow)
                .find_map(|(_, v)| v.serving.as_ref().map(|s| s.version.clone()))
                .ok_or_else(|| {
                    let why = state.problem.clone().unwrap_or_else(|| "no version is ready".into());
                    // Unloaded, or every version failed: a retry fails the
                    // same way until an operator or new files change it.
                    let loading = state.loading || state.versions.values().any(|v| v.failure.is_none());
                    let retry = if loading { Retry::After(LOADING_RETRY) } else { Retry::Never };
                    Error::Unavailable(format!("model '{name}' is not ready: {why}"), retry)
                });
        }
        let number: i64 =
            version.parse().map_err(|_| Error::not_found(format!("unknown version '{version}' of model '{name}'")))?;
        match state.versions.get(&number) {
            Some(VersionSlot { serving: Some(serving), .. }) => Ok(serving.version.clone()),
            Some(VersionSlot { failure, .. }) => Err(Error::Unavailable(
                format!(
                    "model '{name}' version {number} is not ready: {}",
                    failure.as_deref().unwrap_or("it is loading")
                ),
                if failure.is_some() { Retry::Never } else { Retry::After(LOADING_RETRY) },
            )),
            None => Err(Error::not_found(format!("unknown version '{version}' of model '{name}'"))),
        }
    }

    /// Ready versions of a model, in ascending order.
    pub fn ready_versions(&self, name: &str) -> Vec<Arc<ModelVersion>> {
        let models = self.models.read();
        models.get(name).map_or_else(Vec::new, |state| {
            state.versions.values().filter_map(|v| v.serving.as_ref().map(|s| s.version.clone())).collect()
        })
    }

    /// Every ready version of every model (for statistics).
    pub fn all_ready(&self) -> Vec<Arc<ModelVersion>> {
        let names: Vec<String> = self.models.read().keys().cloned().collect();
        names.iter().flat_map(|n| self.ready_versions(n)).collect()
    }

    /// RepositoryIndex: every model directory on disk, with the state of each
    /// version that was tried.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let on_disk = self.scan().unwrap_or_default();
        let models = self.models.read();
        let mut names: Vec<&String> = models.keys().collect();
        for name in &on_disk {
            if !models.contains_key(name) {
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        let mut entries = Vec::new();
        for name in names {
            let entry = |version: String, state: &str, reason: String| IndexEntry {
                name: name.clone(),
                version,
                state: state.to_string(),
                reason,
            };
            match models.get(name) {
                None => entries.push(entry(String::new(), "UNAVAILABLE", "not loaded".into())),
                Some(state) if state.loading && state.versions.is_empty() && state.problem.is_none() => {
                    entries.push(entry(String::new(), "LOADING", String::new()));
                }
                Some(state) => {
                    if let Some(problem) = &state.problem {
                        entries.push(entry(String::new(), "UNAVAILABLE", problem.clone()));
                    }
                    for (version, slot) in &state.versions {
                        let label = version.to_string();
                        entries.push(match (&slot.serving, &slot.failure) {
                            (Some(serving), None) => {
                                let notes = [canary_note(state.canary.as_deref(), state.shadow.as_deref(), *version)]
                                    .into_iter()
                                    .chain(serving.version.slo_note())
                                    .filter(|n| !n.is_empty());
                                entry(label, "READY", notes.collect::<Vec<_>>().join("; "))
                            }
                            (Some(_), Some(failure)) => entry(
                                label,
                                "READY",
                                format!("serving the files loaded before; the new ones failed to load: {failure}"),
                            ),
                            (None, Some(failure)) => entry(label, "UNAVAILABLE", failure.clone()),
                            (None, None) => entry(label, "LOADING", String::new()),
                        });
                    }
                }
            }
        }
        if ready_only {
            entries.retain(|e| e.state == "READY");
        }
        entries
    }

    /// Runs one inference and records its outcome in metrics, statistics
    /// and the model's SLOs.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        if self.draining.load(Ordering::Relaxed) {
            return Err(Error::unavailable("the server is shutting down", SHUTDOWN_RETRY));
        }
        let _in_flight = match self.cap.try_enter() {
            Ok(permit) => permit,
            Err(e) => return Err(self.refused(&request.model_name, e, started)),
        };
        let routed = self.route(&request.model_name, &request.model_version, true);
        let Routed { version, canary, slo, fallback, shadow } = match routed {
            Ok(routed) => routed,
            Err(e) => return Err(self.refused(&request.model_name, e, started)),
        };
        crate::runtime::request_half(version.busy_key);
        let copy = shadow.and_then(|(shadow, shadow_version)| shadow.copy(&shadow_version, &version, &request));
        // A canary whose breaker is open hands its share back to the stable version.
        let (version, result) = match fallback {
            None => {
                let result = version.infer(request).await;
                (version, result)
            }
            Some(stable) => match version.attempt(request).await {
                Attempt::Done(result) => (version, result),
                Attempt::Broken(request, _) => {
                    let result = stable.infer(request).await;
                    (stable, result)
                }
            },
        };
        let elapsed = started.elapsed();
        if let Some(copy) = copy {
            copy.finish(&result, elapsed);
        }
        let code = result.as_ref().map_or_else(Error::code, |_| "ok");
        record_outcome(&version, slo.as_deref(), code, elapsed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        crate::runtime::request_half(version.busy_key);
        if let Some(canary) = canary {
            // The model's own failures count; the client's mistakes do not.
            let failed = matches!(result, Err(Error::Internal(_) | Error::Unavailable(..)));
            if let Some(reason) = canary.record(version.version, failed, elapsed) {
                tracing::warn!(model = %version.name, canary = canary.canary, %reason, "canary rolled back");
                telemetry::record_canary_rollback(&version.name, canary.canary, "automatic");
                telemetry::set_canary_weight(&version.name, canary.canary, 0);
            }
        }
        result
    }

    /// The refusal a ModelInfer whose body has not arrived yet would get,
    /// from its head (api/grpc/early.rs): the model, the version asked for,
    /// the first input's shape and the call's deadline. Counted as the whole
    /// request would be. None, to read the request whole, unless a version
    /// is known and its admission would refuse it now; a model with a
    /// canary split, a server that is draining or at its in-flight cap
    /// decide as usual.
    pub fn refusal_now(&self, model: &str, version: &str, shape: &[i64], deadline: Option<Instant>) -> Option<Error> {
        let started = Instant::now();
        if self.draining.load(Ordering::Relaxed) {
            return None;
        }
        let Routed { version, canary, slo, .. } = self.route(model, version, false).ok()?;
        if canary.is_some() {
            return None;
        }
        let error = version.refusal_now(shape, deadline)?;
        record_outcome(&version, slo.as_deref(), error.code(), started.elapsed());
        self.answered.fetch_add(1, Ordering::Relaxed);
        crate::runtime::request_half(version.busy_key);
        crate::runtime::request_half(version.busy_key);
        Some(error)
    }

    /// Counts a request refused at the server's in-flight cap or at routing.
    fn refused(&self, model: &str, error: Error, started: Instant) -> Error {
        self.count_refused(model, error.code(), started, matches!(error, Error::Overloaded(..)));
        error
    }

    /// Counts a request answered with the error `code` before it reached a version: a body
    /// or message that does not decode, an unknown model, a bad input.
    /// Metric labels name only models the repository knows (and no
    /// version), so clients cannot grow the series without bound with
    /// made-up names. `shed` also counts it in `ferroserve_shed_total`.
    pub fn count_refused(&self, model: &str, code: &'static str, started: Instant, shed: bool) {
        let elapsed = started.elapsed();
        self.answered.fetch_add(1, Ordering::Relaxed);
        let slo = self.models.read().get(model).and_then(|s| s.slo.clone());
        let label = if slo.is_some() { model } else { "" };
        if shed {
            telemetry::record_shed(label, "", "server_inflight");
        }
        telemetry::record_request(label, "", code, elapsed);
        if let Some(slo) = slo {
            slo.record(Instant::now(), elapsed, code);
        }
    }

    fn publish_ready_count(&self) {
        let models = self.models.read();
        let ready = models.values().flat_map(|m| m.versions.values()).filter(|v| v.serving.is_some()).count();
        telemetry::set_models_ready(ready);
    }

    /// The completed config of a version (for ModelConfig).
    pub fn config(&self, name: &str, version: &str) -> Result<pb::ModelConfig> {
        Ok(self.get(name, version)?.config.clone())
    }
}

/// Records how a request that reached `version` ended: its statistics,
/// `ferroserve_requests_total` and the model's SLO.
fn record_outcome(version: &ModelVersion, slo: Option<&SloTracker>, code: &'static str, elapsed: Duration) {
    if code == "ok" {
        version.stats.success.add(elapsed);
    } else {
        version.stats.record_failure(code, elapsed);
    }
    version.metrics.record_request(code, elapsed);
    if let Some(slo) = slo {
        slo.record(Instant::now(), elapsed, code);
    }
}
