//! What the HTTP front enforces on a request itself: the body read (size
//! limit and stall timeout, told apart) and the client's deadline headers.

use crate::error::{Error, Result};
use axum::body::Body;
use axum::http::HeaderMap;
use std::error::Error as StdError;
use std::time::{Duration, Instant};

/// Deadline headers in the order they are honoured: ours, then Envoy's (set
/// by Envoy and Istio to the route's timeout). (lookup name, name in errors)
const DEADLINE_HEADERS: [(&str, &str); 2] = [
    ("x-request-timeout-ms", "X-Request-Timeout-Ms"),
    ("x-envoy-expected-rq-timeout-ms", "x-envoy-expected-rq-timeout-ms"),
];

/// The deadline a request's headers set, from `now`: a positive integer of
/// milliseconds, the first header present wins. It is enforced like
/// grpc-timeout (answered DEADLINE_EXCEEDED, 504).
pub fn deadline(headers: &HeaderMap, now: Instant) -> Result<Option<Instant>> {
    let Some((value, name)) = DEADLINE_HEADERS.iter().find_map(|(key, name)| Some((headers.get(*key)?, name))) else {
        return Ok(None);
    };
    let millis = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .ok_or_else(|| Error::invalid(format!("header {name} must be a positive integer (milliseconds)")))?;
    Ok(now.checked_add(Duration::from_millis(millis)))
}

/// Most pieces (HTTP/1 chunks, HTTP/2 DATA frames) one body may come in:
/// a body of a million one-byte chunks costs the server per piece, so it is
/// refused long before. 64 MiB in 1 KiB pieces still passes.
pub const MAX_BODY_PIECES: usize = 1 << 16;

/// Reads a whole body within `limit` bytes and `MAX_BODY_PIECES` pieces.
/// The router's body timeout (--request-read-timeout-secs) cuts a body that
/// stalls.
pub async fn read_body(body: Body, limit: usize, read_timeout: Duration) -> Result<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut gathered = crate::api::gather::Gathered::default();
    let (mut pieces, mut length) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(e.into_inner(), read_timeout))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers
        pieces += 1;
        length += data.len();
        if pieces > MAX_BODY_PIECES {
            return Err(Error::ResourceExhausted(format!(
                "the request body came in more than {MAX_BODY_PIECES} pieces (HTTP chunks or HTTP/2 DATA frames)"
            )));
        }
        if length > limit {
            return Err(Error::ResourceExhausted(format!("request body over the {limit}-byte limit")));
        }
        gathered.push(data);
    }
    Ok(gathered.finish())
}

fn body_error(error: Box<dyn StdError + Send + Sync>, read_timeout: Duration) -> Error {
    if caused_by::<tower_http::timeout::TimeoutError>(&*error) {
        Error::RequestTimeout(format!(
            "the request body stalled: no data for {} s (--request-read-timeout-secs)",
            read_timeout.as_secs()
        ))
    } else {
        Error::invalid(format!("cannot read the request body: {error}"))
    }
}

/// Whether `error` or anything in its chain of sources is an `E`. An
/// io::Error hides its payload from `source()` (body layers may wrap errors
/// in one), so its payload is searched too.
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
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn the_first_deadline_header_wins() {
        let now = Instant::now();
        assert_eq!(deadline(&headers(&[]), now), Ok(None));
        let ours = headers(&[("X-Request-Timeout-Ms", "250"), ("x-envoy-expected-rq-timeout-ms", "9000")]);
        assert_eq!(deadline(&ours, now), Ok(Some(now + Duration::from_millis(250))));
        let envoy = headers(&[("x-envoy-expected-rq-timeout-ms", " 9000 ")]);
        assert_eq!(deadline(&envoy, now), Ok(Some(now + Duration::from_secs(9))));
    }

    #[test]
    fn a_malformed_deadline_header_is_named() {
        for value in ["0", "-5", "1.5", "soon", ""] {
            let error = deadline(&headers(&[("x-request-timeout-ms", value)]), Instant::now()).unwrap_err();
            assert!(matches!(&error, Error::InvalidArgument(m) if m.contains("X-Request-Timeout-Ms")), "{error:?}");
            // A malformed first header is not skipped for the second.
            let both = headers(&[("x-request-timeout-ms", value), ("x-envoy-expected-rq-timeout-ms", "100")]);
            assert!(deadline(&both, Instant::now()).is_err());
        }
        let error = deadline(&headers(&[("x-envoy-expected-rq-timeout-ms", "x")]), Instant::now()).unwrap_err();
        assert!(error.to_string().contains("x-envoy-expected-rq-timeout-ms"), "{error}");
    }

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
