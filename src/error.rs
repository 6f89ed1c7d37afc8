//! The one error type of the request path. Each transport maps it once
//! (api/status.rs) to a gRPC code and an HTTP status.

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
    /// The model exists but cannot serve now (not ready, shutting down).
    #[error("{0}")]
    Unavailable(String),
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
    /// Too much work: a full queue. Retrying later may succeed.
    #[error("{0}")]
    Overloaded(String),
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

impl Error {
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
            Error::Unavailable(_) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::RequestTimeout(_) => "request_timeout",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::Overloaded(_) => "overloaded",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::Unimplemented(_) => "unimplemented",
            Error::Internal(_) => "internal",
        }
    }
}
