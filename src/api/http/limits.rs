//! What the HTTP front enforces on a request itself: the body read (size
//! limit and stall timeout, told apart).

use crate::error::{Error, Result};
use axum::body::Body;
use std::error::Error as StdError;
use std::time::Duration;

/// Reads a whole body within `limit` bytes. The router's body timeout
/// (--request-read-timeout-secs) cuts a body that stalls.
pub async fn read_body(body: Body, limit: usize, read_timeout: Duration) -> Result<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let error = e.into_inner();
        if caused_by::<http_body_util::LengthLimitError>(&*error) {
            Error::ResourceExhausted(format!("request body over the {limit}-byte limit"))
        } else if caused_by::<tower_http::timeout::TimeoutError>(&*error) {
            Error::RequestTimeout(format!(
                "the request body stalled: no data for {} s (--request-read-timeout-secs)",
                read_timeout.as_secs()
            ))
        } else {
            Error::invalid(format!("cannot read the request body: {error}"))
        }
    })
}

/// Whether `error` or anything in its chain of sources is an `E`. An
/// io::Error hides its payload from `source()` (decompression wraps body
/// errors in one), so its payload is searched too.
fn caused_by<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<E>() {
            return true;
        }
        if let Some(payload) = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && caused_by::<E>(payload)
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_found_through_wrappers() {
        let cause = || -> Box<dyn StdError + Send + Sync> { Box::new(std::fmt::Error) };
        let wrapped = axum::Error::new(axum::Error::new(cause()));
        assert!(caused_by::<std::fmt::Error>(&wrapped));
        let in_io = axum::Error::new(std::io::Error::other(axum::Error::new(cause())));
        assert!(caused_by::<std::fmt::Error>(&in_io));
        assert!(!caused_by::<std::fmt::Error>(&axum::Error::new(std::io::Error::other("other"))));
    }
}
