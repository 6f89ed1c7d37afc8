//! Swapping model files under a running server (explicit mode): a new
//! version takes unpinned traffic once it is ready, a replaced file or config
//! is reloaded, a version that leaves the disk is retired after its requests
//! finish, a file that fails to load leaves the old one serving, and an
//! unchanged model is not reloaded at all.

mod common;
mod grpc_support;

use common::{GrpcClient, Server, test_models};
use ferroserve::pb;
use grpc_support::*;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// Model "m": `tests/models/multiversion` version 1 (y = x + 1) under the
/// default version policy (the latest version serves).
fn repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(test_models().join("multiversion/config.pbtxt")).unwrap();
    let config = config.replace("name: \"multiversion\"", "name: \"m\"").replace("version_policy { all { } }\n", "");
    std::fs::create_dir_all(repo.path().join("m")).unwrap();
    std::fs::write(repo.path().join("m/config.pbtxt"), config).unwrap();
    put_version(repo.path(), 1, 1);
    repo
}

/// Writes multiversion's version `source` file (y = x + source) as m's `version`.
fn put_version(repo: &Path, version: i64, source: i64) {
    let dir = repo.join(format!("m/{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = test_models().join(format!("multiversion/{source}/model.onnx"));
    // Written beside and renamed, as a deploy tool does; a fresh mtime either way.
    std::fs::copy(file, dir.join("model.onnx.tmp")).unwrap();
    std::fs::rename(dir.join("model.onnx.tmp"), dir.join("model.onnx")).unwrap();
}

async fn start(repo: &Path) -> (Server, GrpcClient) {
    let server = Server::start(repo, &["--model-control-mode", "explicit", "--load-model", "m"]);
    let client = server.grpc_client().await;
    (server, client)
}

async fn load(client: &mut GrpcClient) -> Result<(), tonic::Status> {
    let request = pb::RepositoryModelLoadRequest { model_name: "m".into(), ..Default::default() };
    client.repository_model_load(request).await.map(|_| ())
}

/// Asks m (optionally a pinned version) for x = 1.0: (version, y).
async fn ask(client: &mut GrpcClient, version: &str) -> Result<(String, f32), tonic::Status> {
    let request = pb::ModelInferRequest {
        model_version: version.into(),
        ..raw_request("m", vec![(input("x", "FP32", &[1, 1]), f32_bytes(&[1.0]))])
    };
    let response = client.model_infer(request).await?.into_inner();
    let y = f32_values(output(&response, "y").2)[0];
    Ok((response.model_version, y))
}

async fn index(client: &mut GrpcClient) -> Vec<(String, String, String)> {
    let models = client.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    models.into_iter().filter(|m| m.name == "m").map(|m| (m.version, m.state, m.reason)).collect()
}

async fn loads(server: &Server, outcome: &str) -> f64 {
    let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("ferroserve_model_loads_total{") && l.contains("model=\"m\"") && l.contains(outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_new_version_takes_over_and_the_old_one_is_retired() {
    let repo = repository();
    let (server, mut client) = start(repo.path()).await;
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 2.0));

    put_version(repo.path(), 2, 2);
    load(&mut client).await.unwrap();
    assert_eq!(ask(&mut client, "").await.unwrap(), ("2".into(), 3.0), "unpinned requests go to the new version");
    // The policy serves the latest version only: version 1 is retired.
    expect_error(ask(&mut client, "1").await, Code::NotFound, &["'1'"]);
    assert_eq!(index(&mut client).await, [("2".into(), "READY".into(), String::new())]);
    let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    let retired = "ferroserve_model_unloads_total{model=\"m\",version=\"1\",cause=\"retired\"} 1";
    assert!(body.contains(retired), "{body}");
}

#[tokio::test]
async fn a_replaced_file_or_config_is_reloaded_and_an_unchanged_model_is_not() {
    let repo = repository();
    let (server, mut client) = start(repo.path()).await;
    let before = loads(&server, "ok").await;
    load(&mut client).await.unwrap();
    assert_eq!(loads(&server, "ok").await, before, "nothing changed, nothing loaded");

    // The same version number, a different file: y = x + 3 now.
    put_version(repo.path(), 1, 3);
    load(&mut client).await.unwrap();
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 4.0));
    assert_eq!(loads(&server, "ok").await, before + 1.0);

    // A config edit reloads the version with the new config.
    let path = repo.path().join("m/config.pbtxt");
    let config = std::fs::read_to_string(&path).unwrap().replace("max_batch_size: 4", "max_batch_size: 2");
    std::fs::write(&path, config).unwrap();
    load(&mut client).await.unwrap();
    let request = pb::ModelConfigRequest { name: "m".into(), version: String::new() };
    let config = client.model_config(request).await.unwrap().into_inner().config.unwrap();
    assert_eq!(config.max_batch_size, 2);
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 4.0));
}

