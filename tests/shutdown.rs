//! Graceful shutdown against the real binary: SIGTERM makes the server
//! unready, closes the listeners, answers new work on open connections
//! UNAVAILABLE (HTTP/1: with Connection: close), lets admitted requests
//! finish, answers what is still queued at the deadline UNAVAILABLE, and
//! exits 0 in time.

mod common;
mod grpc_support;

use common::{Server, shipped_models, test_models};
use grpc_support::*;
use std::time::{Duration, Instant};
use tonic::Code;

/// A repository with one slow_batch copy named "slow" (one instance).
fn slow_batching_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join("slow");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(test_models().join("slow_batch/1/model.onnx"), dir.join("1/model.onnx")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), "max_batch_size: 4\ndynamic_batching { }\n").unwrap();
    repo
}

/// Keeps the instance of "slow" busy for longer than any test waits (the
/// server exits under it), queues one request behind it and returns once
/// it waits in the queue.
async fn queue_one(
    server: &Server,
    client: &common::GrpcClient,
) -> tokio::task::JoinHandle<Result<tonic::Response<ferroserve::pb::ModelInferResponse>, tonic::Status>> {
    drop(occupy_instance(server, client, "slow", 60_000_000).await);
    let mut waiting = client.clone();
    let call = tokio::spawn(async move { waiting.model_infer(slow_batch_request("slow", &[0], 1.0)).await });
    wait_for_queue_depth(server, "slow", 1.0).await;
    call
}

#[tokio::test]
async fn sigterm_answers_queued_requests_unavailable_and_exits_zero_in_time() {
    let repo = slow_batching_repository();
    let server = Server::start(repo.path(), &["--exit-timeout-secs", "3"]);
    let mut client = server.grpc_client().await;
    let call = queue_one(&server, &client).await;

    let signalled = Instant::now();
    let pid = server.pid();
    let exit = tokio::task::spawn_blocking(move || server.terminate());
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await.expect("answered").unwrap();
    expect_error(answer, Code::Unavailable, &["shutting down"]);
    let status = tokio::time::timeout(Duration::from_secs(10), exit).await.expect("exited").unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "ferroserve {pid} exited with {status}");
    // The deadline, and room for a debug build on a busy machine to tear down.
    assert!(took < Duration::from_secs(3 + 3), "exit took {took:?} with --exit-timeout-secs 3");
    // Nothing listens any more.
    assert!(client.server_live(ferroserve::pb::ServerLiveRequest {}).await.is_err());
}

#[tokio::test]
async fn sigterm_lets_admitted_requests_finish() {
    let server = Server::start(&shipped_models(), &["--exit-timeout-secs", "10"]);
    let client = server.grpc_client().await;
    // Closed-loop clients keep sending until the server goes away.
    let answered: std::sync::Arc<[std::sync::atomic::AtomicU32; 4]> = std::sync::Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let mut client = client.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0u32, 0u32);
                loop {
                    match client.model_infer(mlp_request(2)).await {
                        Ok(response) => {
                            check_mlp_response(&response.into_inner(), 2);
                            ok += 1;
                            answered[worker].store(ok, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Refused while draining, or no server any more (tonic's
                        // client says CANCELLED for a request it had queued on a
                        // connection the server closed, never sent): never a wrong
                        // answer, never a silent loss.
                        Err(status)
                            if status.code() == Code::Unavailable
                                || (status.code() == Code::Cancelled && status.message().contains("canceled")) =>
                        {
                            refused += 1;
                            if refused > 50 {
                                return (ok, refused);
                            }
                        }
                        Err(status) => panic!("unexpected {status:?}"),
                    }
                }
            })
        })
        .collect();
    // SIGTERM once every worker is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.iter().any(|n| n.load(std::sync::atomic::Ordering::Relaxed) == 0) {
        assert!(Instant::now() < deadline, "a worker never got an answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = tokio::task::spawn_blocking(move || server.terminate());
    let status = tokio::time::timeout(Duration::from_secs(15), exit).await.expect("exited").unwrap();
    assert!(status.success(), "exit status {status}");
    for worker in workers {
        // Each ends by itself, with no wrong answer and no unexpected error.
        tokio::time::timeout(Duration::from_secs(30), worker).await.expect("worker ended").unwrap();
    }
}

/// Writes one HTTP/1.1 request on `stream` and reads the answer's head and
/// body (Content-Length), leaving the connection as the server leaves it.
fn http1_exchange(stream: &mut std::net::TcpStream, request: &str) -> String {
    use std::io::{Read, Write};
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("reading the answer");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            if answer.len() >= end + 4 + length {
                return text;
            }
        }
        assert!(n > 0, "the connection closed mid-answer: {:?}", String::from_utf8_lossy(&answer));
    }
}

#[tokio::test]
async fn while_draining_open_connections_are_answered_and_told_to_close() {
    let repo = slow_batching_repository();
    let server = Server::start(repo.path(), &["--exit-timeout-secs", "10"]);
    let mut client = server.grpc_client().await;
    // A queued request keeps the drain going until the deadline.
    let held = queue_one(&server, &client).await;
    let mut kept_alive = std::net::TcpStream::connect(&server.http).unwrap();
    kept_alive.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let live = "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(http1_exchange(&mut kept_alive, live).starts_with("HTTP/1.1 200"));

    let http = server.http.clone();
    let exit = tokio::task::spawn_blocking(move || server.terminate());
    // New connections are refused soon after the signal...
    let refused = Instant::now();
    while std::net::TcpStream::connect(&http).is_ok() {
        assert!(refused.elapsed() < Duration::from_secs(5), "the HTTP listener still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...but the open ones are still answered: new work is refused with a
    // reason, and HTTP/1 is told to close the connection.
    let body = r#"{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[0]},{"name":"spin","shape":[1,1],"datatype":"INT64","data":[0]}]}"#;
    let infer = format!(
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = http1_exchange(&mut kept_alive, &infer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("shutting down"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let refused_call = slow_batch_request("slow", &[0], 2.0);
    expect_error(client.model_infer(refused_call).await, Code::Unavailable, &["shutting down"]);
    // At the deadline the queued request is answered, and the server exits 0.
    expect_error(held.await.unwrap(), Code::Unavailable, &["shutting down"]);
    let status = tokio::time::timeout(Duration::from_secs(10), exit).await.expect("exited").unwrap();
    assert!(status.success(), "exit status {status}");
}
