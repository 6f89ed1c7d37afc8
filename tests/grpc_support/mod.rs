//! Request builders and checks shared by tests/grpc_infer.rs and
//! tests/grpc_admin.rs.

#![allow(dead_code)]

pub mod raw;

use crate::common::{GrpcClient, Server};
use ferroserve::pb;
use ferroserve::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use std::path::Path;
use std::time::{Duration, Instant};

/// An input tensor description without data (the data goes in
/// raw_input_contents or `contents`).
pub fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: datatype.into(), shape: shape.to_vec(), ..Default::default() }
}

/// An input tensor carrying typed contents.
pub fn typed(name: &str, datatype: &str, shape: &[i64], contents: pb::InferTensorContents) -> InferInputTensor {
    InferInputTensor { contents: Some(contents), ..input(name, datatype, shape) }
}

/// A request whose inputs all travel in raw_input_contents.
pub fn raw_request(model: &str, inputs: Vec<(InferInputTensor, Vec<u8>)>) -> pb::ModelInferRequest {
    let (inputs, raw): (Vec<_>, Vec<_>) = inputs.into_iter().map(|(i, b)| (i, b.into())).unzip();
    pb::ModelInferRequest { model_name: model.into(), inputs, raw_input_contents: raw, ..Default::default() }
}

/// A request whose inputs carry their own (typed) contents.
pub fn typed_request(model: &str, inputs: Vec<InferInputTensor>) -> pb::ModelInferRequest {
    pb::ModelInferRequest { model_name: model.into(), inputs, ..Default::default() }
}

pub fn outputs(names: &[&str]) -> Vec<InferRequestedOutputTensor> {
    names.iter().map(|n| InferRequestedOutputTensor { name: n.to_string(), ..Default::default() }).collect()
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0, "FP32 data of {} bytes", bytes.len());
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

