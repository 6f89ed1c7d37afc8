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

/// The sum over every series whose line starts with `name{` and holds every label.
fn sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

    // Half the requests take ~100 ms (bad), half are instant (good): latency
    // burn about (10 / 21) / (1 - 0.9). A client error counts as good for
    // availability, the server's own failures would not.
    let mut client = server.grpc_client().await;
    for i in 0..20 {
        let spin = if i % 2 == 0 { 100_000 } else { 0 };
        client.model_infer(slow(spin)).await.unwrap();
    }
    let mut bad = slow(0);
    bad.inputs[0].datatype = "INT32".into();
    expect_error(client.model_infer(bad).await, Code::InvalidArgument, &["datatype"]);
    // The server's own histogram says how many of the 21 answers took longer
    // than 50 ms (about 10 on a quiet machine; a busy one may slow a fast
    // request down): the burn rate and budget must agree with it once the SLO
    // timer (every 5 s) has seen every request.
    let labels = ["model=\"slow\"", "slo=\"latency\"", "window=\"5m\""];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (burn, slow_share, body) = loop {
        let body = metrics(&server).await;
        let count = sum(&body, "ferroserve_request_duration_seconds_count", &["model=\"slow\""]);
        let fast = sum(&body, "ferroserve_request_duration_seconds_bucket", &["model=\"slow\"", "le=\"0.05\""]);
        let slow_share = (count - fast) / count;
        let burn = value(&body, "ferroserve_slo_burn_rate", &labels);
        if count == 21.0 && burn.is_some_and(|b| (b - slow_share / 0.1).abs() < 1e-6) {
            break (burn.unwrap(), slow_share, body);
        }
        let seen = format!("count {count}, slow share {slow_share}, burn {burn:?}");
        assert!(std::time::Instant::now() < deadline, "the burn rate never matched the histogram: {seen}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(slow_share >= 5.0 / 21.0, "most ~100 ms requests were over 50 ms: {slow_share}");
    assert!(burn > 2.0, "latency burn {burn}");
    let availability = ["model=\"slow\"", "slo=\"availability\"", "window=\"1h\""];
    assert_eq!(value(&body, "ferroserve_slo_burn_rate", &availability), Some(0.0));
    let budget = value(&body, "ferroserve_slo_error_budget_remaining", &["model=\"slow\"", "slo=\"latency\""]).unwrap();
    assert!((budget - (1.0 - slow_share / 0.1)).abs() < 1e-6, "budget {budget}");
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
