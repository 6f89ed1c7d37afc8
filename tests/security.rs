//! The one auth layer, against the real binary over loopback: every HTTP
//! route of the route table and every gRPC method of every service the gRPC
//! port serves (enumerated from the descriptors reflection serves) is
//! refused without a key, refused with a key that lacks its group and
//! reached with one that has it — health alone open; paths nothing serves
//! are refused even with a key for everything; Triton's header restrictions;
//! the key file reloading; and the audit log of admin actions.

mod common;
mod grpc_support;

use bytes::Bytes;
use common::{Server, shipped_models};
use ferroserve::security::groups::{Group, HTTP_ROUTES, Port, Table};
use grpc_support::raw;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The key every test key file gives group `group`.
fn key_of(group: Group) -> String {
    format!("fs_{}_4f1c9e27b8a3", group.name())
}

const ROOT_KEY: &str = "fs_root_d41d8cd98f00b204";

fn sha256_hex(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key file with one key per group (ID `only-<group>`) and `root` for
/// every group.
fn write_keys(dir: &Path) -> PathBuf {
    let mut text = String::from("# test keys: ID GROUPS SHA256HEX\n");
    for group in Group::ALL {
        text += &format!("only-{group} {group} {}\n", sha256_hex(&key_of(group)));
    }
    text += &format!("root * {}\n", sha256_hex(ROOT_KEY));
    let path = dir.join("keys");
    std::fs::write(&path, text).unwrap();
    path
}

/// Some group other than `group` (never health, which is open).
fn other_than(group: Group) -> Group {
    if group == Group::Inference { Group::Metadata } else { Group::Inference }
}

/// A route's path with its parameters filled in, and the method it takes.
fn concrete(route: &str) -> (reqwest::Method, String) {
    let path = route.replace("{model}", "mlp").replace("{version}", "1");
    let post = ["/infer", "/load", "/unload", "/index"].iter().any(|end| path.ends_with(end));
    (if post { reqwest::Method::POST } else { reqwest::Method::GET }, path)
}

struct Reply {
    status: u16,
    challenge: Option<String>,
    body: String,
}

impl Reply {
    /// Past the auth layer: not refused, and not the "no route" answer.
    fn passed(&self) -> bool {
        self.status != 401 && self.status != 403 && !self.body.contains("no such route")
    }
}

async fn send(client: &reqwest::Client, method: reqwest::Method, url: &str, key: Option<&str>) -> Reply {
    let mut request = client.request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("an HTTP answer");
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    Reply { status, challenge, body: response.text().await.unwrap() }
}

#[tokio::test]
async fn every_http_route_needs_a_key_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(dir.path());
    let server = Server::start(&shipped_models(), &["--auth-keys", keys.to_str().unwrap()]);
    let client = reqwest::Client::new();
    assert!(HTTP_ROUTES.len() >= 18, "the route table lost routes");
    for &(route, group) in HTTP_ROUTES {
        let (method, path) = concrete(route);
        let url = server.http_url(&path);
        let what = format!("{method} {path} ({group})");
        let bare = send(&client, method.clone(), &url, None).await;
        let stranger = send(&client, method.clone(), &url, Some("not-a-key")).await;
        let other = send(&client, method.clone(), &url, Some(&key_of(other_than(group)))).await;
        if group == Group::Health {
            for reply in [&bare, &stranger, &other] {
                assert!(reply.passed(), "{what} is a probe and stays open: {} {}", reply.status, reply.body);
            }
        } else {
            assert_eq!(bare.status, 401, "{what} without a key: {}", bare.body);
            assert_eq!(bare.challenge.as_deref(), Some("Bearer"), "{what}");
            assert!(bare.body.contains("needs an API key"), "{what}: {}", bare.body);
            assert_eq!(stranger.status, 401, "{what} with an unknown key: {}", stranger.body);
            assert!(stranger.body.contains("not known"), "{what}: {}", stranger.body);
            assert_eq!(other.status, 403, "{what} with another group's key: {}", other.body);
            assert!(other.body.contains(&format!("the {group} API")), "{what}: {}", other.body);
        }
        let own = send(&client, method.clone(), &url, Some(&key_of(group))).await;
        assert!(own.passed(), "{what} with its group's key: {} {}", own.status, own.body);
        let root = send(&client, method, &url, Some(ROOT_KEY)).await;
        assert!(root.passed(), "{what} with the * key: {} {}", root.status, root.body);
    }

    // Nothing serves these: refused before anything else, whatever the key.
    for path in
        ["/", "/v2/", "/v2/models/mlp/infer/", "/v2//health/live", "/metrics", "/v2/logging", "/v2/trace/setting"]
    {
        let reply = send(&client, reqwest::Method::GET, &server.http_url(path), Some(ROOT_KEY)).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert!(reply.body.contains("no such route"), "{path}: {}", reply.body);
    }

    let metrics = format!("http://{}/metrics", server.metrics);
    let bare = send(&client, reqwest::Method::GET, &metrics, None).await;
    assert_eq!((bare.status, bare.challenge.as_deref()), (401, Some("Bearer")), "{}", bare.body);
    let other = send(&client, reqwest::Method::GET, &metrics, Some(&key_of(Group::Inference))).await;
    assert_eq!(other.status, 403, "{}", other.body);
    let own = send(&client, reqwest::Method::GET, &metrics, Some(&key_of(Group::Metrics))).await;
    assert_eq!(own.status, 200, "{}", own.body);
    // Every refusal above was counted, by port and reason.
    for needle in [
        r#"ferroserve_auth_denied_total{port="http",reason="unauthenticated"}"#,
        r#"ferroserve_auth_denied_total{port="http",reason="permission_denied"}"#,
        r#"ferroserve_auth_denied_total{port="http",reason="no_route"}"#,
        r#"ferroserve_auth_denied_total{port="metrics",reason="unauthenticated"}"#,
    ] {
        assert!(own.body.contains(needle), "{needle} missing from /metrics");
    }
}

