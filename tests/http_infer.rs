//! HTTP/REST inference against the real binary: JSON tensors, Triton's
//! binary-tensor extension, numerics of the example models, and bad input.

mod common;

use common::{Server, shipped_models, temp_repository, test_models};
use serde_json::{Value, json};
use std::collections::HashMap;

const HEADER: &str = "inference-header-content-length";

/// Every wire datatype and the suffix identity_all names its tensors with.
const TYPES: [(&str, &str); 14] = [
    ("BOOL", "bool"),
    ("UINT8", "uint8"),
    ("UINT16", "uint16"),
    ("UINT32", "uint32"),
    ("UINT64", "uint64"),
    ("INT8", "int8"),
    ("INT16", "int16"),
    ("INT32", "int32"),
    ("INT64", "int64"),
    ("FP16", "fp16"),
    ("FP32", "fp32"),
    ("FP64", "fp64"),
    ("BYTES", "bytes"),
    ("BF16", "bf16"),
];

/// A decoded inference reply.
struct Reply {
    status: u16,
    /// The JSON part (the whole body when no binary outputs follow).
    json: Value,
    /// The value of Inference-Header-Content-Length, if the reply had one.
    header_length: Option<usize>,
    /// Binary outputs by name, cut from the bytes after the JSON in output order.
    binary: HashMap<String, Vec<u8>>,
}

impl Reply {
    fn output(&self, name: &str) -> &Value {
        self.json["outputs"]
            .as_array()
            .and_then(|outputs| outputs.iter().find(|o| o["name"] == name))
            .unwrap_or_else(|| panic!("no output '{name}' in {}", self.json))
    }

    fn floats(&self, name: &str) -> Vec<f64> {
        let data = self.output(name)["data"].as_array().unwrap_or_else(|| panic!("'{name}' has no JSON data"));
        data.iter().map(|v| v.as_f64().expect("a number")).collect()
    }

    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or_else(|| panic!("no error message in {}", self.json))
    }

    fn assert_ok(&self) {
        assert_eq!(self.status, 200, "{}", self.json);
    }
}

async fn send(url: &str, body: Vec<u8>, header: Option<&str>) -> Reply {
    let mut request = reqwest::Client::new().post(url).body(body);
    if let Some(value) = header {
        request = request.header(HEADER, value);
    }
    let response = request.send().await.expect("sending the request");
    let status = response.status().as_u16();
    let header_length = response
        .headers()
        .get(HEADER)
        .map(|v| v.to_str().unwrap().parse::<usize>().expect("a numeric Inference-Header-Content-Length"));
    let body = response.bytes().await.expect("reading the reply");
    let json_len = header_length.unwrap_or(body.len());
    assert!(json_len <= body.len(), "header length {json_len} over the {}-byte body", body.len());
    let json: Value = serde_json::from_slice(&body[..json_len])
        .unwrap_or_else(|e| panic!("reply ({status}) is not JSON: {e}: {:?}", String::from_utf8_lossy(&body)));
    let mut binary = HashMap::new();
    let mut rest = &body[json_len..];
    for output in json["outputs"].as_array().into_iter().flatten() {
        if let Some(size) = output["parameters"]["binary_data_size"].as_u64() {
            assert!(size as usize <= rest.len(), "binary_data_size {size} runs past the body");
            let (head, tail) = rest.split_at(size as usize);
            binary.insert(output["name"].as_str().unwrap().to_string(), head.to_vec());
            rest = tail;
        }
    }
    assert!(rest.is_empty(), "{} unclaimed bytes follow the binary outputs", rest.len());
    Reply { status, json, header_length, binary }
}

async fn infer(url: &str, request: &Value) -> Reply {
    send(url, serde_json::to_vec(request).unwrap(), None).await
}

/// Sends `request` as the JSON header followed by `binary`.
async fn infer_binary(url: &str, request: &Value, binary: &[u8]) -> Reply {
    let mut body = serde_json::to_vec(request).unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(binary);
    send(url, body, Some(&length)).await
}

/// BYTES elements in wire form: 4-byte little-endian length, then the bytes.
fn bytes_wire(elements: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    out
}

fn le<T: Copy, const N: usize>(values: &[T], to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_bytes(v)).collect()
}

