//! The HTTP/REST front on --http-port (KServe V2 REST with Triton's
//! extensions) and the Prometheus endpoint on --metrics-port.

mod codec;
mod json;
mod limits;
mod rollout;

pub use codec::decode as decode_body;

use crate::api::listen::{self, Limits, Protocol};
use crate::api::{describe, grpc, http_status, inflate};
use crate::error::{Error, Result};
use crate::infer::InferResponse;
use crate::repository::Repository;
use crate::security::audit;
use crate::security::auth::{Auth, Denial, Guard};
use crate::security::groups::{HTTP_ROUTES, Port};
use crate::server::State;
use crate::shutdown::Phases;
use crate::telemetry::trace::{Incoming, RequestSpan};
use crate::telemetry::triton;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::Instrument;

/// The header announcing where the JSON part of a body ends.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type AppState = Arc<State>;

pub fn router(state: AppState) -> Router {
    let read_timeout = Duration::from_secs(state.config.request_read_timeout_secs);
    Router::new()
        .route(grouped("/v2"), get(server_metadata))
        .route(grouped("/v2/health/live"), get(live))
        .route(grouped("/v2/health/ready"), get(ready))
        .route(grouped("/v2/models"), get(list_models))
        .route(grouped("/v2/models/stats"), get(all_stats))
        .route(grouped("/v2/models/{model}"), get(model_metadata))
        .route(grouped("/v2/models/{model}/versions/{version}"), get(version_metadata))
        .route(grouped("/v2/models/{model}/ready"), get(model_ready))
        .route(grouped("/v2/models/{model}/versions/{version}/ready"), get(version_ready))
        .route(grouped("/v2/models/{model}/infer"), post(model_infer))
        .route(grouped("/v2/models/{model}/versions/{version}/infer"), post(version_infer))
        .route(grouped("/v2/models/{model}/config"), get(model_config))
        .route(grouped("/v2/models/{model}/versions/{version}/config"), get(version_config))
        .route(grouped("/v2/models/{model}/stats"), get(model_stats))
        .route(grouped("/v2/models/{model}/versions/{version}/stats"), get(version_stats))
        .route(grouped("/v2/repository/index"), post(repository_index))
        .route(grouped("/v2/repository/models/{model}/load"), post(load))
        .route(grouped("/v2/repository/models/{model}/unload"), post(unload))
        .route(grouped("/v2/models/{model}/shadow"), get(rollout::shadow_status))
        .route(grouped("/v2/models/{model}/capacity"), get(rollout::capacity))
        .route(grouped("/v2/repository/models/{model}/canary"), get(rollout::canary_status).post(rollout::steer_canary))
        .route(grouped("/v2/repository/models/{model}/shadow"), get(rollout::shadow_status).post(rollout::steer_shadow))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), close_while_draining))
        // Content-Encoding gzip/deflate request bodies (tritonclient's
        // request_compression_algorithm), inflated within bounds, and
        // Accept-Encoding responses.
        .layer(axum::middleware::from_fn_with_state(state.clone(), inflate_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_inference_answers))
        .with_state(state)
        .layer(tower_http::compression::CompressionLayer::new())
        // Outermost, so it watches the body as it comes off the wire: a body
        // that sends no data for this long fails to read (408).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(read_timeout))
}

/// A route's path, once it is known to have an API group in
/// security/groups.rs: a route without one would be refused by the auth
/// layer (deny by default), so adding it here alone fails every test.
fn grouped(path: &'static str) -> &'static str {
    assert!(
        HTTP_ROUTES.iter().any(|(known, _)| *known == path),
        "the HTTP route {path} has no API group in security/groups.rs HTTP_ROUTES"
    );
    path
}

/// The HTTP front behind the auth layer: what the HTTP port serves.
pub fn service(state: AppState) -> Guard<Router, Body> {
    Guard::new(state.security.auth.clone(), Port::Http, refuse, router(state))
}

pub async fn serve(listener: TcpListener, state: AppState, phases: Phases) {
    let limits = Limits::from(&state.config);
    let tls = state.security.tls(Port::Http);
    listen::serve(listener, service(state), Protocol::Http, limits, tls, phases).await;
}

/// What the metrics port serves, behind the auth layer. Each scrape first
/// sets the metrics kept as statistics (Triton's families, when on).
pub fn metrics_service(handle: PrometheusHandle, repository: Arc<Repository>, auth: Arc<Auth>) -> Guard<Router, Body> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (handle, repository) = (handle.clone(), repository.clone());
            async move {
                if triton::enabled() {
                    for version in repository.all_ready() {
                        triton::publish(&version.name, &version.label, &version.stats);
                    }
                }
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
            }
        }),
    );
    Guard::new(auth, Port::Metrics, refuse, app)
}

pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    state: AppState,
    limits: Limits,
    phases: Phases,
) {
    let tls = state.security.tls(Port::Metrics);
    let service = metrics_service(handle, state.repository.clone(), state.security.auth.clone());
    listen::serve(listener, service, Protocol::Http, limits, tls, phases).await;
}

/// A request the auth layer refused: 404 for a path nothing serves, 401
/// (with `WWW-Authenticate: Bearer` when a key is what is missing) or 403.
pub fn refuse(denial: Denial) -> Response {
    match denial {
        Denial::NoRoute(_) => error_response(Error::not_found("no such route")),
        Denial::Unauthenticated { message, bearer } => {
            let mut response = error_response(Error::Unauthenticated(message));
            if bearer {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
        Denial::PermissionDenied(message) => error_response(Error::PermissionDenied(message)),
    }
}

/// While the server drains, an HTTP/1.1 answer carries `Connection: close`:
/// the client closes the connection itself after reading it, instead of
/// racing a request against the server closing an idle connection.
async fn close_while_draining(
    Shared(state): Shared<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http1 = request.version() <= axum::http::Version::HTTP_11;
    let mut response = next.run(request).await;
    if http1 && state.repository.is_draining() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Marks an inference answer the handler has counted.
#[derive(Clone, Copy)]
struct Counted;

/// The model a `/v2/models/{m}[/versions/{v}]/infer` path names.
fn inference_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
    let model = match rest.split_once("/versions/") {
        Some((model, version)) if !version.contains('/') => model,
        Some(_) => return None,
        None => rest,
    };
    (!model.is_empty() && !model.contains('/')).then_some(model)
}

/// Every answered inference request is counted: one the handler never saw
/// (a body that does not inflate, a path that does not parse) is counted
/// here, under its model when the repository knows it.
async fn count_inference_answers(
    Shared(state): Shared<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A cheap copy: the path is shared bytes.
    let post = (request.method() == Method::POST).then(|| request.uri().clone());
    let started = Instant::now();
    let mut response = next.run(request).await;
    if let Some(uri) = post
        && response.extensions_mut().remove::<Counted>().is_none()
        && let Some(model) = inference_model(uri.path())
    {
        state.repository.count_refused(model, crate::api::code_of_status(response.status()), started, false);
    }
    response
}

/// A request body in gzip or deflate is read whole (within
/// --max-message-bytes), inflated within the size and ratio bounds
/// (api/inflate.rs), and handed on plain; an encoding the server does not
/// read is 415.
async fn inflate_body(
    Shared(state): Shared<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(encoding) = request.headers().get(header::CONTENT_ENCODING) else {
        return next.run(request).await;
    };
    let codec = match inflate::Codec::from_name(encoding.as_bytes()) {
        Ok(codec) => codec,
        Err(e) => return error_response(e),
    };
    let (mut parts, body) = request.into_parts();
    parts.headers.remove(header::CONTENT_ENCODING);
    let Some(codec) = codec else {
        return next.run(axum::extract::Request::from_parts(parts, body)).await;
    };
    let inflated = match read_body(&state, body).await {
        Ok(compressed) => inflate::inflate(codec, &compressed, state.config.inflate_bounds(), "request body"),
        Err(e) => Err(e),
    };
    match inflated {
        Ok(inflated) => {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(inflated.len()));
            next.run(axum::extract::Request::from_parts(parts, Body::from(inflated))).await
        }
        Err(e) => error_response(e),
    }
}

/// Errors go out as `{"error": "..."}` with the mapped status.
fn error_response(error: Error) -> Response {
    let retry_after = crate::api::retry_after_secs(&error);
    let mut response = (http_status(&error), axum::Json(json!({ "error": error.to_string() }))).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn json_reply(result: Result<Value>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => error_response(e),
    }
}

async fn not_found() -> Response {
    error_response(Error::not_found("no such route"))
}

/// A known route with the wrong method: 405 (axum keeps the Allow header),
/// with the JSON error body every other failure has.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("method {method} is not allowed on {}", uri.path());
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(json!({ "error": message }))).into_response()
}

