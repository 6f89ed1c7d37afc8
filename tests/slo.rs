//! SLOs computed in the server: objectives and thresholds from the flags or
//! the model's config, burn rates and budgets from real requests, bad
//! settings refused, and metric labels bounded to models the server knows.

mod common;
mod grpc_support;

use common::{Server, shipped_models, test_models};
use ferroserve::pb;
use grpc_support::*;
use tonic::Code;

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap()
}

/// The value of the series whose line starts with `name{` and holds every label.
fn value(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits for the SLO timer (every 5 s) to publish a burn rate that satisfies `done`.
async fn wait_for_burn(server: &Server, labels: &[&str], done: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = value(&metrics(server).await, "ferroserve_slo_burn_rate", labels)
            && done(v)
        {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "the burn rate {labels:?} never got there");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn slow(spin: i64) -> pb::ModelInferRequest {
    slow_request(spin, 1.0)
}

#[tokio::test]
async fn burn_rates_and_budgets_follow_real_requests() {
    let repo = common::temp_repository(&[(&test_models(), "slow"), (&shipped_models(), "mlp")]);
    // "slow": 90% of requests within 50 ms; the mlp keeps the server's defaults.
    let config = repo.path().join("slow/config.pbtxt");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "parameters { key: \"slo_latency_seconds\" value { string_value: \"0.05\" } }\n\
         parameters { key: \"slo_latency_objective\" value { string_value: \"0.9\" } }\n",
    );
    std::fs::write(&config, text).unwrap();
    let server = Server::start(repo.path(), &["--slo-availability-objective", "0.99"]);
    let body = metrics(&server).await;
    assert_eq!(value(&body, "ferroserve_slo_objective", &["model=\"slow\"", "slo=\"latency\""]), Some(0.9));
    assert_eq!(value(&body, "ferroserve_slo_objective", &["model=\"slow\"", "slo=\"availability\""]), Some(0.99));
    assert_eq!(value(&body, "ferroserve_slo_latency_threshold_seconds", &["model=\"slow\""]), Some(0.05));
    assert_eq!(value(&body, "ferroserve_slo_latency_threshold_seconds", &["model=\"mlp\""]), Some(0.025));
    assert_eq!(
        value(&body, "ferroserve_slo_error_budget_remaining", &["model=\"slow\"", "slo=\"latency\""]),
        Some(1.0)
    );

    // Half the requests take ~100 ms (bad), half are instant (good, with
    // room to spare on a busy machine):
    // latency burn = 0.5 / (1 - 0.9) = 5. A client error counts as good for
    // availability, the server's own failures would not.
    let mut client = server.grpc_client().await;
    for i in 0..20 {
        let spin = if i % 2 == 0 { 100_000 } else { 0 };
        client.model_infer(slow(spin)).await.unwrap();
    }
    let mut bad = slow(0);
    bad.inputs[0].datatype = "INT32".into();
    expect_error(client.model_infer(bad).await, Code::InvalidArgument, &["datatype"]);
    let labels = ["model=\"slow\"", "slo=\"latency\"", "window=\"5m\""];
    // 10 slow of 21 answered (the refused one was fast).
    let burn = wait_for_burn(&server, &labels, |v| v > 0.0).await;
    assert!((burn - (10.0 / 21.0) / 0.1).abs() < 1e-6, "latency burn {burn}");
    let body = metrics(&server).await;
    let availability = ["model=\"slow\"", "slo=\"availability\"", "window=\"1h\""];
    assert_eq!(value(&body, "ferroserve_slo_burn_rate", &availability), Some(0.0));
    let budget = value(&body, "ferroserve_slo_error_budget_remaining", &["model=\"slow\"", "slo=\"latency\""]).unwrap();
    assert!((budget - (1.0 - (10.0 / 21.0) / 0.1)).abs() < 1e-6, "budget {budget}");
}

#[tokio::test]
async fn a_threshold_off_the_buckets_is_refused_and_unknown_models_leave_no_series() {
    let repo = common::temp_repository(&[(&shipped_models(), "mlp")]);
    let config = repo.path().join("mlp/config.pbtxt");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("parameters { key: \"slo_latency_seconds\" value { string_value: \"0.03\" } }\n");
    std::fs::write(&config, text).unwrap();
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let index = client.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner();
    assert!(index.models.iter().any(|m| m.reason.contains("bucket boundary")), "{index:?}");
    // The model still serves, under the server's default SLO.
    check_mlp_response(&client.model_infer(mlp_request(1)).await.unwrap().into_inner(), 1);
    let body = metrics(&server).await;
    assert_eq!(value(&body, "ferroserve_slo_latency_threshold_seconds", &["model=\"mlp\""]), Some(0.025));

    for i in 0..5 {
        let mut ghost = mlp_request(1);
        ghost.model_name = format!("ghost-{i}");
        ghost.model_version = format!("v{i}");
        expect_error(client.model_infer(ghost).await, Code::NotFound, &["ghost"]);
    }
    let body = metrics(&server).await;
    assert!(!body.contains("ghost"), "made-up names must not become series");
    assert_eq!(value(&body, "ferroserve_requests_total", &["model=\"\"", "code=\"not_found\""]), Some(5.0));
}

#[tokio::test]
async fn a_bad_default_slo_stops_the_server_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .args(["--model-repository", shipped_models().to_str().unwrap(), "--slo-latency-seconds", "0.02"])
        .args(["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bucket boundary"));
}
