//! Admission against the real binary: the server-wide in-flight cap refuses
//! at once with retry hints, shed requests are counted by reason, a model
//! (or the server flag) turns on the adaptive concurrency limit, request
//! shapes are bounded, and a model's default timeout applies.

mod common;
mod grpc_support;

use common::{GrpcClient, Server, shipped_models};
use ferroserve::pb;
use grpc_support::*;
use std::time::{Duration, Instant};
use tonic::Code;

/// An mlp copy named `name` that waits up to 30 s to fill a batch of 4.
fn slow_model(root: &std::path::Path, name: &str, extra: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(shipped_models().join("mlp/1/model.onnx"), dir.join("1/model.onnx")).unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        format!("max_batch_size: 4\ndynamic_batching {{ max_queue_delay_microseconds: 30000000 }}\n{extra}"),
    )
    .unwrap();
}

/// Starts a request on "slow" that waits in its queue (for up to 5 s, long
/// enough for a busy machine to make its checks meanwhile) and returns once it
/// is queued.
async fn hold_a_queue_slot(
    server: &Server,
    client: &GrpcClient,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>> {
    let mut holder = client.clone();
    let mut held = mlp_request(1);
    held.model_name = "slow".into();
    let held = with_timeout_parameter(held, 5_000_000);
    let call = tokio::spawn(async move { holder.model_infer(held).await });
    wait_for_queue_depth(server, "slow", 1.0).await;
    call
}

async fn metric(server: &Server, prefix: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn the_server_in_flight_cap_refuses_at_once_with_retry_hints() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "slow", "");
    let server = Server::start(repo.path(), &["--max-inflight", "1"]);
    let mut client = server.grpc_client().await;
    // One request holds the only slot (it waits for a batch, up to 5 s).
    let call = hold_a_queue_slot(&server, &client).await;

    let started = Instant::now();
    let refused = client.model_infer(mlp_request(1)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "refusal took {:?}", started.elapsed());
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("in flight"), "{}", refused.message());
    assert_eq!(refused.metadata().get("grpc-retry-pushback-ms").unwrap(), "100");

    let body = serde_json::json!({ "inputs": [{ "name": "input", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5f32; 16] }] });
    let http = reqwest::Client::new().post(server.http_url("/v2/models/mlp/infer")).json(&body).send().await.unwrap();
    assert_eq!(http.status(), 429);
    assert_eq!(http.headers().get("retry-after").unwrap(), "1");
    // "mlp" is not in this repository: the series names no model, so
    // made-up names cannot grow the metric set.
    let shed = metric(&server, "ferroserve_shed_total{model=\"\",version=\"\",reason=\"server_inflight\"}").await;
    assert_eq!(shed, Some(2.0));

    // The holder times out in the queue; the slot frees and work flows again
    // (a full batch of 4 runs at once).
    expect_error(call.await.unwrap(), Code::DeadlineExceeded, &[]);
    let mut full = mlp_request(4);
    full.model_name = "slow".into();
    check_mlp_response(&client.model_infer(full).await.unwrap().into_inner(), 4);
}

#[tokio::test]
async fn a_full_queue_is_counted_as_shed() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "slow", "");
    std::fs::write(
        repo.path().join("slow/config.pbtxt"),
        "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 30000000 default_queue_policy { max_queue_size: 1 } }\n",
    )
    .unwrap();
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let call = hold_a_queue_slot(&server, &client).await;
    let mut second = mlp_request(1);
    second.model_name = "slow".into();
    let refused = client.model_infer(second).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.metadata().get("grpc-retry-pushback-ms").unwrap(), "100");
    let shed = metric(&server, "ferroserve_shed_total{model=\"slow\",version=\"1\",reason=\"queue_full\"}").await;
    assert_eq!(shed, Some(1.0));
    expect_error(call.await.unwrap(), Code::DeadlineExceeded, &[]);
}

