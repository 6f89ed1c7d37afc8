//! HTTP/REST routes other than inference against the real binary: server
//! and model metadata, health, config, statistics, the repository
//! extension, error bodies and the Prometheus endpoint.

mod common;

use common::{Server, shipped_models, temp_repository, test_models};
use serde_json::{Value, json};
use std::path::Path;

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply ({}) is not JSON: {e}: {:?}", self.status, self.body))
    }

    /// The message of a `{"error": "..."}` body.
    fn error(&self) -> String {
        let json = self.json();
        json["error"].as_str().unwrap_or_else(|| panic!("no error message in {json}")).to_string()
    }

    fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}", self.body);
        self
    }
}

async fn read_reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    Reply { status, body: response.text().await.expect("reading the reply") }
}

async fn get(server: &Server, path: &str) -> Reply {
    read_reply(reqwest::get(server.http_url(path)).await.expect("GET")).await
}

async fn post(server: &Server, path: &str, body: &str) -> Reply {
    let response = reqwest::Client::new().post(server.http_url(path)).body(body.to_string()).send().await;
    read_reply(response.expect("POST")).await
}

async fn infer_mlp(server: &Server, version: &str) -> Reply {
    let request =
        json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [2, 16], "data": vec![0.5f32; 32] }] });
    post(server, &format!("/v2/models/mlp{version}/infer"), &request.to_string()).await
}

/// The index entry of `name` (and `version`) from a /v2/repository/index reply.
fn entry<'a>(index: &'a Value, name: &str, version: &str) -> &'a Value {
    index
        .as_array()
        .expect("the REST index is a bare array")
        .iter()
        .find(|e| e["name"] == name && e["version"] == version)
        .unwrap_or_else(|| panic!("no entry {name} v'{version}' in {index}"))
}

#[tokio::test]
async fn server_metadata_health_and_unknown_routes() {
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start(repo.path(), &[]);
    let metadata = get(&server, "/v2").await.assert_status(200).json();
    assert_eq!(metadata["name"], "ferroserve");
    assert_eq!(metadata["version"], env!("CARGO_PKG_VERSION"));
    let extensions: Vec<&str> =
        metadata["extensions"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    for wanted in ["binary_tensor_data", "model_repository", "model_configuration", "statistics"] {
        assert!(extensions.contains(&wanted), "{wanted} missing from {extensions:?}");
    }
    get(&server, "/v2/health/live").await.assert_status(200);
    get(&server, "/v2/health/ready").await.assert_status(200);

    for path in ["/", "/v1/models", "/v2/nothing", "/v2/models/mlp/versions/1/nothing", "/v2/health"] {
        let reply = get(&server, path).await;
        reply.assert_status(404);
        assert!(reply.error().contains("no such route"), "{path}: {}", reply.body);
    }
    let reply = post(&server, "/v2/models/mlp/explain", "{}").await;
    reply.assert_status(404);
    assert!(!reply.error().is_empty());

    // A known route with the wrong method: 405, Allow, and a JSON error too.
    let response = reqwest::get(server.http_url("/v2/models/mlp/infer")).await.unwrap();
    assert_eq!(response.headers()[reqwest::header::ALLOW], "POST");
    let reply = read_reply(response).await;
    reply.assert_status(405);
    assert!(reply.error().contains("GET is not allowed on /v2/models/mlp/infer"), "{}", reply.body);
    let reply = post(&server, "/v2/health/live", "").await;
    reply.assert_status(405);
    assert!(reply.error().contains("POST"), "{}", reply.body);
}

#[tokio::test]
async fn model_metadata_and_readiness() {
    let repo = temp_repository(&[
        (&shipped_models(), "mlp"),
        (&shipped_models(), "text"),
        (&test_models(), "multiversion"),
        (&test_models(), "nobatch"),
    ]);
    let server = Server::start(repo.path(), &[]);
    let mlp = get(&server, "/v2/models/mlp").await.assert_status(200).json();
    assert_eq!(
        mlp,
        json!({
            "name": "mlp",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{ "name": "input", "datatype": "FP32", "shape": [-1, 16] }],
            "outputs": [{ "name": "probabilities", "datatype": "FP32", "shape": [-1, 10] }],
        })
    );
    assert_eq!(get(&server, "/v2/models/mlp/versions/1").await.assert_status(200).json(), mlp);

    let text = get(&server, "/v2/models/text").await.assert_status(200).json();
    assert_eq!(text["inputs"], json!([{ "name": "words", "datatype": "BYTES", "shape": [-1, -1] }]));
    assert_eq!(text["outputs"][0], json!({ "name": "ids", "datatype": "INT64", "shape": [-1, -1] }));
    let nobatch = get(&server, "/v2/models/nobatch").await.assert_status(200).json();
    assert_eq!(nobatch["inputs"], json!([{ "name": "x", "datatype": "FP32", "shape": [2, 3] }]), "no batch dimension");
    let multiversion = get(&server, "/v2/models/multiversion").await.assert_status(200).json();
    assert_eq!(multiversion["versions"], json!(["1", "2", "3"]));
    assert_eq!(
        get(&server, "/v2/models/multiversion/versions/2").await.assert_status(200).json()["name"],
        "multiversion"
    );

    for path in ["/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready", "/v2/models/multiversion/versions/2/ready"]
    {
        get(&server, path).await.assert_status(200);
    }
    for (path, needle) in [
        ("/v2/models/nope/ready", "unknown model 'nope'"),
        ("/v2/models/mlp/versions/2/ready", "unknown version '2'"),
        ("/v2/models/multiversion/versions/4/ready", "unknown version '4'"),
        ("/v2/models/nope", "unknown model 'nope'"),
        ("/v2/models/mlp/versions/9", "unknown version '9'"),
        ("/v2/models/mlp/versions/one", "unknown version 'one'"),
    ] {
        let reply = get(&server, path).await;
        reply.assert_status(404);
        assert!(reply.error().contains(needle), "{path}: {}", reply.body);
    }
}

