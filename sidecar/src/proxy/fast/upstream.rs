//! The fast path's side towards an instance: links (a loopback connection
//! to an instance on this node, or a QUIC stream to the sidecar of another
//! node, opened behind a proxy frame), the idle ones a caller's connection
//! keeps, and one exchange: send a head, read the answer's head.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use mesh_proto::frame::ProxyFrame;
use mesh_proto::gossip::StreamKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Join, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::HEAD_CHUNK;
use super::response::{self, Annotation, ResponseHead, ResponseParsed};
use crate::proxy::forward::SendError;
use crate::transport::{Leased, Transport};

/// Longest wait for a connection to an instance (as the pooled client's).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a request goes: an instance's address, reached directly or
/// through the sidecar of its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Target {
    pub(super) address: SocketAddr,
    pub(super) via: Option<SocketAddr>,
}

/// A QUIC stream to another node's sidecar, both halves.
type HopStream = Leased<Join<quinn::RecvStream, quinn::SendStream>>;

/// A byte stream to an instance.
pub(super) enum Link {
    Direct(TcpStream),
    Hop(Box<HopStream>),
}

/// A link, with what was read from it and not yet used.
pub(super) struct Upstream {
    pub(super) target: Target,
    pub(super) link: Link,
    pub(super) buf: BytesMut,
}

impl Upstream {
    /// Gives back a large read buffer (a streamed body grew it) before the
    /// link idles: an idle link holds no more than a head's worth.
    pub(super) fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 2 * HEAD_CHUNK {
            self.buf = BytesMut::with_capacity(HEAD_CHUNK);
        }
    }

    /// True when the link can take a request now (see [`Link::is_idle_and_open`]).
    pub(super) fn link_is_idle_and_open(&mut self) -> bool {
        self.link.is_idle_and_open()
    }
}

impl Link {
    /// True when `error` on a kept link means only that link closed (the
    /// keep-alive race), so a new link to the same target may do. A QUIC
    /// connection that is gone is not that: the peer is down or
    /// restarting, and a new stream would wait for it; the request fails
    /// instead, and the pick's own retry goes elsewhere.
    fn stale(&self, error: &io::Error) -> bool {
        match self {
            Link::Direct(_) => true,
            // quinn reports a lost connection as NotConnected, a stream
            // the far side stopped or reset as ConnectionReset.
            Link::Hop(_) => error.kind() != io::ErrorKind::NotConnected,
        }
    }

