//! Dynamic batching against the real binary: full and preferred batches run
//! at once as one execution, requests with different non-batch shapes never
//! share a batch, non-batching models run requests one by one, queue
//! deadlines (request `timeout`, grpc-timeout, queue policy REJECT / DELAY),
//! cancelled requests leave the queue unrun, a full queue refuses at once,
//! and streams answer in order while batching is on.
//!
//! A lone request never waits for company, so requests meet in a queue
//! here the way they do under load: the only instance of a slow_batch copy
//! is kept busy by one long request (`occupy_instance`), the requests under
//! test queue behind it, and the batches form when it frees. Models that
//! batch wait long (5 s) for company, so a batch that runs "at once" can
//! only have run because the policy released it. Timeouts are failure bounds.

mod common;
mod grpc_support;

use common::{GrpcClient, Server, shipped_models, test_models};
use ferroserve::pb;
use futures::future::join_all;
use grpc_support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::Code;

/// A request that runs "at once" finishes well within this, far below the
/// 5 s queue delay the models use.
const PROMPT: Duration = Duration::from_millis(2500);
/// Loop iterations that keep a slow_batch instance busy for about a second
/// (1 µs each), time enough for the requests under test to queue behind it.
const BUSY: i64 = 1_000_000;
/// Upper bound for anything that waits on the server: a hung test fails.
const BOUND: Duration = Duration::from_secs(30);

const WAIT_5S: &str = "dynamic_batching { max_queue_delay_microseconds: 5000000 }";

// ---------------------------------------------------------------- support

fn mlp_onnx() -> PathBuf {
    shipped_models().join("mlp/1/model.onnx")
}

/// y = x + 3 on FP32 [-1, 1].
fn plus3_onnx() -> PathBuf {
    test_models().join("multiversion/3/model.onnx")
}

/// A config with one FP32 input and one FP32 output, one instance, followed
/// by `scheduling` (a dynamic_batching block or nothing).
fn fp32_config(input: (&str, u32), output: (&str, u32), max_batch_size: u32, scheduling: &str) -> String {
    let ((input, input_dim), (output, output_dim)) = (input, output);
    format!(
        "platform: \"onnxruntime_onnx\"\n\
         max_batch_size: {max_batch_size}\n\
         input [ {{ name: \"{input}\" data_type: TYPE_FP32 dims: [ {input_dim} ] }} ]\n\
         output [ {{ name: \"{output}\" data_type: TYPE_FP32 dims: [ {output_dim} ] }} ]\n\
         instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n\
         {scheduling}\n"
    )
}

/// An mlp config (input FP32 [16] -> probabilities FP32 [10]).
fn mlp_config(max_batch_size: u32, scheduling: &str) -> String {
    fp32_config(("input", 16), ("probabilities", 10), max_batch_size, scheduling)
}

/// A y = x + 3 config (x FP32 [1] -> y FP32 [1]).
fn plus3_config(max_batch_size: u32, scheduling: &str) -> String {
    fp32_config(("x", 1), ("y", 1), max_batch_size, scheduling)
}

/// Writes `<root>/<name>/config.pbtxt` (named `name`) and version 1 from `onnx`.
fn write_model(root: &Path, name: &str, onnx: &Path, config: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(onnx, dir.join("1/model.onnx")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), format!("name: \"{name}\"\n{config}")).unwrap();
}

/// A server on a fresh repository holding `models` (name, onnx, config).
fn start(models: &[(&str, PathBuf, String)]) -> (TempDir, Server) {
    let repo = tempfile::tempdir().unwrap();
    for (name, onnx, config) in models {
        write_model(repo.path(), name, onnx, config);
    }
    let server = Server::start(repo.path(), &[]);
    (repo, server)
}

/// An mlp request of `rows` rows varied by `seed`, with an id.
fn mlp_input(model: &str, rows: usize, seed: f32, id: &str) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        id: id.into(),
        ..raw_request(model, vec![(input("input", "FP32", &[rows as i64, 16]), f32_bytes(&mlp_rows(rows, seed)))])
    }
}

