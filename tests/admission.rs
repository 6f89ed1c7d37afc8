//! Admission against the real binary: the server-wide in-flight cap refuses
//! at once with retry hints, shed requests are counted by reason, a model
//! (or the server flag) turns on the adaptive concurrency limit, request
//! shapes are bounded, and a model's default timeout applies.

mod common;
mod grpc_support;

use common::{Server, shipped_models, test_models};
use grpc_support::*;
use std::time::{Duration, Instant};
use tonic::Code;

/// A copy of the test model slow_batch named `name` (batches of up to 4,
/// one instance), with `extra` config.
fn slow_model(root: &std::path::Path, name: &str, extra: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(test_models().join("slow_batch/1/model.onnx"), dir.join("1/model.onnx")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), format!("max_batch_size: 4\ndynamic_batching {{ }}\n{extra}")).unwrap();
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
    // One request holds the only slot (about a second and a half of work).
    let call = occupy_instance(&server, &client, "slow", 1_500_000).await;

    let started = Instant::now();
    let refused = client.model_infer(slow_batch_request("slow", &[0], 1.0)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "refusal took {:?}", started.elapsed());
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("in flight"), "{}", refused.message());
    assert_eq!(refused.metadata().get("grpc-retry-pushback-ms").unwrap(), "100");

    let body = serde_json::json!({ "inputs": [
        { "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.5] },
        { "name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [0] },
    ] });
    let http = reqwest::Client::new().post(server.http_url("/v2/models/slow/infer")).json(&body).send().await.unwrap();
    assert_eq!(http.status(), 429);
    assert_eq!(http.headers().get("retry-after").unwrap(), "1");
    // Refused before it reached a version: the series names the model only.
    let shed = metric(&server, "ferroserve_shed_total{model=\"slow\",version=\"\",reason=\"server_inflight\"}").await;
    assert_eq!(shed, Some(2.0));

    // The holder finishes; the slot frees and work flows again.
    call.await.unwrap().expect("the holder is answered");
    client.model_infer(slow_batch_request("slow", &[0; 4], 1.0)).await.expect("a batch of 4 after the holder");
}

#[tokio::test]
async fn a_full_queue_is_counted_as_shed() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "slow", "");
    std::fs::write(
        repo.path().join("slow/config.pbtxt"),
        "max_batch_size: 4\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }\n",
    )
    .unwrap();
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let busy = occupy_instance(&server, &client, "slow", 1_500_000).await;
    // One request waits behind it: the queue is full.
    let mut waiting = client.clone();
    let held = tokio::spawn(async move { waiting.model_infer(slow_batch_request("slow", &[0], 1.0)).await });
    wait_for_queue_depth(&server, "slow", 1.0).await;
    let refused = client.model_infer(slow_batch_request("slow", &[0], 2.0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("is full"), "{}", refused.message());
    // A full queue holds at least the model's latency target of work.
    let pushback: i64 = refused.metadata().get("grpc-retry-pushback-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!(pushback >= 1, "{pushback}");
    let shed = metric(&server, "ferroserve_shed_total{model=\"slow\",version=\"1\",reason=\"queue_full\"}").await;
    assert_eq!(shed, Some(1.0));
    busy.await.unwrap().expect("the busy request is answered");
    held.await.unwrap().expect("the queued request runs once the instance frees");
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
    slow_model(repo.path(), "slow", &parameter("request_timeout_ms", "200"));
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    // The instance is busy for a second; its default timeout is 200 ms.
    let busy = occupy_instance(&server, &client, "slow", 1_000_000).await;
    let started = Instant::now();
    let queued = client.model_infer(slow_batch_request("slow", &[0], 1.0)).await;
    expect_error(queued, Code::DeadlineExceeded, &["deadline"]);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(10), "answered after {waited:?}");
    busy.await.unwrap().expect("a client deadline replaces the default");
    // With the instance free, a request runs well within the default.
    client.model_infer(slow_batch_request("slow", &[0; 4], 1.0)).await.expect("runs at once");
}

#[tokio::test]
async fn the_adaptive_limit_is_opt_in_and_exported() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "adaptive", "parameters { key: \"adaptive_concurrency\" value { string_value: \"1\" } }\n");
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    client.model_infer(slow_batch_request("adaptive", &[0; 4], 1.0)).await.expect("a full batch runs at once");
    let limit = metric(&server, "ferroserve_concurrency_limit{model=\"adaptive\",version=\"1\"}").await;
    assert!(limit.is_some_and(|l| (4.0..=4096.0).contains(&l)), "limit {limit:?}");
    assert_eq!(metric(&server, "ferroserve_inflight_requests{model=\"adaptive\",version=\"1\"}").await, Some(0.0));
}
