//! The request-parsing classes behind other inference servers' CVEs, each
//! against the real binary on both fronts: it must be answered with its own
//! clear error, at a bounded cost, and leave the server serving everyone
//! else. Compression bombs (by size and by ratio), a body in a million
//! chunks, JSON nested without end, a flood of requested outputs, shape
//! arithmetic at every size, model names and load parameters that reach
//! outside the repository, and the log settings over the network.

mod common;
mod grpc_support;

use common::{Server, shipped_models, temp_repository};
use ferroserve::pb;
use grpc_support::raw::{self, MODEL_INFER};
use grpc_support::{f32_bytes, input, mlp_request, raw_request};
use prost::Message;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// `copies` gzip members of 1 MiB of zeros each: a bomb of `copies` MiB
/// from about a KiB per MiB, built without compressing it all.
fn gzip_bomb(copies: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
    encoder.finish().unwrap().repeat(copies)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn mlp_json(rows: usize) -> Value {
    json!({"inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": vec![0.25f32; rows * 16]}]})
}

/// The server's peak resident memory so far (VmHWM), in bytes.
fn peak_memory(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The server still answers a plain request on both fronts.
async fn still_serving(server: &Server) {
    let client = reqwest::Client::new();
    let reply = client.post(server.http_url("/v2/models/mlp/infer")).json(&mlp_json(1)).send().await.unwrap();
    assert_eq!(reply.status(), 200, "{}", reply.text().await.unwrap());
    let (mut grpc, _driver) = raw::connect(&server.grpc).await;
    raw::call(&mut grpc, raw::head(MODEL_INFER, &[]), &[raw::framed(&mlp_request(1))])
        .await
        .expect_one_mlp_answer("after");
}

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = request.send().await.unwrap();
    (reply.status().as_u16(), reply.text().await.unwrap())
}

#[tokio::test]
async fn compression_bombs_are_refused_by_size_and_by_ratio_on_both_fronts() {
    // 8 MiB inflated at most; 100 times the compressed size above 4 MiB.
    let server = Server::start(&shipped_models(), &["--max-message-bytes", "8388608"]);
    let infer = server.http_url("/v2/models/mlp/infer");
    let before = peak_memory(&server);
    let started = Instant::now();
    // 256 MiB from ~256 KiB: over the size limit (the ratio allows 25 MiB).
    let (status, body) = post(&infer, &[("content-encoding", "gzip")], gzip_bomb(256)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("inflates to more than 8388608 bytes (--max-message-bytes)"), "{body}");
    // 6 MiB from ~6 KiB: under the size limit, ~1000 times its size.
    let (status, body) = post(&infer, &[("content-encoding", "gzip")], gzip_bomb(6)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("times its") && body.contains("--max-decompression-ratio"), "{body}");
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&vec![0u8; 6 << 20]).unwrap();
    let (status, body) = post(&infer, &[("content-encoding", "deflate")], zlib.finish().unwrap()).await;
    assert_eq!(status, 413, "deflate: {body}");
    let (status, body) = post(&infer, &[("content-encoding", "br")], b"{}".to_vec()).await;
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("br") && body.contains("not supported"), "{body}");
    let (status, body) = post(&infer, &[("content-encoding", "gzip")], b"not gzip".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not valid gzip"), "{body}");
    // An honest compressed request passes.
    let honest = gzip(&serde_json::to_vec(&mlp_json(4)).unwrap());
    let (status, body) =
        post(&infer, &[("content-encoding", "gzip"), ("content-type", "application/json")], honest).await;
    assert_eq!(status, 200, "{body}");

    // gRPC: the same bounds on a compressed ModelInfer message.
    let (mut grpc, _driver) = raw::connect(&server.grpc).await;
    let gzipped = [("grpc-encoding", "gzip")];
    for (bomb, needle) in [(gzip_bomb(256), "--max-message-bytes"), (gzip_bomb(6), "--max-decompression-ratio")] {
        let answer = raw::call(&mut grpc, raw::head(MODEL_INFER, &gzipped), &[raw::prefixed(1, &bomb)]).await;
        assert_eq!(answer.status, "8", "RESOURCE_EXHAUSTED: {}", answer.message);
        assert!(answer.message.contains(needle), "{}", answer.message);
        assert!(answer.messages().is_empty());
    }
    let honest = raw::prefixed(1, &gzip(&mlp_request(1).encode_to_vec()));
    let answer = raw::call(&mut grpc, raw::head(MODEL_INFER, &gzipped), &[honest]).await;
    assert_eq!(answer.status, "0", "{}", answer.message);
    let elapsed = started.elapsed();
    let grown = peak_memory(&server).saturating_sub(before);
    eprintln!("bombs: answered in {elapsed:?}, peak memory grew {} MiB", grown >> 20);
    assert!(grown < 128 << 20, "two 256 MiB bombs grew the peak by {} MiB", grown >> 20);
    still_serving(&server).await;
}

