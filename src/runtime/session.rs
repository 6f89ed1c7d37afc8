//! One ONNX Runtime session: its signature, and a run on raw tensor bytes
//! (one copy in, one copy out).

use super::{ModelThreads, SessionOptions};
use crate::telemetry::ComputeTimes;
use crate::tensor::{AlignedBuffer, DataType, Tensor, TensorSpec};
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynTensorValueType, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

/// A loaded model instance. `run` takes `&mut self`: one owner at a time.
pub struct Session {
    session: ort::session::Session,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// One reusable, 8-byte aligned input buffer per run input position.
    buffers: Vec<AlignedBuffer>,
    /// The threads of the version this session belongs to.
    threads: ModelThreads,
}

/// One input to a run: the batch shape, and the raw bytes of each request
/// in order, borrowed from the requests (copied once, into the batch buffer).
pub struct RunInput<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    pub shape: &'a [i64],
    pub parts: &'a [&'a [u8]],
}

/// Views aligned bytes as elements of `T`.
///
/// SAFETY: `bytes` must be 8-byte aligned, a whole number of `T`s, and every
/// bit pattern must be a valid `T` (BOOL bytes are normalised to 0 or 1).
unsafe fn cast<T>(bytes: &[u8]) -> &[T] {
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / std::mem::size_of::<T>()) }
}

pub(super) fn load(
    env: &ort::environment::Environment,
    path: &Path,
    options: &SessionOptions,
) -> Result<Session, String> {
    let session = ort::session::Session::builder(env)
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::All).map_err(Into::into))
        .and_then(|b| b.with_intra_threads(options.intra_op_threads).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(options.inter_op_threads.max(1)).map_err(Into::into))
        .and_then(|b| b.with_parallel_execution(options.inter_op_threads > 1).map_err(Into::into))
        .and_then(|b| b.with_intra_op_spinning(options.spinning).map_err(Into::into))
        .and_then(|b| b.with_inter_op_spinning(options.spinning).map_err(Into::into))
        // Pool threads spin while a run lasts and stop when it returns, so an
        // idle model holds no core between requests.
        .and_then(|b| {
            b.with_config_entry("session.force_spinning_stop", if options.spin_between_runs { "0" } else { "1" })
                .map_err(Into::into)
        })
        .and_then(|b| b.with_prepacked_weights(&options.prepacked.0).map_err(Into::into))
        .and_then(|b| b.with_thread_manager(options.threads.clone()).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e: ort::Error| format!("ONNX Runtime could not load {}: {e}", path.display()))?;
    let inputs = session.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?;
    let outputs = session.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?;
    Ok(Session { session, inputs, outputs, buffers: Vec::new(), threads: options.threads.clone() })
}

fn spec(name: &str, value: &ValueType) -> Result<TensorSpec, String> {
    match value {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: name.to_string(),
            datatype: from_ort(*ty).ok_or_else(|| format!("'{name}' has unsupported element type {ty:?}"))?,
            dims: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        }),
        other => Err(format!("'{name}' is a {other:?}, only tensors are supported")),
    }
}

fn from_ort(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

impl Session {
    /// The threads of this session's version (its pool threads, and the
    /// instance threads that register with it).
    pub fn threads(&self) -> &ModelThreads {
        &self.threads
    }

    /// Runs the graph on one batch. Outputs come back in the order of
    /// `self.outputs`, as raw bytes in the wire layout.
    pub fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<(Vec<Tensor>, ComputeTimes), String> {
        let started = Instant::now();
        if self.buffers.len() < inputs.len() {
            self.buffers.resize_with(inputs.len(), AlignedBuffer::default);
        }
        let mut values: Vec<(Cow<'_, str>, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (input, buffer) in inputs.iter().zip(self.buffers.iter_mut()) {
            let value = make_value(self.session.allocator(), input, buffer)
                .map_err(|e| format!("input '{}': {e}", input.name))?;
            values.push((Cow::Borrowed(input.name), value));
        }
        let prepared = Instant::now();
        let outputs = self.session.run(values).map_err(|e| e.to_string())?;
        let ran = Instant::now();
        let mut tensors = Vec::with_capacity(self.outputs.len());
        for (name, value) in outputs {
            let tensor = read_value(name, value).map_err(|e| format!("output '{name}': {e}"))?;
            tensors.push(tensor);
        }
        let times = ComputeTimes { input: prepared - started, infer: ran - prepared, output: ran.elapsed() };
        Ok((tensors, times))
    }
}

/// Builds the ONNX Runtime value for one input: BYTES through the string
/// API, everything else as a view over the batch buffer (the one copy).
fn make_value<'b>(
    allocator: &ort::memory::Allocator,
    input: &RunInput<'_>,
    buffer: &'b mut AlignedBuffer,
) -> Result<ort::session::SessionInputValue<'b>, String> {
    if input.datatype == DataType::Bytes {
        let joined: Vec<u8>;
        let data = match input.parts {
            [one] => *one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        return Ok(super::strings::to_tensor(allocator, input.shape, data)?.into_dyn().into());
    }
    let bytes: &'b mut [u8] = buffer.fill(input.parts);
    if input.datatype == DataType::Bool {
        // Any non-zero byte is true, as Triton reads BOOL; normalised so the
        // bytes are valid `bool`s.
        bytes.iter_mut().for_each(|b| *b = u8::from(*b != 0));
    }
    let bytes: &'b [u8] = bytes;
    let shape = input.shape.to_vec();
    macro_rules! view {
        ($t:ty) => {
            // SAFETY: AlignedBuffer is 8-byte aligned, the caller checked the
            // byte count against shape and datatype, BOOL bytes are 0 or 1 (above).
            ort::value::TensorRef::<$t>::from_array_view((shape, unsafe { cast::<$t>(bytes) }))
                .map_err(|e| e.to_string())?
                .into()
        };
    }
    Ok(match input.datatype {
        DataType::Bool => view!(bool),
        DataType::Uint8 => view!(u8),
        DataType::Uint16 => view!(u16),
        DataType::Uint32 => view!(u32),
        DataType::Uint64 => view!(u64),
        DataType::Int8 => view!(i8),
        DataType::Int16 => view!(i16),
        DataType::Int32 => view!(i32),
        DataType::Int64 => view!(i64),
        DataType::Fp16 => view!(half::f16),
        DataType::Bf16 => view!(half::bf16),
        DataType::Fp32 => view!(f32),
        DataType::Fp64 => view!(f64),
        DataType::Bytes => unreachable!("handled above"),
    })
}

fn read_value(name: &str, value: ort::value::DynValue) -> Result<Tensor, String> {
    let (ty, shape) = match value.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => return Err(format!("is a {other:?}, only tensors are supported")),
    };
    let datatype = from_ort(ty).ok_or_else(|| format!("unsupported element type {ty:?}"))?;
    let tensor = value.downcast::<DynTensorValueType>().map_err(|e| e.to_string())?;
    let data = match datatype.byte_size() {
        None => super::strings::from_tensor(&tensor, &shape)?,
        Some(size) => {
            let count = crate::tensor::element_count(&shape)?;
            let len = count * size;
            if len == 0 {
                Vec::new()
            } else {
                // SAFETY: ONNX Runtime owns `count` elements of `size` bytes at
                // data_ptr for as long as `tensor` lives; we copy them out here.
                unsafe { std::slice::from_raw_parts(tensor.data_ptr().cast::<u8>(), len) }.to_vec()
            }
        }
    };
    Ok(Tensor { name: name.to_string(), datatype, shape, data: data.into() })
}