/// y = x + 1 (any width) after a Loop of max(spin) iterations.
fn slow_onnx() -> PathBuf {
    test_models().join("slow_batch/1/model.onnx")
}

/// A slow_batch config: x FP32 [-1] and spin INT64 [1] -> y FP32 [-1].
fn slow_config(max_batch_size: u32, scheduling: &str) -> String {
    format!(
        "platform: \"onnxruntime_onnx\"\n\
         max_batch_size: {max_batch_size}\n\
         input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: \"spin\" data_type: TYPE_INT64 dims: [ 1 ] }} ]\n\
         output [ {{ name: \"y\" data_type: TYPE_FP32 dims: [ -1 ] }} ]\n\
         instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n\
         {scheduling}\n"
    )
}

/// A slow_batch request of `rows` rows of `width` values, no spin, with an id.
fn slow_input(model: &str, rows: usize, width: usize, seed: f32, id: &str) -> pb::ModelInferRequest {
    let values: Vec<f32> = (0..rows * width).map(|i| seed + i as f32 * 0.25).collect();
    pb::ModelInferRequest {
        id: id.into(),
        ..raw_request(
            model,
            vec![
                (input("x", "FP32", &[rows as i64, width as i64]), f32_bytes(&values)),
                (input("spin", "INT64", &[rows as i64, 1]), vec![0; rows * 8]),
            ],
        )
    }
}

/// Checks a slow_batch answer: y = x + 1 in the request's shape.
#[track_caller]
fn check_slow_answer(request: &pb::ModelInferRequest, response: &pb::ModelInferResponse) {
    assert_eq!(response.id, request.id, "each answer goes back to its own request");
    let (_, shape, data) = output(response, "y");
    assert_eq!(shape, &request.inputs[0].shape[..], "request {}", request.id);
    let expected: Vec<f32> = f32_values(&request.raw_input_contents[0]).iter().map(|v| v + 1.0).collect();
    assert_eq!(f32_values(data), expected, "request {}", request.id);
}

/// Sends `requests` while the instance of `model` is busy, waits until all
/// of them are queued behind it, and returns the answers (busy one first).
async fn queue_behind_busy(
    server: &Server,
    client: &GrpcClient,
    model: &str,
    requests: Vec<pb::ModelInferRequest>,
) -> Vec<Result<pb::ModelInferResponse, tonic::Status>> {
    let busy = occupy_instance(server, client, model, BUSY).await;
    let count = requests.len() as f64;
    let sender = client.clone();
    let calls = tokio::spawn(async move { infer_all(&sender, requests).await });
    wait_for_queue_depth(server, model, count).await;
    let busy = busy.await.unwrap().map(tonic::Response::into_inner);
    let mut answers = vec![busy];
    answers.extend(calls.await.unwrap());
    answers
}

fn plus3_input(model: &str, values: &[f32], id: &str) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        id: id.into(),
        ..raw_request(model, vec![(input("x", "FP32", &[values.len() as i64, 1]), f32_bytes(values))])
    }
}

/// Sends every request at once (one call each, sharing the connection) and
/// returns the answers in request order.
async fn infer_all(
    client: &GrpcClient,
    requests: Vec<pb::ModelInferRequest>,
) -> Vec<Result<pb::ModelInferResponse, tonic::Status>> {
    let calls = requests.into_iter().map(|request| {
        let mut client = client.clone();
        async move { client.model_infer(request).await.map(tonic::Response::into_inner) }
    });
    tokio::time::timeout(BOUND, join_all(calls)).await.expect("the requests were never answered")
}

/// (success count, fail count) of a model's inference statistics.
fn outcomes(stats: &pb::ModelStatistics) -> (u64, u64) {
    let s = stats.inference_stats.as_ref().unwrap();
    (s.success.map_or(0, |d| d.count), s.fail.map_or(0, |d| d.count))
}

// ---------------------------------------------------------------- full batches

