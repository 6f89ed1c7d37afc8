//! The ONNX Runtime boundary: finding and loading the shared library,
//! building sessions with ferroserve's tuning, reading a graph's signature and
//! running it on raw tensor bytes, and what the process may use of the
//! machine (threads, cores). Nothing outside this module knows `ort`.

mod cgroup;
mod library;
mod session;
mod strings;
mod threads;
mod workers;

pub use library::locate_library;

/// Hands memory freed by ONNX Runtime (a retired model version) back to the
/// operating system. ONNX Runtime allocates through the C library, whose
/// per-thread arenas keep freed memory; without this, resident memory creeps
/// up as versions come and go.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free pages; no live allocation is touched.
        unsafe {
            malloc_trim(0);
        }
    }
}
pub use session::{RunInput, Session};
pub use threads::{ModelThreads, cores_available, process_cpu};
pub use workers::{
    Sums as BusyPeriods, busy_periods, forget as forget_busy_periods, new_key as busy_periods_key, outside_period,
    request_half, worker_parked, worker_unparked,
};

use anyhow::Context;
use ort::session::builder::PrepackedWeights;
use std::path::Path;
use std::sync::Arc;

/// The process-wide ONNX Runtime environment. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    env: Arc<ort::environment::Environment>,
}

/// How to build one session (one model instance).
#[derive(Clone)]
pub struct SessionOptions {
    /// Threads ONNX Runtime uses inside one operator for this instance.
    pub intra_op_threads: usize,
    /// Threads for running independent graph nodes in parallel (1 = sequential).
    pub inter_op_threads: usize,
    /// Whether idle thread-pool threads busy-wait for the next operator:
    /// lower latency, but they hold cores the network threads could use.
    pub spinning: bool,
    /// Whether they keep busy-waiting once a run has returned, for the next
    /// one (ONNX Runtime's own default), rather than only while a run lasts.
    pub spin_between_runs: bool,
    /// Weights prepacked once and shared by every instance of one version.
    pub prepacked: Weights,
    /// The version's threads: ONNX Runtime's pool threads are spawned
    /// through it, and each session hands it to its instance thread.
    pub threads: ModelThreads,
}

/// Prepacked weights shared between the instances of one model version.
#[derive(Clone)]
pub struct Weights(PrepackedWeights);

impl Default for Weights {
    fn default() -> Self {
        Weights(PrepackedWeights::new())
    }
}

/// ONNX Runtime's own log lines, as ferroserve's (target `ort`): written
/// in `--log-format`, filtered with the rest; left to itself, it writes
/// coloured lines straight to stderr.
fn log(level: ort::logging::LogLevel, _category: &str, id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Verbose => tracing::trace!(target: "ort", id, location, "{message}"),
        LogLevel::Info => tracing::info!(target: "ort", id, location, "{message}"),
        LogLevel::Warning => tracing::warn!(target: "ort", id, location, "{message}"),
        LogLevel::Error | LogLevel::Fatal => tracing::error!(target: "ort", id, location, "{message}"),
    }
}

impl Runtime {
    /// Loads the ONNX Runtime shared library at `library` and creates the
    /// environment. Fails with a message naming the path, never panics.
    pub fn init(library: &Path) -> anyhow::Result<Self> {
        let builder = ort::init_from(library)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading the ONNX Runtime library {}", library.display()))?;
        let env = builder
            .with_name("ferroserve")
            .with_logger(Arc::new(log))
            .build()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("creating the ONNX Runtime environment")?;
        Ok(Runtime { env: Arc::new(env) })
    }

    /// Builds a session for the model file at `path`. Blocking: call it off
    /// the async runtime.
    pub fn load(&self, path: &Path, options: &SessionOptions) -> Result<Session, String> {
        session::load(&self.env, path, options)
    }
}
