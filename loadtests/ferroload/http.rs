//! HTTP transport: a ModelInferRequest as a KServe V2 JSON body (typed contents as `data`, raw
//! contents with Triton's binary-tensor extension), POSTed with hyper's pooled HTTP/1.1 client.

use crate::driver::{Call, Outcome, with_sources};
use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use ferroserve::pb;
use ferroserve::pb::infer_parameter::ParameterChoice;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Triton's header giving the JSON part's length when binary tensor data follows it.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request ready to send: the path and the body (JSON, then any binary tensor data).
#[derive(Debug)]
pub struct HttpRequest {
    pub path: String,
    pub body: Bytes,
    /// Length of the JSON part when binary data follows it.
    pub header_length: Option<usize>,
}

#[derive(Serialize)]
struct JsonRequest<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<JsonOutput<'a>>,
}

#[derive(Serialize)]
struct JsonInput<'a> {
    name: &'a str,
    shape: &'a [i64],
    datatype: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
}

/// Tensor elements as a flat JSON array (serde writes f32 in its shortest form).
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Bool(&'a [bool]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Text(Vec<&'a str>),
}

fn parameters(map: &HashMap<String, pb::InferParameter>) -> Map<String, Value> {
    let mut sorted: Vec<_> = map.iter().collect();
    sorted.sort_by_key(|(k, _)| k.as_str());
    sorted
        .into_iter()
        .filter_map(|(key, p)| {
            let value = match p.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => Value::from(*b),
                ParameterChoice::Int64Param(i) => Value::from(*i),
                ParameterChoice::StringParam(s) => Value::from(s.clone()),
                ParameterChoice::DoubleParam(d) => Value::from(*d),
                ParameterChoice::Uint64Param(u) => Value::from(*u),
            };
            Some((key.clone(), value))
        })
        .collect()
}

/// Converts the request to KServe V2 JSON; raw_input_contents, and BYTES elements that are not
/// UTF-8, travel as binary data after the JSON.
pub fn encode(request: &pb::ModelInferRequest) -> Result<HttpRequest> {
    let mut binary: Vec<u8> = Vec::new();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        let mut params = parameters(&input.parameters);
        let (data, raw) = match request.raw_input_contents.get(i) {
            Some(raw) => (None, Some(raw.to_vec())),
            None => match typed_data(input)? {
                Some(data) => (Some(data), None),
                None => (None, bytes_as_binary(input)),
            },
        };
        match raw {
            Some(raw) => {
                params.insert("binary_data_size".into(), Value::from(raw.len()));
                binary.extend_from_slice(&raw);
            }
            None if data.is_none() => {
                bail!("input '{}' has no data: give typed \"contents\" or raw_input_contents", input.name)
            }
            None => {}
        }
        inputs.push(JsonInput {
            name: &input.name,
            shape: &input.shape,
            datatype: &input.datatype,
            parameters: params,
            data,
        });
    }
    let outputs =
        request.outputs.iter().map(|o| JsonOutput { name: &o.name, parameters: parameters(&o.parameters) }).collect();
    let json = JsonRequest { id: &request.id, parameters: parameters(&request.parameters), inputs, outputs };
    let mut body = serde_json::to_vec(&json)?;
    let header_length = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    let mut path = format!("/v2/models/{}", escape(&request.model_name));
    if !request.model_version.is_empty() {
        path.push_str(&format!("/versions/{}", escape(&request.model_version)));
    }
    path.push_str("/infer");
    Ok(HttpRequest { path, body: Bytes::from(body), header_length })
}