async fn server_metadata() -> Response {
    json_reply(describe::to_json(&describe::server_metadata(), "inference.ServerMetadataResponse"))
}

/// The Open Inference Protocol's health bodies; the status code alone is
/// what probes and tritonclient read.
async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

async fn ready(Shared(state): Shared<AppState>) -> Response {
    let ready = state.repository.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

/// `GET /v2/models`: the names of the models (KServe's `models` list) and
/// each version with its state, as RepositoryIndex gives them.
async fn list_models(Shared(state): Shared<AppState>) -> Response {
    json_reply(models_json(&state))
}

fn models_json(state: &State) -> Result<Value> {
    let index = describe::repository_index(&state.repository, false);
    let mut names: Vec<&str> = index.models.iter().map(|m| m.name.as_str()).collect();
    names.dedup();
    let versions = describe::to_json(&index, "inference.RepositoryIndexResponse")?
        .get_mut("models")
        .map(Value::take)
        .unwrap_or_else(|| json!([]));
    Ok(json!({ "models": names, "versions": versions }))
}

fn metadata(state: &State, model: &str, version: &str) -> Response {
    json_reply(
        describe::model_metadata(&state.repository, model, version)
            .and_then(|m| describe::to_json(&m, "inference.ModelMetadataResponse")),
    )
}

async fn model_metadata(Shared(state): Shared<AppState>, Path(model): Path<String>) -> Response {
    metadata(&state, &model, "")
}

async fn version_metadata(Shared(state): Shared<AppState>, Path((model, version)): Path<(String, String)>) -> Response {
    metadata(&state, &model, &version)
}

fn readiness(state: &State, model: &str, version: &str) -> Response {
    match state.repository.get(model, version) {
        Ok(_) => axum::Json(json!({ "name": model, "ready": true })).into_response(),
        Err(Error::NotFound(m)) => error_response(Error::NotFound(m)),
        // Not ready: 4xx per the KServe REST protocol, as Triton answers.
        Err(e) => {
            (StatusCode::BAD_REQUEST, axum::Json(json!({ "name": model, "ready": false, "error": e.to_string() })))
                .into_response()
        }
    }
}

async fn model_ready(Shared(state): Shared<AppState>, Path(model): Path<String>) -> Response {
    readiness(&state, &model, "")
}

async fn version_ready(Shared(state): Shared<AppState>, Path((model, version)): Path<(String, String)>) -> Response {
    readiness(&state, &model, &version)
}

fn config(state: &State, model: &str, version: &str) -> Response {
    json_reply(state.repository.config(model, version).and_then(|c| describe::to_json(&c, "inference.ModelConfig")))
}

async fn model_config(Shared(state): Shared<AppState>, Path(model): Path<String>) -> Response {
    config(&state, &model, "")
}

async fn version_config(Shared(state): Shared<AppState>, Path((model, version)): Path<(String, String)>) -> Response {
    config(&state, &model, &version)
}

fn stats(state: &State, model: &str, version: &str) -> Response {
    json_reply(describe::statistics_json(&state.repository, model, version))
}

async fn all_stats(Shared(state): Shared<AppState>) -> Response {
    stats(&state, "", "")
}

async fn model_stats(Shared(state): Shared<AppState>, Path(model): Path<String>) -> Response {
    stats(&state, &model, "")
}

async fn version_stats(Shared(state): Shared<AppState>, Path((model, version)): Path<(String, String)>) -> Response {
    stats(&state, &model, &version)
}

/// Reads a whole body within --max-message-bytes.
async fn read_body(state: &State, body: Body) -> Result<bytes::Bytes> {
    let read_timeout = Duration::from_secs(state.config.request_read_timeout_secs);
    limits::read_body(body, state.config.max_message_bytes, read_timeout).await
}

async fn infer(state: AppState, model: String, version: String, headers: HeaderMap, body: Body) -> Result<Response> {
    let mut span = RequestSpan::start("http", || Incoming::from_headers(&headers));
    let result = answer(&state, &model, &version, &headers, body, span.as_mut()).await;
    if let Some(span) = span {
        span.finish(result.as_ref().map(|(response, _)| response));
    }
    let (response, encoding) = result?;
    let encoded = codec::encode(&response, &encoding);
    let mut reply = Response::new(Body::from(encoded.body));
    let headers = reply.headers_mut();
    match encoded.header_length {
        Some(length) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(reply)
}

/// Reads the body, checks that the model can serve, and decodes the request.
async fn prepare(
    state: &State,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<(crate::infer::InferRequest, codec::OutputEncoding)> {
    // The client's clock started before it sent the body.
    let deadline = limits::deadline(headers, started)?;
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| Error::invalid("Inference-Header-Content-Length must be a non-negative integer"))?,
        ),
    };
    let body = read_body(state, body).await?;
    // An unknown model is 404 whatever its body holds, as in Triton.
    state.repository.get(model, version)?;
    let (mut request, encoding) = codec::decode(model, version, body, header_length)?;
    request.deadline = deadline;
    Ok((request, encoding))
}

