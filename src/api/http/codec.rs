//! KServe V2 REST inference bodies: a JSON header, optionally followed by
//! raw tensor bytes (Triton's binary-tensor extension, announced by the
//! `Inference-Header-Content-Length` header).

use super::json as tensor_json;
use crate::error::{Error, Result};
use crate::infer::{InferRequest, InferResponse, PRIORITY_PARAMETER, TIMEOUT_PARAMETER};
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// How the response should carry each output.
pub struct OutputEncoding {
    /// Default for outputs the request does not list (binary_data_output).
    binary_default: bool,
    /// Per requested output: its binary_data choice, if given.
    explicit: Vec<(String, Option<bool>)>,
}

impl OutputEncoding {
    fn binary(&self, name: &str) -> bool {
        self.explicit.iter().find(|(n, _)| n == name).and_then(|(_, b)| *b).unwrap_or(self.binary_default)
    }
}

fn bool_param(parameters: &Map<String, Value>, key: &str, owner: &str) -> Result<Option<bool>> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::invalid(format!("{owner}: parameter '{key}' must be true or false, got {other}"))),
    }
}

/// Decodes a request body. `header_length` is the value of
/// Inference-Header-Content-Length, when present.
pub fn decode(
    model: &str,
    version: &str,
    body: Bytes,
    header_length: Option<usize>,
) -> Result<(InferRequest, OutputEncoding)> {
    let json_len = header_length.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(Error::invalid(format!(
            "Inference-Header-Content-Length {json_len} exceeds the body's {} bytes",
            body.len()
        )));
    }
    let request: JsonRequest =
        serde_json::from_slice(&body[..json_len]).map_err(|e| malformed_json("inference request JSON", &e))?;
    let mut binary = body.slice(json_len..);
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = DataType::from_wire(&input.datatype)
            .ok_or_else(|| Error::invalid(format!("input '{}': unknown datatype '{}'", input.name, input.datatype)))?;
        let size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                Error::invalid(format!("input '{}': binary_data_size must be a non-negative integer", input.name))
            })? as usize),
        };
        let data: Bytes = match (size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!("input '{}' has both data and binary_data_size", input.name)));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(Error::invalid(format!(
                        "input '{}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                        input.name,
                        binary.len()
                    )));
                }
                binary.split_to(size)
            }
            (None, Some(data)) => tensor_json::decode(&input.name, datatype, data)?.into(),
            (None, None) => {
                return Err(Error::invalid(format!(
                    "input '{}' has no data: give 'data' or parameters.binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push(Tensor { name: input.name, datatype, shape: input.shape, data });
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let binary_default = bool_param(&request.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut explicit = Vec::with_capacity(request.outputs.len());
    for output in &request.outputs {
        if output.parameters.contains_key("classification") {
            return Err(Error::Unimplemented(format!(
                "output '{}': the classification extension is not supported",
                output.name
            )));
        }
        let choice = bool_param(&output.parameters, "binary_data", &format!("output '{}'", output.name))?;
        explicit.push((output.name.clone(), choice));
    }
    let timeout = match request.parameters.get("timeout") {
        None => None,
        Some(v) => Some(v.as_u64().filter(|&us| us > 0).ok_or_else(|| Error::invalid(TIMEOUT_PARAMETER))?),
    };
    let priority = match request.parameters.get("priority") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| Error::invalid(PRIORITY_PARAMETER))?),
    };
    let infer = InferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: request.id.unwrap_or_default(),
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        deadline: None,
        timeout: timeout.map(std::time::Duration::from_micros),
        priority,
        trace: None,
    };
    Ok((infer, OutputEncoding { binary_default, explicit }))
}

/// An encoded response: the body and, when binary outputs follow the JSON,
/// the JSON header's length.
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

pub fn encode(response: &InferResponse, encoding: &OutputEncoding) -> Encoded {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut binary: Vec<&Tensor> = Vec::new();
    for tensor in &response.outputs {
        let mut output = json!({
            "name": tensor.name,
            "datatype": tensor.datatype.wire_name(),
            "shape": tensor.shape,
        });
        if encoding.binary(&tensor.name) {
            output["parameters"] = json!({ "binary_data_size": tensor.data.len() });
            binary.push(tensor);
        } else {
            output["data"] = tensor_json::encode(tensor);
        }
        outputs.push(output);
    }
    let mut header = json!({
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    });
    if !response.id.is_empty() {
        header["id"] = Value::from(response.id.clone());
    }
    let mut body = serde_json::to_vec(&header).expect("a JSON value serializes; this is a bug");
    if binary.is_empty() {
        return Encoded { body, header_length: None };
    }
    let header_length = body.len();
    body.reserve(binary.iter().map(|t| t.data.len()).sum());
    for tensor in binary {
        body.extend_from_slice(&tensor.data);
    }
    Encoded { body, header_length: Some(header_length) }
}

/// A JSON body that does not parse, named; nesting past serde_json's limit
/// of 128 levels (which bounds the parser's stack) says so.
pub fn malformed_json(what: &str, error: &serde_json::Error) -> Error {
    if error.to_string().starts_with("recursion limit exceeded") {
        return Error::invalid(format!(
            "malformed {what}: nested more than 128 levels deep (line {}, column {})",
            error.line(),
            error.column()
        ));
    }
    Error::invalid(format!("malformed {what}: {error}"))
}