/// The typed contents matching the datatype as JSON data; `None` when there are none (or when
/// BYTES elements are not all UTF-8).
fn typed_data(input: &pb::model_infer_request::InferInputTensor) -> Result<Option<Data<'_>>> {
    let Some(c) = input.contents.as_ref() else { return Ok(None) };
    let data = match input.datatype.as_str() {
        "BOOL" => Data::Bool(&c.bool_contents),
        "INT8" | "INT16" | "INT32" => Data::I32(&c.int_contents),
        "INT64" => Data::I64(&c.int64_contents),
        "UINT8" | "UINT16" | "UINT32" => Data::U32(&c.uint_contents),
        "UINT64" => Data::U64(&c.uint64_contents),
        "FP32" if c.fp32_contents.iter().all(|v| v.is_finite()) => Data::F32(&c.fp32_contents),
        "FP64" if c.fp64_contents.iter().all(|v| v.is_finite()) => Data::F64(&c.fp64_contents),
        "FP32" | "FP64" => bail!("input '{}': JSON cannot carry NaN or infinity; use raw_input_contents", input.name),
        "BYTES" => match c.bytes_contents.iter().map(|b| std::str::from_utf8(b)).collect::<Result<Vec<_>, _>>() {
            Ok(text) => Data::Text(text),
            Err(_) => return Ok(None),
        },
        other => bail!("input '{}': datatype {other} has no typed contents; use raw_input_contents", input.name),
    };
    Ok(Some(data))
}

/// BYTES contents in Triton's binary layout (4-byte little-endian length before each element).
fn bytes_as_binary(input: &pb::model_infer_request::InferInputTensor) -> Option<Vec<u8>> {
    let contents = input.contents.as_ref().filter(|_| input.datatype == "BYTES")?;
    let mut out = Vec::new();
    for element in &contents.bytes_contents {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    Some(out)
}

/// Percent-encodes a path segment.
fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The gRPC status name for an HTTP answer, following ferroserve's error table (README).
pub fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "OK",
        400 => "InvalidArgument",
        404 => "NotFound",
        413 | 429 => "ResourceExhausted",
        500 => "Internal",
        501 => "Unimplemented",
        503 => "Unavailable",
        504 => "DeadlineExceeded",
        _ => "Unknown",
    }
}

/// POSTs the prepared requests; cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct HttpCaller {
    client: Client<HttpConnector, Full<Bytes>>,
    base: Arc<str>,
    requests: Arc<[HttpRequest]>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    timeout: Duration,
}

impl HttpCaller {
    pub fn new(
        addr: SocketAddr,
        requests: Vec<HttpRequest>,
        metadata: &[(String, String)],
        timeout: Duration,
        pool: usize,
    ) -> Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(pool).build(connector);
        let headers = metadata
            .iter()
            .map(|(k, v)| {
                let name =
                    HeaderName::try_from(k.as_str()).map_err(|_| anyhow!("metadata key '{k}' is not a header name"))?;
                let value =
                    HeaderValue::try_from(v.as_str()).map_err(|_| anyhow!("metadata value of '{k}' is invalid"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HttpCaller {
            client,
            base: Arc::from(format!("http://{addr}")),
            requests: requests.into(),
            headers: headers.into(),
            timeout,
        })
    }

    async fn post(self, index: u64) -> Outcome {
        let prepared = &self.requests[(index % self.requests.len() as u64) as usize];
        let mut builder = Request::builder().method(Method::POST).uri(format!("{}{}", self.base, prepared.path));
        builder = match prepared.header_length {
            Some(length) => builder.header(CONTENT_TYPE, "application/octet-stream").header(HEADER_LENGTH, length),
            None => builder.header(CONTENT_TYPE, "application/json"),
        };
        for (name, value) in self.headers.iter() {
            builder = builder.header(name, value);
        }
        let request = match builder.body(Full::new(prepared.body.clone())) {
            Ok(request) => request,
            Err(e) => return Outcome::failed("Unknown", format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| format!("HTTP request failed: {}", with_sources(&e)))?;
            let status = response.status();
            let body =
                response.into_body().collect().await.map_err(|e| format!("HTTP body failed: {}", with_sources(&e)))?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::failed("DeadlineExceeded", "HTTP request timed out"),
            Ok(Err(error)) => Outcome::failed("Unavailable", error),
            Ok(Ok((status, _))) if status == StatusCode::OK => Outcome::ok(),
            Ok(Ok((status, body))) => Outcome::failed(status_name(status), error_text(status, &body)),
        }
    }
}

/// "HTTP 400: <the server's error>", from a `{"error": …}` body or the raw text.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    format!("HTTP {}: {message}", status.as_u16())
}

impl Call for HttpCaller {
    fn call(&mut self, index: u64) -> impl Future<Output = Outcome> + Send {
        self.clone().post(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::build;
    use serde_json::json;

    fn json_part(request: &HttpRequest) -> Value {
        let end = request.header_length.unwrap_or(request.body.len());
        serde_json::from_slice(&request.body[..end]).unwrap()
    }

    #[test]
    fn typed_contents_become_json_data() {
        let data = json!({
            "model_name": "mixed", "model_version": "1", "id": "r",
            "parameters": {"timeout": {"int64_param": 1000}},
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [1, 2], "contents": {"fp32_contents": [0.7, -1.5]}},
                {"name": "b", "datatype": "INT32", "shape": [1, 2], "contents": {"int_contents": [1, -2]}},
                {"name": "mask", "datatype": "BOOL", "shape": [1, 2], "contents": {"bool_contents": [true, false]}},
                {"name": "w", "datatype": "BYTES", "shape": [1, 1], "contents": {"bytes_contents": ["aGk="]}}
            ],
            "outputs": [{"name": "sum"}]
        });
        let request = encode(&build(&data).unwrap()[0]).unwrap();
        assert_eq!(request.path, "/v2/models/mixed/versions/1/infer");
        assert_eq!(request.header_length, None);
        let body = std::str::from_utf8(&request.body).unwrap();
        assert!(body.contains("[0.7,-1.5]"), "f32 written in shortest form: {body}");
        let v = json_part(&request);
        assert_eq!(v["id"], "r");
        assert_eq!(v["parameters"]["timeout"], 1000);
        assert_eq!(v["inputs"][1]["data"], json!([1, -2]));
        assert_eq!(v["inputs"][2]["data"], json!([true, false]));
        assert_eq!(v["inputs"][3]["data"], json!(["hi"]));
        assert_eq!(v["outputs"][0]["name"], "sum");
    }

