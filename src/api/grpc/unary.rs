//! The front of the gRPC port: ModelInfer, the call that carries the
//! traffic, answered without tonic's per-call layers (routing, the codec's
//! streaming decoder and encoder, boxed futures per layer); every other call
//! goes to tonic's routes, as does a ModelInfer in an encoding other than
//! gzip or deflate (tonic answers it UNIMPLEMENTED, listing what it takes).
//!
//! The unary exchange is small enough to state whole: the request body is
//! one length-prefixed message (read to its end, as tonic does, so the
//! stream is closed on both sides before the answer), and the answer is the
//! headers, one length-prefixed message and the `grpc-status: 0` trailers;
//! an error is a trailers-only answer, built by tonic's own `Status`.
//!
//! A compressed message is inflated within --max-message-bytes and
//! --max-decompression-ratio (api/inflate.rs), the same bounds as an HTTP
//! body's. Responses are compressed only for a client that compressed its
//! request, with its algorithm:
//! gRPC's C core (perf_analyzer, tritonclient, the KServe SDK) lists every
//! algorithm in `grpc-accept-encoding` on every call, and deflating each
//! answer of a few hundred bytes cost more CPU than the rest of the call.
//! Triton's server, too, answers uncompressed unless told otherwise.
//!
//! A large uncompressed message is tested against admission from its head,
//! as soon as its first bytes are here (early.rs): a refusal goes out
//! before the rest of the body arrives, and the rest is read and dropped
//! by a task of its own until the client ends the stream. Resetting the
//! stream instead (NO_ERROR, RFC 9113 §8.1) would count against h2's limit
//! of locally reset streams per connection, which closes the connection,
//! and every call on it, after 1024: a few seconds of refusals.

use super::early;
use super::service::{grpc_deadline, traced_infer};
use crate::api::gather::Gathered;
use crate::api::grpc_status;
use crate::api::inflate::{self, Codec};
use crate::error::Error;
use crate::pb;
use crate::server::State;
use crate::telemetry::trace::{Incoming, RequestSpan};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::{BoxFuture, Either};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::{Code, Status};

/// The path of the call this front answers itself.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The length-prefixed message framing: a compressed flag and a big-endian
/// length.
const PREFIX: usize = 5;

/// A message at least this long is tested against admission from its head
/// before the rest arrives; a shorter one arrives in one piece anyway.
const EARLY_FROM: usize = 64 << 10;
/// The head is looked for only within this many first bytes.
const HEAD_WITHIN: usize = 4 << 10;
/// How long the rest of a body refused from its head is read at most.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

const ENCODING: &str = "grpc-encoding";
const ACCEPT_ENCODING: &str = "grpc-accept-encoding";

/// The gRPC port's service: ModelInfer here, the rest by `routes`.
#[derive(Clone)]
pub struct Front<S> {
    state: Arc<State>,
    routes: S,
}

impl<S> Front<S> {
    pub fn new(state: Arc<State>, routes: S) -> Self {
        Front { state, routes }
    }
}

impl<S, B> tower::Service<Request<B>> for Front<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.routes.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let compressed = compressed(request.headers());
        if request.uri().path() == MODEL_INFER
            && let Ok(codec) = encoding(request.headers())
        {
            return Either::Left(Box::pin(model_infer(self.state.clone(), request, codec)));
        }
        if !compressed {
            // tonic would compress the answer to anyone who accepts it.
            request.headers_mut().remove(ACCEPT_ENCODING);
        }
        Either::Right(self.routes.call(request))
    }
}

/// Whether the request's messages are compressed (`grpc-encoding` other
/// than identity).
fn compressed(headers: &HeaderMap) -> bool {
    headers.get(ENCODING).is_some_and(|e| e.as_bytes() != b"identity")
}

/// The call's `grpc-encoding`: None for none or identity.
fn encoding(headers: &HeaderMap) -> crate::error::Result<Option<Codec>> {
    headers.get(ENCODING).map_or(Ok(None), |name| Codec::from_name(name.as_bytes()))
}