/// One HTTP/1.1 exchange on a raw socket, the request written by a thread
/// of its own so a server that answers early is still read.
fn exchange(address: &str, request: Vec<u8>) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16384];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap())
            });
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    drop(stream);
    let _ = sending.join();
    String::from_utf8_lossy(&answer).into_owned()
}

fn chunked(path: &str, address: &str, body: &[u8], piece: usize) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for chunk in body.chunks(piece) {
        request.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn a_body_in_too_many_pieces_is_refused_and_chunks_cost_by_the_byte() {
    let server = Server::start(&shipped_models(), &[]);
    let body = serde_json::to_vec(&mlp_json(4)).unwrap();
    let fine = exchange(&server.http, chunked("/v2/models/mlp/infer", &server.http, &body, 1024));
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    // 200,000 one-byte HTTP/1 chunks: the parser hands on what it has read
    // at once (several chunks coalesced, as many as arrived), so whether the
    // body is served or refused for its pieces depends on the timing; either
    // way promptly, and named.
    let padding = vec![b' '; 200_000 - body.len()];
    let long = [&padding[..], &body[..]].concat();
    let started = Instant::now();
    let answer = exchange(&server.http, chunked("/v2/models/mlp/infer", &server.http, &long, 1));
    let refused = answer.starts_with("HTTP/1.1 413") && answer.contains("more than 65536 pieces");
    assert!(answer.starts_with("HTTP/1.1 200") || refused, "{answer}");
    eprintln!("200,000 chunks answered in {:?} (refused: {refused})", started.elapsed());
    // HTTP/2 DATA frames reach the server one by one: 70,000 of them are
    // refused at the 65,537th.
    let (mut client, _driver) = raw::connect(&server.http).await;
    let request = http::Request::post("http://localhost/v2/models/mlp/infer").body(()).unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let sending = tokio::spawn(async move {
        for _ in 0..70_000 {
            stream.reserve_capacity(1);
            if stream.send_data(bytes::Bytes::from_static(b" "), false).is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = stream.send_data(bytes::Bytes::new(), true);
    });
    let response = tokio::time::timeout(Duration::from_secs(60), response).await.expect("an answer in time").unwrap();
    assert_eq!(response.status(), 413);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(Ok(data)) = body.data().await {
        text.extend_from_slice(&data);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("more than 65536 pieces"), "{text}");
    sending.abort();
    still_serving(&server).await;
}

#[tokio::test]
async fn json_nested_past_128_levels_is_named_wherever_it_is() {
    let server = Server::start(&shipped_models(), &[]);
    let infer = server.http_url("/v2/models/mlp/infer");
    for depth in [129, 10_000, 1_000_000] {
        let data = format!("{}0.5{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(r#"{{"inputs":[{{"name":"input","shape":[1,16],"datatype":"FP32","data":{data}}}]}}"#);
        let (status, answer) = post(&infer, &[("content-type", "application/json")], body.into_bytes()).await;
        assert_eq!(status, 400, "depth {depth}: {answer}");
        assert!(answer.contains("nested more than 128 levels deep"), "depth {depth}: {answer}");
        let parameters = format!(r#"{{"parameters":{{"x":{data}}},"inputs":[]}}"#);
        let (status, answer) = post(&infer, &[], parameters.into_bytes()).await;
        assert_eq!(status, 400, "parameters nested {depth}: {answer}");
        assert!(answer.contains("nested more than 128 levels deep"), "{answer}");
    }
    // Nesting that follows the shape is fine.
    let nested =
        json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [[vec![0.5f32; 16]]]}]});
    let (status, answer) = post(&infer, &[], serde_json::to_vec(&nested).unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    still_serving(&server).await;
}

#[tokio::test]
async fn requested_outputs_are_bounded_on_both_fronts() {
    let server = Server::start(&shipped_models(), &["--max-inputs", "64"]);
    let outputs: Vec<Value> = (0..5000).map(|i| json!({"name": format!("o{i}")})).collect();
    let mut body = mlp_json(1);
    body["outputs"] = Value::Array(outputs);
    let (status, answer) =
        post(&server.http_url("/v2/models/mlp/infer"), &[], serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("--max-inputs"), "{answer}");
    let mut request = mlp_request(1);
    request.outputs = (0..5000)
        .map(|i| pb::model_infer_request::InferRequestedOutputTensor { name: format!("o{i}"), ..Default::default() })
        .collect();
    let mut client = server.grpc_client().await;
    let error = client.model_infer(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("--max-inputs"), "{error:?}");
    // The same output asked for twice is named too.
    let mut request = mlp_request(1);
    let twice =
        pb::model_infer_request::InferRequestedOutputTensor { name: "probabilities".into(), ..Default::default() };
    request.outputs = vec![twice.clone(), twice];
    let error = client.model_infer(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    still_serving(&server).await;
}

/// Dimensions around every power of two up to 2^63, alone, in pairs whose
/// product overflows, negative and zero.
fn hostile_shapes() -> Vec<Vec<i64>> {
    let mut shapes =
        vec![vec![], vec![0], vec![0, i64::MAX], vec![-1, 16], vec![i64::MIN, 16], vec![1, 16, 1, 1, 1, 1, 1, 1]];
    for k in [1u32, 2, 7, 8, 15, 16, 24, 31, 32, 33, 40, 47, 48, 55, 61, 62, 63] {
        let big = if k == 63 { i64::MAX } else { 1i64 << k };
        shapes.push(vec![big, 16]);
        shapes.push(vec![big]);
        shapes.push(vec![big, 1i64 << (63 - k).min(62)]);
        shapes.push(vec![2, big, 2]);
        shapes.push(vec![-big, 16]);
    }
    shapes
}

#[tokio::test]
async fn shape_arithmetic_at_every_size_is_refused_naming_the_input() {
    let server = Server::start(&shipped_models(), &[]);
    let client = reqwest::Client::new();
    let mut grpc = server.grpc_client().await;
    let data = f32_bytes(&[0.5; 16]);
    let mut refused = 0;
    for shape in hostile_shapes() {
        for datatype in ["FP32", "FP64", "INT8", "BOOL", "BYTES", "FP16"] {
            let what = format!("{datatype} {shape:?}");
            // gRPC, raw contents of one row.
            let request = raw_request("mlp", vec![(input("input", datatype, &shape), data.clone())]);
            match grpc.model_infer(request).await {
                Ok(_) => assert!(datatype == "FP32" && shape == [1, 16, 1, 1, 1, 1, 1, 1], "{what} was served"),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
                    assert!(status.message().contains("'input'"), "{what}: {}", status.message());
                    refused += 1;
                }
            }
            // HTTP, a binary tensor of the same bytes.
            let header = json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                                            "parameters": {"binary_data_size": data.len()}}]});
            let header = serde_json::to_vec(&header).unwrap();
            let reply = client
                .post(server.http_url("/v2/models/mlp/infer"))
                .header("inference-header-content-length", header.len())
                .body([&header[..], &data[..]].concat())
                .send()
                .await
                .unwrap();
            let status = reply.status().as_u16();
            let body = reply.text().await.unwrap();
            if status != 200 {
                assert_eq!(status, 400, "{what}: {body}");
                assert!(body.contains("'input'") || body.contains("shape"), "{what}: {body}");
            }
        }
    }
    assert!(refused > 400, "only {refused} refusals");
    still_serving(&server).await;
}

