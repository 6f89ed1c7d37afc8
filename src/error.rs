//! The one error type of the request path. Each transport maps it once
//! (api/status.rs) to a gRPC code and an HTTP status.

use std::time::Duration;
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    /// The request is wrong: bad shape, dtype, name, encoding. Never the
    /// server's fault, never counted as a model failure.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown model or version.
    #[error("{0}")]
    NotFound(String),
    /// The model exists but cannot serve now (not ready, shutting down,
    /// its breaker open), and when a retry may succeed.
    #[error("{0}")]
    Unavailable(String, Retry),
    /// The request's deadline passed before it could be computed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The client was too slow sending its request: its body stalled past
    /// --request-read-timeout-secs.
    #[error("{0}")]
    RequestTimeout(String),
    /// A size limit was hit (message or body too large).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Too much work: a full queue, a predicted late answer. Retrying after
    /// about the given time may succeed.
    #[error("{0}")]
    Overloaded(String, Duration),
    /// No credential, or one the server does not know (auth layer).
    #[error("{0}")]
    Unauthenticated(String),
    /// A known credential without the call's API group (auth layer).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request's body or message is in an encoding (compression) the
    /// server does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request is valid but asks for something this server does not do.
    #[error("{0}")]
    Unimplemented(String),
    /// The model or the server failed while handling a valid request.
    #[error("{0}")]
    Internal(String),
}

/// When a refused request may be retried with a chance of success: what
/// `grpc-retry-pushback-ms` and `Retry-After` tell the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// After about this long.
    After(Duration),
    /// Not until something else changes (an operator loads the model, new
    /// files arrive): a retry would fail the same way.
    Never,
}

impl Error {
    /// Unavailable for now: a retry after `after` may succeed.
    pub fn unavailable(message: impl Into<String>, after: Duration) -> Self {
        Error::Unavailable(message.into(), Retry::After(after))
    }

    /// Too much work now: a retry after `after` may succeed.
    pub fn overloaded(message: impl Into<String>, after: Duration) -> Self {
        Error::Overloaded(message.into(), after)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// A short, stable label for metrics (`code` label).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::Unavailable(..) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::RequestTimeout(_) => "request_timeout",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::Overloaded(..) => "overloaded",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::Unimplemented(_) => "unimplemented",
            Error::Internal(_) => "internal",
        }
    }
}