    #[test]
    fn raw_contents_use_the_binary_extension() {
        let data = json!({
            "model_name": "m",
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1]},
                       {"name": "y", "datatype": "FP16", "shape": [1, 1]}],
            "raw_input_contents": ["AQAAAA==", "ADw="]
        });
        let request = encode(&build(&data).unwrap()[0]).unwrap();
        let length = request.header_length.unwrap();
        assert_eq!(&request.body[length..], &[1, 0, 0, 0, 0, 0x3c]);
        let v = json_part(&request);
        assert_eq!(v["inputs"][0]["parameters"]["binary_data_size"], 4);
        assert_eq!(v["inputs"][1]["parameters"]["binary_data_size"], 2);
        assert!(v["inputs"][0].get("data").is_none());
    }

    #[test]
    fn non_utf8_bytes_go_binary_and_missing_data_is_an_error() {
        let data = json!({"model_name": "t", "inputs": [
            {"name": "w", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": ["/w=="]}}]});
        let request = encode(&build(&data).unwrap()[0]).unwrap();
        let length = request.header_length.unwrap();
        assert_eq!(&request.body[length..], &[1, 0, 0, 0, 0xff]);
        let empty = json!({"model_name": "t", "inputs": [{"name": "w", "datatype": "FP32", "shape": [1]}]});
        assert!(encode(&build(&empty).unwrap()[0]).unwrap_err().to_string().contains("no data"));
        let half = json!({"model_name": "t", "inputs": [
            {"name": "h", "datatype": "FP16", "shape": [1], "contents": {"fp32_contents": [1.0]}}]});
        assert!(encode(&build(&half).unwrap()[0]).is_err());
    }

    #[test]
    fn http_statuses_map_to_grpc_names() {
        assert_eq!(status_name(StatusCode::OK), "OK");
        assert_eq!(status_name(StatusCode::TOO_MANY_REQUESTS), "ResourceExhausted");
        assert_eq!(status_name(StatusCode::SERVICE_UNAVAILABLE), "Unavailable");
        assert_eq!(status_name(StatusCode::GATEWAY_TIMEOUT), "DeadlineExceeded");
        assert_eq!(status_name(StatusCode::BAD_REQUEST), "InvalidArgument");
        assert_eq!(status_name(StatusCode::NOT_FOUND), "NotFound");
        assert_eq!(status_name(StatusCode::IM_A_TEAPOT), "Unknown");
        assert_eq!(error_text(StatusCode::BAD_REQUEST, br#"{"error":"bad shape"}"#), "HTTP 400: bad shape");
    }
}
