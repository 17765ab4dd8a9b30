//! The receiving side: a peer sidecar's request arrives on a QUIC stream
//! behind a frame naming one of our instances. We check the frame against
//! our own registrations (never an open relay), then hand the request to the
//! instance over the pooled loopback client and stream the answer back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_proto::frame::ProxyFrame;
use tracing::{debug, warn};

use super::forward::{self, ProxyBody, SendError, CONNECT_FAILURE_HEADER};
use super::json_error;
use super::upgrade;
use super::ProxyHandles;
use crate::metrics;
use crate::transport::{InboundStream, Leased};

/// Serves one proxied request stream.
pub async fn serve_stream(
    agent: &Arc<ProxyHandles>,
    mut stream: InboundStream,
) -> anyhow::Result<()> {
    let frame = read_frame(&mut stream.recv).await?;
    let peer = stream.connection.remote_address();

    let stopped_sending = stream.send.stopped();
    let io = Leased::new(tokio::io::join(stream.recv, stream.send), stream.lease);
    // The caller lets its sending half end early (half-close), so a
    // cancelled call shows only as the caller stopping our sending half:
    // then the call to the instance is dropped too (a held gRPC stream
    // would otherwise stay open at the instance).
    let cancelled = async move {
        match stopped_sending.await {
            Ok(Some(_)) => {}
            // Read to the end, or the connection went: serving ends anyway.
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        served = super::fast::serve_hop(agent.clone(), Arc::new(frame), peer, io) => served,
        () = cancelled => Ok(()),
    }
}

/// Serves a stream's requests with hyper (the fast path hands over what it
/// does not serve: bodies, upgrades, gRPC, HTTP/2).
pub(super) async fn serve_with_hyper<I>(
    agent: Arc<ProxyHandles>,
    frame: Arc<ProxyFrame>,
    peer: std::net::SocketAddr,
    io: I,
) -> anyhow::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    // Toward an HTTP/2 instance names go lowercase whatever their case
    // here, so recording it would only cost an allocation per header.
    let keep_case = !agent
        .upstreams
        .snapshot()
        .protocol(&frame.service)
        .is_http2();
    let service = service_fn(move |request: Request<Incoming>| {
        let agent = agent.clone();
        let frame = frame.clone();
        // Boxed for the reason `server::serve_http_connection` gives.
        Box::pin(async move {
            // The calling sidecar passes this answer on as it is, so a gRPC
            // caller's error must be a gRPC status already.
            let grpc = super::grpc::is_grpc(request.headers());
            let over_http1 = request.version() != http::Version::HTTP_2;
            // Checked per request: a kept hop outlives registrations.
            let allowed = is_own_instance(&agent, &frame, peer);
            let response = handle(&agent, &frame, allowed, request).await;
            let response = if grpc {
                let mut response = super::grpc_if_proxy_made(response);
                if over_http1 {
                    super::grpc::announce_trailers(response.headers_mut());
                }
                response
            } else {
                response
            };
            Ok::<_, std::convert::Infallible>(response)
        })
    });
    // Callers speak HTTP/1.1 on the stream; older ones spoke their caller's
    // version, which the auto builder still serves.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(256 * 1024)
        .preserve_header_case(keep_case)
        // A peer may finish its half of the stream once the request is out;
        // that is not a reason to drop the answer.
        .half_close(true);
    builder
        .serve_connection_with_upgrades(io, service)
        .await
        .map_err(|e| anyhow!("proxied stream from {peer}: {e}"))
}

/// Reads the length-prefixed frame that opens a proxy or TCP stream
/// (bounded: at most [`mesh_proto::frame::MAX_FRAME`] bytes).
pub(super) async fn read_frame(recv: &mut quinn::RecvStream) -> anyhow::Result<ProxyFrame> {
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix).await?;
    let len = ProxyFrame::body_len(prefix).inspect_err(|_| metrics::decode_error())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(ProxyFrame::decode(&body).inspect_err(|_| metrics::decode_error())?)
}

/// True when `frame` names an instance registered on this node at the
/// address it gives: a sidecar forwards only to its own instances. A
/// refusal is counted and logged.
pub(super) fn is_own_instance(
    agent: &ProxyHandles,
    frame: &ProxyFrame,
    peer: std::net::SocketAddr,
) -> bool {
    let allowed = agent
        .upstreams
        .snapshot()
        .local_instance(&frame.instance_id)
        .is_some_and(|i| i.address == frame.address);
    if !allowed {
        ::metrics::counter!(metrics::RELAY_REFUSALS).increment(1);
        warn!(%peer, instance = %frame.instance_id, address = %frame.address, "refused a proxy frame naming no instance of this node");
    }
    allowed
}