/// Six raw elements of `datatype` (a [2, 3] tensor), edge values included:
/// extremes, signed zero, infinities, NaN, subnormals, empty and multi-byte
/// strings. (Non-UTF-8 and NUL bytes in BYTES have tests of their own.)
fn raw_fixture(datatype: &str) -> Vec<u8> {
    match datatype {
        "BOOL" => vec![1, 0, 0, 1, 1, 0],
        "UINT8" => vec![0, 1, 127, 128, 254, 255],
        "UINT16" => le(&[0u16, 1, 0x7fff, 0x8000, 0xfffe, u16::MAX], u16::to_le_bytes),
        "UINT32" => le(&[0u32, 1, 0x7fff_ffff, 0x8000_0000, 0xdead_beef, u32::MAX], u32::to_le_bytes),
        "UINT64" => le(&[0u64, 1, 1 << 63, 0x0123_4567_89ab_cdef, u64::MAX - 1, u64::MAX], u64::to_le_bytes),
        "INT8" => le(&[i8::MIN, -1, 0, 1, 42, i8::MAX], i8::to_le_bytes),
        "INT16" => le(&[i16::MIN, -1, 0, 1, 4242, i16::MAX], i16::to_le_bytes),
        "INT32" => le(&[i32::MIN, -1, 0, 1, 424_242, i32::MAX], i32::to_le_bytes),
        "INT64" => le(&[i64::MIN, -1, 0, 1, 42_424_242_424, i64::MAX], i64::to_le_bytes),
        // 1.5, -0, +inf, -inf, NaN, smallest subnormal
        "FP16" => le(&[0x3e00u16, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x0001], u16::to_le_bytes),
        "BF16" => le(&[0x3fc0u16, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x0001], u16::to_le_bytes),
        "FP32" => {
            le(&[1.5f32.to_bits(), 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x0000_0001], u32::to_le_bytes)
        }
        "FP64" => le(
            &[1.5f64.to_bits(), 1 << 63, f64::INFINITY.to_bits(), f64::NEG_INFINITY.to_bits(), f64::NAN.to_bits(), 1],
            u64::to_le_bytes,
        ),
        "BYTES" => bytes_wire(&[b"", b"a", "\u{2603} snow".as_bytes(), "h\u{e9}llo".as_bytes(), &[b'z'; 300], b"end"]),
        other => panic!("no fixture for {other}"),
    }
}

/// JSON data for a [2, 3] tensor of `datatype`; nested for some types, flat
/// for the others. All values survive the datatype exactly.
fn json_fixture(datatype: &str) -> Value {
    match datatype {
        "BOOL" => json!([[true, false, true], [false, false, true]]),
        "UINT8" => json!([0, 1, 2, 127, 128, 255]),
        "UINT16" => json!([[0, 1, 2], [3, 32768, 65535]]),
        "UINT32" => json!([0, 1, 2, 3, 2_147_483_648u32, 4_294_967_295u32]),
        "UINT64" => json!([[0, 1, 2], [3, 9_223_372_036_854_775_808u64, u64::MAX]]),
        "INT8" => json!([-128, -1, 0, 1, 2, 127]),
        "INT16" => json!([[-32768, -1, 0], [1, 2, 32767]]),
        "INT32" => json!([i32::MIN, -1, 0, 1, 2, i32::MAX]),
        "INT64" => json!([[i64::MIN, -1, 0], [1, 2, i64::MAX]]),
        "FP16" => json!([1.5, -2.0, 0.25, 65504.0, -0.5, 0.0]),
        "BF16" => json!([[1.5, -2.0, 0.25], [3.0, -0.5, 256.0]]),
        "FP32" => json!([1.5, -2.0, 3.25, 1e10, -0.125, 0.0]),
        "FP64" => json!([[0.1, -2.5, 1e300], [-1e-300, 123456.789, 0.0]]),
        "BYTES" => json!([["the", "", "h\u{e9}llo"], ["a b", "\n", "x"]]),
        other => panic!("no fixture for {other}"),
    }
}

fn flatten(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.clone()],
    }
}

fn identity_server() -> (Server, tempfile::TempDir) {
    let repo = temp_repository(&[(&test_models(), "identity_all")]);
    (Server::start(repo.path(), &[]), repo)
}

