//! Send: carrying a request to an instance, either directly (same node, over
//! a pooled keep-alive connection) or over a new bidirectional QUIC stream of
//! the warm connection to the instance's sidecar.
//!
//! Versions: the hop between sidecars speaks HTTP/1.1 on its own QUIC
//! stream whatever the caller spoke (full duplex, so streams survive it;
//! the far sidecar announces gRPC's trailers, which then cross chunked);
//! the last hop speaks the instance's own, from its definition's
//! `protocol`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proto::frame::ProxyFrame;
use mesh_proto::gossip::StreamKind;
use mesh_proto::Protocol;

use super::headers::strip_for_next_hop;
use super::hop_pool::{Hop, HopPool};
use crate::transport::{Leased, Transport};

/// Errors crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A streaming body of any origin.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
/// Keep-alive client for instances on this node, of one HTTP version.
pub type PooledClient = Client<HttpConnector, ProxyBody>;

/// Keep-alive clients for instances on this node: HTTP/1.1 (a pool of
/// connections per instance) and h2c (one multiplexed connection each).
#[derive(Clone)]
pub struct LocalClient {
    http1: PooledClient,
    http2: PooledClient,
}

/// Marks a 502 from a remote sidecar that could not reach its instance, so
/// the caller's sidecar may retry elsewhere.
pub const CONNECT_FAILURE_HEADER: &str = "x-gossamer-connect-failure";

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The instance (or its sidecar) could not be reached; nothing was processed.
    #[error("cannot reach {target}: {reason}")]
    Connect {
        /// What was dialled.
        target: String,
        /// Why it failed.
        reason: String,
    },
    /// The exchange failed after the request may have been sent.
    #[error("{target} failed: {reason}")]
    Broken {
        /// Where it went.
        target: String,
        /// What happened.
        reason: String,
    },
}

/// Clients with a keep-alive pool per instance.
pub fn local_client() -> LocalClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    let builder = || {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .http1_preserve_header_case(true);
        builder
    };
    LocalClient {
        http1: builder().build(connector.clone()),
        http2: builder().http2_only(true).build(connector),
    }
}

/// Sends to an instance on this node, in the instance's protocol.
pub async fn to_local(
    client: &LocalClient,
    protocol: Protocol,
    address: SocketAddr,
    mut request: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendError> {
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let absolute = Uri::builder()
        .scheme("http")
        .authority(address.to_string())
        .path_and_query(path)
        .build()
        .map_err(|e| SendError::Broken {
            target: address.to_string(),
            reason: format!("bad request path: {e}"),
        })?;
    strip_for_next_hop(request.headers_mut());
    let client = if protocol.is_http2() {
        *request.version_mut() = Version::HTTP_2;
        // The instance's address is the authority (`:authority`) now.
        request.headers_mut().remove(HOST);
        &client.http2
    } else {
        as_http1(&mut request);
        &client.http1
    };
    *request.uri_mut() = absolute;
    client.request(request).await.map_err(|e| {
        let target = address.to_string();
        if e.is_connect() {
            SendError::Connect {
                target,
                reason: e.to_string(),
            }
        } else {
            SendError::Broken {
                target,
                reason: e.to_string(),
            }
        }
    })
}

/// The error of an answer marked [`CONNECT_FAILURE_HEADER`]: the far
/// sidecar could not reach its instance, so nothing was processed.
pub fn far_connect_failure(instance_id: &str, sidecar: SocketAddr) -> SendError {
    SendError::Connect {
        target: format!("{instance_id} via {sidecar}"),
        reason: "the remote sidecar could not reach its instance".to_owned(),
    }
}

/// Per-request deadline on the hop between sidecars, in milliseconds: the
/// far sidecar gives up on the instance after it (a hop carries many
/// requests, so the opening frame's deadline is only the first one's).
pub const HOP_DEADLINE_HEADER: &str = "x-gossamer-hop-deadline-ms";

/// Sends to an instance on another node through that node's sidecar, on a
/// kept hop to that instance when one is idle, else on a new stream.
pub async fn over_quic(
    transport: &Arc<Transport>,
    hops: &Arc<HopPool>,
    sidecar: SocketAddr,
    frame: ProxyFrame,
    mut request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, SendError> {
    // Named only when something failed: formatting it cost every request.
    let target = || format!("{} via {sidecar}", frame.instance_id);
    let connect = |reason: String| SendError::Connect {
        target: target(),
        reason,
    };
    // A static name: inserting by `&str` copies a custom name per request.
    request.headers_mut().insert(
        http::HeaderName::from_static(HOP_DEADLINE_HEADER),
        HeaderValue::from(frame.timeout_ms),
    );
    // An upgrade takes its hop's stream for itself: never a kept one.
    let upgrade = super::headers::is_upgrade(request.headers());
    prepare_http1(&mut request).map_err(connect)?;
    if !upgrade {
        while let Some(mut hop) = hops.take(sidecar, &frame) {
            match hop.sender.try_send_request(request).await {
                Ok(response) => {
                    crate::metrics::proxy_hop(crate::metrics::HOP_KEPT);
                    return finish_hop(response, hop, hops, sidecar, frame);
                }
                Err(mut failed) => match failed.take_message() {
                    // Never written: the hop had closed; try another.
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(SendError::Broken {
                            target: target(),
                            reason: failed.into_error().to_string(),
                        })
                    }
                },
            }
        }
    }
    let (mut send, recv, _, lease) = transport
        .open_stream(sidecar, StreamKind::Proxy)
        .await
        .map_err(|e| connect(e.to_string()))?;
    let frame_bytes = frame.encode().map_err(|e| connect(e.to_string()))?;
    send.write_all(&frame_bytes)
        .await
        .map_err(|e| connect(e.to_string()))?;
    let io = TokioIo::new(Leased::new(tokio::io::join(recv, send), lease));
    // HTTP/1.1 on the hop whatever the caller spoke: an HTTP/2 connection
    // per stream cost a SETTINGS exchange per request (gRPC through two
    // sidecars ran at 0.11 of direct). Streams stay full duplex, and the
    // far sidecar announces gRPC's trailers so they cross the hop chunked.
    let (mut sender, connection) = handshake_http1(io, &target()).await?;
    crate::metrics::proxy_hop(crate::metrics::HOP_NEW);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| SendError::Broken {
            target: target(),
            reason: e.to_string(),
        });
    let hop = Hop { sender, connection };
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            hop.end();
            return Err(e);
        }
    };
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // The connection hands its stream over to the upgrade.
        return Ok(boxed(response));
    }
    if upgrade {
        // Refused: the hop's connection is the upgrade's, not for reuse.
        return Ok(response.map(|body| {
            KeepsHop {
                body,
                hop: Some(hop),
                back: None,
            }
            .boxed()
        }));
    }
    finish_hop(response, hop, hops, sidecar, frame)
}