/// The calling sidecar's deadline for the response head: the request's
/// own on a kept hop, else the opening frame's (callers before kept hops
/// sent one request per stream); `None` from callers that send none (0).
pub(super) fn caller_deadline_ms(frame: &ProxyFrame, per_request: Option<u32>) -> Option<Duration> {
    let ms = per_request.unwrap_or(frame.timeout_ms);
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// [`caller_deadline_ms`] from a request's headers. The header is the
/// hop's, so it is taken off before the instance.
fn caller_deadline(frame: &ProxyFrame, headers: &mut http::HeaderMap) -> Option<Duration> {
    let per_request = headers
        .remove(forward::HOP_DEADLINE_HEADER)
        .and_then(|value| value.to_str().ok()?.parse::<u32>().ok());
    caller_deadline_ms(frame, per_request)
}

/// The answer once the caller's deadline passed: dropping the call closes
/// the connection to the instance, so it stops working for nobody.
pub(super) fn deadline_passed(
    agent: &ProxyHandles,
    frame: &ProxyFrame,
    limit: Duration,
) -> Response<ProxyBody> {
    debug!(instance = %frame.instance_id, service = %frame.service, ?limit, "the caller's deadline passed before the instance answered");
    json_error(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "instance {} of {} on node {} did not answer within the caller's deadline of {} ms",
            frame.instance_id,
            frame.service,
            agent.node_id(),
            limit.as_millis()
        ),
        "raise x-gossamer-timeout-ms, or check the service's latency",
    )
}

async fn handle(
    agent: &Arc<ProxyHandles>,
    frame: &ProxyFrame,
    allowed: bool,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    if !allowed {
        return not_own_instance(agent, frame);
    }
    let deadline = caller_deadline(frame, request.headers_mut());
    // This sidecar is a hop of its own: a new span in the caller's trace.
    super::trace::continue_trace(request.headers_mut());
    let asked_upgrade = upgrade::is_upgrade(request.headers());
    let downstream = asked_upgrade.then(|| hyper::upgrade::on(&mut request));
    let request = request.map(|body| body.map_err(Into::into).boxed());
    let sent = if asked_upgrade {
        upgrade::to_local(frame.address, request).await
    } else {
        let protocol = agent.upstreams.snapshot().protocol(&frame.service);
        let call = forward::to_local(&agent.http, protocol, frame.address, request);
        match deadline {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(sent) => sent,
                Err(_) => return deadline_passed(agent, frame, limit),
            },
        }
    };
    match sent {
        Ok(mut response) => {
            upgrade::splice_if_switched(
                downstream,
                &mut response,
                format!("upgrade to instance {}", frame.instance_id),
            );
            forward::boxed(response)
        }
        Err(e) => instance_failed(agent, frame, e).await,
    }
}

/// The answer to a frame naming no instance of this node.
pub(super) fn not_own_instance(agent: &ProxyHandles, frame: &ProxyFrame) -> Response<ProxyBody> {
    json_error(
        StatusCode::FORBIDDEN,
        format!(
            "node {} has no instance {:?} at {}; it only forwards to its own instances",
            agent.node_id(),
            frame.instance_id,
            frame.address
        ),
        "the caller's catalog is stale or the frame is forged; retry after the catalog converges",
    )
}

/// The answer when the instance failed; one it could not be connected to
/// is marked (the caller's sidecar may retry elsewhere) and reported to
/// passive health.
pub(super) async fn instance_failed(
    agent: &Arc<ProxyHandles>,
    frame: &ProxyFrame,
    error: SendError,
) -> Response<ProxyBody> {
    let mut response = json_error(
        StatusCode::BAD_GATEWAY,
        format!("instance {} of {} on node {} failed: {error}", frame.instance_id, frame.service, agent.node_id()),
        "the instance is down or not listening; the caller's sidecar retries safe requests elsewhere",
    );
    if matches!(error, SendError::Connect { .. }) {
        agent.health.connect_failed(&frame.instance_id).await;
        response
            .headers_mut()
            .insert(CONNECT_FAILURE_HEADER, http::HeaderValue::from_static("1"));
    }
    response
}
