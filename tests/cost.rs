//! Scheduling by cost against the real binary: the cost model is seeded at
//! load and exported, admission refuses at once what it predicts would
//! finish after the latency target (reason `slo`) or the request's deadline
//! (reason `deadline`), a model whose SLO is shorter than one execution says
//! so, priority levels order the queue and out-of-range priorities are
//! named, and the flag or a model parameter turns admission off.

mod common;
mod grpc_support;

use common::{Server, test_models};
use ferroserve::pb;
use grpc_support::raw;
use grpc_support::*;
use std::time::Duration;
use tonic::Code;

/// About 200 ms of work per request (1 µs per Loop iteration).
const SLOW: i64 = 200_000;

/// A slow_batch copy named `name` with `config` after max_batch_size.
fn slow_model(root: &std::path::Path, name: &str, config: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(test_models().join("slow_batch/1/model.onnx"), dir.join("1/model.onnx")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), format!("max_batch_size: 4\n{config}\n")).unwrap();
}

fn parameter(key: &str, value: &str) -> String {
    format!("parameters {{ key: \"{key}\" value {{ string_value: \"{value}\" }} }}\n")
}

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap()
}

fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Teaches the model that a batch of one takes about 200 ms: three runs
/// (the estimate is a median), one after the other.
async fn teach_slow(client: &mut common::GrpcClient, model: &str) {
    for i in 0..3 {
        client.model_infer(slow_batch_request(model, &[SLOW], i as f32)).await.expect("a lone request is admitted");
    }
}

#[tokio::test]
async fn the_cost_model_is_seeded_at_load_and_exported() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "slow", "dynamic_batching { }");
    let server = Server::start(repo.path(), &[]);
    let body = metrics(&server).await;
    for batch in [1, 2, 4] {
        let seconds = metric(
            &body,
            &format!("ferroserve_model_execution_seconds{{model=\"slow\",version=\"1\",batch=\"{batch}\"}}"),
        );
        assert!(seconds.is_some_and(|s| s > 0.0 && s < 0.1), "batch {batch}: {seconds:?}\n{body}");
    }
    assert_eq!(metric(&body, "ferroserve_slo_attainable{model=\"slow\",version=\"1\"}"), Some(1.0));
    let stats: serde_json::Value =
        reqwest::get(server.http_url("/v2/models/slow/versions/1/stats")).await.unwrap().json().await.unwrap();
    let costs = stats["model_stats"][0]["execution_cost"].as_array().expect("execution_cost in the statistics");
    let sizes: Vec<u64> = costs.iter().map(|c| c["batch_size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [1, 2, 4], "{stats}");
    let admission = &stats["model_stats"][0]["admission"];
    assert!(admission["margin_seconds"].as_f64().is_some_and(|m| m >= 0.0), "{stats}");
    assert!(admission["batch_size_aimed"].as_u64().is_some_and(|b| (1..=4).contains(&b)), "{stats}");
}

/// A server whose `slow` model (200 ms a request, learnt) has a 50 ms SLO
/// it cannot meet, so admission aims at twice one execution (about 400 ms)
/// instead; its only instance is kept busy by the returned call.
async fn slow_model_kept_busy() -> (
    tempfile::TempDir,
    Server,
    common::GrpcClient,
    tokio::task::JoinHandle<Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>>,
) {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "slow", &format!("dynamic_batching {{ }}\n{}", parameter("slo_latency_seconds", "0.05")));
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    teach_slow(&mut client, "slow").await;
    let busy = occupy_instance(&server, &client, "slow", SLOW).await;
    (repo, server, client, busy)
}

