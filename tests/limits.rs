//! Limits and deadlines at the edge, against the real binary: deadlines from
//! grpc-timeout and the HTTP timeout headers are answered DEADLINE_EXCEEDED /
//! 504 while the model still runs, oversized HTTP/1 heads get 431, stalled
//! bodies 408, slow or silent connections are closed, and the HTTP/2
//! settings follow the flags.

mod common;
mod grpc_support;

use common::{Server, test_models};
use ferroserve::pb;
use grpc_support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tonic::Code;

/// How long any answer below may take; far above every timeout used.
const BOUND: Duration = Duration::from_secs(10);

/// Loop iterations that keep the `slow` model busy for about a minute (1 µs
/// each), far beyond every deadline and bound below.
const FOREVER: i64 = 60_000_000;

/// A repository holding only tests/models/slow (one instance, no batching).
fn slow_repository() -> tempfile::TempDir {
    common::temp_repository(&[(&test_models(), "slow")])
}

fn slow_json(spin: i64) -> Value {
    json!({ "inputs": [
        { "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2.5] },
        { "name": "spin", "shape": [1], "datatype": "INT64", "data": [spin] },
    ] })
}

// ------------------------------------------------------------------ deadlines

/// A gRPC client without tonic's client-side timeout layer, which would
/// answer CANCELLED itself when grpc-timeout passes: this one leaves the
/// deadline to the server, so what it hears is the server's answer.
fn plain_grpc_client(
    server: &Server,
) -> pb::grpc_inference_service_client::GrpcInferenceServiceClient<
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>,
> {
    let http2 =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let origin = format!("http://{}", server.grpc).parse().unwrap();
    pb::grpc_inference_service_client::GrpcInferenceServiceClient::with_origin(http2, origin)
}

#[tokio::test]
async fn grpc_timeout_is_answered_deadline_exceeded_while_the_model_runs() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &[]);
    let mut client = plain_grpc_client(&server);
    let mut request = tonic::Request::new(slow_request(FOREVER, 1.0));
    request.metadata_mut().insert("grpc-timeout", "300m".parse().unwrap());
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND, client.model_infer(request)).await.expect("never answered");
    let elapsed = started.elapsed();
    expect_error(result, Code::DeadlineExceeded, &["deadline"]);
    // The deadline is the timeout exactly (no margin), counted from when the
    // server received the call, which is after the client sent it.
    assert!(elapsed >= Duration::from_millis(300), "answered after {elapsed:?}, before the 300 ms timeout");
    assert!(elapsed < BOUND / 2, "answered after {elapsed:?}");
}

/// Posts `body` to the slow model's infer route with extra headers; returns
/// the status, the JSON answer and how long it took.
async fn post_slow(server: &Server, headers: &[(&str, &str)], body: &Value) -> (u16, Value, Duration) {
    let mut request = reqwest::Client::new().post(server.http_url("/v2/models/slow/infer")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = tokio::time::timeout(BOUND, request.send()).await.expect("never answered").unwrap();
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json, started.elapsed())
}

#[tokio::test]
async fn http_timeout_headers_set_the_deadline() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &[]);
    for header in ["X-Request-Timeout-Ms", "x-envoy-expected-rq-timeout-ms"] {
        let (status, json, elapsed) = post_slow(&server, &[(header, "300")], &slow_json(FOREVER)).await;
        assert_eq!(status, 504, "{header}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| e.contains("deadline")), "{header}: {json}");
        assert!(elapsed >= Duration::from_millis(300), "{header}: answered after {elapsed:?}");
        assert!(elapsed < BOUND / 2, "{header}: answered after {elapsed:?}");
    }
    // The first header wins: a long X-Request-Timeout-Ms beats a short Envoy
    // one (the request waits for the busy instance until its own deadline).
    let both = [("X-Request-Timeout-Ms", "1500"), ("x-envoy-expected-rq-timeout-ms", "1")];
    let (status, json, elapsed) = post_slow(&server, &both, &slow_json(0)).await;
    assert_eq!(status, 504, "{json}");
    assert!(elapsed >= Duration::from_millis(1500), "answered after {elapsed:?}: the Envoy header won");
}

#[tokio::test]
async fn a_malformed_timeout_header_is_a_400_naming_it() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &[]);
    for (header, value) in
        [("X-Request-Timeout-Ms", "soon"), ("X-Request-Timeout-Ms", "0"), ("x-envoy-expected-rq-timeout-ms", "-1")]
    {
        let (status, json, _) = post_slow(&server, &[(header, value)], &slow_json(0)).await;
        assert_eq!(status, 400, "{header}: {value}: {json}");
        let error = json["error"].as_str().unwrap_or_default();
        assert!(error.contains(header), "{header}: {value}: {error:?} does not name the header");
    }
    // Without the header the same request runs.
    let (status, json, _) = post_slow(&server, &[], &slow_json(0)).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["outputs"][0]["data"], json!([3.5]));
}

// ------------------------------------------------------------- raw HTTP/1 I/O

/// What came back on a raw connection before it closed or BOUND passed.
struct Raw {
    bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset).
    closed: bool,
    elapsed: Duration,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if one came.
    fn status(&self) -> Option<u16> {
        self.text().strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

/// Sends `data` on a fresh connection to `address` (write errors ignored: the
/// server may stop reading early) and reads until the server closes or a
/// whole response with a Content-Length has come, for at most BOUND.
fn exchange(address: &str, data: &[u8]) -> Raw {
    // Before connecting: the server's clocks for this connection start later.
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    let _ = stream.write_all(data);
    let mut bytes = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 4096];
    while let Some(left) = BOUND.checked_sub(started.elapsed()).filter(|left| !left.is_zero()) {
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if response_complete(&bytes) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Raw { bytes, closed, elapsed: started.elapsed() }
}

fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|length| body.len() >= length)
}