#[tokio::test]
async fn model_config_is_triton_json() {
    let repo =
        temp_repository(&[(&shipped_models(), "mlp"), (&shipped_models(), "text"), (&test_models(), "mlp_auto")]);
    let server = Server::start(repo.path(), &[]);
    let config = get(&server, "/v2/models/mlp/config").await.assert_status(200).json();
    assert_eq!(config["name"], "mlp");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["max_batch_size"], json!(32), "a number, not a string");
    assert_eq!(config["input"][0]["name"], "input");
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["input"][0]["dims"], json!([16]), "int64 dims as numbers");
    assert_eq!(config["output"][0]["dims"], json!([10]));
    assert_eq!(config["dynamic_batching"]["preferred_batch_size"], json!([8, 16]));
    assert_eq!(config["dynamic_batching"]["max_queue_delay_microseconds"], json!(100));
    assert_eq!(config["instance_group"][0]["count"], json!(1));
    assert_eq!(get(&server, "/v2/models/mlp/versions/1/config").await.assert_status(200).json(), config);

    let text = get(&server, "/v2/models/text/config").await.assert_status(200).json();
    assert_eq!(text["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(text["input"][0]["dims"], json!([-1]));
    assert_eq!(text["output"][0]["data_type"], "TYPE_INT64");

    // No config.pbtxt: completed from the graph, batching at Triton's default.
    let auto = get(&server, "/v2/models/mlp_auto/config").await.assert_status(200).json();
    assert_eq!(auto["name"], "mlp_auto");
    assert_eq!(auto["max_batch_size"], json!(4));
    assert_eq!(auto["input"][0]["name"], "input");
    assert_eq!(auto["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(auto["input"][0]["dims"], json!([16]));
    assert_eq!(auto["output"][0]["name"], "probabilities");
    assert!(auto["dynamic_batching"].is_object(), "{auto}");

    let reply = get(&server, "/v2/models/nope/config").await;
    reply.assert_status(404);
    assert!(reply.error().contains("unknown model 'nope'"));
}

fn success_count(stats: &Value, model: &str, version: &str) -> u64 {
    stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == model && s["version"] == version)
        .unwrap_or_else(|| panic!("no stats for {model} v{version} in {stats}"))["inference_stats"]["success"]["count"]
        .as_u64()
        .expect("success.count as a number")
}

#[tokio::test]
async fn statistics_count_requests() {
    let repo = temp_repository(&[(&shipped_models(), "mlp"), (&test_models(), "multiversion")]);
    let server = Server::start(repo.path(), &[]);
    let before = get(&server, "/v2/models/mlp/stats").await.assert_status(200).json();
    assert_eq!(before["model_stats"].as_array().unwrap().len(), 1);
    let before_count = success_count(&before, "mlp", "1");
    for _ in 0..3 {
        infer_mlp(&server, "").await.assert_status(200);
    }
    infer_mlp(&server, "/versions/1").await.assert_status(200);
    let after = get(&server, "/v2/models/mlp/stats").await.assert_status(200).json();
    assert_eq!(success_count(&after, "mlp", "1"), before_count + 4);
    let stats = &after["model_stats"][0];
    assert!(stats["inference_count"].as_u64().unwrap() >= 8, "4 requests of 2 rows: {stats}");
    assert!(stats["execution_count"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["last_inference"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["inference_stats"]["compute_infer"]["count"].as_u64().unwrap() >= 1, "{stats}");

    // A request the model refuses counts as a failure, not a success.
    let fail_before = stats["inference_stats"]["fail"]["count"].as_u64().unwrap();
    let bad = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 8], "data": vec![0.0; 8] }] });
    post(&server, "/v2/models/mlp/infer", &bad.to_string()).await.assert_status(400);
    let version = get(&server, "/v2/models/mlp/versions/1/stats").await.assert_status(200).json();
    assert_eq!(version["model_stats"][0]["inference_stats"]["fail"]["count"], json!(fail_before + 1));
    assert_eq!(success_count(&version, "mlp", "1"), before_count + 4);

    // All models: every ready version, each with its own counters.
    let all = get(&server, "/v2/models/stats").await.assert_status(200).json();
    assert_eq!(success_count(&all, "mlp", "1"), before_count + 4);
    for version in ["1", "2", "3"] {
        assert_eq!(success_count(&all, "multiversion", version), 0);
    }
    let multiversion = get(&server, "/v2/models/multiversion/stats").await.assert_status(200).json();
    assert_eq!(multiversion["model_stats"].as_array().unwrap().len(), 3);

    for path in ["/v2/models/nope/stats", "/v2/models/mlp/versions/5/stats"] {
        let reply = get(&server, path).await;
        reply.assert_status(404);
        assert!(!reply.error().is_empty());
    }
}