#[tokio::test]
async fn names_and_load_parameters_cannot_reach_outside_the_repository() {
    let repository = temp_repository(&[(&shipped_models(), "mlp"), (&shipped_models(), "cnn")]);
    // A file beside the repository that a traversal would reach.
    std::fs::copy(shipped_models().join("mlp/1/model.onnx"), repository.path().join("outside.onnx")).unwrap();
    let server = Server::start(repository.path(), &["--model-control-mode", "explicit", "--load-model", "mlp"]);
    let client = reqwest::Client::new();
    let load = |name: &str| server.http_url(&format!("/v2/repository/models/{name}/load"));
    for name in ["..", "%2E%2E", "..%2Fcnn", "%2Fetc%2Fpasswd", "mlp%2F..%2Fcnn", "a%5Cb", ".hidden", "%00"] {
        let reply = client.post(load(name)).send().await.unwrap();
        let status = reply.status().as_u16();
        let body = reply.text().await.unwrap();
        assert!(status == 404 || status == 400, "load {name}: {status} {body}");
        // The client's URL parser resolves a dot segment before sending.
        let resolved = ["..", "%2E%2E"].contains(&name);
        assert!(!body.contains("no such route") || resolved, "load {name} reached no handler: {body}");
    }
    let mut grpc = server.grpc_client().await;
    for name in ["..", "../cnn", "/etc", "mlp/../cnn", "a\\b", ".hidden", ""] {
        let request = pb::RepositoryModelLoadRequest { model_name: name.into(), ..Default::default() };
        let error = grpc.repository_model_load(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound, "{name}: {error:?}");
        assert!(error.message().contains("not a valid model name"), "{name}: {}", error.message());
    }
    // A config sent with the load may not name a file outside the model.
    for file in ["../../outside.onnx", "../outside.onnx", "/etc/passwd", "1/../../outside.onnx"] {
        let config = json!({"default_model_filename": file}).to_string();
        let body = json!({"parameters": {"config": config}});
        let reply = client.post(load("mlp")).json(&body).send().await.unwrap();
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        assert_eq!(status, 400, "{file}: {text}");
        assert!(text.contains("plain file name"), "{file}: {text}");
        let parameter = pb::ModelRepositoryParameter {
            parameter_choice: Some(pb::model_repository_parameter::ParameterChoice::StringParam(config)),
        };
        let request = pb::RepositoryModelLoadRequest {
            model_name: "mlp".into(),
            parameters: [("config".to_string(), parameter)].into(),
            ..Default::default()
        };
        let error = grpc.repository_model_load(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{file}: {error:?}");
        assert!(error.message().contains("plain file name"), "{file}: {}", error.message());
    }
    let warmup = json!({"model_warmup": [{"name": "w", "batch_size": 1, "inputs": {"input": {
        "data_type": "TYPE_FP32", "dims": [16], "input_data_file": "../../../outside.onnx"}}}]});
    let body = json!({"parameters": {"config": warmup.to_string()}});
    let reply = client.post(load("mlp")).json(&body).send().await.unwrap();
    assert_eq!(reply.status(), 400);
    assert!(reply.text().await.unwrap().contains("input_data_file"));
    // Triton's `file:` parameters (model bytes sent with the load) are not taken.
    let body = json!({"parameters": {"file:1/model.onnx": "AAAA"}});
    let reply = client.post(load("mlp")).json(&body).send().await.unwrap();
    assert_eq!(reply.status(), 501);
    // Nothing was loaded from outside: mlp still serves, and the index
    // lists only what the repository holds.
    still_serving(&server).await;
    let index =
        client.post(server.http_url("/v2/repository/index")).send().await.unwrap().json::<Value>().await.unwrap();
    let names: std::collections::BTreeSet<&str> =
        index.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cnn", "mlp"].into());
}

#[tokio::test]
async fn log_settings_cannot_be_changed_over_the_network() {
    let server = Server::start(&shipped_models(), &[]);
    let mut grpc = server.grpc_client().await;
    let setting = pb::log_settings_request::SettingValue {
        parameter_choice: Some(pb::log_settings_request::setting_value::ParameterChoice::StringParam(
            "/tmp/owned".into(),
        )),
    };
    let request = pb::LogSettingsRequest { settings: [("log_file".to_string(), setting)].into() };
    let error = grpc.log_settings(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unimplemented, "{error:?}");
    assert!(!std::path::Path::new("/tmp/owned").exists());
    let (status, body) = post(&server.http_url("/v2/logging"), &[], br#"{"log_file": "/tmp/owned"}"#.to_vec()).await;
    assert_eq!(status, 404, "{body}");
}