#[tokio::test]
async fn a_file_that_fails_to_load_leaves_the_old_one_serving() {
    let repo = repository();
    let (_server, mut client) = start(repo.path()).await;
    std::fs::write(repo.path().join("m/1/model.onnx"), b"not an onnx model").unwrap();
    expect_error(load(&mut client).await, Code::InvalidArgument, &["version 1"]);
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 2.0), "the loaded copy keeps serving");
    let entries = index(&mut client).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].1, "READY");
    assert!(entries[0].2.contains("failed to load"), "the index says why: {entries:?}");

    // A broken config: the model keeps serving with the config it has.
    std::fs::write(repo.path().join("m/config.pbtxt"), "max_batch_size: oops").unwrap();
    expect_error(load(&mut client).await, Code::InvalidArgument, &["config.pbtxt"]);
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 2.0));

    // Good files again: loaded, and the index is clean.
    let repaired = repository();
    std::fs::copy(repaired.path().join("m/config.pbtxt"), repo.path().join("m/config.pbtxt")).unwrap();
    put_version(repo.path(), 1, 2);
    load(&mut client).await.unwrap();
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 3.0));
    assert_eq!(index(&mut client).await, [("1".into(), "READY".into(), String::new())]);
}

type Call = tokio::task::JoinHandle<Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>>;

/// "slow" (one instance, explicit mode) with two long requests sent to
/// version 1: one runs, the other waits in the queue. Also returns how to
/// make a request spinning `spin` times.
async fn busy_slow_model() -> (tempfile::TempDir, Server, GrpcClient, fn(i64) -> pb::ModelInferRequest, [Call; 2]) {
    let repo = common::temp_repository(&[(&test_models(), "slow")]);
    let server = Server::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "slow"]);
    let client = server.grpc_client().await;
    fn slow(spin: i64) -> pb::ModelInferRequest {
        slow_request(spin, 1.0)
    }
    let calls = [0, 1].map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.model_infer(slow(3_000_000)).await })
    });
    // Both are inside (routed to version 1) once the server holds two
    // requests and one of them waits in the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
        let inside = body.lines().any(|l| l == "ferroserve_server_inflight_requests 2");
        if inside && queue_depth(&server, "slow").await == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the two slow requests never were both inside");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (repo, server, client, slow, calls)
}

#[tokio::test]
async fn requests_in_flight_on_a_retired_version_finish_on_it() {
    // Version 2 (the same file) replaces version 1 while it is busy.
    let (repo, _server, mut client, slow, [running, queued]) = busy_slow_model().await;
    common::copy_dir(&repo.path().join("slow/1"), &repo.path().join("slow/2"));
    let request = pb::RepositoryModelLoadRequest { model_name: "slow".into(), ..Default::default() };
    client.repository_model_load(request).await.unwrap();
    // New requests go to version 2 while version 1 finishes its work.
    let fresh = client.model_infer(slow(0)).await.unwrap().into_inner();
    assert_eq!(fresh.model_version, "2");
    for call in [running, queued] {
        let finished = tokio::time::timeout(Duration::from_secs(60), call).await.expect("finished").unwrap();
        assert_eq!(finished.unwrap().into_inner().model_version, "1", "answered by the version it was sent to");
    }
}

#[tokio::test]
async fn a_load_request_can_carry_the_config_and_a_plain_load_reads_the_file_again() {
    let repo = repository();
    let (_server, mut client) = start(repo.path()).await;
    let config_of = |client: &mut GrpcClient| {
        let mut client = client.clone();
        async move {
            let request = pb::ModelConfigRequest { name: "m".into(), version: String::new() };
            client.model_config(request).await.unwrap().into_inner().config.unwrap()
        }
    };
    let json = r#"{"name": "m", "max_batch_size": 2, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}]}"#;
    let mut request = pb::RepositoryModelLoadRequest { model_name: "m".into(), ..Default::default() };
    let parameter = pb::ModelRepositoryParameter {
        parameter_choice: Some(pb::model_repository_parameter::ParameterChoice::StringParam(json.into())),
    };
    request.parameters.insert("config".into(), parameter);
    client.repository_model_load(request).await.unwrap();
    assert_eq!(config_of(&mut client).await.max_batch_size, 2);
    assert_eq!(ask(&mut client, "").await.unwrap(), ("1".into(), 2.0));
    load(&mut client).await.unwrap();
    assert_eq!(config_of(&mut client).await.max_batch_size, 4, "config.pbtxt again");
}

#[tokio::test]
async fn unloading_waits_for_the_requests_inside_and_refuses_new_ones() {
    let (_repo, _server, mut client, slow, [running, queued]) = busy_slow_model().await;
    let request = pb::RepositoryModelUnloadRequest { model_name: "slow".into(), ..Default::default() };
    let mut unloader = client.clone();
    let unload = tokio::spawn(async move { unloader.repository_model_unload(request).await });
    // Once the index says so, new work is refused while the admitted
    // requests finish...
    wait_for_index(&mut client, |models| models.iter().any(|m| m.name == "slow" && m.reason == "unloaded")).await;
    expect_error(client.model_infer(slow(0)).await, Code::Unavailable, &["unloaded"]);
    assert!(!unload.is_finished(), "the unload answers only once the requests inside are done");
    // ...they all answer, and only then does the unload.
    for call in [running, queued] {
        let done = tokio::time::timeout(Duration::from_secs(60), call).await.expect("finished").unwrap();
        assert_eq!(done.unwrap().into_inner().model_version, "1");
    }
    tokio::time::timeout(Duration::from_secs(10), unload).await.expect("unload answered").unwrap().unwrap();
}