#[tokio::test]
async fn four_single_row_requests_queued_together_run_as_one_batch_with_their_own_answers() {
    let (_repo, server) = start(&[("batched", slow_onnx(), slow_config(4, WAIT_5S))]);
    let mut client = server.grpc_client().await;
    let requests: Vec<_> = (0..4).map(|i| slow_input("batched", 1, 3, i as f32 * 1.7, &format!("r{i}"))).collect();

    let started = Instant::now();
    let answers = queue_behind_busy(&server, &client, "batched", requests.clone()).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1) + PROMPT * 2, "the queued batch of 4 waited: {elapsed:?}");

    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1), (4, 1)]), "the busy one, then all four");
    assert_eq!(stats.inference_count, 5);
    assert_eq!(outcomes(&stats), (5, 0));
    for (request, answer) in requests.iter().zip(&answers[1..]) {
        check_slow_answer(request, answer.as_ref().unwrap());
    }
}

#[tokio::test]
async fn a_lone_request_runs_at_once_without_waiting_for_company() {
    let (_repo, server) = start(&[("batched", mlp_onnx(), mlp_config(4, WAIT_5S))]);
    let mut client = server.grpc_client().await;
    for i in 0..5 {
        let started = Instant::now();
        let answer = client.model_infer(mlp_input("batched", 1, i as f32, "")).await.unwrap().into_inner();
        check_mlp_response(&answer, 1);
        assert!(started.elapsed() < PROMPT, "a lone request waited {:?} of its 5 s delay", started.elapsed());
    }
    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 5)]));
}

#[tokio::test]
async fn requests_of_one_and_three_rows_fill_one_batch_of_four_and_split_back() {
    let (_repo, server) = start(&[("batched", slow_onnx(), slow_config(4, WAIT_5S))]);
    let mut client = server.grpc_client().await;
    let requests = vec![slow_input("batched", 1, 2, 0.25, "one"), slow_input("batched", 3, 2, 9.5, "three")];
    let answers = queue_behind_busy(&server, &client, "batched", requests.clone()).await;
    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1), (4, 1)]), "{stats:?}");
    for (request, answer) in requests.iter().zip(&answers[1..]) {
        check_slow_answer(request, answer.as_ref().unwrap()); // shape [rows, 2]
    }
}

#[tokio::test]
async fn the_largest_preferred_size_runs_at_once() {
    let scheduling = "dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 5000000 }";
    let (_repo, server) = start(&[("preferred", slow_onnx(), slow_config(8, scheduling))]);
    let mut client = server.grpc_client().await;

    // Four queued together: cut into two batches of 2 although 8 would fit,
    // none waiting for its delay.
    let requests: Vec<_> = (0..4).map(|i| slow_input("preferred", 1, 1, i as f32, &format!("r{i}"))).collect();
    let started = Instant::now();
    let answers = queue_behind_busy(&server, &client, "preferred", requests.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(1) + PROMPT * 2, "waited {:?}", started.elapsed());
    for (request, answer) in requests.iter().zip(&answers[1..]) {
        check_slow_answer(request, answer.as_ref().unwrap());
    }
    let stats = model_statistics(&mut client, "preferred").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1), (2, 2)]), "{stats:?}");
}

// ---------------------------------------------------------------- shapes

#[tokio::test]
async fn requests_with_different_non_batch_dims_never_share_a_batch() {
    let scheduling = "dynamic_batching { max_queue_delay_microseconds: 2000000 }";
    let (_repo, server) = start(&[("shapes", slow_onnx(), slow_config(2, scheduling))]);
    let mut client = server.grpc_client().await;
    // Widths 2, 3, 2 queued together: the two width-2 requests fill a batch
    // of 2; the width-3 one can only run alone.
    let requests: Vec<_> = [2, 3, 2]
        .iter()
        .enumerate()
        .map(|(i, &w)| slow_input("shapes", 1, w, i as f32, &format!("w{w}-{i}")))
        .collect();
    let started = Instant::now();
    let answers = queue_behind_busy(&server, &client, "shapes", requests.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(3) + PROMPT * 2, "took {:?}", started.elapsed());
    for (request, answer) in requests.iter().zip(&answers[1..]) {
        check_slow_answer(request, answer.as_ref().unwrap());
    }
    let stats = model_statistics(&mut client, "shapes").await;
    assert_eq!((stats.execution_count, stats.inference_count), (3, 4), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 2), (2, 1)]));
}

