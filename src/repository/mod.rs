//! The model repository: Triton's layout on disk
//! (`<root>/<model>/<version>/model.onnx` plus an optional
//! `<root>/<model>/config.pbtxt`), the versions each model serves, and which
//! of them are loaded, failed or unloaded.

pub mod config;
mod scan;
mod version;
mod warmup;

pub use version::{LoadContext, ModelVersion};

use crate::admission::ServerCap;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::pb;
use crate::runtime::Runtime;
use crate::telemetry;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a loaded version was made from: its files and the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    files: u64,
    config: u64,
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
    /// Why the model as a whole could not load (bad config, no versions), or
    /// that it was unloaded.
    problem: Option<String>,
    loading: bool,
    /// Taken out of service on request; --strict-readiness ignores it.
    unloaded: bool,
}

pub struct Repository {
    root: PathBuf,
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
}

impl Repository {
    pub fn new(root: PathBuf, runtime: Runtime, context: LoadContext, strict_readiness: bool) -> Self {
        Repository {
            root,
            runtime,
            context,
            models: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            strict_readiness,
            draining: AtomicBool::new(false),
            cap: ServerCap::new(context.max_in_flight),
            loads: tokio::sync::Mutex::new(()),
        }
    }

    /// Names of the model directories in the repository.
    pub fn scan(&self) -> std::io::Result<Vec<String>> {
        scan::model_names(&self.root)
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
        let dir = scan::model_dir(&self.root, name).map_err(Error::NotFound)?;
        let _one_at_a_time = self.loads.lock().await;
        {
            let mut models = self.models.write();
            let state = models.entry(name.to_string()).or_default();
            state.loading = true;
            if state.unloaded {
                *state = ModelState { loading: true, ..Default::default() };
            }
        }
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || this.reconcile(&dir))
            .await
            .map_err(|e| Error::internal(format!("loading '{name}' panicked: {e}")))?;
        if let Some(state) = self.models.write().get_mut(name) {
            state.loading = false;
        }
        self.publish_ready_count();
        outcome.map_err(|problem| Error::invalid(format!("failed to load '{name}': {problem}")))
    }

    /// The blocking part of `load`. Errors name what failed.
    fn reconcile(&self, dir: &std::path::Path) -> Result<(), String> {
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
        let (config, explicit, config_hash) = match scan::read_config(dir) {
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
        for &version in &wanted {
            let source = Source { files: scan::version_stamp(dir, version), config: config_hash };
            let current =
                self.models.read().get(&name).and_then(|m| {
                    m.versions.get(&version).and_then(|v| v.serving.as_ref().map(|s| s.source == source))
                });
            if current == Some(true) {
                continue; // unchanged: keeps serving, nothing to load
            }
            let started = Instant::now();
            let loaded = ModelVersion::load(&self.runtime, dir, version, config.clone(), explicit, self.context);
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
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Takes a model out of service. Requests already admitted finish on
    /// the version they hold; its instances exit once their queue drains.
    pub fn unload(&self, name: &str) -> Result<()> {
        let mut models = self.models.write();
        let state = models.get_mut(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        *state = ModelState { problem: Some("unloaded".into()), unloaded: true, ..Default::default() };
        drop(models);
        tracing::info!(model = %name, "model unloaded");
        self.publish_ready_count();
        Ok(())
    }

    /// The version a request names, or the highest ready version.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>> {
        let models = self.models.read();
        let state = models.get(name).ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        if version.is_empty() {
            return state
                .versions
                .values()
                .rev()
                .find_map(|v| v.serving.as_ref().map(|s| s.version.clone()))
                .ok_or_else(|| {
                    let why = state.problem.clone().unwrap_or_else(|| "no version is ready".into());
                    Error::Unavailable(format!("model '{name}' is not ready: {why}"))
                });
        }
        let number: i64 =
            version.parse().map_err(|_| Error::not_found(format!("unknown version '{version}' of model '{name}'")))?;
        match state.versions.get(&number) {
            Some(VersionSlot { serving: Some(serving), .. }) => Ok(serving.version.clone()),
            Some(VersionSlot { failure, .. }) => Err(Error::Unavailable(format!(
                "model '{name}' version {number} is not ready: {}",
                failure.as_deref().unwrap_or("it is loading")
            ))),
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
                        let failure = slot.failure.clone().unwrap_or_default();
                        entries.push(match (&slot.serving, failure.is_empty()) {
                            (Some(_), true) => entry(version.to_string(), "READY", String::new()),
                            (Some(_), false) => entry(
                                version.to_string(),
                                "READY",
                                format!("serving the files loaded before; the new ones failed to load: {failure}"),
                            ),
                            (None, false) => entry(version.to_string(), "UNAVAILABLE", failure),
                            (None, true) => entry(version.to_string(), "LOADING", String::new()),
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

    /// Runs one inference and records its outcome in metrics and statistics.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        if self.draining.load(Ordering::Relaxed) {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        let _in_flight = match self.cap.try_enter(&request.model_name) {
            Ok(permit) => permit,
            Err(e) => {
                telemetry::record_request(&request.model_name, &request.model_version, e.code(), started.elapsed());
                return Err(e);
            }
        };
        let version = match self.get(&request.model_name, &request.model_version) {
            Ok(v) => v,
            Err(e) => {
                telemetry::record_request(&request.model_name, &request.model_version, e.code(), started.elapsed());
                return Err(e);
            }
        };
        let result = version.infer(request).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(_) => version.stats.success.add(elapsed),
            Err(_) => version.stats.fail.add(elapsed),
        }
        let code = result.as_ref().map_or_else(Error::code, |_| "ok");
        version.metrics.record_request(code, elapsed);
        result
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
