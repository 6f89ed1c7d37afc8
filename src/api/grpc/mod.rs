//! The gRPC front on --grpc-port: inference.GRPCInferenceService,
//! grpc.health.v1.Health (whole server and per model) and server reflection
//! (v1 and v1alpha) so grpcurl and ghz work without a .proto.

mod contents;
mod early;
mod health;
mod service;
mod unary;

use crate::api::grpc_status;
use crate::api::listen::{self, Limits, Protocol};
use crate::error::Error;
use crate::pb;
use crate::security::auth::{Denial, Guard};
use crate::security::groups::Port;
use crate::server::State;
use crate::shutdown::Phases;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tower::util::MapResponse;

pub use health::HealthService;
pub use service::{check_repository_name, decode_request, encode_response, explicit_mode, load_parameter_refused};

/// tonic's own answers to a message it cannot take, and the protocol's code
/// for each: a message over the decoding limit is OUT_OF_RANGE in tonic and
/// RESOURCE_EXHAUSTED here; bytes that are not a valid protobuf message are
/// INTERNAL in tonic, but the fault is the client's: INVALID_ARGUMENT.
const CODEC_REFUSALS: &[(tonic::Code, &str, tonic::Code)] = &[
    (tonic::Code::OutOfRange, "message length too large", tonic::Code::ResourceExhausted),
    (tonic::Code::Internal, "failed to decode Protobuf message", tonic::Code::InvalidArgument),
];

/// The code a client should hear for a status tonic's codec produced.
pub(crate) fn codec_refusal_code(code: tonic::Code, message: &str) -> Option<tonic::Code> {
    CODEC_REFUSALS.iter().find(|(from, text, _)| *from == code && message.contains(text)).map(|&(_, _, to)| to)
}

/// Applies `codec_refusal_code` to a unary refusal: it is a trailers-only
/// response, so its status sits in the headers (message percent-encoded).
fn codec_refusals_as_protocol_codes<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").and_then(|s| s.to_str().ok()?.parse::<i32>().ok()).map(tonic::Code::from);
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).map(|m| m.replace("%20", " "));
    if let (Some(code), Some(message)) = (code, message)
        && let Some(to) = codec_refusal_code(code, &message)
    {
        headers.insert("grpc-status", tonic::codegen::http::HeaderValue::from(to as i32));
    }
    response
}

/// The descriptors of every service the gRPC port serves: the inference
/// API and health (which reflection describes) and reflection itself. The
/// auth layer's table (security/groups.rs) must give each method a group;
/// its tests enumerate these.
pub const SERVED_DESCRIPTOR_SETS: [&[u8]; 4] = [
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Every gRPC service, routed by path. Served by api/listen.rs rather than
/// tonic::transport::Server, whose timeout layer answers an expired
/// `grpc-timeout` CANCELLED: the deadline is ours to enforce
/// (service.rs `grpc_deadline`), answered DEADLINE_EXCEEDED.
pub fn routes(state: Arc<State>) -> tonic::service::Routes {
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

/// What the gRPC port serves: ModelInfer by unary.rs, everything else by
/// tonic's routes, with tonic's codec refusals in the protocol's codes.
pub type Service = unary::Front<MapResponse<tonic::service::Routes, Answer>>;
type Answer =
    fn(tonic::codegen::http::Response<tonic::body::Body>) -> tonic::codegen::http::Response<tonic::body::Body>;

pub fn service(state: Arc<State>) -> Service {
    let routes = MapResponse::new(routes(state.clone()), codec_refusals_as_protocol_codes as Answer);
    unary::Front::new(state, routes)
}

/// Serves until `shutdown` fires, then stops accepting and lets in-flight
/// calls finish.
pub async fn serve(listener: TcpListener, state: Arc<State>, phases: Phases) {
    let limits = Limits::from(&state.config);
    let tls = state.security.tls(Port::Grpc);
    let guarded = Guard::new(state.security.auth.clone(), Port::Grpc, refuse, service(state));
    listen::serve(listener, guarded, Protocol::Http2, limits, tls, phases).await;
}

/// A call the auth layer refused, as a trailers-only gRPC answer.
pub fn refuse(denial: Denial) -> tonic::codegen::http::Response<tonic::body::Body> {
    let error = match denial {
        Denial::NoRoute(path) => Error::Unimplemented(format!("no such method: {path}")),
        Denial::Unauthenticated { message, .. } => Error::Unauthenticated(message),
        Denial::PermissionDenied(message) => Error::PermissionDenied(message),
    };
    grpc_status(error).into_http()
}
