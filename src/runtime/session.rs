//! One ONNX Runtime session: its signature, and a run on raw tensor bytes
//! (one copy in, one copy out).

use super::SessionOptions;
use crate::telemetry::ComputeTimes;
use crate::tensor::{DataType, Tensor, TensorSpec};
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynTensor, DynTensorValueType, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

/// A loaded model instance. `run` takes `&mut self`: one owner at a time.
pub struct Session {
    session: ort::session::Session,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// One input to a run, borrowed from the request.
pub struct RunInput<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    pub shape: &'a [i64],
    pub data: &'a [u8],
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
        .and_then(|b| b.with_prepacked_weights(&options.prepacked.0).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e: ort::Error| format!("ONNX Runtime could not load {}: {e}", path.display()))?;
    let inputs = session.inputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?;
    let outputs = session.outputs().iter().map(|o| spec(o.name(), o.dtype())).collect::<Result<_, _>>()?;
    Ok(Session { session, inputs, outputs })
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

fn to_ort(datatype: DataType) -> TensorElementType {
    match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

impl Session {
    /// Runs the graph. Outputs come back in the order of `self.outputs`, as
    /// raw bytes in the wire layout.
    pub fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<(Vec<Tensor>, ComputeTimes), String> {
        let started = Instant::now();
        let mut values: Vec<(Cow<'_, str>, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let value = self.make_value(input).map_err(|e| format!("input '{}': {e}", input.name))?;
            values.push((Cow::Borrowed(input.name), value.into()));
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

    fn make_value(&self, input: &RunInput<'_>) -> Result<ort::value::DynValue, String> {
        if input.datatype == DataType::Bytes {
            return Ok(super::strings::to_tensor(self.session.allocator(), input.shape, input.data)?.into_dyn());
        }
        let mut tensor = DynTensor::new(self.session.allocator(), to_ort(input.datatype), input.shape.to_vec())
            .map_err(|e| e.to_string())?;
        if !input.data.is_empty() {
            let dst = tensor.data_ptr_mut().cast::<u8>();
            // SAFETY: the tensor was allocated for exactly `shape` elements of
            // `datatype`, and the caller checked data.len() against both.
            unsafe { std::ptr::copy_nonoverlapping(input.data.as_ptr(), dst, input.data.len()) };
        }
        Ok(tensor.into_dyn())
    }
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