/// Reads, decodes and runs one request; `span` is its server span, when traced.
async fn answer(
    state: &State,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
    span: Option<&mut RequestSpan>,
) -> Result<(InferResponse, codec::OutputEncoding)> {
    let started = Instant::now();
    let (mut request, encoding) = match prepare(state, model, version, headers, body, started).await {
        Ok(prepared) => prepared,
        Err(e) => {
            // Answered before the repository saw it: counted here.
            state.repository.count_refused(model, e.code(), started, false);
            return Err(e);
        }
    };
    let response = match span {
        Some(span) => {
            span.attach(&mut request);
            state.repository.infer(request).instrument(span.log_scope()).await?
        }
        None => state.repository.infer(request).await?,
    };
    Ok((response, encoding))
}

async fn model_infer(
    Shared(state): Shared<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut response = infer(state, model, String::new(), headers, body).await.unwrap_or_else(error_response);
    response.extensions_mut().insert(Counted);
    response
}

async fn version_infer(
    Shared(state): Shared<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut response = infer(state, model, version, headers, body).await.unwrap_or_else(error_response);
    response.extensions_mut().insert(Counted);
    response
}

/// Optional JSON body of a repository call, `{}` when empty.
async fn optional_json(state: &State, body: Body) -> Result<Value> {
    let bytes = read_body(state, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| codec::malformed_json("JSON body", &e))
}

async fn repository_index(Shared(state): Shared<AppState>, body: Body) -> Response {
    let result = async {
        let request = optional_json(&state, body).await?;
        let ready = request.get("ready").and_then(Value::as_bool).unwrap_or(false);
        let index = describe::repository_index(&state.repository, ready);
        // The REST form is a bare array of the index entries.
        let mut value = describe::to_json(&index, "inference.RepositoryIndexResponse")?;
        Ok(value.get_mut("models").map(Value::take).unwrap_or_else(|| json!([])))
    }
    .await;
    json_reply(result)
}

async fn load(
    Shared(state): Shared<AppState>,
    Path(model): Path<String>,
    extensions: axum::http::Extensions,
    body: Body,
) -> Response {
    let result = async {
        let request = optional_json(&state, body).await?;
        grpc::explicit_mode(state.config.model_control_mode)?;
        let mut config = None;
        for (key, value) in request.get("parameters").and_then(Value::as_object).into_iter().flatten() {
            match value.as_str() {
                Some(json) if key == "config" => config = Some(json.to_string()),
                _ => return Err(grpc::load_parameter_refused(key)),
            }
        }
        state.repository.load_with(&model, config).await
    }
    .await;
    audit::record("load", &model, &extensions, result.as_ref().map(|_| ()));
    // KServe's model repository extension answers {"name", "load": true}.
    json_reply(result.map(|()| json!({ "name": model, "load": true })))
}

async fn unload(
    Shared(state): Shared<AppState>,
    Path(model): Path<String>,
    extensions: axum::http::Extensions,
    body: Body,
) -> Response {
    let result = async {
        optional_json(&state, body).await?;
        grpc::explicit_mode(state.config.model_control_mode)?;
        state.repository.unload(&model).await
    }
    .await;
    audit::record("unload", &model, &extensions, result.as_ref().map(|_| ()));
    json_reply(result.map(|()| json!({ "name": model, "unload": true })))
}

#[cfg(test)]
mod tests {
    use super::inference_model;

    #[test]
    fn inference_paths_name_their_model() {
        assert_eq!(inference_model("/v2/models/mlp/infer"), Some("mlp"));
        assert_eq!(inference_model("/v2/models/mlp/versions/2/infer"), Some("mlp"));
        for other in ["/v2/models/mlp", "/v2/models//infer", "/v2/models/a/b/infer", "/v2/models/m/versions/1/x/infer"]
        {
            assert_eq!(inference_model(other), None, "{other}");
        }
    }
}