/// Every service the gRPC port serves, as descriptors.
fn served_descriptors() -> prost_reflect::DescriptorPool {
    let mut pool = prost_reflect::DescriptorPool::new();
    for set in ferroserve::api::grpc::SERVED_DESCRIPTOR_SETS {
        pool.decode_file_descriptor_set(set).expect("an embedded descriptor set");
    }
    pool
}

/// The services the server's reflection lists.
async fn reflected_services(server: &Server) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap();
    let mut client = ServerReflectionClient::new(channel.connect().await.unwrap());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([ask]));
    request.metadata_mut().insert("authorization", format!("Bearer {ROOT_KEY}").parse().unwrap());
    let mut answers = client.server_reflection_info(request).await.expect("reflection answers").into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("not a service list: {other:?}"),
    }
}

/// One call's grpc-status and grpc-message, from the response headers when
/// the answer is trailers-only (every refusal is), else "accepted".
async fn grpc_call(client: &mut h2::client::SendRequest<Bytes>, path: &str, key: Option<&str>) -> (String, String) {
    let authorization = key.map(|key| format!("Bearer {key}"));
    let metadata: Vec<(&str, &str)> = authorization.iter().map(|value| ("authorization", value.as_str())).collect();
    let request = raw::head(path, &metadata);
    let (response, mut stream) = client.send_request(request, false).expect("a stream");
    // One empty message: a valid (if useless) request of every type.
    stream.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("sending");
    let response =
        tokio::time::timeout(Duration::from_secs(20), response).await.expect("an answer in time").expect("an answer");
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    match header("grpc-status") {
        Some(status) => (status, header("grpc-message").unwrap_or_default()),
        None => ("accepted".into(), String::new()),
    }
}

