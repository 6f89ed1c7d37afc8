//! Canary deploys against the real runtime, on the test model `canary`
//! (version 1: y = 2x whatever `fail` says; version 2: fails whenever `fail`
//! is non-zero), configured stable 1, canary 2, weight 10.

mod common;
mod grpc_support;

use common::{GrpcClient, Server, test_models};
use ferroserve::pb;
use grpc_support::*;
use serde_json::{Value, json};
use tonic::Code;

async fn start() -> (tempfile::TempDir, Server, GrpcClient) {
    let repo = common::temp_repository(&[(&test_models(), "canary")]);
    let server = Server::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "canary"]);
    let client = server.grpc_client().await;
    (repo, server, client)
}

fn request(version: &str, fail: i64) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_version: version.into(),
        ..raw_request(
            "canary",
            vec![
                (input("x", "FP32", &[1, 4]), f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
                (input("fail", "INT64", &[1, 1]), fail.to_le_bytes().to_vec()),
            ],
        )
    }
}

/// Sends `n` unpinned requests, `fail` set on those `failing(i)` picks;
/// returns (answers by version, failures).
async fn send(client: &mut GrpcClient, n: usize, failing: impl Fn(usize) -> bool) -> (Vec<usize>, usize) {
    let mut by_version = vec![0; 3];
    let mut failures = 0;
    for i in 0..n {
        match client.model_infer(request("", i64::from(failing(i)))).await {
            Ok(r) => by_version[r.into_inner().model_version.parse::<usize>().unwrap()] += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Internal, "only the canary's own failures: {status:?}");
                failures += 1;
            }
        }
    }
    (by_version, failures)
}