#[tokio::test]
async fn a_large_request_predicted_late_is_refused_from_its_first_bytes() {
    let (_repo, server, _client, busy) = slow_model_kept_busy().await;
    // A 1 MiB message of which only the first 4 KiB are ever sent: the
    // model, the first input's shape, and the start of its tensors. An
    // answer at all means the server decided from the head.
    let mut message = slow_batch_request("slow", &[0], 1.0);
    message.raw_input_contents.push(vec![0u8; 1 << 20].into());
    let framed = raw::framed(&message);
    let (mut h2, _driver) = raw::connect(&server.grpc).await;
    let mut ready = h2.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(raw::head(raw::MODEL_INFER, &[]), false).unwrap();
    stream.send_data(framed.slice(..4096), false).unwrap();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), raw::answer(response))
        .await
        .expect("refused before the rest of the body arrived");
    assert!(started.elapsed() < Duration::from_millis(150), "refused after {:?}", started.elapsed());
    assert_eq!(answer.status, "8", "RESOURCE_EXHAUSTED: {}", answer.message);
    assert!(answer.message.contains("latency%20target"), "{}", answer.message); // grpc-message is percent-encoded
    let pushback = answer.headers.get("grpc-retry-pushback-ms").map(|v| v.to_str().unwrap().to_string());
    assert_retry_when_the_late_work_has_run(&answer.message.replace("%20", " "), pushback.as_deref());
    drop(stream);
    // Only that stream was reset: the connection serves the next call.
    busy.await.unwrap().expect("the busy request is answered");
    let small = raw::framed(&slow_batch_request("slow", &[0], 1.0));
    let answer = raw::call(&mut h2, raw::head(raw::MODEL_INFER, &[]), &[small]).await;
    assert_eq!(answer.status, "0", "{}", answer.message);
    // Counted as any refusal: shed for its SLO, and a request of the version.
    let body = metrics(&server).await;
    let shed = metric(&body, "ferroserve_shed_total{model=\"slow\",version=\"1\",reason=\"slo\"}");
    assert_eq!(shed, Some(1.0), "{body}");
    let refused = metric(&body, "ferroserve_requests_total{model=\"slow\",version=\"1\",code=\"overloaded\"}");
    assert_eq!(refused, Some(1.0), "{body}");
}

/// The nice value of the server's thread named `name`, if it has one now.
fn thread_nice(pid: u32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim_end() == name).then_some(())?;
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Field 19 is the nice value; the command name (field 2) may hold spaces.
        stat[stat.rfind(')')? + 2..].split(' ').nth(16)?.parse().ok()
    })
}

#[tokio::test]
async fn a_model_whose_runs_take_milliseconds_runs_its_threads_below_the_fronts() {
    let repo = tempfile::tempdir().unwrap();
    slow_model(repo.path(), "slow", "dynamic_batching { }");
    let server = Server::start(repo.path(), &[]);
    let fronts = thread_nice(server.pid(), "tokio-rt-worker").expect("a tokio worker thread");
    // Seeded from zero-filled inputs, the model costs microseconds: normal priority.
    assert_eq!(thread_nice(server.pid(), "slow-1-0"), Some(fronts));
    // Requests of ~2 ms teach it otherwise; the cost is looked at every second.
    let mut client = server.grpc_client().await;
    let started = std::time::Instant::now();
    while thread_nice(server.pid(), "slow-1-0") == Some(fronts) && started.elapsed() < Duration::from_secs(10) {
        client.model_infer(slow_batch_request("slow", &[SLOW / 100], 1.0)).await.expect("answered");
    }
    assert_eq!(thread_nice(server.pid(), "slow-1-0"), Some((fronts + 10).min(19)), "the instance thread");
    // ONNX Runtime's pool thread, where the machine has cores for one.
    if let Some(pool) = thread_nice(server.pid(), "slow-1-pool") {
        assert_eq!(pool, (fronts + 10).min(19), "the pool thread");
    }
    assert_eq!(thread_nice(server.pid(), "tokio-rt-worker"), Some(fronts), "the fronts keep their priority");
}

#[tokio::test]
async fn requests_predicted_late_are_refused_at_once_naming_the_reason() {
    let (_repo, server, mut client, busy) = slow_model_kept_busy().await;
    // Behind 200 ms of work, 200 ms more (plus the margin) misses
    // the ~400 ms target: refused at once, reason slo.
    let started = std::time::Instant::now();
    let refused = client.model_infer(slow_batch_request("slow", &[0], 1.0)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(150), "refused after {:?}", started.elapsed());
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("latency target"), "{}", refused.message());
    let pushback = refused.metadata().get("grpc-retry-pushback-ms").map(|v| v.to_str().unwrap());
    assert_retry_when_the_late_work_has_run(refused.message(), pushback);
    // With a 100 ms deadline, the deadline is the tighter bound.
    let late =
        client.model_infer(with_deadline(slow_batch_request("slow", &[0], 2.0), Duration::from_millis(100))).await;
    let refused = late.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("deadline"), "{}", refused.message());
    busy.await.unwrap().expect("the busy request is answered");

    let body = metrics(&server).await;
    let shed = |reason: &str| {
        metric(&body, &format!("ferroserve_shed_total{{model=\"slow\",version=\"1\",reason=\"{reason}\"}}"))
    };
    assert_eq!((shed("slo"), shed("deadline")), (Some(1.0), Some(1.0)), "{body}");
    assert_eq!(metric(&body, "ferroserve_slo_attainable{model=\"slow\",version=\"1\"}"), Some(0.0));
    let index = client.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    let entry = index.iter().find(|m| m.name == "slow" && m.version == "1").expect("slow in the index");
    assert_eq!(entry.state, "READY");
    assert!(entry.reason.contains("latency SLO unattainable"), "{}", entry.reason);
    // The instance free again: a request is admitted whatever its prediction.
    client.model_infer(slow_batch_request("slow", &[0], 3.0)).await.expect("never refused into an idle instance");
}

