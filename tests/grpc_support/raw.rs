//! gRPC at the HTTP/2 level, with a raw h2 client: calls whose framing,
//! compression and metadata the test controls byte by byte (and that run
//! over any stream, TLS among them).

use super::check_mlp_response;
use bytes::Bytes;
use ferroserve::pb;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type Client = h2::client::SendRequest<Bytes>;

pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A message with gRPC's length prefix, uncompressed.
pub fn framed(message: &impl Message) -> Bytes {
    prefixed(0, &message.encode_to_vec())
}

/// `payload` behind the prefix, with the compressed `flag`.
pub fn prefixed(flag: u8, payload: &[u8]) -> Bytes {
    let mut frame = vec![flag];
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
}

/// An HTTP/2 connection over `io`, driven by a task of its own.
pub async fn over<T>(io: T) -> Result<Client, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await
}

/// A plaintext connection to `address`, and the task driving it (abort it
/// to drop the connection).
pub async fn connect(address: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(address).await.expect("the gRPC port accepts");
    let (client, connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client.ready().await.expect("the connection is ready"), driver)
}

/// The request head of a call to `path`, with extra metadata.
pub fn head(path: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

/// What came back: the grpc-status and grpc-message (trailers, or the
/// headers of a trailers-only answer), the response headers, and the
/// messages' bytes.
pub struct Answer {
    pub status: String,
    pub message: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The length-prefixed messages in the body.
    pub fn messages(&self) -> Vec<(u8, &[u8])> {
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
    #[track_caller]
    pub fn expect_one_mlp_answer(&self, what: &str) {
        assert_eq!(self.status, "0", "{what}: status {} {}", self.status, self.message);
        let messages = self.messages();
        assert_eq!(messages.len(), 1, "{what}: {} messages", messages.len());
        assert_eq!(messages[0].0, 0, "{what}: the answer is compressed");
        let response = pb::ModelInferResponse::decode(messages[0].1).expect("a ModelInferResponse");
        check_mlp_response(&response, 1);
    }
}

/// Reads a whole answer; Err names what failed on the wire.
pub async fn try_answer(response: h2::client::ResponseFuture) -> Result<Answer, String> {
    let response = response.await.map_err(|e| format!("answer: {e}"))?;
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| format!("body: {e}"))?;
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    let trailers = body.trailers().await.map_err(|e| format!("trailers: {e}"))?;
    let source = trailers.as_ref().unwrap_or(&parts.headers);
    let field = |name: &str| source.get(name).map(|v| v.to_str().unwrap().to_string());
    Ok(Answer {
        status: field("grpc-status").unwrap_or_else(|| "none".into()),
        message: field("grpc-message").unwrap_or_default(),
        headers: parts.headers,
        body: bytes,
    })
}

pub async fn answer(response: h2::client::ResponseFuture) -> Answer {
    try_answer(response).await.expect("an answer")
}

/// Sends `chunks` as DATA frames, the last one ending the stream; Err names
/// what failed on the wire.
pub async fn try_call(client: &mut Client, request: http::Request<()>, chunks: &[Bytes]) -> Result<Answer, String> {
    let mut ready = client.clone().ready().await.map_err(|e| format!("connection: {e}"))?;
    let (response, mut stream) = ready.send_request(request, chunks.is_empty()).map_err(|e| format!("stream: {e}"))?;
    for (i, chunk) in chunks.iter().enumerate() {
        stream.send_data(chunk.clone(), i + 1 == chunks.len()).map_err(|e| format!("sending: {e}"))?;
    }
    try_answer(response).await
}

pub async fn call(client: &mut Client, request: http::Request<()>, chunks: &[Bytes]) -> Answer {
    try_call(client, request, chunks).await.expect("a call")
}