#[tokio::test]
async fn every_datatype_round_trips_as_json() {
    let (server, _repo) = identity_server();
    let url = server.http_url("/v2/models/identity_all/infer");
    let inputs: Vec<Value> = TYPES
        .iter()
        .map(|(datatype, suffix)| {
            json!({ "name": format!("in_{suffix}"), "datatype": datatype, "shape": [2, 3], "data": json_fixture(datatype) })
        })
        .collect();
    let reply = infer(&url, &json!({ "inputs": inputs })).await;
    reply.assert_ok();
    assert_eq!(reply.header_length, None, "no binary outputs were asked for");
    assert_eq!(reply.json["model_name"], "identity_all");
    assert_eq!(reply.json["model_version"], "1");
    assert_eq!(reply.json["outputs"].as_array().unwrap().len(), 14);
    for (datatype, suffix) in TYPES {
        let output = reply.output(&format!("out_{suffix}"));
        assert_eq!(output["datatype"], datatype, "{output}");
        assert_eq!(output["shape"], json!([2, 3]), "{output}");
        assert!(output.get("parameters").is_none_or(|p| p.get("binary_data_size").is_none()), "{output}");
        assert_eq!(output["data"], Value::Array(flatten(&json_fixture(datatype))), "{datatype}");
    }
}

