//! Shadow versions and capacity answers against the real runtime, on the
//! test model `shadowed` (version 1: logits = x; version 2: the last logit
//! raised by relu(x0 - 1), so exactly the rows whose first value is above 1
//! differ) and on `canary` (whose version 2 fails on request).

mod common;

use common::{Server, test_models};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const SHADOW_PARAMETERS: &str = r#"
parameters [
  { key: "shadow_version" value { string_value: "2" } },
  { key: "shadow_queue_size" value { string_value: "256" } }
]"#;

/// A repository holding `shadowed` with `extra` appended to its config,
/// version 2 replaced by a copy of version 1 when `same`.
fn shadowed_repository(same: bool, extra: &str) -> tempfile::TempDir {
    let repo = common::temp_repository(&[(&test_models(), "shadowed")]);
    let dir = repo.path().join("shadowed");
    let config = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    // The committed parameters are replaced by the test's.
    let base = &config[..config.find("parameters [").expect("the committed config sets parameters")];
    std::fs::write(dir.join("config.pbtxt"), format!("{base}{extra}\n")).unwrap();
    if same {
        std::fs::copy(dir.join("1/model.onnx"), dir.join("2/model.onnx")).unwrap();
    }
    repo
}

fn start(repo: &Path) -> Server {
    Server::start(repo, &["--model-control-mode", "explicit", "--load-model", "shadowed"])
}

/// The two rows of request `i`: the first never differs; the second
/// differs for i % 4 in {0, 1, 3} and flips its top-1 for {1, 3}.
fn rows(i: usize) -> [[f32; 3]; 2] {
    let first = [0.5 + 0.01 * (i % 5) as f32, 0.2, 0.1];
    let second = match i % 4 {
        0 => [2.0, 0.5, 0.3],
        1 => [1.5, 0.2, 1.2],
        2 => [0.9, 0.1, 0.2],
        _ => [1.25, 0.1, 1.1],
    };
    [first, second]
}

/// What version 2 answers for a row.
fn perturbed(row: [f32; 3]) -> [f32; 3] {
    [row[0], row[1], row[2] + (row[0] - 1.0).max(0.0)]
}