/// The answer of a hop, its body handing the hop back to the pool once
/// read to the end.
fn finish_hop(
    response: Response<Incoming>,
    hop: Hop,
    hops: &Arc<HopPool>,
    sidecar: SocketAddr,
    frame: ProxyFrame,
) -> Result<Response<ProxyBody>, SendError> {
    if response.headers().contains_key(CONNECT_FAILURE_HEADER) {
        // Its unread answer leaves the hop unfit for another request.
        hop.end();
        return Err(far_connect_failure(&frame.instance_id, sidecar));
    }
    let back = Some((hops.clone(), sidecar, frame));
    Ok(response.map(|body| {
        KeepsHop {
            body,
            hop: Some(hop),
            back,
        }
        .boxed()
    }))
}

/// Sends `request` as HTTP/1.1 on a connection of its own (`io`: a loopback
/// socket or a QUIC stream): in origin form, hop-by-hop headers stripped
/// (an upgrade's pair kept), the connection driven with upgrades so a 101
/// can be spliced. Fails as `Connect` until the request is sent.
pub async fn send_http1<I>(
    io: I,
    mut request: Request<ProxyBody>,
    target: &str,
) -> Result<Response<Incoming>, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, _connection) = handshake_http1(io, target).await?;
    prepare_http1(&mut request).map_err(|reason| SendError::Connect {
        target: target.to_owned(),
        reason,
    })?;
    sender
        .send_request(request)
        .await
        .map_err(|e| SendError::Broken {
            target: target.to_owned(),
            reason: e.to_string(),
        })
}

/// Opens an HTTP/1.1 client connection on `io`, driven (with upgrades) by
/// a task of its own. Fails as `Connect`: nothing was sent yet.
async fn handshake_http1<I>(
    io: I,
    target: &str,
) -> Result<(SendRequest<ProxyBody>, tokio::task::AbortHandle), SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect {
            target: target.to_owned(),
            reason: e.to_string(),
        })?;
    let task = tokio::spawn(connection.with_upgrades()).abort_handle();
    Ok((sender, task))
}

/// An answer's body over a hop: read to its end, the hop goes back to the
/// pool (when it came from one) for the next request to the instance;
/// dropped before its end (the caller cancelled), it ends the hop, and so
/// the stream to the far sidecar, at once. hyper would otherwise keep
/// reading the rest of the body to reuse the connection, and a cancelled
/// gRPC stream would stay open at the instance.
struct KeepsHop {
    body: Incoming,
    hop: Option<Hop>,
    back: Option<(Arc<HopPool>, SocketAddr, ProxyFrame)>,
}

impl KeepsHop {
    fn release(&mut self, whole: bool) {
        let Some(hop) = self.hop.take() else { return };
        match self.back.take() {
            Some((pool, sidecar, frame)) if whole => pool.keep(sidecar, frame, hop),
            // A hop of its own ends by itself once its answer is whole.
            None if whole => drop(hop),
            _ => hop.end(),
        }
    }
}

impl http_body::Body for KeepsHop {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // Trailers end a message: nothing but its end may follow.
            std::task::Poll::Ready(None) => self.release(true),
            std::task::Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.release(true),
            std::task::Poll::Ready(Some(Err(_))) => self.release(false),
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for KeepsHop {
    fn drop(&mut self) {
        let whole = http_body::Body::is_end_stream(&self.body);
        self.release(whole);
    }
}

/// Makes `request` ready for an HTTP/1.1 hop of its own: the version and
/// Host, origin form, hop-by-hop headers stripped (an upgrade's pair kept).
fn prepare_http1(request: &mut Request<ProxyBody>) -> Result<(), String> {
    as_http1(request);
    let origin_form = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    *request.uri_mut() = Uri::try_from(origin_form).map_err(|e| e.to_string())?;
    strip_for_next_hop(request.headers_mut());
    Ok(())
}

/// An answer with its body boxed as the proxy's.
pub(super) fn boxed(response: Response<Incoming>) -> Response<ProxyBody> {
    response.map(|body| body.map_err(Into::into).boxed())
}

/// Makes an HTTP/2 request fit an HTTP/1.1 hop: the version, and a Host
/// header from the authority (HTTP/2 carries it as `:authority`).
fn as_http1(request: &mut Request<ProxyBody>) {
    if request.version() == Version::HTTP_2 {
        *request.version_mut() = Version::HTTP_11;
    }
    if !request.headers().contains_key(HOST) {
        if let Some(authority) = request.uri().authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(HOST, value);
            }
        }
    }
}