#[tokio::test]
async fn every_datatype_round_trips_in_binary_byte_exact() {
    let (server, _repo) = identity_server();
    let url = server.http_url("/v2/models/identity_all/infer");
    let mut binary = Vec::new();
    let mut inputs = Vec::new();
    for (datatype, suffix) in TYPES {
        let raw = raw_fixture(datatype);
        inputs.push(json!({
            "name": format!("in_{suffix}"), "datatype": datatype, "shape": [2, 3],
            "parameters": { "binary_data_size": raw.len() },
        }));
        binary.extend_from_slice(&raw);
    }
    // Request-level binary_data_output: every output comes back binary.
    let request = json!({ "inputs": inputs, "parameters": { "binary_data_output": true } });
    let reply = infer_binary(&url, &request, &binary).await;
    reply.assert_ok();
    assert!(reply.header_length.is_some(), "a binary reply announces its JSON length");
    for (datatype, suffix) in TYPES {
        let name = format!("out_{suffix}");
        let output = reply.output(&name);
        assert_eq!(output["datatype"], datatype);
        assert_eq!(output["shape"], json!([2, 3]));
        assert!(output.get("data").is_none(), "binary output also carries JSON data: {output}");
        let raw = raw_fixture(datatype);
        assert_eq!(output["parameters"]["binary_data_size"], raw.len(), "{name}");
        assert_eq!(reply.binary[&name], raw, "{name} differs after the round trip");
    }

    // Per-output binary_data: the same bytes, only the listed outputs, in request order.
    let outputs: Vec<Value> = TYPES
        .iter()
        .rev()
        .map(|(_, suffix)| json!({ "name": format!("out_{suffix}"), "parameters": { "binary_data": true } }))
        .collect();
    let reply = infer_binary(&url, &json!({ "inputs": inputs, "outputs": outputs }), &binary).await;
    reply.assert_ok();
    let names: Vec<&str> =
        reply.json["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    let expected: Vec<String> = TYPES.iter().rev().map(|(_, s)| format!("out_{s}")).collect();
    assert_eq!(names, expected);
    for (datatype, suffix) in TYPES {
        assert_eq!(reply.binary[&format!("out_{suffix}")], raw_fixture(datatype), "{datatype}");
    }
}

#[tokio::test]
async fn binary_and_json_inputs_and_outputs_mix() {
    let (server, _repo) = identity_server();
    let url = server.http_url("/v2/models/identity_all/infer");
    // Odd-numbered types go binary, the rest as JSON data.
    let mut binary = Vec::new();
    let mut inputs = Vec::new();
    for (i, (datatype, suffix)) in TYPES.iter().enumerate() {
        let name = format!("in_{suffix}");
        if i % 2 == 1 {
            let raw = raw_fixture(datatype);
            inputs.push(json!({ "name": name, "datatype": datatype, "shape": [2, 3], "parameters": { "binary_data_size": raw.len() } }));
            binary.extend_from_slice(&raw);
        } else {
            inputs.push(json!({ "name": name, "datatype": datatype, "shape": [2, 3], "data": json_fixture(datatype) }));
        }
    }
    // binary_data_output by default, overridden to JSON for two outputs;
    // out_int8 is listed without a choice and so follows the default.
    let request = json!({
        "inputs": inputs,
        "parameters": { "binary_data_output": true },
        "outputs": [
            { "name": "out_fp32", "parameters": { "binary_data": false } },
            { "name": "out_bytes" },
            { "name": "out_uint16", "parameters": { "binary_data": true } },
            { "name": "out_int8", "parameters": { "binary_data": false } },
            { "name": "out_bf16" },
        ],
    });
    let reply = infer_binary(&url, &request, &binary).await;
    reply.assert_ok();
    assert_eq!(reply.json["outputs"].as_array().unwrap().len(), 5);
    // out_fp32 came in as JSON, out_int8 as binary; both go out as JSON.
    assert_eq!(reply.output("out_fp32")["data"], Value::Array(flatten(&json_fixture("FP32"))));
    assert_eq!(reply.output("out_int8")["data"], json!([i8::MIN, -1, 0, 1, 42, i8::MAX]));
    // BYTES (even index: sent as JSON) comes back binary in wire form.
    let words: Vec<String> = flatten(&json_fixture("BYTES")).iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let words: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
    assert_eq!(reply.binary["out_bytes"], bytes_wire(&words));
    assert_eq!(reply.binary["out_uint16"], le(&[0u16, 1, 2, 3, 32768, 65535], u16::to_le_bytes));
    assert_eq!(reply.binary["out_bf16"], raw_fixture("BF16"));
    assert_eq!(reply.binary.len(), 3);

    // Binary inputs with an all-JSON reply: no header, data as numbers.
    let request = json!({ "inputs": inputs, "outputs": [{ "name": "out_int64" }, { "name": "out_uint8" }] });
    let reply = infer_binary(&url, &request, &binary).await;
    reply.assert_ok();
    assert_eq!(reply.header_length, None);
    assert_eq!(reply.output("out_int64")["data"], Value::Array(flatten(&json_fixture("INT64"))));
    assert_eq!(reply.output("out_uint8")["data"], json!([0, 1, 127, 128, 254, 255]));
}

#[tokio::test]
async fn example_models_compute_expected_values() {
    let repo = temp_repository(&[
        (&shipped_models(), "mlp"),
        (&shipped_models(), "mixed"),
        (&shipped_models(), "text"),
        (&test_models(), "mlp_auto"),
        (&test_models(), "multiversion"),
        (&test_models(), "nobatch"),
        (&test_models(), "reshaped"),
    ]);
    let server = Server::start(repo.path(), &[]);

    // mlp: softmax rows; mlp_auto is the same graph without a config.
    let rows: Vec<Vec<f32>> = (0..3).map(|r| (0..16).map(|c| ((r * 16 + c) as f32 * 0.37).sin()).collect()).collect();
    let request =
        json!({ "id": "req-42", "inputs": [{ "name": "input", "datatype": "FP32", "shape": [3, 16], "data": rows }] });
    let reply = infer(&server.http_url("/v2/models/mlp/infer"), &request).await;
    reply.assert_ok();
    assert_eq!(reply.json["id"], "req-42", "the request id is echoed");
    assert_eq!(reply.output("probabilities")["shape"], json!([3, 10]));
    let probabilities = reply.floats("probabilities");
    for row in probabilities.chunks(10) {
        assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)), "{row:?}");
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    let auto = infer(&server.http_url("/v2/models/mlp_auto/versions/1/infer"), &request).await;
    auto.assert_ok();
    let auto = auto.floats("probabilities");
    assert_eq!(auto.len(), probabilities.len());
    assert!(auto.iter().zip(&probabilities).all(|(a, b)| (a - b).abs() < 1e-6), "{auto:?} vs {probabilities:?}");
    let unnamed = infer(&server.http_url("/v2/models/mlp/infer"), &json!({ "inputs": request["inputs"] })).await;
    assert!(unnamed.json.get("id").is_none(), "no id asked, none echoed: {}", unnamed.json);

    // mixed: sum = a + b, masked = mask ? a : 0, count = trues per row.
    let a = [[0.5f32, -1.0, 2.25, 3.0], [1.0, 2.0, 3.0, 4.0]];
    let b = [[1i32, 2, -3, 4], [0, 0, 0, 100]];
    let mask = [[true, false, true, false], [false, false, false, false]];
    let request = json!({ "inputs": [
        { "name": "a", "datatype": "FP32", "shape": [2, 4], "data": a },
        { "name": "b", "datatype": "INT32", "shape": [2, 4], "data": b },
        { "name": "mask", "datatype": "BOOL", "shape": [2, 4], "data": mask },
    ]});
    let reply = infer(&server.http_url("/v2/models/mixed/infer"), &request).await;
    reply.assert_ok();
    let mut sum = Vec::new();
    let mut masked = Vec::new();
    let mut count = Vec::new();
    for r in 0..2 {
        for c in 0..4 {
            sum.push(f64::from(a[r][c] + b[r][c] as f32));
            masked.push(if mask[r][c] { f64::from(a[r][c]) } else { 0.0 });
        }
        count.push(mask[r].iter().filter(|&&m| m).count() as i64);
    }
    assert_eq!(reply.floats("sum"), sum);
    assert_eq!(reply.floats("masked"), masked);
    assert_eq!(reply.output("sum")["datatype"], "FP32");
    assert_eq!(reply.output("masked")["datatype"], "FP64");
    let count_output = reply.output("count");
    assert_eq!((&count_output["datatype"], &count_output["shape"]), (&json!("INT64"), &json!([2, 1])));
    assert_eq!(count_output["data"], json!(count));

    // A requested subset of outputs, in request order.
    let subset = json!({ "inputs": request["inputs"], "outputs": [{ "name": "count" }, { "name": "sum" }] });
    let reply = infer(&server.http_url("/v2/models/mixed/infer"), &subset).await;
    reply.assert_ok();
    let names: Vec<&Value> = reply.json["outputs"].as_array().unwrap().iter().map(|o| &o["name"]).collect();
    assert_eq!(names, [&json!("count"), &json!("sum")]);

    // text: vocabulary ids, unknown -> 0, words echoed; JSON and binary in.
    let words = [["the", "quick", "zebra"], ["hello", "world", "dog"]];
    let expected_ids = json!([1, 2, 0, 9, 10, 8]);
    let request = json!({ "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [2, 3], "data": words }] });
    let reply = infer(&server.http_url("/v2/models/text/infer"), &request).await;
    reply.assert_ok();
    assert_eq!(reply.output("ids")["data"], expected_ids);
    assert_eq!(reply.output("ids")["shape"], json!([2, 3]));
    assert_eq!(reply.output("words_out")["data"], json!(words.concat()));
    let raw = bytes_wire(&words.concat().iter().map(|w| w.as_bytes()).collect::<Vec<_>>());
    let request = json!({
        "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [2, 3], "parameters": { "binary_data_size": raw.len() } }],
        "outputs": [{ "name": "ids" }, { "name": "words_out", "parameters": { "binary_data": true } }],
    });
    let reply = infer_binary(&server.http_url("/v2/models/text/infer"), &request, &raw).await;
    reply.assert_ok();
    assert_eq!(reply.output("ids")["data"], expected_ids);
    assert_eq!(reply.binary["words_out"], raw);

    // multiversion: y = x + version; the highest version by default.
    let request = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [2, 1], "data": [[0.5], [-1.0]] }] });
    for version in 1..=3 {
        let url = server.http_url(&format!("/v2/models/multiversion/versions/{version}/infer"));
        let reply = infer(&url, &request).await;
        reply.assert_ok();
        assert_eq!(reply.json["model_version"], version.to_string());
        assert_eq!(reply.floats("y"), [0.5 + f64::from(version), -1.0 + f64::from(version)]);
    }
    let reply = infer(&server.http_url("/v2/models/multiversion/infer"), &request).await;
    reply.assert_ok();
    assert_eq!(reply.json["model_version"], "3");
    assert_eq!(reply.floats("y"), [3.5, 2.0]);

    // nobatch: fixed [2, 3], y = 2x.
    let request = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1.0, 2.0, 3.0, -4.0, 0.5, 0.0] }] });
    let reply = infer(&server.http_url("/v2/models/nobatch/infer"), &request).await;
    reply.assert_ok();
    assert_eq!(reply.output("y")["shape"], json!([2, 3]));
    assert_eq!(reply.floats("y"), [2.0, 4.0, 6.0, -8.0, 1.0, 0.0]);

    // reshaped: clients see [batch, 4] both ways although the graph runs [batch, 2, 2].
    let request = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] }] });
    let reply = infer(&server.http_url("/v2/models/reshaped/infer"), &request).await;
    reply.assert_ok();
    assert_eq!(reply.output("y")["shape"], json!([2, 4]));
    assert_eq!(reply.floats("y"), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
}

