//! Warming an instance up before its version reports ready: the config's
//! `model_warmup` samples, or one synthetic zero-filled full batch.

use super::config::ModelIo;
use crate::pb;
use crate::pb::model_warmup::input::InputDataType;
use crate::runtime::{RunInput, Session};
use crate::tensor::{DataType, element_count, encode_bytes_elements};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs every warmup sample `count` times on `session`. A configured sample
/// that fails is a load error; the synthetic one only logs.
pub fn run(session: &mut Session, config: &pb::ModelConfig, io: &ModelIo, model_dir: &Path) -> Result<(), String> {
    let batching = io.max_batch_size > 0;
    if config.model_warmup.is_empty() {
        let inputs: Vec<Sample> = io
            .inputs
            .iter()
            .map(|spec| {
                // A full batch, so ONNX Runtime sizes its buffers for the largest run.
                let mut shape: Vec<i64> = spec.graph_dims.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
                if batching {
                    shape[0] = io.max_batch_size as i64;
                }
                Sample::zeros(&spec.name, spec.datatype, shape)
            })
            .collect::<Result<_, _>>()?;
        if let Err(e) = execute(session, &inputs) {
            tracing::debug!(model = %config.name, error = %e, "synthetic warmup failed; continuing");
        }
        return Ok(());
    }
    for warmup in &config.model_warmup {
        let mut inputs = Vec::with_capacity(warmup.inputs.len());
        for (name, input) in &warmup.inputs {
            let spec = io
                .inputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| format!("model_warmup '{}': '{name}' is not an input of the model", warmup.name))?;
            let datatype = pb::DataType::try_from(input.data_type).ok().and_then(DataType::from_config);
            if datatype != Some(spec.datatype) {
                return Err(format!(
                    "model_warmup '{}': input '{name}' must have data_type {}",
                    warmup.name,
                    spec.datatype.to_config().as_str_name()
                ));
            }
            let mut shape = Vec::with_capacity(input.dims.len() + 1);
            if batching {
                shape.push(i64::from(warmup.batch_size.max(1)));
            }
            shape.extend_from_slice(&input.dims);
            let sample = match &input.input_data_type {
                Some(InputDataType::ZeroData(_)) | None => Sample::zeros(name, spec.datatype, shape)?,
                Some(InputDataType::RandomData(_)) => Sample::random(name, spec.datatype, shape)?,
                Some(InputDataType::InputDataFile(file)) => {
                    let path = model_dir.join("warmup").join(file);
                    let data = std::fs::read(&path)
                        .map_err(|e| format!("model_warmup '{}': reading {}: {e}", warmup.name, path.display()))?;
                    Sample { name: name.clone(), datatype: spec.datatype, shape, data }
                }
            };
            inputs.push(sample);
        }
        for _ in 0..warmup.count.max(1) {
            execute(session, &inputs).map_err(|e| format!("model_warmup '{}' failed: {e}", warmup.name))?;
        }
    }
    Ok(())
}

/// Profiling runs slower than this are not repeated. Faster sizes run
/// REPEATS more times and the fastest of those counts: the first run may
/// size ONNX Runtime's buffers, and one run preempted on a busy machine
/// must not make a batch size look slow (it would set the batch size the
/// queue aims for).
const REPEAT_BELOW: Duration = Duration::from_millis(50);
const REPEATS: usize = 3;

/// Measures one zero-filled batch per power-of-two size up to
/// `max_batch_size` (and that size itself; just 1 without batching): the
/// seed of the version's cost model. A size that fails ends the profile
/// (the model may need real data); the cost model then learns from traffic.
pub fn profile(session: &mut Session, io: &ModelIo, max_batch_size: usize) -> Vec<(usize, Duration)> {
    let batching = io.max_batch_size > 0;
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(1usize), |&s| s.checked_mul(2)).take_while(|&s| s < max_batch_size.max(1)).collect();
    sizes.push(max_batch_size.max(1));
    let mut measured = Vec::new();
    for rows in sizes {
        let inputs: Result<Vec<Sample>, String> = io
            .inputs
            .iter()
            .map(|spec| {
                let mut shape: Vec<i64> = spec.graph_dims.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
                if batching {
                    shape[0] = rows as i64;
                }
                Sample::zeros(&spec.name, spec.datatype, shape)
            })
            .collect();
        let runs = inputs.and_then(|inputs| {
            let started = Instant::now();
            execute(session, &inputs)?;
            let mut elapsed = started.elapsed();
            if elapsed < REPEAT_BELOW {
                elapsed = Duration::MAX;
                for _ in 0..REPEATS {
                    let again = Instant::now();
                    execute(session, &inputs)?;
                    elapsed = elapsed.min(again.elapsed());
                }
            }
            Ok(elapsed)
        });
        match runs {
            Ok(elapsed) => measured.push((rows, elapsed)),
            Err(e) => {
                tracing::debug!(rows, error = %e, "cost profile stopped; the cost model learns from traffic");
                break;
            }
        }
    }
    measured
}

struct Sample {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    data: Vec<u8>,
}

impl Sample {
    fn zeros(name: &str, datatype: DataType, shape: Vec<i64>) -> Result<Self, String> {
        let count = element_count(&shape)?;
        let data = match datatype.byte_size() {
            Some(size) => vec![0; count * size],
            None => encode_bytes_elements(std::iter::repeat_n(&b""[..], count)),
        };
        Ok(Sample { name: name.to_string(), datatype, shape, data })
    }

    /// Deterministic pseudo-random contents that are valid for the type
    /// (0/1 for BOOL, finite small floats, short ASCII strings).
    fn random(name: &str, datatype: DataType, shape: Vec<i64>) -> Result<Self, String> {
        let count = element_count(&shape)?;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut data = Vec::new();
        for _ in 0..count {
            let r = next();
            match datatype {
                DataType::Bool => data.push((r & 1) as u8),
                DataType::Fp32 => data.extend_from_slice(&((r % 1000) as f32 / 1000.0).to_le_bytes()),
                DataType::Fp64 => data.extend_from_slice(&((r % 1000) as f64 / 1000.0).to_le_bytes()),
                DataType::Fp16 => {
                    data.extend_from_slice(&half::f16::from_f32((r % 1000) as f32 / 1000.0).to_le_bytes())
                }
                DataType::Bf16 => {
                    data.extend_from_slice(&half::bf16::from_f32((r % 1000) as f32 / 1000.0).to_le_bytes())
                }
                DataType::Bytes => {
                    let text = format!("w{}", r % 1000);
                    data.extend_from_slice(&(text.len() as u32).to_le_bytes());
                    data.extend_from_slice(text.as_bytes());
                }
                other => {
                    let size = other.byte_size().expect("fixed-size type; this is a bug");
                    data.extend_from_slice(&r.to_le_bytes()[..size]);
                }
            }
        }
        Ok(Sample { name: name.to_string(), datatype, shape, data })
    }
}

fn execute(session: &mut Session, samples: &[Sample]) -> Result<(), String> {
    let parts: Vec<[&[u8]; 1]> = samples.iter().map(|s| [&s.data[..]]).collect();
    let inputs: Vec<RunInput<'_>> = samples
        .iter()
        .zip(&parts)
        .map(|(s, parts)| RunInput { name: &s.name, datatype: s.datatype, shape: &s.shape, parts })
        .collect();
    session.run(&inputs).map(|_| ())
}