// ---------------------------------------------------------------- no batching

#[tokio::test]
async fn a_model_without_batching_runs_concurrent_requests_one_by_one() {
    let repo = common::temp_repository(&[(&test_models(), "nobatch")]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let values = |i: usize| -> Vec<f32> { (0..6).map(|k| (i * 10 + k) as f32 - 7.5).collect() };
    let requests: Vec<_> = (0..5)
        .map(|i| pb::ModelInferRequest {
            id: i.to_string(),
            ..raw_request("nobatch", vec![(input("x", "FP32", &[2, 3]), f32_bytes(&values(i)))])
        })
        .collect();
    let answers = infer_all(&client, requests).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.unwrap();
        assert_eq!(response.id, i.to_string());
        let (_, shape, data) = output(&response, "y");
        assert_eq!(shape, [2, 3]);
        assert_eq!(f32_values(data), values(i).iter().map(|v| v * 2.0).collect::<Vec<_>>());
    }
    let stats = model_statistics(&mut client, "nobatch").await;
    assert_eq!((stats.execution_count, stats.inference_count), (5, 5), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 5)]));
}

/// A model of microseconds under changing load: a lone request runs its
/// batch on its own task (scheduler/worker.rs, `run_here`), queued ones on
/// the instance thread, and the two take turns as clients come and go.
/// Every client still gets its own rows back.
#[tokio::test]
async fn many_clients_of_a_model_of_microseconds_each_get_their_own_rows() {
    let (_repo, server) =
        start(&[("quick", plus3_onnx(), plus3_config(8, "dynamic_batching { max_queue_delay_microseconds: 100 }"))]);
    let mut client = server.grpc_client().await;
    // One at a time first: the quick streak that lets tasks run batches.
    for i in 0..80 {
        let answer = client.model_infer(plus3_input("quick", &[i as f32], "")).await.unwrap().into_inner();
        assert_eq!(f32_values(output(&answer, "y").2), [i as f32 + 3.0]);
    }
    let clients = (0..16).map(|c| {
        let mut client = client.clone();
        async move {
            for i in 0..40 {
                let values: Vec<f32> = (0..1 + (c + i) % 3).map(|k| (c * 1000 + i * 10 + k) as f32).collect();
                let id = format!("{c}-{i}");
                let answer = client.model_infer(plus3_input("quick", &values, &id)).await.unwrap().into_inner();
                assert_eq!(answer.id, id);
                let (_, shape, data) = output(&answer, "y");
                assert_eq!(shape, [values.len() as i64, 1]);
                assert_eq!(f32_values(data), values.iter().map(|v| v + 3.0).collect::<Vec<_>>(), "request {id}");
            }
        }
    });
    tokio::time::timeout(BOUND, join_all(clients)).await.expect("the clients were never answered");
    let stats = model_statistics(&mut client, "quick").await;
    let rows: u64 = 80 + (0..16).flat_map(|c| (0..40).map(move |i| 1 + (c + i) % 3)).sum::<u64>();
    assert_eq!(stats.inference_count, rows);
    assert_eq!(outcomes(&stats), (80 + 16 * 40, 0));
}

// ---------------------------------------------------------------- deadlines

/// Sends one request and returns its outcome and how long it took.
async fn timed(
    client: &mut GrpcClient,
    request: tonic::Request<pb::ModelInferRequest>,
) -> (Result<pb::ModelInferResponse, tonic::Status>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND, client.model_infer(request)).await.expect("never answered");
    (result.map(tonic::Response::into_inner), started.elapsed())
}

/// Sends `request` while the instance of `model` is busy (about a second),
/// and returns its outcome and how long it took; the busy request is
/// answered before this returns.
async fn behind_busy(
    server: &Server,
    client: &mut GrpcClient,
    model: &str,
    request: tonic::Request<pb::ModelInferRequest>,
) -> (Result<pb::ModelInferResponse, tonic::Status>, Duration) {
    let busy = occupy_instance(server, client, model, BUSY).await;
    let outcome = timed(client, request).await;
    busy.await.unwrap().expect("the busy request is answered");
    outcome
}

