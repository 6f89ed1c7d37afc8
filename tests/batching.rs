//! Dynamic batching against the real binary: full and preferred batches run
//! at once as one execution, requests with different non-batch shapes never
//! share a batch, non-batching models run requests one by one, queue
//! deadlines (request `timeout`, grpc-timeout, queue policy REJECT / DELAY),
//! cancelled requests leave the queue unrun, a full queue refuses at once,
//! and streams answer in order while batching is on.
//!
//! Every model here waits long (5 s) for a batch unless the scenario needs
//! otherwise, so a batch that runs "at once" can only have run because the
//! policy released it, never by timing luck. Timeouts are failure bounds.

mod common;
mod grpc_support;

use common::{GrpcClient, Server, copy_dir, shipped_models, test_models};
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

/// Asserts a model never ran: no execution, no inference.
#[track_caller]
fn assert_never_ran(stats: &pb::ModelStatistics) {
    assert_eq!((stats.execution_count, stats.inference_count), (0, 0), "{stats:?}");
    assert!(stats.batch_stats.is_empty(), "{:?}", stats.batch_stats);
}

// ---------------------------------------------------------------- full batches

#[tokio::test]
async fn four_single_row_requests_run_at_once_as_one_batch_with_the_answers_they_get_alone() {
    let (_repo, server) = start(&[
        ("batched", mlp_onnx(), mlp_config(4, WAIT_5S)),
        // Same graph, no dynamic_batching: every request runs alone.
        ("alone", mlp_onnx(), mlp_config(4, "")),
    ]);
    let mut client = server.grpc_client().await;
    let requests: Vec<_> = (0..4).map(|i| mlp_input("batched", 1, i as f32 * 1.7, &format!("r{i}"))).collect();

    let started = Instant::now();
    let answers = infer_all(&client, requests.clone()).await;
    let elapsed = started.elapsed();
    assert!(elapsed < PROMPT, "a full batch of 4 took {elapsed:?}; it must not wait for the 5 s delay");

    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!(stats.execution_count, 1, "{stats:?}");
    assert_eq!(stats.inference_count, 4);
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(4, 1)]));
    assert_eq!(outcomes(&stats), (4, 0));

    for (request, answer) in requests.into_iter().zip(answers) {
        let batched = answer.unwrap();
        assert_eq!(batched.id, request.id, "each answer goes back to its own request");
        check_mlp_response(&batched, 1);
        let alone = pb::ModelInferRequest { model_name: "alone".into(), ..request };
        let alone = client.model_infer(alone).await.unwrap().into_inner();
        assert_eq!(
            output(&batched, "probabilities").2,
            output(&alone, "probabilities").2,
            "request {}: batched and alone answers differ",
            batched.id
        );
    }
    let alone = model_statistics(&mut client, "alone").await;
    assert_eq!(executions_by_batch_size(&alone), BTreeMap::from([(1, 4)]), "the reference ran each request alone");
}

#[tokio::test]
async fn requests_of_one_and_three_rows_fill_one_batch_of_four_and_split_back() {
    let (_repo, server) =
        start(&[("batched", mlp_onnx(), mlp_config(4, WAIT_5S)), ("alone", mlp_onnx(), mlp_config(4, ""))]);
    let mut client = server.grpc_client().await;
    let requests = vec![mlp_input("batched", 1, 0.25, "one"), mlp_input("batched", 3, 9.5, "three")];

    let started = Instant::now();
    let answers = infer_all(&client, requests.clone()).await;
    let elapsed = started.elapsed();
    assert!(elapsed < PROMPT, "1 + 3 rows fill max_batch_size 4 and must run at once; took {elapsed:?}");

    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!((stats.execution_count, stats.inference_count), (1, 4), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(4, 1)]));

    for ((request, answer), rows) in requests.into_iter().zip(answers).zip([1, 3]) {
        let batched = answer.unwrap();
        assert_eq!(batched.id, request.id);
        check_mlp_response(&batched, rows); // shape [rows, 10]
        let alone = pb::ModelInferRequest { model_name: "alone".into(), ..request };
        let alone = client.model_infer(alone).await.unwrap().into_inner();
        assert_eq!(output(&batched, "probabilities").2, output(&alone, "probabilities").2, "request {}", batched.id);
    }
}