/// A model directory whose version 1 holds `onnx` and whose config is `config`.
fn broken_model(repo: &Path, name: &str, config: Option<&str>, onnx: &[u8]) {
    std::fs::create_dir_all(repo.join(name).join("1")).unwrap();
    std::fs::write(repo.join(name).join("1/model.onnx"), onnx).unwrap();
    if let Some(config) = config {
        std::fs::write(repo.join(name).join("config.pbtxt"), config).unwrap();
    }
}

#[tokio::test]
async fn repository_index_reports_every_model_state() {
    let repo = temp_repository(&[(&shipped_models(), "mlp"), (&test_models(), "multiversion")]);
    let mlp_onnx = std::fs::read(shipped_models().join("mlp/1/model.onnx")).unwrap();
    broken_model(repo.path(), "garbage", None, b"this is not an ONNX model");
    broken_model(repo.path(), "misspelt", Some("name: \"misspelt\"\nmax_batch_size: 4\nbogus_field: 3\n"), &mlp_onnx);
    let server = Server::start(repo.path(), &[]);

    let index = post(&server, "/v2/repository/index", "").await.assert_status(200).json();
    for e in index.as_array().unwrap() {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "reason", "state", "version"], "{e}");
    }
    assert_eq!(entry(&index, "mlp", "1")["state"], "READY");
    assert_eq!(entry(&index, "mlp", "1")["reason"], "");
    for version in ["1", "2", "3"] {
        assert_eq!(entry(&index, "multiversion", version)["state"], "READY");
    }
    let garbage = entry(&index, "garbage", "1");
    assert_eq!(garbage["state"], "UNAVAILABLE");
    assert!(!garbage["reason"].as_str().unwrap().is_empty(), "{garbage}");
    let misspelt = entry(&index, "misspelt", "");
    assert_eq!(misspelt["state"], "UNAVAILABLE");
    assert!(misspelt["reason"].as_str().unwrap().contains("bogus_field"), "{misspelt}");
    assert_eq!(index.as_array().unwrap().len(), 6, "{index}");

    let ready = post(&server, "/v2/repository/index", r#"{"ready": true}"#).await.assert_status(200).json();
    let names: Vec<(&str, &str)> = ready
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["version"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("mlp", "1"), ("multiversion", "1"), ("multiversion", "2"), ("multiversion", "3")]);
    assert_eq!(post(&server, "/v2/repository/index", "{}").await.assert_status(200).json(), index);

    let reply = post(&server, "/v2/repository/index", "{not json").await;
    reply.assert_status(400);
    assert!(reply.error().contains("malformed JSON"), "{}", reply.body);

    // The broken models are not ready; the server is (not strict).
    get(&server, "/v2/health/ready").await.assert_status(200);
    for name in ["garbage", "misspelt"] {
        let reply = get(&server, &format!("/v2/models/{name}/ready")).await;
        assert_eq!(reply.status, 400, "not ready is a 4xx, as Triton answers: {}", reply.body);
        assert!(reply.error().contains(&format!("model '{name}' is not ready")), "{}", reply.body);
        let reply = get(&server, &format!("/v2/models/{name}")).await;
        reply.assert_status(503);
        assert!(reply.error().contains("not ready"), "{}", reply.body);
    }
}

