//! The one place where an `Error` becomes a gRPC code and an HTTP status,
//! and a retry hint.

use crate::error::{Error, Retry};
use axum::http::StatusCode;

fn codes(error: &Error) -> (StatusCode, tonic::Code) {
    match error {
        Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
        Error::NotFound(_) => (StatusCode::NOT_FOUND, tonic::Code::NotFound),
        Error::Unavailable(..) => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
        Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded),
        // Only the HTTP front reads bodies itself; gRPC has no 408, and the
        // nearest code for "took too long" is DEADLINE_EXCEEDED.
        Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, tonic::Code::DeadlineExceeded),
        Error::ResourceExhausted(_) => (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted),
        Error::Overloaded(..) => (StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted),
        Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
        Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
        Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, tonic::Code::Unimplemented),
        Error::Unimplemented(_) => (StatusCode::NOT_IMPLEMENTED, tonic::Code::Unimplemented),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
    }
}

/// Whether and when the client should retry. None leaves it to the
/// client's policy: a deadline that passed or a model failure may or may
/// not recur.
fn retry(error: &Error) -> Option<Retry> {
    match error {
        Error::Overloaded(_, after) => Some(Retry::After(*after)),
        Error::Unavailable(_, retry) => Some(*retry),
        Error::InvalidArgument(_)
        | Error::NotFound(_)
        | Error::ResourceExhausted(_)
        | Error::Unauthenticated(_)
        | Error::PermissionDenied(_)
        | Error::UnsupportedMediaType(_)
        | Error::Unimplemented(_) => Some(Retry::Never),
        Error::DeadlineExceeded(_) | Error::RequestTimeout(_) | Error::Internal(_) => None,
    }
}

/// `grpc-retry-pushback-ms`: milliseconds until a retry may succeed, or -1,
/// which gRPC's retry design (A6) reads as "do not retry", so a client
/// whose policy retries UNAVAILABLE does not resend what must fail again.
fn pushback_ms(retry: Retry) -> i64 {
    match retry {
        Retry::After(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX).max(1),
        Retry::Never => -1,
    }
}

/// HTTP's `Retry-After` (whole seconds, at least 1) for a refusal a retry
/// can cure; None otherwise (HTTP has no "never").
pub fn retry_after_secs(error: &Error) -> Option<u64> {
    match retry(error)? {
        Retry::After(after) => Some(after.as_secs_f64().ceil().max(1.0) as u64),
        Retry::Never => None,
    }
}

pub fn grpc_status(error: Error) -> tonic::Status {
    let (_, code) = codes(&error);
    let retry = retry(&error);
    let mut status = tonic::Status::new(code, error.to_string());
    if let Some(retry) = retry {
        status.metadata_mut().insert("grpc-retry-pushback-ms", pushback_ms(retry).into());
    }
    status
}

pub fn http_status(error: &Error) -> StatusCode {
    codes(error).0
}

/// The outcome code of a gRPC status no `Error` produced (a message the
/// unary front could not read), for counting it.
pub fn code_of_grpc_status(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::DeadlineExceeded => "request_timeout",
        tonic::Code::Internal | tonic::Code::Unknown => "internal",
        _ => "invalid_argument",
    }
}

/// The outcome code of an HTTP error status no `Error` produced (axum's
/// own refusals), for counting it.
pub fn code_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not_found",
        408 => "request_timeout",
        413 => "resource_exhausted",
        415 => "unsupported_media_type",
        429 => "overloaded",
        501 => "unimplemented",
        503 => "unavailable",
        504 => "deadline_exceeded",
        500..=599 => "internal",
        _ => "invalid_argument",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_error_maps_to_matching_codes() {
        let cases = [
            (Error::invalid("x"), 400, tonic::Code::InvalidArgument),
            (Error::not_found("x"), 404, tonic::Code::NotFound),
            (Error::unavailable("x", Duration::from_secs(1)), 503, tonic::Code::Unavailable),
            (Error::DeadlineExceeded("x".into()), 504, tonic::Code::DeadlineExceeded),
            (Error::RequestTimeout("x".into()), 408, tonic::Code::DeadlineExceeded),
            (Error::ResourceExhausted("x".into()), 413, tonic::Code::ResourceExhausted),
            (Error::overloaded("x", Duration::from_millis(100)), 429, tonic::Code::ResourceExhausted),
            (Error::Unauthenticated("x".into()), 401, tonic::Code::Unauthenticated),
            (Error::PermissionDenied("x".into()), 403, tonic::Code::PermissionDenied),
            (Error::internal("x"), 500, tonic::Code::Internal),
        ];
        for (error, http, grpc) in cases {
            assert_eq!(http_status(&error).as_u16(), http);
            assert_eq!(grpc_status(error).code(), grpc);
        }
    }

    fn pushback(error: Error) -> Option<String> {
        grpc_status(error).metadata().get("grpc-retry-pushback-ms").map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn transient_refusals_say_when_to_retry() {
        assert_eq!(pushback(Error::overloaded("busy", Duration::from_millis(250))).as_deref(), Some("250"));
        assert_eq!(pushback(Error::overloaded("busy", Duration::ZERO)).as_deref(), Some("1"));
        assert_eq!(pushback(Error::unavailable("breaker", Duration::from_millis(4200))).as_deref(), Some("4200"));
        assert_eq!(retry_after_secs(&Error::overloaded("busy", Duration::from_millis(250))), Some(1));
        assert_eq!(retry_after_secs(&Error::unavailable("breaker", Duration::from_millis(4200))), Some(5));
    }

    #[test]
    fn refusals_a_retry_cannot_fix_say_do_not_retry() {
        for error in [
            Error::Unavailable("model 'm' is not ready: unloaded".into(), Retry::Never),
            Error::not_found("unknown model 'x'"),
            Error::invalid("bad shape"),
            Error::ResourceExhausted("too large".into()),
        ] {
            assert_eq!(retry_after_secs(&error), None, "{error}");
            assert_eq!(pushback(error).as_deref(), Some("-1"));
        }
        assert_eq!(pushback(Error::internal("model failed")), None);
        assert_eq!(pushback(Error::DeadlineExceeded("late".into())), None);
    }
}