#[tokio::test]
async fn the_largest_preferred_size_runs_at_once() {
    let scheduling = "dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 5000000 }";
    let (_repo, server) = start(&[("preferred", mlp_onnx(), mlp_config(8, scheduling))]);
    let mut client = server.grpc_client().await;

    // Two requests reach the preferred size 2: one batch, at once.
    let started = Instant::now();
    let answers = infer_all(&client, (0..2).map(|i| mlp_input("preferred", 1, i as f32, "")).collect()).await;
    assert!(started.elapsed() < PROMPT, "a preferred-size batch waited {:?}", started.elapsed());
    answers.iter().for_each(|a| check_mlp_response(a.as_ref().unwrap(), 1));
    let stats = model_statistics(&mut client, "preferred").await;
    assert_eq!((stats.execution_count, stats.inference_count), (1, 2), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(2, 1)]));

    // Four at once: cut into two batches of 2 although 8 would fit, none waiting.
    let started = Instant::now();
    let answers = infer_all(&client, (0..4).map(|i| mlp_input("preferred", 1, i as f32, "")).collect()).await;
    assert!(started.elapsed() < PROMPT, "preferred-size batches waited {:?}", started.elapsed());
    answers.iter().for_each(|a| check_mlp_response(a.as_ref().unwrap(), 1));
    let stats = model_statistics(&mut client, "preferred").await;
    assert_eq!((stats.execution_count, stats.inference_count), (3, 6), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(2, 3)]));
}

// ---------------------------------------------------------------- shapes

#[tokio::test]
async fn requests_with_different_non_batch_dims_never_share_a_batch() {
    // identity_all with max_batch_size 2 and a 2 s delay (the two width-2
    // requests must meet in the queue, however busy the machine).
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join("identity_all");
    copy_dir(&test_models().join("identity_all"), &dir);
    let config = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    let config = config.replace("max_batch_size: 8", "max_batch_size: 2");
    assert!(config.contains("max_batch_size: 2"), "the identity_all config changed; update this test");
    std::fs::write(dir.join("config.pbtxt"), config + "dynamic_batching { max_queue_delay_microseconds: 2000000 }\n")
        .unwrap();
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;

    // Widths 2, 3, 2: the two width-2 requests fill a batch of 2 (at once, or
    // right after the width-3 one if it led the queue); the width-3 one can
    // only run alone, after its delay.
    let shapes = [(2, 1u8), (3, 2), (2, 3)];
    let inputs: Vec<_> = shapes.iter().map(|&(width, seed)| identity_all_inputs(1, width, seed)).collect();
    let requests: Vec<_> = inputs
        .iter()
        .zip(shapes)
        .map(|(inputs, (width, _))| pb::ModelInferRequest {
            id: format!("width-{width}"),
            ..raw_request("identity_all", inputs.clone())
        })
        .collect();
    let started = Instant::now();
    let answers = infer_all(&client, requests).await;
    assert!(started.elapsed() < Duration::from_secs(2) + PROMPT, "took {:?}", started.elapsed());

    for ((answer, inputs), (width, _)) in answers.into_iter().zip(&inputs).zip(shapes) {
        let response = answer.unwrap();
        assert_eq!(response.id, format!("width-{width}"));
        assert_eq!(response.outputs.len(), 14, "{:?}", output_names(&response));
        for (tensor, data) in inputs {
            let name = tensor.name.replace("in_", "out_");
            let (datatype, shape, got) = output(&response, &name);
            assert_eq!((datatype, shape), (tensor.datatype.as_str(), &[1, width as i64][..]), "{name}");
            assert_eq!(got, &data[..], "{name} of the width-{width} request");
        }
    }
    let stats = model_statistics(&mut client, "identity_all").await;
    assert_eq!((stats.execution_count, stats.inference_count), (2, 3), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(1, 1), (2, 1)]));
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