#[tokio::test]
async fn the_timeout_parameter_drops_a_queued_request_unrun() {
    let policy = |rest: &str| {
        format!("dynamic_batching {{ max_queue_delay_microseconds: 5000000 default_queue_policy {{ {rest} }} }}")
    };
    let (_repo, server) = start(&[
        // No queue policy: the request's own timeout applies.
        ("plain", slow_onnx(), slow_config(4, WAIT_5S)),
        // A 10 s default the request may shorten.
        (
            "override",
            slow_onnx(),
            slow_config(
                4,
                &policy("default_timeout_microseconds: 10000000 timeout_action: REJECT allow_timeout_override: true"),
            ),
        ),
        // A 10 s default the request may not shorten.
        (
            "no_override",
            slow_onnx(),
            slow_config(
                4,
                &policy("default_timeout_microseconds: 10000000 timeout_action: REJECT allow_timeout_override: false"),
            ),
        ),
    ]);
    let mut client = server.grpc_client().await;

    for model in ["plain", "override"] {
        let request = with_timeout_parameter(slow_input(model, 1, 1, 0.0, ""), 200_000);
        let (result, elapsed) = behind_busy(&server, &mut client, model, tonic::Request::new(request)).await;
        expect_error(result, Code::DeadlineExceeded, &["deadline"]);
        assert!(
            (Duration::from_millis(200)..PROMPT).contains(&elapsed),
            "{model}: answered after {elapsed:?}, expected just after the 200 ms timeout"
        );
        let stats = model_statistics(&mut client, model).await;
        assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1)]), "{model}: only the busy one ran");
        assert_eq!(outcomes(&stats), (1, 1), "{model}: one failure recorded");
    }

    // allow_timeout_override false: the 200 ms asked for is ignored; the
    // request runs once the instance frees, about a second later.
    let request = with_timeout_parameter(slow_input("no_override", 1, 1, 0.0, "kept"), 200_000);
    let (result, elapsed) = behind_busy(&server, &mut client, "no_override", tonic::Request::new(request)).await;
    assert_eq!(result.unwrap().id, "kept");
    assert!(elapsed > Duration::from_millis(200), "ran after {elapsed:?}, before the timeout it ignored");
    let stats = model_statistics(&mut client, "no_override").await;
    assert_eq!((stats.execution_count, outcomes(&stats)), (2, (2, 0)), "{stats:?}");

    // A timeout that is not reached does not hurt.
    let requests: Vec<_> = (0..4)
        .map(|i| with_timeout_parameter(slow_input("plain", 1, 1, i as f32, &format!("r{i}")), 2_000_000))
        .collect();
    for (request, answer) in requests.iter().zip(infer_all(&client, requests.clone()).await) {
        check_slow_answer(request, &answer.unwrap());
    }
    assert_eq!(outcomes(&model_statistics(&mut client, "plain").await), (5, 1));
}

#[tokio::test]
async fn the_queue_policy_rejects_or_delays_requests_past_its_timeout() {
    let (_repo, server) = start(&[
        (
            "reject",
            slow_onnx(),
            slow_config(
                4,
                "dynamic_batching { max_queue_delay_microseconds: 5000000 default_queue_policy { \
                 default_timeout_microseconds: 200000 timeout_action: REJECT } }",
            ),
        ),
        (
            "delay",
            slow_onnx(),
            slow_config(
                4,
                "dynamic_batching { max_queue_delay_microseconds: 500000 default_queue_policy { \
                 default_timeout_microseconds: 200000 timeout_action: DELAY } }",
            ),
        ),
    ]);
    let mut client = server.grpc_client().await;

    // REJECT: answered DEADLINE_EXCEEDED after 200 ms without any parameter.
    let request = tonic::Request::new(slow_input("reject", 1, 1, 0.0, ""));
    let (result, elapsed) = behind_busy(&server, &mut client, "reject", request).await;
    expect_error(result, Code::DeadlineExceeded, &["deadline"]);
    assert!((Duration::from_millis(200)..PROMPT).contains(&elapsed), "answered after {elapsed:?}");
    let stats = model_statistics(&mut client, "reject").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1)]), "only the busy one ran");
    assert_eq!(outcomes(&stats), (1, 1));

    // DELAY: past its 200 ms the request still runs, once the instance frees.
    let request = tonic::Request::new(slow_input("delay", 1, 1, 0.0, "late"));
    let (result, elapsed) = behind_busy(&server, &mut client, "delay", request).await;
    assert_eq!(result.unwrap().id, "late");
    assert!(elapsed > Duration::from_millis(200), "ran after {elapsed:?}, before its timeout");
    let stats = model_statistics(&mut client, "delay").await;
    assert_eq!((stats.execution_count, outcomes(&stats)), (2, (2, 0)), "{stats:?}");
}