fn argmax(row: [f32; 3]) -> usize {
    (0..3).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

async fn infer(server: &Server, model: &str, version: &str, body: Value) -> (u16, Value) {
    let path = if version.is_empty() {
        format!("/v2/models/{model}/infer")
    } else {
        format!("/v2/models/{model}/versions/{version}/infer")
    };
    let response = reqwest::Client::new().post(server.http_url(&path)).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn shadowed_request(i: usize) -> Value {
    let data: Vec<f32> = rows(i).iter().flatten().copied().collect();
    json!({ "id": format!("r{i}"), "inputs": [{ "name": "x", "datatype": "FP32", "shape": [2, 3], "data": data }] })
}

/// Sends requests `range` unpinned; every answer is version 1's, y = x.
async fn send(server: &Server, range: std::ops::Range<usize>) {
    for i in range {
        let (status, answer) = infer(server, "shadowed", "", shadowed_request(i)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model_version"], "1", "the client gets the serving version's answer");
        let want: Vec<f32> = rows(i).iter().flatten().copied().collect();
        let got: Vec<f32> = serde_json::from_value(answer["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(got, want);
    }
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::get(server.http_url(path)).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(server.http_url(path)).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The shadow report once `done(report)` holds (the copies finish in the
/// background, on spare cycles); fails the test after 60 s.
async fn report_when(server: &Server, model: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, report) = get(server, &format!("/v2/models/{model}/shadow")).await;
        assert_eq!(status, 200, "{report}");
        if done(&report) {
            return report;
        }
        assert!(Instant::now() < until, "the shadow never got there: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(server: &Server, prefix: &str) -> f64 {
    let body = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn a_perturbed_shadow_reports_exactly_the_planted_disagreement() {
    let repo = shadowed_repository(false, SHADOW_PARAMETERS);
    let server = start(repo.path());
    let n = 40;
    send(&server, 0..n).await;
    let report = report_when(&server, "shadowed", |r| r["requests"]["compared"] == n).await;
    // The planted counts, from the rows themselves.
    let all: Vec<[f32; 3]> = (0..n).flat_map(rows).collect();
    let differing = all.iter().filter(|r| perturbed(**r) != **r).count();
    let flipped = all.iter().filter(|r| argmax(perturbed(**r)) != argmax(**r)).count();
    assert_eq!((differing, flipped), (30, 20), "the input set plants 30 differing rows, 20 flipped");
    assert_eq!(report["shadow_version"], "2");
    assert_eq!(report["serving_version"], "1");
    assert_eq!(report["requests"]["mirrored"], n);
    assert_eq!(report["requests"]["shadow_errors"], 0);
    let output = &report["outputs"][0];
    assert_eq!(output["name"], "logits");
    let total = &output["total"];
    assert_eq!(total["rows"], 2 * n);
    assert_eq!(total["differing_rows"], differing);
    assert_eq!(total["top1_agreement"].as_f64().unwrap(), (2 * n - flipped) as f64 / (2 * n) as f64);
    assert!((total["max_abs_difference"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{total}");
    assert_eq!(output["window"]["differing_rows"], differing, "the window holds all of them");
    // The examples: the requests that disagreed most (half their rows), by id, no payloads.
    let examples = report["disagreements"].as_array().unwrap();
    assert_eq!(examples.len(), 8);
    for example in examples {
        assert_eq!(example["differing_rows"], 1);
        assert!(example["id"].as_str().unwrap().starts_with('r'));
        assert!(example.get("inputs").is_none());
    }
    assert_eq!(report["latency"]["serving"]["samples"], n);
    // A pinned request gets the shadow version itself.
    let (status, answer) = infer(&server, "shadowed", "2", shadowed_request(1)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["outputs"][0]["data"][5].as_f64().unwrap() as f32, 1.7);
    // The metrics say the same (set on a one-second timer).
    let until = Instant::now() + Duration::from_secs(10);
    let differing_metric = "ferroserve_shadow_differing_rows_total{model=\"shadowed\",version=\"2\",output=\"logits\"}";
    while metric(&server, differing_metric).await != differing as f64 {
        assert!(Instant::now() < until, "ferroserve_shadow_differing_rows_total never reached {differing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows_metric = "ferroserve_shadow_rows_total{model=\"shadowed\",version=\"2\",output=\"logits\"}";
    assert_eq!(metric(&server, rows_metric).await, (2 * n) as f64);
    assert_eq!(metric(&server, "ferroserve_shadow_percent{model=\"shadowed\",version=\"2\"}").await, 100.0);
    // RepositoryIndex says which version is the shadow.
    let (_, index) = post(&server, "/v2/repository/index", json!({})).await;
    let shadow = index.as_array().unwrap().iter().find(|e| e["version"] == "2").unwrap().clone();
    assert!(shadow["reason"].as_str().unwrap().contains("shadow"), "{shadow}");
}

#[tokio::test]
async fn a_shadow_that_is_the_same_model_agrees_on_every_row() {
    let repo = shadowed_repository(true, SHADOW_PARAMETERS);
    let server = start(repo.path());
    let n = 40;
    send(&server, 0..n).await;
    let report = report_when(&server, "shadowed", |r| r["requests"]["compared"] == n).await;
    let total = &report["outputs"][0]["total"];
    assert_eq!(total["rows"], 2 * n);
    assert_eq!(total["differing_rows"], 0);
    assert_eq!(total["agreement"], 1.0);
    assert_eq!(total["top1_agreement"], 1.0);
    assert_eq!(total["max_abs_difference"], 0.0);
    assert_eq!(report["disagreements"], json!([]));
}

#[tokio::test]
async fn the_client_never_sees_the_shadow_fail() {
    let repo = common::temp_repository(&[(&test_models(), "canary")]);
    let config = repo.path().join("canary/config.pbtxt");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text[..text.find("parameters [").unwrap()].to_string() + SHADOW_PARAMETERS;
    std::fs::write(&config, text).unwrap();
    let server = Server::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "canary"]);
    let request = |fail: i64| {
        json!({ "inputs": [
            { "name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0] },
            { "name": "fail", "datatype": "INT64", "shape": [1, 1], "data": [fail] }
        ]})
    };
    let n = 20;
    for _ in 0..n {
        let (status, answer) = infer(&server, "canary", "", request(1)).await;
        assert_eq!(status, 200, "the serving version answers: {answer}");
        assert_eq!(answer["outputs"][0]["data"], json!([2.0, 4.0, 6.0, 8.0]));
    }
    let report = report_when(&server, "canary", |r| r["requests"]["shadow_errors"] == n).await;
    assert_eq!(report["requests"]["compared"], 0);
    assert!(report["last_shadow_error"].as_str().is_some(), "{report}");
    // Pinned, the shadow's failure is the client's answer (its breaker,
    // opened by the copies' failures, may answer first).
    let (status, answer) = infer(&server, "canary", "2", request(1)).await;
    assert!(status == 500 || status == 503, "{status} {answer}");
}

#[tokio::test]
async fn operators_stop_and_promote_a_shadow_into_the_canary_pipeline() {
    let repo = shadowed_repository(true, SHADOW_PARAMETERS);
    let server = start(repo.path());
    let steer = |body| post(&server, "/v2/repository/models/shadowed/shadow", body);
    // Refusals name what was wrong.
    let (status, answer) = steer(json!({ "action": "set", "version": 9 })).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("not among"), "{answer}");
    let (status, answer) = steer(json!({ "action": "jump" })).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("promote"), "{answer}");
    // Stopped, nothing more is copied.
    send(&server, 0..5).await;
    report_when(&server, "shadowed", |r| r["requests"]["compared"] == 5).await;
    let (status, report) = steer(json!({ "action": "stop" })).await;
    assert_eq!((status, report["percent"].as_u64()), (200, Some(0)), "{report}");
    send(&server, 5..15).await;
    let (_, report) = get(&server, "/v2/models/shadowed/shadow").await;
    assert_eq!(report["requests"]["mirrored"], 5);
    // Set again at 50%: about half are copied (the draw is seeded).
    let (status, report) = steer(json!({ "action": "set", "version": 2, "percent": 50 })).await;
    assert_eq!((status, report["percent"].as_u64()), (200, Some(50)), "{report}");
    send(&server, 15..215).await;
    let (_, report) = get(&server, "/v2/models/shadowed/shadow").await;
    let mirrored = report["requests"]["mirrored"].as_u64().unwrap() - 5;
    assert!((70..=130).contains(&mirrored), "{mirrored} of 200 copied at 50%");
    // Promoted to canary: unpinned traffic now splits, the shadow has ended.
    let (status, report) = steer(json!({ "action": "promote", "to": "canary", "weight": 50 })).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["running"], false);
    let (_, canary) = get(&server, "/v2/repository/models/shadowed/canary").await;
    assert_eq!((canary["stable_version"].as_str(), canary["canary_version"].as_str()), (Some("1"), Some("2")));
    assert_eq!(canary["weight"], 50);
    let mut versions = [0; 3];
    for i in 0..100 {
        let (status, answer) = infer(&server, "shadowed", "", shadowed_request(i)).await;
        assert_eq!(status, 200);
        versions[answer["model_version"].as_str().unwrap().parse::<usize>().unwrap()] += 1;
    }
    assert!(versions[1] > 20 && versions[2] > 20, "split {versions:?}");
    assert_eq!(
        metric(
            &server,
            "ferroserve_shadow_promotions_total{model=\"shadowed\",version=\"2\",to=\"canary\",trigger=\"operator\"}"
        )
        .await,
        1.0
    );
    // With no shadow left, promoting again is refused, naming why.
    let (status, answer) = steer(json!({ "action": "promote", "to": "stable" })).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("no shadow"), "{answer}");
}

#[tokio::test]
async fn a_shadow_whose_evidence_holds_is_promoted_to_canary_by_itself() {
    let extra = r#"
parameters [
  { key: "shadow_version" value { string_value: "2" } },
  { key: "shadow_queue_size" value { string_value: "256" } },
  { key: "shadow_promote_rows" value { string_value: "40" } },
  { key: "shadow_promote_latency_ratio" value { string_value: "1000" } },
  { key: "shadow_promote_weight" value { string_value: "20" } }
]"#;
    let repo = shadowed_repository(true, extra);
    let server = start(repo.path());
    send(&server, 0..19).await;
    report_when(&server, "shadowed", |r| r["requests"]["compared"] == 19).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, canary) = get(&server, "/v2/repository/models/shadowed/canary").await;
    assert_eq!(canary["canary"], Value::Null, "38 rows are short of 40: {canary}");
    send(&server, 19..21).await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, canary) = get(&server, "/v2/repository/models/shadowed/canary").await;
        if canary["canary_version"] == "2" {
            assert_eq!(canary["weight"], 20);
            break;
        }
        assert!(Instant::now() < until, "never promoted: {canary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let automatic =
        "ferroserve_shadow_promotions_total{model=\"shadowed\",version=\"2\",to=\"canary\",trigger=\"automatic\"}";
    assert_eq!(metric(&server, automatic).await, 1.0);
}

#[tokio::test]
async fn capacity_answers_per_version_with_replicas_for_a_target() {
    let repo = shadowed_repository(true, SHADOW_PARAMETERS);
    let server = start(repo.path());
    let (status, answer) = get(&server, "/v2/models/shadowed/capacity?target_rps=1000000000").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["method"].as_str().unwrap().contains("Poisson"));
    let versions = answer["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "the shadow is not counted: {answer}");
    let v = &versions[0];
    assert_eq!(v["version"], "1");
    let max = v["max_rps"].as_f64().unwrap();
    assert!(max > 10.0, "{v}");
    assert!(["latency", "cpu"].contains(&v["limited_by"].as_str().unwrap()));
    assert_eq!(v["replicas_for_target"].as_f64().unwrap(), (1e9 / max).ceil());
    for (query, needle) in [("target_rps=abc", "target_rps"), ("target_rps=-1", "positive"), ("rps=1", "unknown")] {
        let (status, answer) = get(&server, &format!("/v2/models/shadowed/capacity?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(answer["error"].as_str().unwrap().contains(needle), "{query}: {answer}");
    }
    let (status, _) = get(&server, "/v2/models/nosuch/capacity").await;
    assert_eq!(status, 404);
    // The metric an HPA reads, set on the timer.
    let until = Instant::now() + Duration::from_secs(10);
    let name = "ferroserve_capacity_requests_per_second{model=\"shadowed\",version=\"1\"}";
    while metric(&server, name).await <= 0.0 {
        assert!(Instant::now() < until, "{name} never set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
