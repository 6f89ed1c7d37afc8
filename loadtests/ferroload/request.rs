//! Turns the config's "data" (protobuf JSON of inference.ModelInferRequest) into request messages.

use anyhow::{Context, Result, anyhow, bail};
use ferroserve::pb;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

const MESSAGE: &str = "inference.ModelInferRequest";

/// Builds one request per data object: `data` is an object, or a non-empty array of objects that
/// the run cycles through (request i uses object i % len), as ghz does.
pub fn build(data: &Value) -> Result<Vec<pb::ModelInferRequest>> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("the embedded descriptor set is invalid")?;
    let descriptor = pool.get_message_by_name(MESSAGE).ok_or_else(|| anyhow!("{MESSAGE} is not in the proto"))?;
    let objects: Vec<&Value> = match data {
        Value::Object(_) => vec![data],
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        _ => bail!("\"data\" must be an object or a non-empty array of objects"),
    };
    objects
        .into_iter()
        .enumerate()
        .map(|(i, object)| {
            let name = if matches!(data, Value::Array(_)) { format!("data[{i}]") } else { "data".to_string() };
            if contains_template(object) {
                eprintln!("ferroload: warning: {name} has '{{{{' in a string; ghz call templates are not expanded");
            }
            let dynamic = DynamicMessage::deserialize(descriptor.clone(), object)
                .with_context(|| format!("{name} is not a valid {MESSAGE} in protobuf JSON"))?;
            let request: pb::ModelInferRequest =
                dynamic.transcode_to().with_context(|| format!("{name} cannot be converted to {MESSAGE}"))?;
            check(&request).with_context(|| name.clone())?;
            Ok(request)
        })
        .collect()
}

fn check(request: &pb::ModelInferRequest) -> Result<()> {
    if request.model_name.is_empty() {
        bail!("\"model_name\" is missing");
    }
    if request.inputs.is_empty() {
        bail!("\"inputs\" is empty");
    }
    if !request.raw_input_contents.is_empty() && request.raw_input_contents.len() != request.inputs.len() {
        bail!(
            "{} raw_input_contents for {} inputs: give one per input or none",
            request.raw_input_contents.len(),
            request.inputs.len()
        );
    }
    Ok(())
}

fn contains_template(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("{{"),
        Value::Array(items) => items.iter().any(contains_template),
        Value::Object(map) => map.values().any(contains_template),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proto_and_json_field_names_and_base64_bytes() {
        let data = json!({
            "modelName": "text",
            "id": "r1",
            "inputs": [{"name": "words", "datatype": "BYTES", "shape": [1, 2],
                        "contents": {"bytesContents": ["aGVsbG8=", "d29ybGQ="]}}],
            "outputs": [{"name": "ids"}],
        });
        let requests = build(&data).unwrap();
        let r = &requests[0];
        assert_eq!((r.model_name.as_str(), r.id.as_str()), ("text", "r1"));
        let contents = r.inputs[0].contents.as_ref().unwrap();
        assert_eq!(contents.bytes_contents, [&b"hello"[..], &b"world"[..]]);
        assert_eq!(r.outputs[0].name, "ids");
    }

    #[test]
    fn arrays_give_several_requests_and_raw_contents_decode() {
        let one = |model: &str| {
            json!({"model_name": model, "inputs": [{"name": "x", "datatype": "INT32", "shape": [1]}],
                   "raw_input_contents": ["AQAAAA=="]})
        };
        let requests = build(&json!([one("a"), one("b")])).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].model_name, "b");
        assert_eq!(&requests[0].raw_input_contents[0][..], &[1, 0, 0, 0]);
    }

    #[test]
    fn bad_data_is_explained() {
        let err = |data: Value| format!("{:#}", build(&data).unwrap_err());
        assert!(err(json!(5)).contains("object or a non-empty array"));
        assert!(err(json!([])).contains("object or a non-empty array"));
        assert!(err(json!({"model_name": "m", "inputs": [], "nope": 1})).contains("data is not a valid"));
        assert!(err(json!({"inputs": [{"name": "x"}]})).contains("model_name"));
        assert!(err(json!({"model_name": "m"})).contains("inputs"));
        let fp = json!({"model_name": "m", "inputs": [{"name": "x", "contents": {"fp32_contents": ["a"]}}]});
        assert!(err(fp).contains("not a valid"));
    }
}