#[tokio::test]
async fn the_timeout_parameter_drops_a_queued_request_unrun() {
    let policy = |rest: &str| {
        format!("dynamic_batching {{ max_queue_delay_microseconds: 5000000 default_queue_policy {{ {rest} }} }}")
    };
    let (_repo, server) = start(&[
        // No queue policy: the request's own timeout applies.
        ("plain", mlp_onnx(), mlp_config(4, WAIT_5S)),
        // A 10 s default the request may shorten.
        (
            "override",
            mlp_onnx(),
            mlp_config(
                4,
                &policy("default_timeout_microseconds: 10000000 timeout_action: REJECT allow_timeout_override: true"),
            ),
        ),
        // A 10 s default the request may not shorten; a 1 s batching delay.
        (
            "no_override",
            mlp_onnx(),
            mlp_config(
                4,
                "dynamic_batching { max_queue_delay_microseconds: 1000000 default_queue_policy { \
                 default_timeout_microseconds: 10000000 timeout_action: REJECT allow_timeout_override: false } }",
            ),
        ),
    ]);
    let mut client = server.grpc_client().await;

    for model in ["plain", "override"] {
        let request = with_timeout_parameter(mlp_input(model, 1, 0.0, ""), 200_000);
        let (result, elapsed) = timed(&mut client, tonic::Request::new(request)).await;
        expect_error(result, Code::DeadlineExceeded, &["deadline"]);
        assert!(
            (Duration::from_millis(200)..PROMPT).contains(&elapsed),
            "{model}: answered after {elapsed:?}, expected just after the 200 ms timeout"
        );
        let stats = model_statistics(&mut client, model).await;
        assert_never_ran(&stats);
        assert_eq!(outcomes(&stats), (0, 1), "{model}: one failure recorded");
    }

    // allow_timeout_override false: the 200 ms asked for is ignored; the
    // request runs when the 1 s batching delay passes.
    let request = with_timeout_parameter(mlp_input("no_override", 1, 0.0, ""), 200_000);
    let (result, elapsed) = timed(&mut client, tonic::Request::new(request)).await;
    check_mlp_response(&result.unwrap(), 1);
    assert!(elapsed >= Duration::from_secs(1), "ran after {elapsed:?}, before the 1 s delay");
    let stats = model_statistics(&mut client, "no_override").await;
    assert_eq!((stats.execution_count, outcomes(&stats)), (1, (1, 0)), "{stats:?}");

    // A timeout that is not reached does not hurt: a full batch still runs.
    let requests = (0..4).map(|i| with_timeout_parameter(mlp_input("plain", 1, i as f32, ""), 2_000_000)).collect();
    let started = Instant::now();
    for answer in infer_all(&client, requests).await {
        check_mlp_response(&answer.unwrap(), 1);
    }
    assert!(started.elapsed() < PROMPT);
    let stats = model_statistics(&mut client, "plain").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(4, 1)]));
    assert_eq!(outcomes(&stats), (4, 1));
}

#[tokio::test]
async fn the_queue_policy_rejects_or_delays_requests_past_its_timeout() {
    let (_repo, server) = start(&[
        (
            "reject",
            mlp_onnx(),
            mlp_config(
                4,
                "dynamic_batching { max_queue_delay_microseconds: 5000000 default_queue_policy { \
                 default_timeout_microseconds: 200000 timeout_action: REJECT } }",
            ),
        ),
        (
            "delay",
            mlp_onnx(),
            mlp_config(
                4,
                "dynamic_batching { max_queue_delay_microseconds: 500000 default_queue_policy { \
                 default_timeout_microseconds: 200000 timeout_action: DELAY } }",
            ),
        ),
    ]);
    let mut client = server.grpc_client().await;

    // REJECT: answered DEADLINE_EXCEEDED after 200 ms without any parameter.
    let (result, elapsed) = timed(&mut client, tonic::Request::new(mlp_input("reject", 1, 0.0, ""))).await;
    expect_error(result, Code::DeadlineExceeded, &["deadline"]);
    assert!((Duration::from_millis(200)..PROMPT).contains(&elapsed), "answered after {elapsed:?}");
    let stats = model_statistics(&mut client, "reject").await;
    assert_never_ran(&stats);
    assert_eq!(outcomes(&stats), (0, 1));

    // DELAY: past its 200 ms the request still runs, when the 500 ms batching
    // delay releases it.
    let (result, elapsed) = timed(&mut client, tonic::Request::new(mlp_input("delay", 1, 0.0, ""))).await;
    check_mlp_response(&result.unwrap(), 1);
    assert!(elapsed >= Duration::from_millis(500), "ran after {elapsed:?}, before the 500 ms delay");
    assert!(elapsed < PROMPT, "ran after {elapsed:?}");
    let stats = model_statistics(&mut client, "delay").await;
    assert_eq!((stats.execution_count, outcomes(&stats)), (1, (1, 0)), "{stats:?}");
}

/// ferroserve's own grpc-timeout handling, isolated from the client's: tonic's
/// client timeout layer ignores a grpc-timeout of more than 8 digits, which
/// ferroserve's parser accepts, so only ferroserve acts on it.
#[tokio::test]
async fn a_grpc_timeout_drops_a_queued_request_unrun() {
    let (_repo, server) = start(&[("plain", mlp_onnx(), mlp_config(4, WAIT_5S))]);
    let mut client = server.grpc_client().await;
    let mut request = tonic::Request::new(mlp_input("plain", 1, 0.0, ""));
    request.metadata_mut().insert("grpc-timeout", "0000000200m".parse().unwrap());
    let (result, elapsed) = timed(&mut client, request).await;
    expect_error(result, Code::DeadlineExceeded, &["deadline"]);
    // The deadline is the timeout exactly, from when the server received the call.
    assert!((Duration::from_millis(200)..PROMPT).contains(&elapsed), "answered after {elapsed:?}");
    let stats = model_statistics(&mut client, "plain").await;
    assert_never_ran(&stats);
    assert_eq!(outcomes(&stats), (0, 1), "ferroserve answered it (not a timeout layer)");
}