#[tokio::test]
async fn explicit_mode_loads_and_unloads_on_request() {
    let repo = temp_repository(&[(&shipped_models(), "mlp"), (&test_models(), "multiversion")]);
    broken_model(repo.path(), "garbage", None, b"not ONNX");
    let server = Server::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "mlp"]);

    let index = post(&server, "/v2/repository/index", "").await.assert_status(200).json();
    assert_eq!(entry(&index, "mlp", "1")["state"], "READY");
    let idle = entry(&index, "multiversion", "");
    assert_eq!((&idle["state"], &idle["reason"]), (&json!("UNAVAILABLE"), &json!("not loaded")));
    assert_eq!(get(&server, "/v2/models/multiversion/ready").await.status, 404);

    post(&server, "/v2/repository/models/multiversion/load", "").await.assert_status(200);
    get(&server, "/v2/models/multiversion/ready").await.assert_status(200);
    get(&server, "/v2/models/multiversion/versions/2/ready").await.assert_status(200);
    let request = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0] }] });
    let reply = post(&server, "/v2/models/multiversion/infer", &request.to_string()).await.assert_status(200).json();
    assert_eq!(reply["outputs"][0]["data"], json!([4.0]));

    // Unload: out of service, the index says why; load again: back.
    post(&server, "/v2/repository/models/mlp/unload", "").await.assert_status(200);
    let reply = get(&server, "/v2/models/mlp/ready").await;
    assert_ne!(reply.status, 200);
    assert!(reply.error().contains("unloaded"), "{}", reply.body);
    let reply = infer_mlp(&server, "").await;
    reply.assert_status(503);
    assert!(reply.error().contains("not ready"), "{}", reply.body);
    let index = post(&server, "/v2/repository/index", "").await.assert_status(200).json();
    assert_eq!(entry(&index, "mlp", "")["reason"], "unloaded");
    post(&server, "/v2/repository/models/mlp/load", "{}").await.assert_status(200);
    get(&server, "/v2/models/mlp/ready").await.assert_status(200);
    infer_mlp(&server, "").await.assert_status(200);

    let reply = post(&server, "/v2/repository/models/ghost/load", "").await;
    reply.assert_status(404);
    assert!(reply.error().contains("ghost"), "{}", reply.body);
    let reply = post(&server, "/v2/repository/models/ghost/unload", "").await;
    reply.assert_status(404);
    let reply = post(&server, "/v2/repository/models/garbage/load", "").await;
    reply.assert_status(400);
    assert!(reply.error().contains("failed to load 'garbage'"), "{}", reply.body);
    let reply =
        post(&server, "/v2/repository/models/multiversion/load", r#"{"parameters": {"file:1/x": "AA=="}}"#).await;
    reply.assert_status(501);
    assert!(reply.error().contains("'file:1/x'"), "{}", reply.body);
    let reply = post(
        &server,
        "/v2/repository/models/multiversion/load",
        r#"{"parameters": {"config": "{\"max_batch_sise\": 2}"}}"#,
    )
    .await;
    reply.assert_status(400);
    assert!(reply.error().contains("max_batch_sise"), "{}", reply.body);
    let reply = post(&server, "/v2/repository/models/multiversion/load", "{oops").await;
    reply.assert_status(400);
    assert!(reply.error().contains("malformed JSON"), "{}", reply.body);
    get(&server, "/v2/models/multiversion/ready").await.assert_status(200);
}

