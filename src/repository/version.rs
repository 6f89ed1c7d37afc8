//! One loaded model version: its completed config, its I/O contract, its
//! scheduler and statistics. Validates requests against the contract and
//! shapes outputs back for the client.

use super::config::{self, IoSpec, ModelIo};
use super::warmup;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse};
use crate::pb;
use crate::runtime::{Runtime, SessionOptions};
use crate::scheduler::{Labels, Scheduler};
use crate::telemetry::VersionStats;
use crate::tensor::{Tensor, shape_matches};
use std::path::Path;
use std::sync::Arc;

/// Requests that may wait for an instance before senders wait too, when the
/// config sets no max_queue_size.
const DEFAULT_QUEUE_SIZE: usize = 1024;

pub struct ModelVersion {
    pub name: String,
    pub version: i64,
    /// `version` as clients spell it.
    pub label: String,
    /// The config as completed against the graph (what ModelConfig returns).
    pub config: pb::ModelConfig,
    pub io: ModelIo,
    pub stats: Arc<VersionStats>,
    scheduler: Scheduler,
}

/// Server-wide facts that shape how a version is loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadContext {
    /// CPU cores available to the server.
    pub cores: usize,
}

impl ModelVersion {
    /// Loads `<model_dir>/<version>/<file>`, completes `config` against it,
    /// creates every instance, warms each up. Blocking: run off the async runtime.
    pub fn load(
        runtime: &Runtime,
        model_dir: &Path,
        version: i64,
        mut config: pb::ModelConfig,
        explicit_config: bool,
        context: LoadContext,
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
            prepacked: Default::default(),
        };
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
        let queue_size = match &config.scheduling_choice {
            Some(pb::model_config::SchedulingChoice::DynamicBatching(b)) => b
                .default_queue_policy
                .as_ref()
                .map(|p| p.max_queue_size as usize)
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_QUEUE_SIZE),
            None => DEFAULT_QUEUE_SIZE,
        };
        let label = version.to_string();
        let stats = Arc::new(VersionStats::default());
        let labels = Labels { model: name.clone(), version: label.clone() };
        let scheduler = Scheduler::start(labels, sessions, queue_size, stats.clone());
        Ok(ModelVersion { name, version, label, config, io, stats, scheduler })
    }

    /// Runs one request through the queue. Validation errors come back
    /// before anything is queued.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let prepared = self.prepare(&request)?;
        let outputs = self.scheduler.submit(prepared.inputs, prepared.batch, request.deadline);
        let outputs = match request.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), outputs)
                .await
                .map_err(|_| Error::DeadlineExceeded("the request's deadline passed before it completed".into()))??,
            None => outputs.await?,
        };
        Ok(InferResponse {
            model_name: self.name.clone(),
            model_version: self.label.clone(),
            id: request.id,
            outputs: self.finish(outputs, &request.outputs, prepared.batch)?,
        })
    }

    pub fn queue_depth(&self) -> usize {
        self.scheduler.queue_depth()
    }

    fn prepare(&self, request: &InferRequest) -> Result<Prepared> {
        let batching = self.io.max_batch_size > 0;
        let mut batch: Option<i64> = None;
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for (i, tensor) in request.inputs.iter().enumerate() {
            let spec = self.input_spec(&tensor.name)?;
            if request.inputs[..i].iter().any(|t| t.name == tensor.name) {
                return Err(Error::invalid(format!("input '{}' is given more than once", tensor.name)));
            }
            if tensor.datatype != spec.datatype {
                return Err(Error::invalid(format!(
                    "input '{}': expected datatype {}, received {}",
                    tensor.name, spec.datatype, tensor.datatype
                )));
            }
            let expected = expected_shape(spec, batching);
            if !shape_matches(&expected, &tensor.shape) {
                return Err(Error::invalid(format!(
                    "input '{}': expected shape {expected:?}, received {:?}",
                    tensor.name, tensor.shape
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
            inputs.push(Tensor { shape: graph_shape(spec, &tensor.shape, batching), ..tensor.clone() });
        }
        if let Some(missing) =
            self.io.inputs.iter().find(|s| !s.optional && !request.inputs.iter().any(|t| t.name == s.name))
        {
            return Err(Error::invalid(format!(
                "missing input '{}' for model '{}' (expects {})",
                missing.name,
                self.name,
                spec_names(&self.io.inputs)
            )));
        }
        for name in &request.outputs {
            if !self.io.outputs.iter().any(|s| &s.name == name) {
                return Err(Error::invalid(format!(
                    "unknown output '{name}' requested from model '{}' (outputs: {})",
                    self.name,
                    spec_names(&self.io.outputs)
                )));
            }
        }
        Ok(Prepared { inputs, batch: batch.unwrap_or(1) as u64 })
    }

    fn input_spec(&self, name: &str) -> Result<&IoSpec> {
        self.io.inputs.iter().find(|s| s.name == name).ok_or_else(|| {
            Error::invalid(format!(
                "unknown input '{name}' for model '{}' (expects {})",
                self.name,
                spec_names(&self.io.inputs)
            ))
        })
    }

    /// Keeps the requested outputs (all declared ones when none are named),
    /// in request order, shaped as the config declares them.
    fn finish(&self, mut produced: Vec<Tensor>, requested: &[String], batch: u64) -> Result<Vec<Tensor>> {
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
            let mut tensor = if outputs.iter().any(|t: &Tensor| t.name == spec.name) {
                produced[index].clone()
            } else {
                produced.swap_remove(index)
            };
            if spec.graph_dims != expected_shape(spec, batching) && spec.dims.iter().all(|&d| d >= 0) {
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
    batch: u64,
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
    if spec.graph_dims == expected_shape(spec, batching) {
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
