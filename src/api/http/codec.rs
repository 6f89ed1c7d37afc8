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
    /// A string when present: `"id": null` or a number is refused, as the
    /// protocol (and Triton) say.
    #[serde(default, deserialize_with = "present_string")]
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

fn present_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

/// Parameter values are booleans, numbers or strings in the protocol;
/// anything else (null, an array, an object) is refused, named.
fn check_parameters(parameters: &Map<String, Value>, owner: impl Fn() -> String) -> Result<()> {
    for (key, value) in parameters {
        let kind = match value {
            Value::Bool(_) | Value::Number(_) | Value::String(_) => continue,
            Value::Null => "null",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        return Err(Error::invalid(format!(
            "{}: parameter '{key}' must be a boolean, a number or a string, got {kind}",
            owner()
        )));
    }
    Ok(())
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
    check_parameters(&request.parameters, || "request".into())?;
    for input in &request.inputs {
        check_parameters(&input.parameters, || format!("input '{}'", input.name))?;
    }
    for output in &request.outputs {
        check_parameters(&output.parameters, || format!("output '{}'", output.name))?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(body: &str) -> Result<InferRequest> {
        decode("m", "", Bytes::from(body.to_string()), None).map(|(request, _)| request)
    }

    const INPUT: &str = r#"{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}"#;

    #[test]
    fn id_is_a_string_when_present() {
        assert_eq!(decoded(&format!(r#"{{"id": "a", "inputs": [{INPUT}]}}"#)).unwrap().id, "a");
        assert_eq!(decoded(&format!(r#"{{"inputs": [{INPUT}]}}"#)).unwrap().id, "");
        for id in ["null", "7", "[]"] {
            let err = decoded(&format!(r#"{{"id": {id}, "inputs": [{INPUT}]}}"#)).unwrap_err().to_string();
            assert!(err.contains("malformed inference request JSON") && err.contains("string"), "{id}: {err}");
        }
    }

    #[test]
    fn parameter_values_are_scalars() {
        let ok = format!(r#"{{"parameters": {{"a": true, "b": 1.5, "c": "s"}}, "inputs": [{INPUT}]}}"#);
        assert!(decoded(&ok).is_ok());
        let cases = [
            (r#"{"parameters": {"p": {"k": 1}}, "inputs": [INPUT]}"#, "request: parameter 'p'", "an object"),
            (r#"{"parameters": {"p": null}, "inputs": [INPUT]}"#, "request: parameter 'p'", "null"),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1], "parameters": {"q": [1]}}]}"#,
                "input 'x': parameter 'q'",
                "an array",
            ),
            (
                r#"{"inputs": [INPUT], "outputs": [{"name": "y", "parameters": {"r": {}}}]}"#,
                "output 'y': parameter 'r'",
                "an object",
            ),
        ];
        for (body, owner, kind) in cases {
            let err = decoded(&body.replace("INPUT", INPUT)).unwrap_err().to_string();
            assert!(err.contains(owner) && err.ends_with(kind), "{body}: {err}");
        }
    }
}