pub fn f64_values(bytes: &[u8]) -> Vec<f64> {
    assert_eq!(bytes.len() % 8, 0, "FP64 data of {} bytes", bytes.len());
    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

pub fn i64_values(bytes: &[u8]) -> Vec<i64> {
    assert_eq!(bytes.len() % 8, 0, "INT64 data of {} bytes", bytes.len());
    bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// BYTES elements in the wire form: a 4-byte little-endian length before each.
pub fn bytes_wire(elements: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The output called `name` of a response: (datatype, shape, raw bytes).
pub fn output<'a>(response: &'a pb::ModelInferResponse, name: &str) -> (&'a str, &'a [i64], &'a [u8]) {
    assert_eq!(
        response.outputs.len(),
        response.raw_output_contents.len(),
        "every output must come back in raw_output_contents"
    );
    let i = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {:?}", output_names(response)));
    let o = &response.outputs[i];
    assert!(o.contents.is_none(), "output '{name}' also has typed contents");
    (&o.datatype, &o.shape, &response.raw_output_contents[i])
}

pub fn output_names(response: &pb::ModelInferResponse) -> Vec<&str> {
    response.outputs.iter().map(|o| o.name.as_str()).collect()
}

/// Asserts that `result` failed with `code` and that its message contains
/// every one of `needles`; returns the message.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> String {
    let status = match result {
        Ok(v) => panic!("expected {code:?} containing {needles:?}, got success {v:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "wrong code for {:?} (wanted message parts {needles:?})", status.message());
    for needle in needles {
        assert!(status.message().contains(needle), "message {:?} lacks {needle:?}", status.message());
    }
    status.message().to_string()
}

/// One row of mlp input (16 features), varied by `seed`.
pub fn mlp_rows(rows: usize, seed: f32) -> Vec<f32> {
    (0..rows * 16).map(|i| ((i as f32 * 0.37 + seed).sin()) * 2.0).collect()
}

pub fn mlp_request(rows: usize) -> pb::ModelInferRequest {
    raw_request("mlp", vec![(input("input", "FP32", &[rows as i64, 16]), f32_bytes(&mlp_rows(rows, 0.5)))])
}

/// Checks an mlp response of `rows` rows: shape [rows, 10] and each row a
/// probability distribution.
#[track_caller]
pub fn check_mlp_response(response: &pb::ModelInferResponse, rows: usize) {
    let (datatype, shape, data) = output(response, "probabilities");
    assert_eq!(datatype, "FP32");
    assert_eq!(shape, [rows as i64, 10]);
    let values = f32_values(data);
    assert_eq!(values.len(), rows * 10);
    for row in values.chunks(10) {
        assert!(row.iter().all(|p| (0.0..=1.0).contains(p)), "not probabilities: {row:?}");
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "row sums to {sum}: {row:?}");
    }
}

/// Polls RepositoryIndex until `done` holds for it (start-up loading in a
/// server that will never report ready), failing after 60 s.
pub async fn wait_for_index(
    client: &mut GrpcClient,
    done: impl Fn(&[pb::repository_index_response::ModelIndex]) -> bool,
) -> Vec<pb::repository_index_response::ModelIndex> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.repository_index(pb::RepositoryIndexRequest::default()).await {
            let models = r.into_inner().models;
            if done(&models) {
                return models;
            }
        }
        assert!(Instant::now() < deadline, "the repository index never reached the awaited state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects a gRPC client to a server that may not be ready yet.
pub async fn connect(address: &str) -> GrpcClient {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(format!("http://{address}")).await
        {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "cannot connect to {address}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Model directories that fail to load, each for a different reason. Returns
/// (name, a phrase the failure reason must contain).
pub fn write_broken_models(root: &Path) -> Vec<(&'static str, &'static str)> {
    let write = |path: &str, contents: &[u8]| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    };
    // Not an ONNX file at all.
    write("garbage/1/model.onnx", b"this is not a protobuf model \xff\xfe\x00\x01");
    // A config.pbtxt with a misspelt field.
    write("misspelt/config.pbtxt", b"name: \"misspelt\"\nmax_batch_sise: 4\n");
    write("misspelt/1/model.onnx", &std::fs::read(crate::common::shipped_models().join("mlp/1/model.onnx")).unwrap());
    // A config whose dims disagree with the graph (mlp takes 16 features).
    let mlp_config = std::fs::read_to_string(crate::common::shipped_models().join("mlp/config.pbtxt")).unwrap();
    let wrong_dims =
        mlp_config.replace("name: \"mlp\"", "name: \"wrong_dims\"").replace("dims: [ 16 ]", "dims: [ 17 ]");
    assert_ne!(wrong_dims, mlp_config, "the mlp config changed; update this test");
    write("wrong_dims/config.pbtxt", wrong_dims.as_bytes());
    write("wrong_dims/1/model.onnx", &std::fs::read(crate::common::shipped_models().join("mlp/1/model.onnx")).unwrap());
    vec![("garbage", "could not load"), ("misspelt", "max_batch_sise"), ("wrong_dims", "17")]
}

/// The 14 identity_all inputs, each of shape [rows, width], filled with
/// values derived from `seed` (BOOL as 0/1, BYTES as short varied strings).
/// identity_all answers out_<t> = in_<t>.
pub fn identity_all_inputs(rows: usize, width: usize, seed: u8) -> Vec<(InferInputTensor, Vec<u8>)> {
    let count = rows * width;
    let shape = [rows as i64, width as i64];
    let fixed = |size: usize| -> Vec<u8> {
        (0..count * size).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_mul(7)).collect()
    };
    let strings: Vec<String> = (0..count).map(|i| format!("s{seed}-{}", "x".repeat(i % 4))).collect();
    let elements: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
    let typed = [
        ("bool", "BOOL", (0..count).map(|i| ((i + seed as usize) % 2) as u8).collect()),
        ("uint8", "UINT8", fixed(1)),
        ("uint16", "UINT16", fixed(2)),
        ("uint32", "UINT32", fixed(4)),
        ("uint64", "UINT64", fixed(8)),
        ("int8", "INT8", fixed(1)),
        ("int16", "INT16", fixed(2)),
        ("int32", "INT32", fixed(4)),
        ("int64", "INT64", fixed(8)),
        ("fp16", "FP16", fixed(2)),
        ("fp32", "FP32", fixed(4)),
        ("fp64", "FP64", fixed(8)),
        ("bytes", "BYTES", bytes_wire(&elements)),
        ("bf16", "BF16", fixed(2)),
    ];
    typed.into_iter().map(|(suffix, datatype, data)| (input(&format!("in_{suffix}"), datatype, &shape), data)).collect()
}

/// Sets the request's `timeout` parameter (microseconds, int64_param).
pub fn with_timeout_parameter(mut request: pb::ModelInferRequest, micros: i64) -> pb::ModelInferRequest {
    request.parameters.insert(
        "timeout".into(),
        pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(micros)) },
    );
    request
}

/// ModelStatistics of version 1 of `model`.
pub async fn model_statistics(client: &mut GrpcClient, model: &str) -> pb::ModelStatistics {
    let request = pb::ModelStatisticsRequest { name: model.into(), version: "1".into() };
    let mut stats = client.model_statistics(request).await.unwrap().into_inner().model_stats;
    assert_eq!(stats.len(), 1, "statistics of {model}: {stats:?}");
    stats.remove(0)
}

/// Executions per batch size (batch_size -> compute_infer.count).
pub fn executions_by_batch_size(stats: &pb::ModelStatistics) -> std::collections::BTreeMap<u64, u64> {
    stats.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer.map_or(0, |d| d.count))).collect()
}