async fn model_infer<B>(
    state: Arc<State>,
    request: Request<B>,
    codec: Option<Codec>,
) -> Result<Response<tonic::body::Body>, Infallible>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let (parts, body) = request.into_parts();
    let started = Instant::now();
    let limit = state.config.max_message_bytes;
    let deadline = grpc_deadline(&parts.headers);
    // A refusal from the head is counted by the repository, as a whole
    // request's would be.
    let counted = AtomicBool::new(false);
    let refusal = |head: &[u8]| match early::head(head) {
        None => Early::NoHead,
        Some(head) => match state.repository.refusal_now(head.model, head.version, &head.shape, deadline) {
            Some(error) => {
                counted.store(true, Ordering::Relaxed);
                Early::Refused(grpc_status(error))
            }
            None => Early::Admitted,
        },
    };
    let read = read_message(body, limit, codec, refusal).await;
    // Answered before the message names its model: counted under model "".
    let refuse = |error: Error| {
        state.repository.count_refused("", error.code(), started, false);
        Ok(grpc_status(error).into_http())
    };
    let message = match read {
        Ok((message, Some(codec))) => {
            match inflate::inflate(codec, &message, state.config.inflate_bounds(), "request message") {
                Ok(inflated) => Bytes::from(inflated),
                Err(e) => return refuse(e),
            }
        }
        Ok((message, None)) => message,
        // The client went away: nobody hears an answer.
        Err(status) if status.code() == tonic::Code::Cancelled => return Ok(status.into_http()),
        Err(status) if counted.load(Ordering::Relaxed) => return Ok(status.into_http()),
        Err(status) => {
            state.repository.count_refused("", crate::api::code_of_grpc_status(status.code()), started, false);
            return Ok(status.into_http());
        }
    };
    let message = match pb::ModelInferRequest::decode(message) {
        Ok(message) => message,
        Err(e) => return refuse(Error::invalid(format!("failed to decode Protobuf message: {e}"))),
    };
    let span = RequestSpan::start("grpc", || Incoming::from_headers(&parts.headers));
    let answer = match traced_infer(&state.repository, span, message, deadline).await {
        Ok(response) => super::encode_response(response),
        Err(e) => return Ok(grpc_status(e).into_http()),
    };
    Ok(match frame(&answer, limit, codec) {
        Ok(frame) => answered(frame, codec),
        Err(status) => status.into_http(),
    })
}

/// What admission says of a message from its first bytes.
enum Early {
    /// They do not hold its head (yet).
    NoHead,
    Admitted,
    Refused(Status),
}

/// Reads the whole request body and returns its one message, and the codec
/// to inflate it with when it is flagged compressed. The body is read to
/// its end, so a client's END_STREAM has arrived before the answer goes out
/// (an answer ahead of it makes the server reset the stream), except when
/// `refusal`, given the first bytes of a large uncompressed message,
/// refuses it.
async fn read_message<B>(
    body: B,
    limit: usize,
    codec: Option<Codec>,
    mut refusal: impl FnMut(&[u8]) -> Early,
) -> Result<(Bytes, Option<Codec>), Status>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let mut body = Box::pin(body);
    // Most messages arrive in one DATA frame: kept as it came, no copy.
    let mut gathered = Gathered::default();
    let mut look_for_head = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::cancelled(format!("the request body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers
        if data.is_empty() {
            continue;
        }
        gathered.push(data);
        let head = gathered.bytes();
        let received = head.len();
        if head.len() >= PREFIX {
            let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if length > limit {
                return Err(Status::resource_exhausted(format!(
                    "the request message is too large: {length} bytes, over the limit of {limit} (--max-message-bytes)"
                )));
            }
            if received > PREFIX + length {
                return Err(Status::invalid_argument("a unary call carries exactly one message; more followed it"));
            }
            // Only a large uncompressed message still arriving is worth it.
            look_for_head &= head[0] == 0 && length >= EARLY_FROM && received < PREFIX + length;
            if look_for_head {
                match refusal(&head[PREFIX..]) {
                    Early::Refused(status) => {
                        tokio::spawn(drain(body));
                        return Err(status);
                    }
                    Early::Admitted => look_for_head = false,
                    Early::NoHead => look_for_head = received < PREFIX + HEAD_WITHIN,
                }
            }
        }
    }
    let mut whole = gathered.finish();
    if whole.len() < PREFIX {
        return Err(Status::invalid_argument("the call ended without a request message"));
    }
    let flag = whole[0];
    let length = u32::from_be_bytes([whole[1], whole[2], whole[3], whole[4]]) as usize;
    if whole.len() < PREFIX + length {
        return Err(Status::invalid_argument(format!(
            "the call ended inside its request message ({} of {length} bytes)",
            whole.len() - PREFIX
        )));
    }
    if flag != 0 && codec.is_none() {
        return Err(Status::invalid_argument(
            "the request message is flagged compressed but the call names no grpc-encoding",
        ));
    }
    whole.advance(PREFIX);
    whole.truncate(length);
    Ok((whole, codec.filter(|_| flag != 0)))
}