/// ferroserve's own grpc-timeout handling, isolated from the client's: tonic's
/// client timeout layer ignores a grpc-timeout of more than 8 digits, which
/// ferroserve's parser accepts, so only ferroserve acts on it.
#[tokio::test]
async fn a_grpc_timeout_drops_a_queued_request_unrun() {
    let (_repo, server) = start(&[("plain", slow_onnx(), slow_config(4, WAIT_5S))]);
    let mut client = server.grpc_client().await;
    let mut request = tonic::Request::new(slow_input("plain", 1, 1, 0.0, ""));
    request.metadata_mut().insert("grpc-timeout", "0000000200m".parse().unwrap());
    let (result, elapsed) = behind_busy(&server, &mut client, "plain", request).await;
    expect_error(result, Code::DeadlineExceeded, &["deadline"]);
    // The deadline is the timeout exactly, from when the server received the call.
    assert!((Duration::from_millis(200)..PROMPT).contains(&elapsed), "answered after {elapsed:?}");
    let stats = model_statistics(&mut client, "plain").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1)]), "only the busy one ran");
    assert_eq!(outcomes(&stats), (1, 1), "ferroserve answered it (not a timeout layer)");
}

// ---------------------------------------------------------------- cancellation

#[tokio::test]
async fn a_cancelled_request_leaves_the_queue_unrun() {
    let (_repo, server) = start(&[("batched", slow_onnx(), slow_config(3, WAIT_5S))]);
    let mut client = server.grpc_client().await;

    // One request queues behind a busy instance ...
    let busy = occupy_instance(&server, &client, "batched", BUSY).await;
    let mut waiting = client.clone();
    let call = tokio::spawn(async move { waiting.model_infer(slow_input("batched", 1, 1, 0.0, "cancelled")).await });
    wait_for_queue_depth(&server, "batched", 1.0).await;
    // ... and its client gives up: dropping the call resets the HTTP/2 stream.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    busy.await.unwrap().expect("the busy request is answered");
    // The instance, free again, drops the abandoned request unrun.
    wait_for_queue_depth(&server, "batched", 0.0).await;

    // Three more, queued together, run as one batch of exactly 3.
    let requests: Vec<_> = (0..3).map(|i| slow_input("batched", 1, 1, i as f32, &format!("r{i}"))).collect();
    let answers = queue_behind_busy(&server, &client, "batched", requests.clone()).await;
    for (request, answer) in requests.iter().zip(&answers[1..]) {
        check_slow_answer(request, answer.as_ref().unwrap());
    }
    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 2), (3, 1)]), "{stats:?}");
    assert_eq!(outcomes(&stats), (5, 0), "the cancelled request is neither a success nor a failure");
}

// ---------------------------------------------------------------- queue full