/// The `ferroserve_queue_depth` gauge of version 1 of `model`.
pub async fn queue_depth(server: &Server, model: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", server.metrics);
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let labels = [format!("model=\"{model}\""), "version=\"1\"".to_string()];
    body.lines()
        .filter(|line| line.starts_with("ferroserve_queue_depth{"))
        .find(|line| labels.iter().all(|l| line.contains(l.as_str())))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Polls the queue-depth gauge until it reads `depth` (the server sets it
/// under the queue lock on every push and every batch decision).
pub async fn wait_for_queue_depth(server: &Server, model: &str, depth: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = queue_depth(server, model).await;
        if now == Some(depth) {
            return;
        }
        assert!(Instant::now() < deadline, "the queue of {model} never held {depth} requests (last: {now:?})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request to the test model "slow": y = x + 1 after a Loop of `spin`
/// iterations (about 1 us each).
pub fn slow_request(spin: i64, x: f32) -> pb::ModelInferRequest {
    raw_request(
        "slow",
        vec![
            (input("x", "FP32", &[1, 1]), f32_bytes(&[x])),
            (input("spin", "INT64", &[1]), spin.to_le_bytes().to_vec()),
        ],
    )
}

/// A request to the test model "slow_batch" (or a copy named `model`):
/// y = x + 1 for each row after a Loop of max(spin) iterations (about
/// 1 us each); batches of up to 8 rows.
pub fn slow_batch_request(model: &str, spins: &[i64], x: f32) -> pb::ModelInferRequest {
    let rows = spins.len() as i64;
    let xs: Vec<f32> = (0..spins.len()).map(|i| x + i as f32).collect();
    let spin_bytes: Vec<u8> = spins.iter().flat_map(|s| s.to_le_bytes()).collect();
    raw_request(
        model,
        vec![(input("x", "FP32", &[rows, 1]), f32_bytes(&xs)), (input("spin", "INT64", &[rows, 1]), spin_bytes)],
    )
}

/// The request with a client deadline (grpc-timeout).
pub fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Keeps the only instance of `model` (a slow_batch copy) busy for about
/// `spin` microseconds: sends one request of that spin and returns once it
/// has left the queue for the instance. Requests sent after it queue.
pub async fn occupy_instance(
    server: &Server,
    client: &GrpcClient,
    model: &str,
    spin: i64,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>> {
    let mut busy = client.clone();
    let request = with_deadline(slow_batch_request(model, &[spin], 0.0), Duration::from_secs(120));
    let call = tokio::spawn(async move { busy.model_infer(request).await });
    wait_for_in_flight_and_queue(server, model, 1.0, 0.0).await;
    call
}

/// Waits until the server holds `inside` inference requests and `model`'s
/// queue `queued` of them (twice in a row, 10 ms apart).
pub async fn wait_for_in_flight_and_queue(server: &Server, model: &str, inside: f64, queued: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut agreed = 0;
    loop {
        let body =
            reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap_or_default();
        let value = |prefix: &str| {
            body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        let now_inside = value("ferroserve_server_inflight_requests ");
        let now_queued = value(&format!("ferroserve_queue_depth{{model=\"{model}\",version=\"1\"}}"));
        agreed = if now_inside == Some(inside) && now_queued.unwrap_or(0.0) == queued { agreed + 1 } else { 0 };
        if agreed >= 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server never held {inside} requests with {queued} queued for {model} (last: {now_inside:?}, {now_queued:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
