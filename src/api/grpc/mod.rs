//! The gRPC front on --grpc-port: inference.GRPCInferenceService,
//! grpc.health.v1.Health (whole server and per model) and server reflection
//! (v1 and v1alpha) so grpcurl and ghz work without a .proto.

mod contents;
mod health;
mod service;

use crate::api::listen::{self, Limits, Protocol};
use crate::pb;
use crate::server::State;
use crate::shutdown::Shutdown;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tower::Layer;
use tower::util::MapResponseLayer;

pub use health::HealthService;
pub use service::{check_repository_name, decode_request, encode_response, explicit_mode};

/// tonic refuses a message over the decoding limit with OUT_OF_RANGE; the
/// protocol's answer for "too large" is RESOURCE_EXHAUSTED. The refusal is a
/// trailers-only response, so its status sits in the headers.
fn oversized_is_resource_exhausted<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("message%20length%20too%20large") || m.contains("message length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", tonic::codegen::http::HeaderValue::from_static("8"));
    }
    response
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Every gRPC service, routed by path. Served by api/listen.rs rather than
/// tonic::transport::Server, whose timeout layer answers an expired
/// `grpc-timeout` CANCELLED: the deadline is ours to enforce
/// (service.rs `grpc_deadline`), answered DEADLINE_EXCEEDED.
fn routes(state: Arc<State>) -> tonic::service::Routes {
    let limit = state.config.max_message_bytes;
    let inference =
        pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(service::Inference::new(state.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate)
            .send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Deflate);
    let health = tonic_health::pb::health_server::HealthServer::new(HealthService::new(state.repository.clone()));
    let reflection_v1 = reflection().build_v1().expect("the embedded descriptor sets are valid; this is a bug");
    let reflection_v1alpha =
        reflection().build_v1alpha().expect("the embedded descriptor sets are valid; this is a bug");
    tonic::service::Routes::new(inference)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare()
}

/// Serves until `shutdown` fires, then stops accepting and lets in-flight
/// calls finish.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: Shutdown) {
    let limits = Limits::from(&state.config);
    let service = MapResponseLayer::new(oversized_is_resource_exhausted).layer(routes(state));
    listen::serve(listener, service, Protocol::Http2, limits, shutdown).await;
}
