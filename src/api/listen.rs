//! The one accept loop behind every front (gRPC, HTTP, metrics): per socket
//! TCP_NODELAY, the TLS handshake where the port has TLS, the client's
//! address (and certificate subject) on every request, and hyper-util with
//! the connection limits from the flags; on shutdown the listener closes and
//! every open connection is asked to finish gracefully (HTTP/2 GOAWAY,
//! HTTP/1 close after the current request).

use crate::config::Config;
use crate::security::{Peer, TlsPort};
use crate::shutdown::Phases;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;

/// Per-stream and per-connection HTTP/2 receive windows: the default 64 KiB
/// stalls a connection that carries many requests of a few KiB at once.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a peer may send (SETTINGS_MAX_FRAME_SIZE): a
/// 600 KB image arrives in a few frames instead of 37 of the default
/// 16 KiB, which halves what receiving it costs both sides.
const MAX_FRAME: u32 = 256 << 10;

/// HTTP/2 keepalive: a ping after this long without traffic, and the
/// connection is closed when it goes unanswered, so dead peers are noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// hyper's smallest HTTP/1 buffer; it panics below this.
const MIN_HTTP1_BUFFER: usize = 8192;

/// How long to wait after an accept error that is not about one connection
/// (out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connection limits every front shares (--http2-max-concurrent-streams,
/// --max-header-bytes, --request-read-timeout-secs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_bytes: u32,
    pub read_timeout: Duration,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Limits {
            max_concurrent_streams: config.http2_max_concurrent_streams,
            max_header_bytes: config.max_header_bytes,
            read_timeout: Duration::from_secs(config.request_read_timeout_secs),
        }
    }
}

/// What a front speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge), told apart by the first bytes.
    Http,
    /// HTTP/2 only (gRPC).
    Http2,
}