/// Reads what is left of a refused request's body and drops it, so that
/// its stream ends as the client ends it, without a reset.
async fn drain<B: Body<Data = Bytes>>(mut body: Pin<Box<B>>) {
    let _ = tokio::time::timeout(DRAIN_FOR, async move { while let Some(Ok(_)) = body.frame().await {} }).await;
}

/// The answer's one message, length-prefixed, in a single buffer;
/// compressed with `codec` when the request was.
fn frame(answer: &pb::ModelInferResponse, limit: usize, codec: Option<Codec>) -> Result<Bytes, Status> {
    let length = answer.encoded_len();
    if length > limit {
        return Err(Status::resource_exhausted(format!(
            "the response message is too large: {length} bytes, over the limit of {limit} (--max-message-bytes)"
        )));
    }
    let Some(codec) = codec else {
        let mut frame = BytesMut::with_capacity(PREFIX + length);
        frame.put_u8(0);
        frame.put_u32(length as u32);
        answer.encode(&mut frame).expect("the buffer was sized for the message");
        return Ok(frame.freeze());
    };
    let compressed = deflate(codec, &answer.encode_to_vec());
    let mut frame = BytesMut::with_capacity(PREFIX + compressed.len());
    frame.put_u8(1);
    frame.put_u32(compressed.len() as u32);
    frame.extend_from_slice(&compressed);
    Ok(frame.freeze())
}

fn deflate(codec: Codec, message: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let level = flate2::Compression::fast();
    let out = Vec::with_capacity(message.len() / 2 + 64);
    let written = match codec {
        Codec::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(out, level);
            encoder.write_all(message).and_then(|()| encoder.finish())
        }
        Codec::Deflate => {
            let mut encoder = flate2::write::ZlibEncoder::new(out, level);
            encoder.write_all(message).and_then(|()| encoder.finish())
        }
    };
    written.expect("compressing into memory cannot fail")
}

fn answered(frame: Bytes, codec: Option<Codec>) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Unary { message: Some(frame), trailers: true }));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if let Some(codec) = codec {
        response.headers_mut().insert(ENCODING, HeaderValue::from_static(codec.name()));
    }
    response
}

