//! Descriptions both fronts return, built once as protocol messages: the
//! gRPC front sends them as they are, the HTTP front as JSON (proto field
//! names, 64-bit integers as numbers, as Triton's REST API does).

use crate::error::{Error, Result};
use crate::pb;
use crate::repository::{ModelVersion, Repository};
use crate::telemetry::Tally;
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

pub fn server_metadata() -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: "ferroserve".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: super::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn model_metadata(repository: &Repository, name: &str, version: &str) -> Result<pb::ModelMetadataResponse> {
    let model = repository.get(name, version)?;
    let batching = model.io.max_batch_size > 0;
    let describe = |specs: &[crate::repository::config::IoSpec]| {
        specs
            .iter()
            .map(|s| pb::model_metadata_response::TensorMetadata {
                name: s.name.clone(),
                datatype: s.datatype.wire_name().to_string(),
                shape: if batching {
                    std::iter::once(-1).chain(s.dims.iter().copied()).collect()
                } else {
                    s.dims.clone()
                },
            })
            .collect()
    };
    Ok(pb::ModelMetadataResponse {
        name: model.name.clone(),
        versions: repository.ready_versions(name).iter().map(|v| v.label.clone()).collect(),
        platform: model.config.platform.clone(),
        inputs: describe(&model.io.inputs),
        outputs: describe(&model.io.outputs),
    })
}

fn duration(tally: &Tally) -> Option<pb::StatisticDuration> {
    let (count, ns) = tally.get();
    Some(pb::StatisticDuration { count, ns })
}

fn version_statistics(model: &ModelVersion) -> pb::ModelStatistics {
    let s = &model.stats;
    pb::ModelStatistics {
        name: model.name.clone(),
        version: model.label.clone(),
        last_inference: s.last_inference_ms.load(Relaxed),
        inference_count: s.inference_count.load(Relaxed),
        execution_count: s.execution_count.load(Relaxed),
        inference_stats: Some(pb::InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: duration(&Tally::default()),
            cache_miss: duration(&Tally::default()),
        }),
        batch_stats: s
            .batches
            .lock()
            .iter()
            .map(|(&batch_size, t)| pb::InferBatchStatistics {
                batch_size,
                compute_input: duration(&t.compute_input),
                compute_infer: duration(&t.compute_infer),
                compute_output: duration(&t.compute_output),
            })
            .collect(),
        memory_usage: Vec::new(),
        response_stats: Default::default(),
    }
}

/// The versions statistics cover: one version, every ready version of one
/// model (empty version), or every ready model (empty name).
fn statistics_of(repository: &Repository, name: &str, version: &str) -> Result<Vec<Arc<ModelVersion>>> {
    if name.is_empty() {
        return Ok(repository.all_ready());
    }
    if version.is_empty() {
        let versions = repository.ready_versions(name);
        if versions.is_empty() {
            repository.get(name, version)?; // the precise error: unknown or not ready
        }
        return Ok(versions);
    }
    Ok(vec![repository.get(name, version)?])
}

/// Triton's ModelStatistics of the versions `statistics_of` selects.
pub fn statistics(repository: &Repository, name: &str, version: &str) -> Result<pb::ModelStatisticsResponse> {
    let models = statistics_of(repository, name, version)?;
    Ok(pb::ModelStatisticsResponse { model_stats: models.iter().map(|m| version_statistics(m)).collect() })
}

/// The statistics as Triton's REST API returns them, each version's entry
/// with ferroserve's `execution_cost` added (the cost model's predicted
/// execution time per power-of-two batch size) and `admission` (the margin
/// admission adds to its predictions, the batch size aimed for).
pub fn statistics_json(repository: &Repository, name: &str, version: &str) -> Result<serde_json::Value> {
    let models = statistics_of(repository, name, version)?;
    let response = pb::ModelStatisticsResponse { model_stats: models.iter().map(|m| version_statistics(m)).collect() };
    let mut json = to_json(&response, "inference.ModelStatisticsResponse")?;
    let entries = json.get_mut("model_stats").and_then(|v| v.as_array_mut());
    for (entry, model) in entries.into_iter().flatten().zip(&models) {
        let costs: Vec<serde_json::Value> = model
            .execution_costs()
            .into_iter()
            .filter_map(|(rows, time)| Some(serde_json::json!({"batch_size": rows, "seconds": time?.as_secs_f64()})))
            .collect();
        entry["execution_cost"] = serde_json::Value::Array(costs);
        let (margin, batch) = model.admission_figures();
        entry["admission"] = serde_json::json!({"margin_seconds": margin.as_secs_f64(), "batch_size_aimed": batch});
    }
    Ok(json)
}

pub fn repository_index(repository: &Repository, ready_only: bool) -> pb::RepositoryIndexResponse {
    pb::RepositoryIndexResponse {
        models: repository
            .index(ready_only)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state,
                reason: e.reason,
            })
            .collect(),
    }
}

/// A protocol message as the JSON Triton's REST API returns.
pub fn to_json<M: Message>(message: &M, full_name: &str) -> Result<serde_json::Value> {
    let pool = pb::descriptor_pool();
    let descriptor = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| Error::internal(format!("no message {full_name}; this is a bug")))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| Error::internal(format!("re-encoding {full_name}: {e}")))?;
    let options =
        SerializeOptions::new().stringify_64_bit_integers(false).use_proto_field_name(true).skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| Error::internal(format!("serializing {full_name}: {e}")))
}