fn builder(protocol: Protocol, limits: Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    if protocol == Protocol::Http2 {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also how long a keep-alive connection may sit idle between requests.
        .header_read_timeout(limits.read_timeout)
        // A request head that does not fit the buffer is answered 431.
        .max_buf_size((limits.max_header_bytes as usize).max(MIN_HTTP1_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

/// Serves `service` on every connection `listener` accepts (over TLS when
/// `tls` is set) until `phases.accept_until` fires; then closes the
/// listener, keeps serving the open connections until `phases.serve_until`,
/// asks each to finish gracefully and returns once all have. server.rs
/// bounds the whole drain.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    protocol: Protocol,
    limits: Limits,
    tls: Option<TlsPort>,
    phases: Phases,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(protocol, limits));
    let graceful = GracefulShutdown::new();
    let stop = phases.accept_until.wait();
    tokio::pin!(stop);
    loop {
        let (stream, address) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The peer gave up between SYN and accept: nothing to do.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Read per connection: a reloaded certificate serves the next one.
        let tls = tls.as_ref().map(TlsPort::config);
        let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
        tokio::spawn(async move {
            let Some((stream, subject)) = handshake(stream, tls, limits.read_timeout).await else {
                return;
            };
            let io = TokioIo::new(FirstBytes::new(stream, limits.read_timeout));
            let service = WithPeer { peer: Peer { address, subject }, inner: service };
            let connection = builder.serve_connection(io, TowerToHyperService::new(service)).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // New connections are refused from here on. Open ones are served until
    // the drain is done, then finish what they have (HTTP/2 GOAWAY, HTTP/1
    // close after the current request).
    drop(listener);
    phases.serve_until.wait().await;
    graceful.shutdown().await;
}

/// The TLS handshake, bounded by the read timeout, where the port has TLS;
/// the client certificate's subject with mTLS. None: the handshake failed.
async fn handshake(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeout: Duration,
) -> Option<(Stream, Option<Arc<str>>)> {
    let Some(config) = tls else {
        return Some((Stream::Plain(stream), None));
    };
    match tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(stream)) => {
            let subject = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
            let subject = subject.and_then(crate::security::tls::subject).map(Arc::from);
            Some((Stream::Tls(Box::new(stream)), subject))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Puts the connection's `Peer` in every request's extensions.
#[derive(Clone)]
struct WithPeer<S> {
    peer: Peer,
    inner: S,
}

impl<S, R> tower::Service<Request<R>> for WithPeer<S>
where
    S: tower::Service<Request<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<R>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        self.inner.call(request)
    }
}

/// A connection's bytes: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, data),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, data),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The bytes a connection must send within the read timeout (of being
/// accepted, or of its TLS handshake) before it counts as speaking HTTP: the HTTP/2 preface, and less than any HTTP/1 request
/// head to our routes. hyper has no timeout of its own before it knows the
/// protocol (nor for the HTTP/2 preface), so a silent socket would be held.
const FIRST_BYTES: usize = 24;

/// A socket that is closed (reads fail) unless it delivers FIRST_BYTES, or is
/// answered after sending something (a shorter HTTP/1 request), within the
/// read timeout of being accepted. After that hyper's own limits apply: the
/// HTTP/1 header read timeout and HTTP/2 keepalive pings.
struct FirstBytes<I> {
    io: I,
    /// Bytes still awaited while the deadline applies.
    awaited: usize,
    /// Set while the deadline applies.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> FirstBytes<I> {
    fn new(io: I, timeout: Duration) -> Self {
        FirstBytes { io, awaited: FIRST_BYTES, deadline: Some(Box::pin(tokio::time::sleep(timeout))) }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match polled {
                Poll::Ready(Ok(())) => {
                    this.awaited = this.awaited.saturating_sub(buf.filled().len() - before);
                    if this.awaited == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent too little within the request read timeout",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<I> FirstBytes<I> {
    /// An answer to a short request: the peer speaks HTTP.
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if self.awaited < FIRST_BYTES && matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.deadline = None;
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, data);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::DuplexStream;

    /// Short, so the tests are quick; every bound below is generous.
    const TIMEOUT: Duration = Duration::from_millis(100);
    /// Longer than TIMEOUT by far: a read still pending after it was not cut off.
    const LATER: Duration = Duration::from_millis(600);

    fn pair() -> (FirstBytes<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(1024);
        (FirstBytes::new(server, TIMEOUT), client)
    }

    async fn read(io: &mut (impl AsyncRead + Unpin)) -> io::Result<usize> {
        let mut bytes = [0u8; 64];
        poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut bytes);
            Pin::new(&mut *io).poll_read(cx, &mut buf).map_ok(|()| buf.filled().len())
        })
        .await
    }

    async fn write(io: &mut (impl AsyncWrite + Unpin), data: &[u8]) {
        let written = poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, data)).await.unwrap();
        assert_eq!(written, data.len());
    }

    #[tokio::test]
    async fn a_silent_peer_is_cut_off_at_the_timeout() {
        let (mut server, _client) = pair();
        let started = tokio::time::Instant::now();
        assert_eq!(read(&mut server).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= TIMEOUT, "cut off after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_few_bytes_are_not_enough() {
        let (mut server, mut client) = pair();
        write(&mut client, b"PRI * HTTP/2.0").await;
        assert_eq!(read(&mut server).await.unwrap(), 14);
        assert_eq!(read(&mut server).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn the_first_bytes_lift_the_deadline() {
        let (mut server, mut client) = pair();
        write(&mut client, &[b'x'; FIRST_BYTES]).await;
        assert_eq!(read(&mut server).await.unwrap(), FIRST_BYTES);
        let idle = tokio::time::timeout(LATER, read(&mut server)).await;
        assert!(idle.is_err(), "the deadline still applied: {idle:?}");
    }

    #[tokio::test]
    async fn an_answer_to_a_short_request_lifts_the_deadline() {
        let (mut server, mut client) = pair();
        write(&mut client, b"GET /v2 HTTP/1.0\r\n\r\n").await;
        read(&mut server).await.unwrap();
        write(&mut server, b"HTTP/1.0 200 OK\r\n\r\n").await;
        let idle = tokio::time::timeout(LATER, read(&mut server)).await;
        assert!(idle.is_err(), "the deadline still applied: {idle:?}");
    }

    #[tokio::test]
    async fn writing_before_reading_keeps_the_deadline() {
        // An HTTP/2 server sends its SETTINGS before it reads the preface.
        let (mut server, _client) = pair();
        write(&mut server, b"settings").await;
        assert_eq!(read(&mut server).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
