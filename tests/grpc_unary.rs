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
use grpc_support::mlp_request;
use grpc_support::raw::{self, Client, MODEL_INFER, answer, call, framed};
use prost::Message;

fn head(_server: &Server, extra: &[(&str, &str)]) -> http::Request<()> {
    raw::head(MODEL_INFER, extra)
}

async fn connect(server: &Server) -> (Client, tokio::task::JoinHandle<()>) {
    raw::connect(&server.grpc).await
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
    // A gzip request is answered in kind.
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
