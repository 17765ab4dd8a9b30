//! The fast path on the instance's side: requests arriving on a QUIC
//! stream from a caller's sidecar, for the one instance the stream's frame
//! names. The stream keeps its own connection to that instance, so a kept
//! hop costs one read and one write each way per request. Requests the
//! fast path does not serve go to hyper, with the bytes already read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_proto::frame::ProxyFrame;
use mesh_proto::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::head::{self, Parsed, RequestHead, Side};
use super::upstream::{exchange, Exchange, Opener, Sending, Target, Upstream};
use super::{relay_answer, write_own};
use crate::proxy::inbound::{
    caller_deadline_ms, deadline_passed, instance_failed, is_own_instance, not_own_instance,
    serve_with_hyper,
};
use crate::proxy::ProxyHandles;
use crate::server::prefixed::Prefixed;

/// How long the caller's sidecar has to send a body it announced.
const BODY_READ: Duration = Duration::from_secs(30);
/// A caller that sets no deadline (0 in its frame) waits this long at most.
const NO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Serves the requests of one stream from `peer`'s sidecar for the
/// instance `frame` names, until the stream ends.
pub async fn serve_hop<S>(
    agent: Arc<ProxyHandles>,
    frame: Arc<ProxyFrame>,
    peer: SocketAddr,
    mut hop: S,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // The stream's own connection to its instance, between requests.
    let mut kept: Option<Upstream> = None;
    loop {
        // No header timeout: a kept hop waits for its caller's next
        // request, and the caller's sidecar closes it when done.
        let head = loop {
            if !buf.is_empty() {
                match head::parse_request(&buf, Side::Far) {
                    Parsed::Partial => {}
                    Parsed::Hyper => break None,
                    Parsed::Request(head) => break Some(head),
                }
            }
            buf.reserve(8 * 1024);
            match hop.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        };
        let Some(head) = head else { break };
        let protocol = agent.upstreams.snapshot().protocol(&frame.service);
        if protocol != Protocol::Http {
            break;
        }
        let mut head = head;
        if !super::read_body(&mut hop, &mut buf, &mut head, BODY_READ).await {
            return Ok(());
        }
        if !serve_one(&agent, &frame, peer, &mut hop, head, &mut kept).await {
            return Ok(());
        }
    }
    serve_with_hyper(agent, frame, peer, Prefixed::new(buf.freeze(), hop)).await
}

/// Serves one request; true when the stream may carry another.
async fn serve_one<S>(
    agent: &Arc<ProxyHandles>,
    frame: &ProxyFrame,
    peer: SocketAddr,
    hop: &mut S,
    head: RequestHead,
    kept: &mut Option<Upstream>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Checked per request: a kept hop outlives registrations.
    if !is_own_instance(agent, frame, peer) {
        return write_own(hop, not_own_instance(agent, frame), head.close)
            .await
            .is_ok()
            && !head.close;
    }
    let limit = caller_deadline_ms(frame, head.hop_deadline_ms);
    let deadline = tokio::time::Instant::now() + limit.unwrap_or(NO_DEADLINE);
    let sending = Sending {
        head: &head.out,
        head_method: head.head_method,
        retryable: head.retryable,
        annotation: None,
    };
    let target = Target {
        address: frame.address,
        via: None,
    };
    let reused = kept
        .take()
        .and_then(|mut conn| conn.link_is_idle_and_open().then_some(conn));
    let own = match exchange(reused, target, &Opener::Direct, &sending, deadline).await {
        Ok((conn, response)) => {
            let (more, link) = relay_answer(conn, response, hop, head.close, &frame.service).await;
            *kept = link.map(|mut link| {
                link.shrink();
                link
            });
            return more;
        }
        Err(Exchange::Timeout) => deadline_passed(agent, frame, limit.unwrap_or(NO_DEADLINE)),
        Err(Exchange::Failed(error)) => instance_failed(agent, frame, error).await,
    };
    write_own(hop, own, head.close).await.is_ok() && !head.close
}
