//! The circuit breaker against the real runtime: a model that fails at run
//! time (tests/models/failing) opens its breaker, which then refuses at once
//! while a healthy neighbour serves on; it closes again after the fault
//! clears, and client errors never count.

mod common;
mod grpc_support;

use common::{Server, shipped_models, test_models};
use ferroserve::pb;
use grpc_support::*;
use std::time::{Duration, Instant};
use tonic::Code;

/// `failing` with a breaker that opens after 3 failures for 3 s (room for a
/// busy machine to check on it while it is open), beside the mlp.
fn repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    common::copy_dir(&test_models().join("failing"), &repo.path().join("failing"));
    common::copy_dir(&shipped_models().join("mlp"), &repo.path().join("mlp"));
    let config = repo.path().join("failing/config.pbtxt");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "parameters { key: \"breaker_consecutive_failures\" value { string_value: \"3\" } }\n\
         parameters { key: \"breaker_open_ms\" value { string_value: \"3000\" } }\n",
    );
    std::fs::write(config, text).unwrap();
    repo
}

fn failing_request(fail: i64) -> pb::ModelInferRequest {
    raw_request(
        "failing",
        vec![
            (input("x", "FP32", &[1, 4]), f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            (input("fail", "INT64", &[1, 1]), fail.to_le_bytes().to_vec()),
        ],
    )
}

async fn breaker_state(server: &Server) -> Option<f64> {
    let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    body.lines()
        .find(|l| l.starts_with("ferroserve_breaker_state{model=\"failing\",version=\"1\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn runtime_failures_open_the_breaker_and_it_closes_after_the_fault_clears() {
    let repo = repository();
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    // Client errors never count, however many.
    for _ in 0..10 {
        let mut bad = failing_request(0);
        bad.inputs[0].shape = vec![1, 5];
        expect_error(client.model_infer(bad).await, Code::InvalidArgument, &["'x'"]);
    }
    let good = client.model_infer(failing_request(0)).await.unwrap().into_inner();
    assert_eq!(f32_values(output(&good, "y").2), vec![2.0, 4.0, 6.0, 8.0]);

    // Three runtime failures open it.
    for _ in 0..3 {
        expect_error(client.model_infer(failing_request(1)).await, Code::Internal, &["Reshape"]);
    }
    assert_eq!(breaker_state(&server).await, Some(1.0));
    // Open: refused at once, even a good request; the neighbour is unaffected.
    let started = Instant::now();
    expect_error(client.model_infer(failing_request(0)).await, Code::Unavailable, &["circuit breaker"]);
    assert!(started.elapsed() < Duration::from_secs(2), "refusal took {:?}", started.elapsed());
    check_mlp_response(&client.model_infer(mlp_request(2)).await.unwrap().into_inner(), 2);

    // After the open period, probes go through; three successes close it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut successes = 0;
    while successes < 3 {
        match client.model_infer(failing_request(0)).await {
            Ok(_) => successes += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "the breaker never let a probe through");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(breaker_state(&server).await, Some(0.0));
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let repo = repository();
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    for _ in 0..3 {
        expect_error(client.model_infer(failing_request(1)).await, Code::Internal, &[]);
    }
    // Wait out the open period with refused calls, then the probe fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.model_infer(failing_request(1)).await {
            Err(status) if status.code() == Code::Unavailable => {
                assert!(Instant::now() < deadline, "the breaker never let a probe through");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Internal, "the probe ran and failed");
                break;
            }
            Ok(_) => panic!("a failing request succeeded"),
        }
    }
    assert_eq!(breaker_state(&server).await, Some(1.0));
    expect_error(client.model_infer(failing_request(0)).await, Code::Unavailable, &["circuit breaker"]);
}