#[tokio::test]
async fn every_grpc_method_needs_a_key_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(dir.path());
    let server = Server::start(&shipped_models(), &["--auth-keys", keys.to_str().unwrap()]);
    let pool = served_descriptors();
    let described: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
    for service in reflected_services(&server).await {
        assert!(described.contains(&service), "the server serves {service}, which this test does not enumerate");
    }
    let table = Table::new();
    let (mut client, _driver) = raw::connect(&server.grpc).await;
    let mut methods = 0;
    for service in pool.services() {
        for method in service.methods() {
            methods += 1;
            let path = format!("/{}/{}", service.full_name(), method.name());
            let group = table.classify(Port::Grpc, &path).unwrap_or_else(|| panic!("{path} has no API group"));
            let bare = grpc_call(&mut client, &path, None).await;
            let other = grpc_call(&mut client, &path, Some(&key_of(other_than(group)))).await;
            let passed = |(status, message): &(String, String)| {
                status != "16" && status != "7" && !message.contains("no such method")
            };
            if group == Group::Health {
                assert!(passed(&bare) && passed(&other), "{path} is a probe and stays open: {bare:?} {other:?}");
            } else {
                assert_eq!(bare.0, "16", "{path} ({group}) without a key: {bare:?}");
                assert_eq!(other.0, "7", "{path} ({group}) with another group's key: {other:?}");
                assert!(other.1.contains(&format!("the%20{group}%20API")), "{path}: {other:?}");
            }
            let own = grpc_call(&mut client, &path, Some(&key_of(group))).await;
            assert!(passed(&own), "{path} ({group}) with its group's key: {own:?}");
        }
    }
    assert!(methods >= 24, "only {methods} methods enumerated");
    for path in ["/inference.GRPCInferenceService/Nope", "/other.Service/ModelInfer", "/grpc.health.v1.Health/"] {
        let (status, message) = grpc_call(&mut client, path, Some(ROOT_KEY)).await;
        assert_eq!(status, "12", "{path}: {message}");
    }
}