async fn steer(server: &Server, body: Value) -> (u16, Value) {
    let url = server.http_url("/v2/repository/models/canary/canary");
    let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn status(server: &Server) -> Value {
    reqwest::get(server.http_url("/v2/repository/models/canary/canary")).await.unwrap().json().await.unwrap()
}

async fn metric(server: &Server, prefix: &str) -> f64 {
    let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn unpinned_requests_split_by_weight_and_pinned_ones_get_their_version() {
    let (_repo, server, mut client) = start().await;
    // 900 requests: the canary's share stays under the 100 answers after
    // which latency alone could roll it back on a noisy machine.
    let (by_version, failures) = send(&mut client, 900, |_| false).await;
    assert_eq!(failures, 0);
    // 10% of 900: the split is seeded, and binomially 5 sigma is 45.
    assert!((45..=135).contains(&by_version[2]), "canary got {} of 900", by_version[2]);
    assert_eq!(by_version[1] + by_version[2], 900);
    for version in ["1", "2"] {
        let r = client.model_infer(request(version, 0)).await.unwrap().into_inner();
        assert_eq!(r.model_version, version);
    }
    assert_eq!(metric(&server, "ferroserve_canary_weight{model=\"canary\"").await, 10.0);
    let entries = client.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    let canary = entries.iter().find(|e| e.version == "2").unwrap();
    assert!(canary.reason.contains("canary, weight 10"), "{entries:?}");
}

#[tokio::test]
async fn a_canary_that_fails_is_rolled_back_automatically() {
    let (_repo, server, mut client) = start().await;
    // Three requests in ten carry fail = 1: the canary fails those, stable never.
    let (_, failures) = send(&mut client, 600, |i| i % 10 < 3).await;
    let now = status(&server).await;
    assert_eq!(now["weight"], 0, "{now}");
    let reason = now["rolled_back"].as_str().unwrap().to_string();
    assert!(reason.contains("rolled back automatically") && reason.contains("error rate"), "{reason}");
    // Only canary answers failed: about 3% of its ~10% share before the rollback.
    assert!((5..=20).contains(&failures), "{failures} failed requests");
    assert_eq!(metric(&server, "ferroserve_canary_rollbacks_total{model=\"canary\"").await, 1.0);
    // From now on every unpinned request goes to the stable version and succeeds.
    let (by_version, failures) = send(&mut client, 100, |i| i % 10 < 3).await;
    assert_eq!((by_version[1], failures), (100, 0));
    let entries = client.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    assert!(entries.iter().any(|e| e.version == "2" && e.reason.contains("rolled back automatically")), "{entries:?}");
}

#[tokio::test]
async fn the_operator_sets_the_weight_rolls_back_and_promotes() {
    let (_repo, server, mut client) = start().await;
    let (code, now) = steer(&server, json!({ "weight": 100 })).await;
    assert_eq!((code, now["weight"].clone()), (200, json!(100)));
    assert_eq!(send(&mut client, 20, |_| false).await.0[2], 20, "weight 100: all to the canary");

    let (_, now) = steer(&server, json!({ "action": "rollback" })).await;
    assert_eq!(now["weight"], 0);
    assert!(now["rolled_back"].as_str().unwrap().contains("operator"));
    assert_eq!(send(&mut client, 20, |_| false).await.0[1], 20);

    let (_, now) = steer(&server, json!({ "action": "promote" })).await;
    assert_eq!((now["stable_version"].clone(), now["weight"].clone()), (json!("2"), json!(0)));
    assert_eq!(send(&mut client, 20, |_| false).await.0[2], 20, "version 2 is stable now");
    let r = client.model_metadata(pb::ModelMetadataRequest { name: "canary".into(), version: String::new() }).await;
    assert_eq!(r.unwrap().into_inner().versions, ["1", "2"]);

    for (bad, needle) in [
        (json!({ "weight": 101 }), "over 100"),
        (json!({ "weight": "ten" }), "whole number"),
        (json!({ "action": "explode" }), "promote"),
    ] {
        let (code, answer) = steer(&server, bad).await;
        assert_eq!(code, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(needle), "{answer}");
    }
}

#[tokio::test]
async fn config_edits_drive_the_canary_and_bad_settings_are_refused() {
    let (repo, server, mut client) = start().await;
    let path = repo.path().join("canary/config.pbtxt");
    let config = std::fs::read_to_string(&path).unwrap();
    let load = pb::RepositoryModelLoadRequest { model_name: "canary".into(), ..Default::default() };

    std::fs::write(&path, config.replace("string_value: \"10\"", "string_value: \"100\"")).unwrap();
    client.repository_model_load(load.clone()).await.unwrap();
    assert_eq!(status(&server).await["weight"], 100);
    assert_eq!(send(&mut client, 10, |_| false).await.0[2], 10);

    // A canary version the policy does not serve is refused, naming it;
    // the versions keep serving.
    let unserved = config.replace("version_policy { all { } }", "version_policy { specific { versions: [ 1 ] } }");
    std::fs::write(&path, unserved).unwrap();
    expect_error(client.repository_model_load(load).await, Code::InvalidArgument, &["canary_version 2"]);
    assert_eq!(client.model_infer(request("", 0)).await.unwrap().into_inner().model_version, "1");
}

#[tokio::test]
async fn while_the_canary_breaker_is_open_the_stable_version_takes_its_share() {
    let (repo, server, mut client) = start().await;
    let path = repo.path().join("canary/config.pbtxt");
    let mut config = std::fs::read_to_string(&path).unwrap().replace("string_value: \"10\"", "string_value: \"100\"");
    config.push_str(
        "parameters { key: \"breaker_consecutive_failures\" value { string_value: \"3\" } }\n\
         parameters { key: \"breaker_open_ms\" value { string_value: \"60000\" } }\n",
    );
    std::fs::write(&path, config).unwrap();
    let load = pb::RepositoryModelLoadRequest { model_name: "canary".into(), ..Default::default() };
    client.repository_model_load(load).await.unwrap();
    // Weight 100: every unpinned request goes to the canary while it is healthy.
    assert_eq!(send(&mut client, 10, |_| false).await.0[2], 10);

    // Three failures open the canary's breaker (too few for a rollback).
    for _ in 0..3 {
        expect_error(client.model_infer(request("2", 1)).await, Code::Internal, &["Reshape"]);
    }
    assert_eq!(metric(&server, "ferroserve_breaker_state{model=\"canary\",version=\"2\"}").await, 1.0);
    // Unpinned requests are served by the stable version, none refused; a
    // request pinned to the canary still gets the breaker's answer.
    let (by_version, failures) = send(&mut client, 20, |_| false).await;
    assert_eq!((by_version[1], failures), (20, 0));
    expect_error(client.model_infer(request("2", 0)).await, Code::Unavailable, &["circuit breaker"]);
    assert_eq!(status(&server).await["weight"], 100, "the breaker does not roll the canary back");
}
