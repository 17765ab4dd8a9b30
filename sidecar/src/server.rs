//! The HTTP accept loop shared by the admin API, the metrics endpoint and
//! the proxy: one task per connection, HTTP/1.1 or HTTP/2 without TLS (told
//! apart by the connection preface), keep-alive; on shutdown it stops
//! accepting, lets requests in flight finish, closes idle connections, and
//! returns once every connection is done (the agent bounds the wait).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Concurrent streams an HTTP/2 client may open on one connection; more
/// wait (the client's h2 stack queues them), so memory stays bounded.
const MAX_H2_STREAMS: u32 = 256;

/// The per-connection protocol settings: HTTP/1.1 header names keep their
/// case (legacy servers depend on it), HTTP/2 streams are capped.
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(256 * 1024)
        .preserve_header_case(true);
    builder
        .http2()
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_pending_accept_reset_streams(64);
    builder
}

/// Serves HTTP/1.1 and h2c on `listener` with `handler` until `shutdown`
/// turns true.
pub async fn serve<H, F, B>(listener: TcpListener, mut shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = accept_until_stop(&listener, &mut shutdown).await {
        let handler = handler.clone();
        let mut stopping = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let builder = http_builder();
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
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Resolves once `shutdown` turns true (without holding its guard).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The next connection on `listener` (with Nagle off), or None once
/// `shutdown` turns true. A failed accept (out of file descriptors, say)
/// backs off 50 ms instead of spinning.
pub async fn accept_until_stop(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
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
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