#[tokio::test]
async fn bodies_past_axum_default_limit_are_accepted() {
    // 3 MiB: over axum's 2 MiB extractor default, under --max-message-bytes.
    let repo = temp_repository(&[(&shipped_models(), "text")]);
    let server = Server::start(repo.path(), &[]);
    let word = vec![b'w'; 3 << 20];
    let raw = bytes_wire(&[&word]);
    let request = json!({
        "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [1, 1], "parameters": { "binary_data_size": raw.len() } }],
        "outputs": [{ "name": "ids" }, { "name": "words_out", "parameters": { "binary_data": true } }],
    });
    let reply = infer_binary(&server.http_url("/v2/models/text/infer"), &request, &raw).await;
    reply.assert_ok();
    assert_eq!(reply.output("ids")["data"], json!([0]));
    assert!(reply.binary["words_out"] == raw, "the 3 MiB word did not come back intact");
}

#[tokio::test]
async fn non_utf8_bytes_round_trip_in_binary() {
    let repo = temp_repository(&[(&shipped_models(), "text")]);
    let server = Server::start(repo.path(), &[]);
    let raw = bytes_wire(&[b"\xff\xd8\xff\xe0 jpeg-ish", b"fox"]);
    let request = json!({
        "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [1, 2], "parameters": { "binary_data_size": raw.len() } }],
        "outputs": [{ "name": "ids" }, { "name": "words_out", "parameters": { "binary_data": true } }],
    });
    let reply = infer_binary(&server.http_url("/v2/models/text/infer"), &request, &raw).await;
    reply.assert_ok();
    assert_eq!(reply.output("ids")["data"], json!([0, 4]));
    assert_eq!(reply.binary["words_out"], raw);
}