/// A successful unary answer's body: the message, then `grpc-status: 0`.
/// Nothing can end it OK without the message: the trailers come only after
/// the message was taken.
struct Unary {
    message: Option<Bytes>,
    trailers: bool,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::with_capacity(1);
            trailers.insert("grpc-status", HeaderValue::from(Code::Ok as i32));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use std::time::Duration;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend((message.len() as u32).to_be_bytes());
        frame.extend(message);
        frame
    }

    /// A body delivering `chunks` as separate DATA frames.
    fn chunked(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = Infallible> {
        StreamBody::new(futures::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from(c))))))
    }

    fn read(chunks: Vec<Vec<u8>>, limit: usize) -> Result<Bytes, Status> {
        futures::executor::block_on(read_message(chunked(chunks), limit, None, |_| Early::NoHead))
            .map(|(message, _)| message)
    }

    #[tokio::test]
    async fn a_body_refused_from_its_head_is_read_to_its_end_not_dropped() {
        use futures::SinkExt;
        let (mut client, received) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(0);
        let whole = framed(&vec![7u8; EARLY_FROM]);
        client.try_send(Ok(Frame::data(Bytes::copy_from_slice(&whole[..1024])))).unwrap();
        let mut heads = 0;
        let refused = read_message(StreamBody::new(received), usize::MAX, None, |head| {
            heads += 1;
            assert_eq!(head, &whole[PREFIX..1024]);
            Early::Refused(Status::resource_exhausted("predicted late"))
        })
        .await;
        assert_eq!(refused.unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(heads, 1);
        // The client goes on sending: the rest is taken as it comes (a
        // dropped body would close the channel, and h2 would reset the stream).
        for piece in whole[1024..].chunks(16 << 10) {
            let sent =
                tokio::time::timeout(Duration::from_secs(5), client.send(Ok(Frame::data(piece.to_vec().into()))));
            sent.await.expect("the rest of the body is read").expect("the body is still there");
        }
    }

    #[test]
    fn a_message_split_anywhere_reads_the_same() {
        let frame = framed(b"hello, model");
        assert_eq!(read(vec![frame.clone()], 100).unwrap(), &b"hello, model"[..]);
        for cut in 1..frame.len() {
            let (a, b) = frame.split_at(cut);
            assert_eq!(read(vec![a.to_vec(), vec![], b.to_vec()], 100).unwrap(), &b"hello, model"[..], "cut at {cut}");
        }
        assert_eq!(read(vec![framed(b"")], 100).unwrap(), &b""[..], "an empty message is a message");
    }

    #[test]
    fn a_malformed_body_is_the_clients_fault_and_says_why() {
        let frame = framed(b"twelve bytes");
        let cases: Vec<(Vec<Vec<u8>>, Code, &str)> = vec![
            (vec![], Code::InvalidArgument, "without a request message"),
            (vec![frame[..3].to_vec()], Code::InvalidArgument, "without a request message"),
            (vec![frame[..9].to_vec()], Code::InvalidArgument, "inside its request message (4 of 12 bytes)"),
            (vec![frame.clone(), framed(b"x")], Code::InvalidArgument, "exactly one message"),
            (vec![framed(&[0; 101])], Code::ResourceExhausted, "too large: 101 bytes, over the limit of 100"),
        ];
        for (chunks, code, words) in cases {
            let status = read(chunks, 100).unwrap_err();
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(words), "{status:?}");
        }
        let mut flagged = frame.clone();
        flagged[0] = 1;
        let status = read(vec![flagged], 100).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("grpc-encoding"), "{status:?}");
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        // The prefix alone announces 4 GiB: refused at once, not buffered.
        let status = read(vec![vec![0, 0xff, 0xff, 0xff, 0xff]], 1 << 20).unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }

    #[test]
    fn an_answer_is_its_message_then_status_ok() {
        let answer = pb::ModelInferResponse { model_name: "m".into(), ..Default::default() };
        let response = answered(frame(&answer, 100, None).unwrap(), None);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        let collected = futures::executor::block_on(response.into_body().collect()).unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let bytes = collected.to_bytes();
        assert_eq!(&bytes[..PREFIX], &[0, 0, 0, 0, answer.encoded_len() as u8]);
        assert_eq!(pb::ModelInferResponse::decode(&bytes[PREFIX..]).unwrap(), answer);
        let status = frame(&answer, 2, None).unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }

    #[test]
    fn only_a_compressed_request_is_answered_compressed() {
        let mut headers = HeaderMap::new();
        assert!(!compressed(&headers));
        headers.insert(ENCODING, HeaderValue::from_static("identity"));
        assert!(!compressed(&headers));
        headers.insert(ENCODING, HeaderValue::from_static("gzip"));
        assert!(compressed(&headers));
    }
}