fn parameter(key: &str, value: &str) -> String {
    format!("parameters {{ key: \"{key}\" value {{ string_value: \"{value}\" }} }}\n")
}

#[tokio::test]
async fn the_server_flag_turns_the_adaptive_limit_on_unless_a_model_opts_out() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "default", "");
    slow_model(
        repo.path(),
        "bounded",
        &format!("{}{}", parameter("adaptive_concurrency_min", "8"), parameter("adaptive_concurrency_max", "8")),
    );
    slow_model(repo.path(), "off", &parameter("adaptive_concurrency", "0"));
    let server = Server::start(repo.path(), &["--adaptive-concurrency"]);
    let limit = |model: &str| format!("ferroserve_concurrency_limit{{model=\"{model}\",version=\"1\"}}");
    assert_eq!(metric(&server, &limit("default")).await, Some(8.0), "starts at its floor: two batches of 4");
    assert_eq!(metric(&server, &limit("bounded")).await, Some(8.0), "min = max = 8 pins it");
    assert_eq!(metric(&server, &limit("off")).await, None, "opted out: no limit, no gauge");
}

#[tokio::test]
async fn requests_over_the_shape_limits_are_refused_naming_the_flag() {
    let server = Server::start(&shipped_models(), &["--max-inputs", "2", "--max-tensor-elements", "32"]);
    let mut client = server.grpc_client().await;
    check_mlp_response(&client.model_infer(mlp_request(2)).await.unwrap().into_inner(), 2); // 32 elements
    let over = client.model_infer(mlp_request(3)).await;
    expect_error(over, Code::ResourceExhausted, &["'input'", "--max-tensor-elements"]);
    let mut many = mlp_request(1);
    many.outputs = outputs(&["probabilities", "probabilities", "probabilities"]);
    expect_error(client.model_infer(many).await, Code::ResourceExhausted, &["3 requested outputs", "--max-inputs"]);
    let body = serde_json::json!({ "inputs": [{ "name": "input", "shape": [4, 16], "datatype": "FP32", "data": vec![0.5f32; 64] }] });
    let http = reqwest::Client::new().post(server.http_url("/v2/models/mlp/infer")).json(&body).send().await.unwrap();
    assert_eq!(http.status(), 413);
    assert!(http.text().await.unwrap().contains("--max-tensor-elements"));
}

#[tokio::test]
async fn a_model_default_timeout_applies_when_the_client_sets_none() {
    let repo = tempfile::tempdir().unwrap();
    // Waits 30 s for a batch of 4 that never comes; its default timeout is 200 ms.
    slow_model(repo.path(), "slow", &parameter("request_timeout_ms", "200"));
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let mut request = mlp_request(1);
    request.model_name = "slow".into();
    let started = Instant::now();
    expect_error(client.model_infer(request.clone()).await, Code::DeadlineExceeded, &["deadline"]);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(10), "answered after {waited:?}");
    // A full batch runs at once, well within the default.
    let mut full = mlp_request(4);
    full.model_name = "slow".into();
    check_mlp_response(&client.model_infer(full).await.unwrap().into_inner(), 4);
}

#[tokio::test]
async fn the_adaptive_limit_is_opt_in_and_exported() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "adaptive", "parameters { key: \"adaptive_concurrency\" value { string_value: \"1\" } }\n");
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let mut request = mlp_request(4); // a full batch runs at once
    request.model_name = "adaptive".into();
    check_mlp_response(&client.model_infer(request).await.unwrap().into_inner(), 4);
    let limit = metric(&server, "ferroserve_concurrency_limit{model=\"adaptive\",version=\"1\"}").await;
    assert!(limit.is_some_and(|l| (4.0..=4096.0).contains(&l)), "limit {limit:?}");
    assert_eq!(metric(&server, "ferroserve_inflight_requests{model=\"adaptive\",version=\"1\"}").await, Some(0.0));
}