    /// True when nothing can be read yet: readable now means closed, or
    /// bytes nobody asked for, and either way unfit for a request.
    pub(super) fn is_idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(self).poll_read(&mut cx, &mut probe).is_pending()
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Direct(stream) => Pin::new(stream).poll_read(cx, buf),
            Link::Hop(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Direct(stream) => Pin::new(stream).poll_write(cx, buf),
            Link::Hop(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Direct(stream) => Pin::new(stream).poll_flush(cx),
            Link::Hop(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Direct(stream) => Pin::new(stream).poll_shutdown(cx),
            Link::Hop(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What opens a new link: a connection, or a stream behind `frame`.
pub(super) enum Opener<'a> {
    Direct,
    Hop {
        transport: &'a Arc<Transport>,
        frame: &'a ProxyFrame,
    },
}

/// Why an exchange gave no answer.
pub(super) enum Exchange {
    /// None before the deadline.
    Timeout,
    /// None: why, as the hyper path says it.
    Failed(SendError),
}

/// One request: what to send and how its answer is read.
pub(super) struct Sending<'a> {
    pub(super) head: &'a [u8],
    pub(super) head_method: bool,
    /// May be sent again on a new link when a kept one turns out closed.
    pub(super) retryable: bool,
    pub(super) annotation: Option<&'a Annotation<'a>>,
}

/// Sends `sending` to `target` on `reused` (a kept link) or else a new
/// one, and reads the answer's head. A kept link the other end closed
/// meanwhile is replaced by a new one when the request may be sent again.
pub(super) async fn exchange(
    mut reused: Option<Upstream>,
    target: Target,
    opener: &Opener<'_>,
    sending: &Sending<'_>,
    deadline: Instant,
) -> Result<(Upstream, ResponseHead), Exchange> {
    let name = || match target.via {
        Some(sidecar) => format!("{} via {sidecar}", target.address),
        None => target.address.to_string(),
    };
    let broken = |reason: String| {
        Exchange::Failed(SendError::Broken {
            target: name(),
            reason,
        })
    };
    if target.via.is_some() {
        crate::metrics::proxy_hop(if reused.is_some() {
            crate::metrics::HOP_KEPT
        } else {
            crate::metrics::HOP_NEW
        });
    }
    loop {
        let was_kept = reused.is_some();
        let mut conn = match reused.take() {
            Some(conn) => conn,
            None => open(target, opener, deadline, name).await?,
        };
        let sent = tokio::time::timeout_at(deadline, conn.link.write_all(sending.head)).await;
        match sent {
            Err(_) => return Err(Exchange::Timeout),
            // A kept link may have closed since: the head never got there.
            Ok(Err(e)) if was_kept && conn.link.stale(&e) => continue,
            Ok(Err(e)) => return Err(broken(format!("cannot send the request: {e}"))),
            Ok(Ok(())) => {}
        }
        let mut informational = Vec::new();
        loop {
            match response::parse_response(&conn.buf, sending.head_method, sending.annotation) {
                ResponseParsed::Final(mut response) => {
                    conn.buf.advance(response.len);
                    if !informational.is_empty() {
                        informational.extend_from_slice(&response.out);
                        response.out = informational;
                    }
                    return Ok((conn, response));
                }
                ResponseParsed::Informational { len } => {
                    informational.extend_from_slice(&conn.buf[..len]);
                    conn.buf.advance(len);
                    continue;
                }
                ResponseParsed::Invalid(why) => {
                    return Err(broken(format!("the instance sent {why}")))
                }
                ResponseParsed::Partial => {}
            }
            conn.buf.reserve(HEAD_CHUNK);
            match tokio::time::timeout_at(deadline, conn.link.read_buf(&mut conn.buf)).await {
                Err(_) => return Err(Exchange::Timeout),
                Ok(Ok(n)) if n > 0 => {}
                // Closed before a byte of answer: on a kept link that is
                // the keep-alive race; send again if that is safe.
                Ok(result)
                    if was_kept
                        && conn.buf.is_empty()
                        && informational.is_empty()
                        && sending.retryable
                        && result
                            .as_ref()
                            .map_or_else(|e| conn.link.stale(e), |_| true) =>
                {
                    break;
                }
                Ok(Ok(_)) => {
                    return Err(broken("the connection closed before an answer".to_owned()))
                }
                Ok(Err(e)) => return Err(broken(format!("cannot read the answer: {e}"))),
            }
        }
    }
}

async fn open(
    target: Target,
    opener: &Opener<'_>,
    deadline: Instant,
    name: impl Fn() -> String,
) -> Result<Upstream, Exchange> {
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let failed = |reason: String| {
        Exchange::Failed(SendError::Connect {
            target: name(),
            reason,
        })
    };
    let opened = async {
        match (opener, target.via) {
            (Opener::Hop { transport, frame }, Some(sidecar)) => {
                let (mut send, recv, _, lease) = transport
                    .open_stream(sidecar, StreamKind::Proxy)
                    .await
                    .map_err(|e| e.to_string())?;
                let frame = frame.encode().map_err(|e| e.to_string())?;
                send.write_all(&frame).await.map_err(|e| e.to_string())?;
                Ok(Link::Hop(Box::new(Leased::new(
                    tokio::io::join(recv, send),
                    lease,
                ))))
            }
            _ => {
                let stream = TcpStream::connect(target.address)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = stream.set_nodelay(true);
                Ok(Link::Direct(stream))
            }
        }
    };
    let link = match tokio::time::timeout_at(limit, opened).await {
        Ok(Ok(link)) => link,
        Ok(Err(reason)) => return Err(failed(reason)),
        Err(_) if limit < deadline => return Err(failed("timed out".to_owned())),
        Err(_) => return Err(Exchange::Timeout),
    };
    Ok(Upstream {
        target,
        link,
        buf: BytesMut::with_capacity(HEAD_CHUNK),
    })
}