#[tokio::test]
async fn admission_is_turned_off_by_the_flag_or_per_model() {
    let repo = tempfile::tempdir().unwrap();
    let slo = parameter("slo_latency_seconds", "0.05");
    slow_model(repo.path(), "flag", &format!("dynamic_batching {{ }}\n{slo}"));
    slow_model(repo.path(), "on", &format!("dynamic_batching {{ }}\n{slo}{}", parameter("slo_admission", "1")));
    let server = Server::start(repo.path(), &["--slo-admission", "false"]);
    let mut client = server.grpc_client().await;
    for model in ["flag", "on"] {
        teach_slow(&mut client, model).await;
    }
    // "flag" follows --slo-admission false: the request queues and runs.
    let busy = occupy_instance(&server, &client, "flag", SLOW).await;
    client.model_infer(slow_batch_request("flag", &[0], 1.0)).await.expect("admission is off");
    busy.await.unwrap().unwrap();
    // "on" overrides the flag.
    let busy = occupy_instance(&server, &client, "on", SLOW).await;
    let refused = client.model_infer(slow_batch_request("on", &[0], 1.0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    busy.await.unwrap().unwrap();
}

#[tokio::test]
async fn higher_priority_runs_first_and_an_out_of_range_priority_is_named() {
    let repo = tempfile::tempdir().unwrap();
    // Batches of one (preferred size 1), so queued requests run one by
    // one; admission off, since this is about order only.
    slow_model(
        repo.path(),
        "ranked",
        &format!(
            "dynamic_batching {{ preferred_batch_size: [ 1 ] priority_levels: 2 default_priority_level: 2 }}\n{}",
            parameter("slo_admission", "0")
        ),
    );
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    // Each of the ranked requests runs about 50 ms, so they answer apart.
    let with_priority = |x: f32, priority: u64| {
        let mut request = slow_batch_request("ranked", &[50_000], x);
        request.parameters.insert(
            "priority".into(),
            pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Uint64Param(priority)) },
        );
        request
    };
    let out_of_range = client.model_infer(with_priority(0.0, 3)).await;
    expect_error(out_of_range, Code::InvalidArgument, &["priority 3", "1..=2"]);
    let http = reqwest::Client::new()
        .post(server.http_url("/v2/models/ranked/infer"))
        .json(&serde_json::json!({
            "parameters": { "priority": 9 },
            "inputs": [
                { "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.0] },
                { "name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [0] }
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 400);
    assert!(http.text().await.unwrap().contains("1..=2"));

    // Behind a busy instance: two default-level (2) requests, then one of
    // level 1. The level-1 request runs first once the instance frees.
    let busy = occupy_instance(&server, &client, "ranked", 500_000).await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut calls = Vec::new();
    for (x, priority) in [(10.0, 0), (20.0, 2), (30.0, 1)] {
        let mut client = client.clone();
        let done = done_tx.clone();
        let request = with_priority(x, priority);
        calls.push(tokio::spawn(async move {
            client.model_infer(request).await.expect("answered");
            done.send(x).unwrap();
        }));
        wait_for_queue_depth(&server, "ranked", calls.len() as f64).await;
    }
    busy.await.unwrap().unwrap();
    for call in calls {
        call.await.unwrap();
    }
    let order: Vec<f32> = std::iter::from_fn(|| done_rx.try_recv().ok()).collect();
    assert_eq!(order, [30.0, 10.0, 20.0], "level 1 first, then the default level in arrival order");
}

/// A refusal predicted late says to retry once the work queued past the
/// target has run: `grpc-retry-pushback-ms` is the prediction less the
/// target its message names ("latency target of T ms: predicted P ms").
fn assert_retry_when_the_late_work_has_run(message: &str, pushback: Option<&str>) {
    let number_after = |label: &str| -> f64 {
        let rest = &message[message.find(label).unwrap_or_else(|| panic!("{label} in {message}")) + label.len()..];
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let (target, predicted) = (number_after("latency target of "), number_after("predicted "));
    let pushback: f64 = pushback.expect("a retry hint").parse().unwrap();
    let want = (predicted - target).max(1.0);
    assert!((pushback - want).abs() <= 1.0, "pushback {pushback} ms for {message}");
}
