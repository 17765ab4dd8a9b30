//! DNS over TCP with a cap on open connections.
//!
//! hickory-server 0.26's `register_listener` accepts without limit: every
//! connection is a task and a buffer until it has been idle for the timeout,
//! so one local client opening thousands of silent connections grows the
//! agent. This loop does what that one does (hickory's framing, idle timeout
//! and per-connection response buffer, queries answered one at a time per
//! connection) and refuses connections beyond [`MAX_TCP_CONNECTIONS`]: the
//! excess is accepted and closed at once, so the kernel's backlog never fills
//! and a client learns at once to try again (UDP keeps answering meanwhile).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::tcp::TcpStream;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandle, TimeoutStream};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Open DNS-over-TCP connections served at once; more are closed on accept.
/// Large answers are rare (TCP is the fallback for truncated UDP), so a few
/// dozen covers every resolver of a host.
pub const MAX_TCP_CONNECTIONS: usize = 64;

/// Serves DNS over TCP on `listener` until the task is dropped (which aborts
/// every connection's task with it).
pub async fn serve<H: RequestHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    idle: Duration,
    response_buffer: usize,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most often: wait, do not spin.
                debug!(%error, "cannot accept a DNS TCP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%src, limit = MAX_TCP_CONNECTIONS, "DNS TCP connection refused: too many open");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, src, handler.as_ref(), idle, response_buffer).await;
        });
    }
}

async fn serve_connection<H: RequestHandler>(
    stream: tokio::net::TcpStream,
    src: SocketAddr,
    handler: &H,
    idle: Duration,
    response_buffer: usize,
) {
    let (framed, sender) =
        TcpStream::from_stream_with_buffer_size(AsyncIoTokioAsStd(stream), src, response_buffer);
    let mut messages = TimeoutStream::new(framed, idle);
    // Polling the stream also writes the queued answers out.
    while let Some(message) = messages.next().await {
        let Ok(message) = message else {
            return; // idle past the timeout, or a broken frame: close.
        };
        let (bytes, from) = message.into_parts();
        match Request::from_bytes(bytes, from, Protocol::Tcp) {
            Ok(request) => {
                let answer = ResponseHandle::new(from, sender.clone(), Protocol::Tcp);
                handler
                    .handle_request::<_, TokioTime>(&request, answer)
                    .await;
            }
            Err(error) => {
                // A client that sends an undecodable query over TCP is not
                // a resolver; closing costs it nothing it could use.
                debug!(%src, %error, "undecodable DNS query over TCP; closing");
                return;
            }
        }
    }
}