#[tokio::test]
async fn nul_bytes_in_bytes_round_trip() {
    let repo = temp_repository(&[(&shipped_models(), "text")]);
    let server = Server::start(repo.path(), &[]);
    let request =
        json!({ "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [1, 2], "data": ["ok", "a\0b"] }] });
    let reply = infer(&server.http_url("/v2/models/text/infer"), &request).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.output("words_out")["data"], json!(["ok", "a\0b"]));
    assert_eq!(reply.output("ids")["data"], json!([0, 0]));
}

/// One bad request: what to send and what must come back.
struct Case {
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    header: Option<String>,
    status: u16,
    needles: &'static [&'static str],
}

fn case(what: &'static str, path: &'static str, request: Value, status: u16, needles: &'static [&'static str]) -> Case {
    Case { what, path, body: serde_json::to_vec(&request).unwrap(), header: None, status, needles }
}

fn binary_case(
    what: &'static str,
    path: &'static str,
    request: Value,
    binary: &[u8],
    needles: &'static [&'static str],
) -> Case {
    let mut body = serde_json::to_vec(&request).unwrap();
    let header = Some(body.len().to_string());
    body.extend_from_slice(binary);
    Case { what, path, body, header, status: 400, needles }
}

fn mlp_input(datatype: &str, shape: Value, data: Value) -> Value {
    json!({ "inputs": [{ "name": "input", "datatype": datatype, "shape": shape, "data": data }] })
}