#[tokio::test]
async fn a_full_queue_refuses_at_once_over_grpc_and_http() {
    let scheduling = "dynamic_batching { max_queue_delay_microseconds: 30000000 \
                      default_queue_policy { max_queue_size: 2 } }";
    let (_repo, server) = start(&[("bounded", slow_onnx(), slow_config(8, scheduling))]);
    let mut client = server.grpc_client().await;

    // Two requests wait behind a busy instance.
    let busy = occupy_instance(&server, &client, "bounded", BUSY).await;
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let mut client = client.clone();
            let request = slow_input("bounded", 1, 1, i as f32, "");
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    wait_for_queue_depth(&server, "bounded", 2.0).await;

    // A third is refused at once.
    let (result, elapsed) = timed(&mut client, tonic::Request::new(slow_input("bounded", 1, 1, 0.0, ""))).await;
    expect_error(result, Code::ResourceExhausted, &["bounded", "full"]);
    assert!(elapsed < Duration::from_millis(1000), "refused after {elapsed:?}");

    let body = serde_json::json!({
        "inputs": [
            { "name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.5] },
            { "name": "spin", "datatype": "INT64", "shape": [1, 1], "data": [0] }
        ]
    });
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(server.http_url("/v2/models/bounded/infer"))
        .json(&body)
        .timeout(BOUND)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 429);
    let text = response.text().await.unwrap();
    assert!(text.contains("full"), "{text}");
    assert!(elapsed < Duration::from_millis(1000), "refused after {elapsed:?}");

    busy.await.unwrap().expect("the busy request is answered");
    for call in waiting {
        tokio::time::timeout(BOUND, call).await.unwrap().unwrap().expect("the queued requests run");
    }
    let stats = model_statistics(&mut client, "bounded").await;
    assert_eq!(outcomes(&stats), (3, 2), "the busy one and two queued ran, two refused");
}

// ---------------------------------------------------------------- streaming

#[tokio::test]
async fn a_stream_answers_in_order_with_ids_and_outputs_while_batching() {
    let scheduling = "dynamic_batching { max_queue_delay_microseconds: 20000 }";
    let (_repo, server) = start(&[("plus3", plus3_onnx(), plus3_config(4, scheduling))]);
    let mut client = server.grpc_client().await;
    let values = |i: usize| -> Vec<f32> { (0..i % 4 + 1).map(|k| i as f32 * 10.0 + k as f32 * 0.5).collect() };
    let requests: Vec<_> = (0..20).map(|i| plus3_input("plus3", &values(i), &format!("id-{i}"))).collect();

    let mut stream = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = tokio::time::timeout(BOUND, stream.message()).await.expect("stream stalled").unwrap() {
        answers.push(answer);
    }
    assert_eq!(answers.len(), 20, "one answer per request");
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.error_message, "", "answer {i}");
        let response = answer.infer_response.as_ref().unwrap();
        assert_eq!(response.id, format!("id-{i}"), "answers come back in request order");
        let (_, shape, data) = output(response, "y");
        assert_eq!(shape, [values(i).len() as i64, 1]);
        assert_eq!(f32_values(data), values(i).iter().map(|v| v + 3.0).collect::<Vec<_>>(), "answer {i}");
    }
    let stats = model_statistics(&mut client, "plus3").await;
    assert_eq!(stats.inference_count, (0..20).map(|i| values(i).len() as u64).sum::<u64>());
    assert_eq!(outcomes(&stats), (20, 0));
}

/// Requests sent together on one stream batch like concurrent calls.
#[tokio::test]
async fn requests_on_one_stream_share_a_batch() {
    let scheduling = "dynamic_batching { max_queue_delay_microseconds: 2000000 }";
    let (_repo, server) = start(&[("batched", slow_onnx(), slow_config(4, scheduling))]);
    let mut client = server.grpc_client().await;
    let busy = occupy_instance(&server, &client, "batched", BUSY).await;
    let requests: Vec<_> = (0..4).map(|i| slow_input("batched", 1, 1, i as f32, &format!("id-{i}"))).collect();
    let mut stream = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    wait_for_queue_depth(&server, "batched", 4.0).await;
    busy.await.unwrap().expect("the busy request is answered");
    let mut ids = Vec::new();
    while let Some(answer) = tokio::time::timeout(BOUND, stream.message()).await.expect("stream stalled").unwrap() {
        ids.push(answer.infer_response.unwrap().id);
    }
    assert_eq!(ids, ["id-0", "id-1", "id-2", "id-3"]);
    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1), (4, 1)]));
}
