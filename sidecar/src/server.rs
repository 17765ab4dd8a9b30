//! The HTTP accept loop shared by the admin API, the metrics endpoint and
//! the proxy: one task per connection, HTTP/1.1 or HTTP/2 without TLS (told
//! apart by the connection preface), keep-alive; on shutdown it stops
//! accepting, lets requests in flight finish, closes idle connections, and
//! returns once every connection is done (the agent bounds the wait).
//!
//! Each listener is bounded (issue 21): at most [`Limits::max_connections`]
//! open connections (one more is answered 503 and closed), and a request
//! head must arrive within [`Limits::header_read_timeout`] of the
//! connection opening or of the previous response, so idle and slowloris
//! connections cannot pin file descriptors forever.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Concurrent streams an HTTP/2 client may open on one connection; more
/// wait (the client's h2 stack queues them), so memory stays bounded.
const MAX_H2_STREAMS: u32 = 256;

/// The per-connection protocol settings: HTTP/1.1 header names keep their
/// case (legacy servers depend on it) and a request head must arrive within
/// the listener's timeout; HTTP/2 streams are capped.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(256 * 1024)
        .preserve_header_case(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_pending_accept_reset_streams(64);
    builder
}

use crate::metrics;

mod own_errors;
pub mod prefixed;

use own_errors::OwnErrorsAsJson;

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The listener's name in metrics and logs (a fixed set: proxy, admin,
    /// metrics, echo).
    pub listener: &'static str,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request head, from the connection's
    /// start or the end of the previous response (so it is also how long an
    /// idle keep-alive connection stays open).
    pub header_read_timeout: Duration,
}

impl Limits {
    /// Default of `--max-connections`.
    pub const MAX_CONNECTIONS: usize = 4096;
    /// Default of `--header-read-timeout-ms` (hyper's own default).
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

    /// The default limits for `listener`.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            max_connections: Self::MAX_CONNECTIONS,
            header_read_timeout: Self::HEADER_READ_TIMEOUT,
        }
    }
}

/// The answer to a connection past the cap, written without reading the request.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 133\r\n\r\n{\"error\":\"too many open connections to this listener\",\"hint\":\"retry later, reuse keep-alive connections, or raise --max-connections\"}";

/// Serves HTTP/1.1 and h2c on `listener` with `handler`, within `limits`,
/// until `shutdown` turns true.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    serve_with(listener, limits, shutdown, move |stream, peer, stopping| {
        let handler = handler.clone();
        async move {
            // The protocol is told by the first bytes, before hyper's
            // header timeout applies: a client that sends nothing is
            // closed by this one instead.
            // (`peek`, unlike `readable`, never wakes spuriously.)
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                metrics::http_connection_refused(limits.listener, "header_timeout");
                return;
            }
            serve_http_connection(stream, peer, limits, stopping, handler).await;
        }
    })
    .await;
}

/// The accept loop of every HTTP listener: at most
/// [`Limits::max_connections`] open (one more is answered 503 and closed),
/// each connection served by `connection` in a task of its own; on
/// shutdown it stops accepting and returns once every connection is done.
pub async fn serve_with<C, F>(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    connection: C,
) where
    C: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = RateLimitedLog::default();
    while let Some((stream, peer)) = accept_until_stop(&listener, &mut shutdown).await {
        let Ok(slot) = open.clone().try_acquire_owned() else {
            // Best effort, never waiting: the client learns why, and the
            // descriptor is released at once.
            let _ = stream.try_write(BUSY);
            drop(stream);
            metrics::http_connection_refused(limits.listener, "limit");
            if let Some(count) = refusals.due() {
                warn!(listener = limits.listener, limit = limits.max_connections, refused = count, "too many open connections: new ones are answered 503 and closed; raise --max-connections if this load is legitimate; logged at most once every 10 s");
            }
            continue;
        };
        let served = connection(stream, peer, shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            served.await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves one connection with hyper (HTTP/1.1 or h2c, with upgrades) until
/// it ends or `stopping` turns true (then in-flight requests finish).
pub async fn serve_http_connection<S, H, F, B>(
    stream: S,
    peer: SocketAddr,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    handler: Arc<H>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream = OwnErrorsAsJson::new(stream, calls.clone());
    let service = service_fn(move |request| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Boxed: the proxy's pipeline is a large future, and hyper moves
        // what it is given (into each HTTP/2 stream's task, among others);
        // a copy of it was 2–3 % of a gRPC caller's CPU.
        let response = Box::pin(handler(request));
        async move { Ok::<_, Infallible>(response.await) }
    });
    let builder = http_builder(&limits);
    // The proxy splices upgraded (WebSocket) connections.
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped(&mut stopping) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // The auto builder's error is boxed: hyper's own is inside.
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            metrics::http_connection_refused(limits.listener, "header_timeout");
        }
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Resolves once `shutdown` turns true (without holding its guard).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A warning at most once every 10 s, with the count of events since the last.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn due(&mut self) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// True when `error` says this process (or the system) is out of file
/// descriptors: a problem of the agent, never of the peer or instance.
pub fn out_of_descriptors(error: &std::io::Error) -> bool {
    // EMFILE (per process) and ENFILE (system-wide) on Linux and the BSDs.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// The next connection on `listener` (with Nagle off), or None once
/// `shutdown` turns true. A failed accept (out of file descriptors, say)
/// backs off 50 ms instead of spinning, and says so at most every 10 s.
pub async fn accept_until_stop(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    let mut failures = RateLimitedLog::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) if out_of_descriptors(&e) => {
                if let Some(count) = failures.due() {
                    warn!(error = %e, failed_accepts = count, "out of file descriptors: cannot accept connections; raise the limit (ulimit -n, LimitNOFILE) or lower --max-connections; logged at most once every 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                debug!(error = %e, kind = ?e.kind(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_complete_json() {
        let text = std::str::from_utf8(BUSY).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(json["error"].is_string() && json["hint"].is_string());
    }
}