#[test]
fn an_http1_head_over_max_header_bytes_gets_431() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &["--max-header-bytes", "16384"]);
    let request = |filler: usize| {
        format!("GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Filler: {}\r\n\r\n", "a".repeat(filler)).into_bytes()
    };
    // Under the flag's limit (and above hyper's 8 KiB minimum): served.
    let fits = exchange(&server.http, &request(12_000));
    assert_eq!(fits.status(), Some(200), "{}", fits.text());
    let over = exchange(&server.http, &request(20_000));
    assert_eq!(over.status(), Some(431), "{}", over.text());
}

#[test]
fn a_stalled_body_gets_408_naming_the_timeout() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &["--request-read-timeout-secs", "1"]);
    let head = "POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n";
    let raw = exchange(&server.http, format!("{head}{{\"inputs\":").as_bytes());
    assert_eq!(raw.status(), Some(408), "{}", raw.text());
    assert!(raw.text().contains("--request-read-timeout-secs"), "{}", raw.text());
    assert!(raw.elapsed >= Duration::from_secs(1), "answered after {:?}", raw.elapsed);
}

#[test]
fn slow_or_silent_connections_are_closed_after_the_read_timeout() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &["--request-read-timeout-secs", "1"]);
    let cases = [
        // Slowloris: a request head that never ends.
        ("unfinished head", server.http.as_str(), &b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-A: 1\r\n"[..]),
        // Silent sockets, before hyper knows the protocol.
        ("silent HTTP", server.http.as_str(), &b""[..]),
        ("silent gRPC", server.grpc.as_str(), &b""[..]),
        ("part of the HTTP/2 preface", server.grpc.as_str(), &b"PRI * HTTP/2.0"[..]),
    ];
    for (case, address, data) in cases {
        let raw = exchange(address, data);
        assert!(raw.closed, "{case}: still open after {:?}", raw.elapsed);
        assert!(raw.elapsed >= Duration::from_secs(1), "{case}: closed after {:?}", raw.elapsed);
        assert!(raw.status().is_none_or(|s| s >= 400), "{case}: {}", raw.text());
    }
    // A live connection is unaffected.
    let live = exchange(&server.http, b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(live.status(), Some(200), "{}", live.text());
}

// -------------------------------------------------------------------- HTTP/2

/// The SETTINGS a server sends first on an HTTP/2 connection (prior
/// knowledge), as (identifier, value) pairs.
fn http2_settings(address: &str) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).expect("an HTTP/2 frame header");
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).expect("an HTTP/2 frame payload");
        let (kind, flags) = (header[3], header[4]);
        if kind == 4 && flags & 1 == 0 {
            return payload
                .chunks_exact(6)
                .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
                .collect();
        }
    }
}

#[test]
fn both_fronts_advertise_the_http2_limits() {
    let repo = slow_repository();
    let server = Server::start(repo.path(), &["--http2-max-concurrent-streams", "7", "--max-header-bytes", "20000"]);
    const MAX_CONCURRENT_STREAMS: u16 = 3;
    const INITIAL_WINDOW_SIZE: u16 = 4;
    const MAX_HEADER_LIST_SIZE: u16 = 6;
    for (front, address) in [("gRPC", &server.grpc), ("HTTP", &server.http)] {
        let settings = http2_settings(address);
        let get = |id| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
        assert_eq!(get(MAX_CONCURRENT_STREAMS), Some(7), "{front}: {settings:?}");
        assert_eq!(get(MAX_HEADER_LIST_SIZE), Some(20000), "{front}: {settings:?}");
        assert_eq!(get(INITIAL_WINDOW_SIZE), Some(1 << 20), "{front}: {settings:?}");
    }
}

#[tokio::test]
async fn more_grpc_calls_than_the_stream_limit_queue_in_the_client_and_all_succeed() {
    let repo = slow_repository();
    // Admission off: eight calls of ~100 ms each are more than the default
    // 25 ms SLO admits, and this test is about the stream limit.
    let server = Server::start(repo.path(), &["--http2-max-concurrent-streams", "2", "--slo-admission", "false"]);
    let client = server.grpc_client().await;
    // One call first, so the client has the server's SETTINGS before the rest.
    let mut first = client.clone();
    first.server_live(pb::ServerLiveRequest {}).await.unwrap();
    // 8 calls on the one connection, each running the model for a while.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { (i, client.model_infer(slow_request(100_000, i as f32)).await) })
        })
        .collect();
    // At most 2 calls are in the server at once: one runs, at most two wait
    // (one between the instance finishing and taking the next).
    let mut deepest = 0.0f64;
    let started = Instant::now();
    while !calls.iter().all(|c| c.is_finished()) && started.elapsed() < BOUND {
        deepest = deepest.max(queue_depth(&server, "slow").await.unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for call in calls {
        let (i, result) = tokio::time::timeout(BOUND, call).await.expect("never answered").unwrap();
        let response = result.unwrap_or_else(|status| panic!("call {i}: {status:?}"));
        assert_eq!(f32_values(output(&response.into_inner(), "y").2), vec![i as f32 + 1.0], "call {i}");
    }
    assert!(deepest <= 2.0, "{deepest} calls waited at once with 2 streams allowed");
}
