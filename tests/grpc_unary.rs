//! The gRPC port's unary ModelInfer exchange at the HTTP/2 level, with a
//! raw h2 client: a call cut off at any point (reset, a message ended
//! early, a dropped connection) leaves the server serving; every call that
//! completes is answered with exactly one message and status OK, or with an
//! error status and no message, never OK without a message (perf_analyzer's
//! "No message returned for unary request"); and an answer is compressed
//! only when the request was.

mod common;
mod grpc_support;

use bytes::Bytes;
use common::{Server, shipped_models};
use ferroserve::pb;
use grpc_support::{check_mlp_response, mlp_request};
use prost::Message;
use tokio::net::TcpStream;

type Client = h2::client::SendRequest<Bytes>;

fn framed(message: &impl Message) -> Bytes {
    let message = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    frame.into()
}

async fn connect(server: &Server) -> (Client, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(&server.grpc).await.expect("the gRPC port accepts");
    let (client, connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client.ready().await.expect("the connection is ready"), driver)
}

fn head(server: &Server, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://{}/inference.GRPCInferenceService/ModelInfer", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

/// What came back: the grpc-status (trailers, or the headers of a
/// trailers-only answer), the response headers, and the messages' bytes.
struct Answer {
    status: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// The length-prefixed messages in the body.
    fn messages(&self) -> Vec<(u8, &[u8])> {
        let mut messages = Vec::new();
        let mut rest = &self.body[..];
        while !rest.is_empty() {
            assert!(rest.len() >= 5, "a partial message prefix: {rest:?}");
            let length = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            assert!(rest.len() >= 5 + length, "a partial message");
            messages.push((rest[0], &rest[5..5 + length]));
            rest = &rest[5 + length..];
        }
        messages
    }

    /// Status OK and exactly one uncompressed message: a valid mlp answer.
    fn expect_one_mlp_answer(&self, what: &str) {
        assert_eq!(self.status, "0", "{what}: status {}", self.status);
        let messages = self.messages();
        assert_eq!(messages.len(), 1, "{what}: {} messages", messages.len());
        assert_eq!(messages[0].0, 0, "{what}: the answer is compressed");
        let response = pb::ModelInferResponse::decode(messages[0].1).expect("a ModelInferResponse");
        check_mlp_response(&response, 1);
    }
}

async fn answer(response: h2::client::ResponseFuture) -> Answer {
    let response = response.await.expect("an answer");
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.expect("the body");
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    let trailers = body.trailers().await.expect("the trailers");
    let status = trailers.as_ref().or(Some(&parts.headers)).and_then(|t| t.get("grpc-status"));
    let status = status.map(|s| s.to_str().unwrap().to_string()).unwrap_or_else(|| "none".into());
    Answer { status, headers: parts.headers, body: bytes }
}

/// Sends `chunks` as DATA frames, the last one ending the stream.
async fn call(client: &mut Client, request: http::Request<()>, chunks: &[Bytes]) -> Answer {
    let (response, mut stream) = client.send_request(request, false).expect("a stream");
    for (i, chunk) in chunks.iter().enumerate() {
        stream.send_data(chunk.clone(), i + 1 == chunks.len()).expect("sending");
    }
    answer(response).await
}

/// Cut points across the frame: in the prefix, at its end, inside the
/// message and at its last byte.
fn cuts(frame: &Bytes) -> Vec<usize> {
    let len = frame.len();
    let mut cuts = vec![1, 2, 4, 5, 6, len / 3, len / 2, len - 1];
    cuts.dedup();
    cuts
}

#[tokio::test]
async fn a_message_in_any_number_of_pieces_is_answered_with_one_message() {
    let server = Server::start(&shipped_models(), &[]);
    let (mut client, _driver) = connect(&server).await;
    let frame = framed(&mlp_request(1));
    call(&mut client, head(&server, &[]), std::slice::from_ref(&frame)).await.expect_one_mlp_answer("whole");
    for cut in cuts(&frame) {
        let pieces = [frame.slice(..cut), frame.slice(cut..)];
        call(&mut client, head(&server, &[]), &pieces).await.expect_one_mlp_answer(&format!("cut at {cut}"));
    }
    let bytes: Vec<Bytes> = (0..frame.len()).map(|i| frame.slice(i..i + 1)).collect();
    call(&mut client, head(&server, &[]), &bytes).await.expect_one_mlp_answer("a byte per frame");
}

#[tokio::test]
async fn a_call_cut_off_anywhere_leaves_the_connection_and_the_server_serving() {
    let server = Server::start(&shipped_models(), &[]);
    let (mut client, _driver) = connect(&server).await;
    let frame = framed(&mlp_request(1));
    for cut in cuts(&frame) {
        // The client gives up after part of the message: the stream is reset.
        let (response, mut stream) = client.send_request(head(&server, &[]), false).expect("a stream");
        stream.send_data(frame.slice(..cut), false).expect("sending");
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
        // The message ends early: refused, no message, never OK.
        let early = call(&mut client, head(&server, &[]), &[frame.slice(..cut)]).await;
        assert_eq!(early.status, "3", "ended at byte {cut}: INVALID_ARGUMENT, not {}", early.status);
        assert!(early.messages().is_empty(), "ended at byte {cut}: an error carries no message");
        // The same connection serves the next call whole.
        call(&mut client, head(&server, &[]), std::slice::from_ref(&frame))
            .await
            .expect_one_mlp_answer(&format!("after a call cut at {cut}"));
        // A connection dropped mid-message takes nothing else with it.
        let (mut doomed, driver) = connect(&server).await;
        let (_response, mut stream) = doomed.send_request(head(&server, &[]), false).expect("a stream");
        stream.send_data(frame.slice(..cut), false).expect("sending");
        driver.abort();
    }
    // Headers alone, then the end of the stream: no message at all.
    let (response, _stream) = client.send_request(head(&server, &[]), true).expect("a stream");
    let empty = answer(response).await;
    assert_eq!(empty.status, "3");
    assert!(empty.messages().is_empty());
    let (mut fresh, _driver) = connect(&server).await;
    call(&mut fresh, head(&server, &[]), &[frame]).await.expect_one_mlp_answer("a fresh connection");
}

#[tokio::test]
async fn answers_are_compressed_only_when_the_request_is() {
    let server = Server::start(&shipped_models(), &[]);
    let (mut client, _driver) = connect(&server).await;
    // gRPC's C core lists every algorithm it can read on every call.
    let accepts = [("grpc-accept-encoding", "identity, deflate, gzip")];
    let plain = call(&mut client, head(&server, &accepts), &[framed(&mlp_request(1))]).await;
    plain.expect_one_mlp_answer("a plain request that accepts compression");
    assert!(plain.headers.get("grpc-encoding").is_none(), "{:?}", plain.headers);
    // A gzip request is answered in kind (by tonic's codec).
    let message = mlp_request(1).encode_to_vec();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &message).unwrap();
    let compressed = gzip.finish().unwrap();
    let mut frame = vec![1u8];
    frame.extend((compressed.len() as u32).to_be_bytes());
    frame.extend(compressed);
    let headers = [("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")];
    let zipped = call(&mut client, head(&server, &headers), &[frame.into()]).await;
    assert_eq!(zipped.status, "0");
    assert_eq!(zipped.headers.get("grpc-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
    let messages = zipped.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, 1, "flagged compressed");
}
