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

/// State of one model as RepositoryIndex reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// READY, UNAVAILABLE or LOADING (Triton's names).
    pub state: String,
    pub reason: String,
}

enum VersionState {
    Ready(Arc<ModelVersion>),
    Failed(String),
}

#[derive(Default)]
struct ModelState {
    versions: BTreeMap<i64, VersionState>,
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
        models.values().filter(|m| !m.unloaded).all(|m| {
            m.problem.is_none()
                && !m.versions.is_empty()
                && m.versions.values().all(|v| matches!(v, VersionState::Ready(_)))
        })
    }

    /// (Re)loads a model from disk: every version its policy selects. The
    /// old versions stay in service until the new set is in place. Returns an
    /// error when nothing of the model could be loaded.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<()> {
        let dir = scan::model_dir(&self.root, name).map_err(Error::NotFound)?;
        self.models.write().entry(name.to_string()).or_default().loading = true;
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || this.load_blocking(&dir))
            .await
            .map_err(|e| Error::internal(format!("loading '{name}' panicked: {e}")))?;
        let outcome = match &loaded.problem {
            Some(problem) => Err(Error::invalid(format!("failed to load '{name}': {problem}"))),
            None => match loaded.versions.iter().find_map(|(v, s)| match s {
                VersionState::Failed(reason) => Some((v, reason)),
                VersionState::Ready(_) => None,
            }) {
                Some((v, reason)) => Err(Error::invalid(format!("failed to load '{name}' version {v}: {reason}"))),
                None => Ok(()),
            },
        };
        self.models.write().insert(name.to_string(), loaded);
        self.publish_ready_count();
        outcome
    }

    fn load_blocking(&self, dir: &std::path::Path) -> ModelState {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut state = ModelState::default();
        let (config, explicit) = match scan::read_config(dir) {
            Ok(found) => found,
            Err(problem) => {
                tracing::error!(model = %name, %problem, "model failed to load");
                telemetry::record_load(&name, "", false);
                state.problem = Some(problem);
                return state;
            }
        };
        let versions = match scan::select_versions(dir, config.version_policy.as_ref()) {
            Ok(v) if v.is_empty() => {
                Err(format!("no version directory of {} matches its version policy", dir.display()))
            }
            other => other,
        };
        let versions = match versions {
            Ok(v) => v,
            Err(problem) => {
                tracing::error!(model = %name, %problem, "model failed to load");
                telemetry::record_load(&name, "", false);
                state.problem = Some(problem);
                return state;
            }
        };
        for version in versions {
            let started = Instant::now();
            match ModelVersion::load(&self.runtime, dir, version, config.clone(), explicit, self.context) {
                Ok(loaded) => {
                    tracing::info!(model = %name, version, elapsed_ms = started.elapsed().as_millis() as u64, "model version ready");
                    telemetry::record_load(&name, &version.to_string(), true);
                    state.versions.insert(version, VersionState::Ready(Arc::new(loaded)));
                }
                Err(reason) => {
                    tracing::error!(model = %name, version, %reason, "model version failed to load");
                    telemetry::record_load(&name, &version.to_string(), false);
                    state.versions.insert(version, VersionState::Failed(reason));
                }
            }
        }
        state
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
                .find_map(|v| match v {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Failed(_) => None,
                })
                .ok_or_else(|| {
                    let why = state.problem.clone().unwrap_or_else(|| "no version is ready".into());
                    Error::Unavailable(format!("model '{name}' is not ready: {why}"))
                });
        }
        let number: i64 =
            version.parse().map_err(|_| Error::not_found(format!("unknown version '{version}' of model '{name}'")))?;
        match state.versions.get(&number) {
            Some(VersionState::Ready(m)) => Ok(m.clone()),
            Some(VersionState::Failed(reason)) => {
                Err(Error::Unavailable(format!("model '{name}' version {number} is not ready: {reason}")))
            }
            None => Err(Error::not_found(format!("unknown version '{version}' of model '{name}'"))),
        }
    }

    /// Ready versions of a model, in ascending order.
    pub fn ready_versions(&self, name: &str) -> Vec<Arc<ModelVersion>> {
        let models = self.models.read();
        models.get(name).map_or_else(Vec::new, |state| {
            state
                .versions
                .values()
                .filter_map(|v| match v {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Failed(_) => None,
                })
                .collect()
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
                    for (version, v) in &state.versions {
                        entries.push(match v {
                            VersionState::Ready(_) => entry(version.to_string(), "READY", String::new()),
                            VersionState::Failed(reason) => entry(version.to_string(), "UNAVAILABLE", reason.clone()),
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
        let ready =
            models.values().flat_map(|m| m.versions.values()).filter(|v| matches!(v, VersionState::Ready(_))).count();
        telemetry::set_models_ready(ready);
    }

    /// The completed config of a version (for ModelConfig).
    pub fn config(&self, name: &str, version: &str) -> Result<pb::ModelConfig> {
        Ok(self.get(name, version)?.config.clone())
    }
}