#[tokio::test]
async fn load_and_unload_are_refused_outside_explicit_mode() {
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start(repo.path(), &[]);
    for action in ["load", "unload"] {
        let reply = post(&server, &format!("/v2/repository/models/mlp/{action}"), "").await;
        reply.assert_status(503);
        assert!(reply.error().contains("--model-control-mode explicit"), "{}", reply.body);
    }
    get(&server, "/v2/models/mlp/ready").await.assert_status(200);
    infer_mlp(&server, "").await.assert_status(200);
}

/// The value of the sample line that starts with `series ` in Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn prometheus_metrics_count_requests_by_outcome() {
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start(repo.path(), &[]);
    for _ in 0..5 {
        infer_mlp(&server, "").await.assert_status(200);
    }
    let bad = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 8], "data": vec![0.0; 8] }] });
    post(&server, "/v2/models/mlp/infer", &bad.to_string()).await.assert_status(400);

    let response = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let metrics = response.text().await.unwrap();
    let labels = r#"model="mlp",version="1""#;
    assert_eq!(sample(&metrics, &format!("ferroserve_requests_total{{{labels},code=\"ok\"}}")), Some(5.0), "{metrics}");
    assert_eq!(
        sample(&metrics, &format!("ferroserve_requests_total{{{labels},code=\"invalid_argument\"}}")),
        Some(1.0),
        "{metrics}"
    );
    let first_bucket = format!("ferroserve_request_duration_seconds_bucket{{{labels},le=\"0.00005\"}}");
    assert!(sample(&metrics, &first_bucket).is_some(), "no 50 µs bucket:\n{metrics}");
    let all = format!("ferroserve_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}");
    assert_eq!(sample(&metrics, &all), Some(6.0), "{metrics}");
    assert_eq!(sample(&metrics, &format!("ferroserve_request_duration_seconds_count{{{labels}}}")), Some(6.0));
    assert!(metrics.contains("# TYPE ferroserve_request_duration_seconds histogram"), "{metrics}");
    assert_eq!(sample(&metrics, "ferroserve_models_ready"), Some(1.0), "{metrics}");
}