#[tokio::test]
async fn tritons_restricted_api_flags_guard_their_groups() {
    let server = Server::start(
        &shipped_models(),
        &[
            "--http-restricted-api",
            "model-repository,canary:admin-key=s3cret",
            "--grpc-restricted-protocol",
            "model-repository:admin-key=s3cret",
        ],
    );
    let client = reqwest::Client::new();
    let index = server.http_url("/v2/repository/index");
    let refused = client.post(&index).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("www-authenticate").is_none(), "a header restriction is not a Bearer challenge");
    assert!(refused.text().await.unwrap().contains("admin-key"));
    let wrong = client.post(&index).header("admin-key", "s3cre").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client.post(&index).header("admin-key", "s3cret").send().await.unwrap();
    assert_eq!(right.status(), 200);
    let canary = client.get(server.http_url("/v2/repository/models/mlp/canary")).send().await.unwrap();
    assert_eq!(canary.status(), 401);
    // Groups not named stay open.
    let metadata = client.get(server.http_url("/v2/models/mlp")).send().await.unwrap();
    assert_eq!(metadata.status(), 200);

    let mut grpc = server.grpc_client().await;
    let error = grpc.repository_index(ferroserve::pb::RepositoryIndexRequest::default()).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error:?}");
    let mut request = tonic::Request::new(ferroserve::pb::RepositoryIndexRequest::default());
    request.metadata_mut().insert("admin-key", "s3cret".parse().unwrap());
    grpc.repository_index(request).await.expect("the header opens the group");
    grpc.server_metadata(ferroserve::pb::ServerMetadataRequest::default()).await.expect("metadata is not restricted");
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_key_file_reloads_when_it_changes_and_a_broken_one_keeps_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("old metadata {}\n", sha256_hex("old-key"))).unwrap();
    let server = Server::start(&shipped_models(), &["--auth-keys", keys.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let url = server.http_url("/v2/models/mlp");
    let status = async |key: &str| client.get(&url).bearer_auth(key).send().await.unwrap().status().as_u16();
    assert_eq!(status("old-key").await, 200);
    assert_eq!(status("new-key").await, 401);

    // Replaced the way editors and config tools do: a new file renamed over.
    let staged = dir.path().join(".keys.tmp");
    std::fs::write(&staged, format!("new metadata,metrics {}\n", sha256_hex("new-key"))).unwrap();
    std::fs::rename(&staged, &keys).unwrap();
    eventually("the new key file taking effect", async || status("new-key").await == 200).await;
    assert_eq!(status("old-key").await, 401);

    std::fs::write(&keys, "broken metadata not-a-digest\n").unwrap();
    let metrics = format!("http://{}/metrics", server.metrics);
    let failures = async || {
        let text = client.get(&metrics).bearer_auth("new-key").send().await.unwrap().text().await.unwrap();
        text.contains(r#"ferroserve_auth_keys_reloads_total{outcome="failure"}"#)
    };
    eventually("the broken key file counted as a failed reload", failures).await;
    assert_eq!(status("new-key").await, 200, "a broken key file keeps the keys in force");
}

#[tokio::test]
async fn admin_actions_are_audited_with_the_key_id_and_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(dir.path());
    let repository = common::temp_repository(&[(&shipped_models(), "mlp")]);
    let (server, logs) = Server::spawn_logged(
        repository.path(),
        &["--auth-keys", keys.to_str().unwrap(), "--model-control-mode", "explicit", "--load-model", "mlp"],
        &[("RUST_LOG", "warn,ferroserve::audit=info")],
    );
    server.wait_ready();
    let client = reqwest::Client::new();
    let admin = key_of(Group::ModelRepository);
    let unload =
        client.post(server.http_url("/v2/repository/models/mlp/unload")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(unload.status(), 200, "{}", unload.text().await.unwrap());
    let load = client.post(server.http_url("/v2/repository/models/mlp/load")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(load.status(), 200);
    let missing =
        client.post(server.http_url("/v2/repository/models/absent/load")).bearer_auth(ROOT_KEY).send().await.unwrap();
    assert!(missing.status().is_client_error());

    let canary = server.http_url("/v2/repository/models/mlp/canary");
    let canary_key = key_of(Group::Canary);
    for body in [json!({"weight": 10}), json!({"action": "promote"}), json!({"action": "rollback"})] {
        // mlp has no canary here: each is refused, and each is audited.
        let reply = client.post(&canary).bearer_auth(&canary_key).json(&body).send().await.unwrap();
        assert!(reply.status().is_client_error(), "{body}");
    }

    let mut grpc = server.grpc_client().await;
    let mut request = tonic::Request::new(ferroserve::pb::RepositoryModelUnloadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", format!("Bearer {ROOT_KEY}").parse().unwrap());
    grpc.repository_model_unload(request).await.expect("an unload over gRPC");

    let wait = Duration::from_secs(5);
    for (action, model, key_id, outcome) in [
        ("unload", "mlp", "only-model-repository", "ok"),
        ("load", "mlp", "only-model-repository", "ok"),
        ("load", "absent", "root", "refused"),
        ("canary weight", "mlp", "only-canary", "refused"),
        ("canary promote", "mlp", "only-canary", "refused"),
        ("canary rollback", "mlp", "only-canary", "refused"),
    ] {
        let needles = [
            "ferroserve::audit".to_string(),
            format!("action={action:?}"),
            format!("model={model:?}"),
            format!("key_id={key_id:?}"),
            "client=\"127.0.0.1:".to_string(),
            format!("outcome={outcome:?}"),
        ];
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        logs.wait_for(&needles, wait).unwrap_or_else(|| panic!("no audit line with {needles:?}"));
    }
    logs.wait_for(&["ferroserve::audit", "action=\"unload\"", "key_id=\"root\""], wait)
        .expect("the gRPC unload audited");
    let lines = logs.lines().join("\n");
    for key in [ROOT_KEY.to_string(), admin, canary_key] {
        assert!(!lines.contains(&key), "a key reached the log");
    }
}
