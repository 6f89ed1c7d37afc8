//! The one place where an `Error` becomes a gRPC code and an HTTP status.

use crate::error::Error;
use axum::http::StatusCode;

fn codes(error: &Error) -> (StatusCode, tonic::Code) {
    match error {
        Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
        Error::NotFound(_) => (StatusCode::NOT_FOUND, tonic::Code::NotFound),
        Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
        Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded),
        // Only the HTTP front reads bodies itself; gRPC has no 408, and the
        // nearest code for "took too long" is DEADLINE_EXCEEDED.
        Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, tonic::Code::DeadlineExceeded),
        Error::ResourceExhausted(_) => (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted),
        Error::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted),
        Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
        Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
        Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, tonic::Code::Unimplemented),
        Error::Unimplemented(_) => (StatusCode::NOT_IMPLEMENTED, tonic::Code::Unimplemented),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
    }
}

/// How long an overloaded client should wait before retrying: gRPC's
/// `grpc-retry-pushback-ms` and HTTP's `Retry-After` (whole seconds, so 1).
pub const RETRY_PUSHBACK_MS: u64 = 100;
pub const RETRY_AFTER_SECS: u64 = 1;

pub fn grpc_status(error: Error) -> tonic::Status {
    let (_, code) = codes(&error);
    let overloaded = matches!(error, Error::Overloaded(_));
    let mut status = tonic::Status::new(code, error.to_string());
    if overloaded {
        status.metadata_mut().insert("grpc-retry-pushback-ms", RETRY_PUSHBACK_MS.into());
    }
    status
}

pub fn http_status(error: &Error) -> StatusCode {
    codes(error).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_matching_codes() {
        let cases = [
            (Error::invalid("x"), 400, tonic::Code::InvalidArgument),
            (Error::not_found("x"), 404, tonic::Code::NotFound),
            (Error::Unavailable("x".into()), 503, tonic::Code::Unavailable),
            (Error::DeadlineExceeded("x".into()), 504, tonic::Code::DeadlineExceeded),
            (Error::RequestTimeout("x".into()), 408, tonic::Code::DeadlineExceeded),
            (Error::ResourceExhausted("x".into()), 413, tonic::Code::ResourceExhausted),
            (Error::Overloaded("x".into()), 429, tonic::Code::ResourceExhausted),
            (Error::Unauthenticated("x".into()), 401, tonic::Code::Unauthenticated),
            (Error::PermissionDenied("x".into()), 403, tonic::Code::PermissionDenied),
            (Error::internal("x"), 500, tonic::Code::Internal),
        ];
        for (error, http, grpc) in cases {
            assert_eq!(http_status(&error).as_u16(), http);
            assert_eq!(grpc_status(error).code(), grpc);
        }
    }

    #[test]
    fn overload_carries_a_retry_pushback() {
        let status = grpc_status(Error::Overloaded("busy".into()));
        assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "100");
        assert!(grpc_status(Error::invalid("x")).metadata().get("grpc-retry-pushback-ms").is_none());
    }
}