#[tokio::test]
async fn bad_requests_are_refused_with_precise_messages() {
    let repo = temp_repository(&[
        (&shipped_models(), "mlp"),
        (&shipped_models(), "mixed"),
        (&shipped_models(), "text"),
        (&test_models(), "identity_all"),
        (&test_models(), "nobatch"),
    ]);
    let server = Server::start(repo.path(), &[]);
    const MLP: &str = "/v2/models/mlp/infer";
    let row = || json!(vec![0.25f32; 16]);
    let four = vec![0u8; 64];
    let mut cases = vec![
        Case {
            what: "malformed JSON",
            path: MLP,
            body: br#"{"inputs": [ {"name": "#.to_vec(),
            header: None,
            status: 400,
            needles: &["malformed inference request JSON"],
        },
        case("no inputs field", MLP, json!({ "id": "x" }), 400, &["inputs"]),
        case(
            "wrong datatype",
            MLP,
            mlp_input("INT32", json!([1, 16]), json!(vec![1; 16])),
            400,
            &["'input'", "expected datatype FP32, received INT32"],
        ),
        case(
            "wrong shape",
            MLP,
            mlp_input("FP32", json!([1, 15]), json!(vec![0.5; 15])),
            400,
            &["'input'", "expected shape [-1, 16], received [1, 15]"],
        ),
        case(
            "wrong rank",
            MLP,
            mlp_input("FP32", json!([16]), row()),
            400,
            &["'input'", "expected shape [-1, 16], received [16]"],
        ),
        case(
            "unknown datatype",
            MLP,
            mlp_input("FLOAT32", json!([1, 16]), row()),
            400,
            &["'input'", "unknown datatype 'FLOAT32'"],
        ),
        case(
            "too few values for the shape",
            MLP,
            mlp_input("FP32", json!([2, 16]), row()),
            400,
            &["'input'", "needs 128 bytes, received 64"],
        ),
        case(
            "too many values for the shape",
            MLP,
            mlp_input("FP32", json!([1, 16]), json!([row(), row()])),
            400,
            &["'input'", "needs 64 bytes, received 128"],
        ),
        case(
            "string for FP32",
            MLP,
            mlp_input("FP32", json!([1, 16]), json!(vec!["a"; 16])),
            400,
            &["'input'", "element 0 (\"a\") is not a valid FP32: expected a number"],
        ),
        case(
            "FP32 out of range",
            MLP,
            mlp_input("FP32", json!([1, 16]), json!([vec![0.0; 15], vec![1e300]])),
            400,
            &["'input'", "element 15 (1e+300) is not a valid FP32: out of range"],
        ),
        case(
            "UINT8 out of range",
            "/v2/models/identity_all/infer",
            json!({ "inputs": [{ "name": "in_uint8", "datatype": "UINT8", "shape": [1, 3], "data": [1, 256, 2] }] }),
            400,
            &["'in_uint8'", "element 1 (256) is not a valid UINT8: out of range"],
        ),
        case(
            "number for BOOL",
            "/v2/models/mixed/infer",
            json!({ "inputs": [{ "name": "mask", "datatype": "BOOL", "shape": [1, 4], "data": [1, 0, 1, 0] }] }),
            400,
            &["'mask'", "expected true or false"],
        ),
        case(
            "batch over max_batch_size",
            MLP,
            mlp_input("FP32", json!([33, 16]), json!(vec![0.0; 33 * 16])),
            400,
            &["'input'", "batch size 33 is outside 1..=32"],
        ),
        case("negative batch", MLP, mlp_input("FP32", json!([-1, 16]), json!([])), 400, &["'input'", "batch size -1"]),
        case(
            "shape overflow",
            "/v2/models/text/infer",
            json!({ "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [8, 4_611_686_018_427_387_904i64], "data": ["a"] }] }),
            400,
            &["'words'", "overflows"],
        ),
        case(
            "unknown input",
            MLP,
            json!({ "inputs": [{ "name": "inptu", "datatype": "FP32", "shape": [1, 16], "data": row() }] }),
            400,
            &["unknown input 'inptu'", "expects 'input'"],
        ),
        case(
            "missing input",
            "/v2/models/mixed/infer",
            json!({ "inputs": [
                { "name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0] },
                { "name": "b", "datatype": "INT32", "shape": [1, 4], "data": [1, 2, 3, 4] },
            ]}),
            400,
            &["missing input 'mask'"],
        ),
        case(
            "input given twice",
            MLP,
            json!({ "inputs": [
                { "name": "input", "datatype": "FP32", "shape": [1, 16], "data": row() },
                { "name": "input", "datatype": "FP32", "shape": [1, 16], "data": row() },
            ]}),
            400,
            &["'input' is given more than once"],
        ),
        case(
            "unknown output",
            MLP,
            json!({ "inputs": mlp_input("FP32", json!([1, 16]), row())["inputs"], "outputs": [{ "name": "probs" }] }),
            400,
            &["unknown output 'probs'"],
        ),
        case(
            "output requested twice (found by the garbage scenario: was a 500)",
            MLP,
            json!({ "inputs": mlp_input("FP32", json!([1, 16]), row())["inputs"],
                    "outputs": [{ "name": "probabilities" }, { "name": "probabilities" }] }),
            400,
            &["output 'probabilities' is requested more than once"],
        ),
        case(
            "batch dimension on a non-batching model",
            "/v2/models/nobatch/infer",
            json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 2, 3], "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] }] }),
            400,
            &["'x'", "expected shape [2, 3], received [1, 2, 3]"],
        ),
        case(
            "input without data",
            MLP,
            json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16] }] }),
            400,
            &["'input' has no data"],
        ),
        case(
            "non-boolean binary_data_output",
            MLP,
            json!({ "inputs": mlp_input("FP32", json!([1, 16]), row())["inputs"], "parameters": { "binary_data_output": "yes" } }),
            400,
            &["binary_data_output"],
        ),
        binary_case(
            "binary_data_size past the body",
            MLP,
            json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16], "parameters": { "binary_data_size": 64 } }] }),
            &four[..10],
            &["'input'", "binary_data_size 64 exceeds the 10 binary bytes left"],
        ),
        binary_case(
            "binary_data_size not an integer",
            MLP,
            json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16], "parameters": { "binary_data_size": "64" } }] }),
            &four,
            &["'input'", "binary_data_size must be a non-negative integer"],
        ),
        binary_case(
            "both data and binary_data_size",
            MLP,
            json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16], "data": row(), "parameters": { "binary_data_size": 64 } }] }),
            &four,
            &["'input' has both data and binary_data_size"],
        ),
        binary_case(
            "binary size disagreeing with the shape",
            MLP,
            json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [2, 16], "parameters": { "binary_data_size": 64 } }] }),
            &four,
            &["'input'", "needs 128 bytes, received 64"],
        ),
        binary_case(
            "leftover binary bytes",
            MLP,
            json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16], "parameters": { "binary_data_size": 64 } }] }),
            &[0u8; 70],
            &["6 bytes of binary data follow the JSON header but no input claims them"],
        ),
        binary_case(
            "truncated BYTES element",
            "/v2/models/text/infer",
            json!({ "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [1, 1], "parameters": { "binary_data_size": 6 } }] }),
            &[9, 0, 0, 0, b'a', b'b'],
            &["'words'", "runs past the end"],
        ),
        binary_case(
            "BYTES count disagreeing with the shape",
            "/v2/models/text/infer",
            json!({ "inputs": [{ "name": "words", "datatype": "BYTES", "shape": [1, 3], "parameters": { "binary_data_size": 10 } }] }),
            &bytes_wire(&[b"ab", b""]),
            &["'words'", "holds 3 BYTES elements, received 2"],
        ),
        case(
            "unknown model",
            "/v2/models/nope/infer",
            mlp_input("FP32", json!([1, 16]), row()),
            404,
            &["unknown model 'nope'"],
        ),
        case(
            "unknown version",
            "/v2/models/mlp/versions/7/infer",
            mlp_input("FP32", json!([1, 16]), row()),
            404,
            &["unknown version '7'"],
        ),
        case(
            "non-numeric version",
            "/v2/models/mlp/versions/latest/infer",
            mlp_input("FP32", json!([1, 16]), row()),
            404,
            &["unknown version 'latest'"],
        ),
    ];
    let good = serde_json::to_vec(&mlp_input("FP32", json!([1, 16]), row())).unwrap();
    let header_case = |what, header: String, needles| Case {
        what,
        path: MLP,
        body: good.clone(),
        header: Some(header),
        status: 400,
        needles,
    };
    cases.extend([
        header_case(
            "Inference-Header-Content-Length over the body",
            (good.len() + 1).to_string(),
            &["exceeds the body's"],
        ),
        header_case("Inference-Header-Content-Length not a number", "abc".into(), &["must be a non-negative integer"]),
        header_case("negative Inference-Header-Content-Length", "-5".into(), &["must be a non-negative integer"]),
        header_case(
            "Inference-Header-Content-Length cutting the JSON",
            "10".into(),
            &["malformed inference request JSON"],
        ),
    ]);

    let mut failures = Vec::new();
    for case in &cases {
        let reply = send(&server.http_url(case.path), case.body.clone(), case.header.as_deref()).await;
        let message = reply.json["error"].as_str().unwrap_or_default();
        if reply.status != case.status || message.is_empty() || !case.needles.iter().all(|n| message.contains(n)) {
            failures.push(format!(
                "{}: got {} {}, wanted {} with {:?}",
                case.what, reply.status, reply.json, case.status, case.needles
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // The server is unharmed.
    let reply = send(&server.http_url(MLP), good, None).await;
    reply.assert_ok();
    assert_eq!(reply.floats("probabilities").len(), 10);
}

#[tokio::test]
async fn bodies_over_max_message_bytes_get_413() {
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start(repo.path(), &["--max-message-bytes", "1000"]);
    let url = server.http_url("/v2/models/mlp/infer");
    let rows = json!(vec![vec![0.123_456_79f32; 16]; 8]);
    let big = mlp_input("FP32", json!([8, 16]), rows);
    assert!(serde_json::to_vec(&big).unwrap().len() > 1000);
    let reply = infer(&url, &big).await;
    assert_eq!(reply.status, 413, "{}", reply.json);
    assert!(reply.error().contains("1000-byte limit"), "{}", reply.error());
    // Binary bodies count too.
    let request = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [32, 16], "parameters": { "binary_data_size": 2048 } }] });
    let reply = infer_binary(&url, &request, &[0u8; 2048]).await;
    assert_eq!(reply.status, 413, "{}", reply.json);
    // A request under the limit still works.
    let reply = infer(&url, &mlp_input("FP32", json!([1, 16]), json!(vec![1.0; 16]))).await;
    reply.assert_ok();
}