// ---------------------------------------------------------------- cancellation

#[tokio::test]
async fn a_cancelled_request_leaves_the_queue_unrun() {
    let (_repo, server) = start(&[("batched", mlp_onnx(), mlp_config(3, WAIT_5S))]);
    let mut client = server.grpc_client().await;

    // One request queues (it would wait 5 s for company) ...
    let mut waiting = client.clone();
    let call = tokio::spawn(async move { waiting.model_infer(mlp_input("batched", 1, 0.0, "cancelled")).await });
    wait_for_queue_depth(&server, "batched", 1.0).await;
    // ... and its client gives up: dropping the call resets the HTTP/2 stream.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    // Wait until the scheduler has seen the client leave. It prunes abandoned
    // requests whenever it decides; a probe whose 1 µs timeout has passed by
    // then forces a decision and is answered right after it, so the gauge
    // then shows what the queue kept.
    let deadline = Instant::now() + BOUND;
    let mut probes = 0;
    loop {
        let probe = with_timeout_parameter(mlp_input("batched", 1, 0.0, "probe"), 1);
        expect_error(client.model_infer(probe).await, Code::DeadlineExceeded, &[]);
        probes += 1;
        if queue_depth(&server, "batched").await == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the cancelled request never left the queue");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Three more fill a batch of exactly 3 at once, without the cancelled one.
    let started = Instant::now();
    let answers =
        infer_all(&client, (0..3).map(|i| mlp_input("batched", 1, i as f32, &format!("r{i}"))).collect()).await;
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.unwrap();
        assert_eq!(response.id, format!("r{i}"));
        check_mlp_response(&response, 1);
    }
    let stats = model_statistics(&mut client, "batched").await;
    assert_eq!((stats.execution_count, stats.inference_count), (1, 3), "{stats:?}");
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(3, 1)]));
    assert_eq!(outcomes(&stats), (3, probes), "the cancelled request is neither a success nor a failure");
}

// ---------------------------------------------------------------- queue full

#[tokio::test]
async fn a_full_queue_refuses_at_once_over_grpc_and_http() {
    let scheduling = "dynamic_batching { max_queue_delay_microseconds: 30000000 \
                      default_queue_policy { max_queue_size: 2 } }";
    let (_repo, server) = start(&[("bounded", mlp_onnx(), mlp_config(8, scheduling))]);
    let mut client = server.grpc_client().await;

    // Two requests wait (they give up after 5 s, time enough for a busy
    // machine to send the two refused ones meanwhile).
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let mut client = client.clone();
            let request = with_timeout_parameter(mlp_input("bounded", 1, i as f32, ""), 5_000_000);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    wait_for_queue_depth(&server, "bounded", 2.0).await;

    // A third is refused at once.
    let (result, elapsed) = timed(&mut client, tonic::Request::new(mlp_input("bounded", 1, 0.0, ""))).await;
    expect_error(result, Code::ResourceExhausted, &["bounded", "full"]);
    assert!(elapsed < Duration::from_millis(1000), "refused after {elapsed:?}");

    let body = serde_json::json!({
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 16], "data": mlp_rows(1, 0.0) }]
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

    for call in waiting {
        let result = tokio::time::timeout(BOUND, call).await.unwrap().unwrap();
        expect_error(result, Code::DeadlineExceeded, &[]);
    }
    let stats = model_statistics(&mut client, "bounded").await;
    assert_never_ran(&stats);
    assert_eq!(outcomes(&stats), (0, 4), "two timed out, two refused");
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

/// Requests sent together on one stream should batch like concurrent calls.
#[tokio::test]
async fn requests_on_one_stream_share_a_batch() {
    let scheduling = "dynamic_batching { max_queue_delay_microseconds: 2000000 }";
    let (_repo, server) = start(&[("plus3", plus3_onnx(), plus3_config(4, scheduling))]);
    let mut client = server.grpc_client().await;
    let requests: Vec<_> = (0..4).map(|i| plus3_input("plus3", &[i as f32], &format!("id-{i}"))).collect();
    let started = Instant::now();
    let mut stream = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(answer) = tokio::time::timeout(BOUND, stream.message()).await.expect("stream stalled").unwrap() {
        ids.push(answer.infer_response.unwrap().id);
    }
    let elapsed = started.elapsed();
    assert_eq!(ids, ["id-0", "id-1", "id-2", "id-3"]);
    let stats = model_statistics(&mut client, "plus3").await;
    assert_eq!(executions_by_batch_size(&stats), BTreeMap::from([(4, 1)]), "{elapsed:?}");
    assert!(elapsed < PROMPT, "4 stream requests took {elapsed:?} with a 2 s batching delay");
}
