//! The HTTP/1.1 fast path of the proxy port, for the requests most calls
//! are: HTTP/1.1, no body or a small one, to an HTTP service.
//!
//! Why it exists: through hyper's server and pooled client, each proxied
//! request cost about 34 µs of CPU, against HAProxy's 15–18 µs (issue 16).
//! The difference was not system calls (the same count) but the work
//! between them: a request and a response built as `http` types, a pool
//! checkout, and a hand-off to the client connection's task and back. Here
//! one task serves a caller's connection and takes links to the instances
//! (loopback connections, or kept QUIC streams to other nodes' sidecars)
//! from a shared pool: a head is parsed in place, written once with the
//! trace continued, and the answer's head rewritten and its body relayed
//! as it comes. The pipeline is the same as hyper's path, step by step: the
//! shared pick (with its decision record), the outcome to the balancer,
//! a retry of safe requests on another instance, passive health, the
//! timeout, metrics and the access log. [`serve_hop`] is the other end of a
//! kept stream.
//!
//! Anything else (a chunked or large body, an upgrade, `x-gossamer-*`
//! options, gRPC, h2c, a head it cannot parse) hands the connection, with
//! the bytes it read, to hyper for the rest of its life: the fast path
//! never answers what hyper would answer differently.

mod body;
mod far;
mod head;
mod pool;
mod response;
mod upstream;

pub use far::serve_hop;
pub use pool::LinkPool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use client::select::Requirements;
use http::StatusCode;
use http_body_util::BodyExt;
use mesh_proto::{Instance, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::answers::{failed_response, no_upstream, Failure};
use super::forward::{far_connect_failure, ProxyBody, SendError, HOP_DEADLINE_HEADER};
use super::{decide, json_error, route, InFlight, ProxyHandles};
use crate::catalog::CatalogSnapshot;
use crate::metrics;
use crate::server::prefixed::Prefixed;
use crate::server::Limits;
use body::{relay, RelayError};
use head::{Parsed, RequestHead, Side};
use response::{Annotation, Framing, ResponseHead};
use upstream::{exchange, Exchange, Opener, Sending, Target, Upstream};

/// Serves one connection of the proxy port: on the fast path while its
/// requests fit, then with hyper.
pub async fn serve_connection(
    agent: Arc<ProxyHandles>,
    mut down: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let mut head = match read_head(&mut down, &mut buf, limits, &mut stopping).await {
            Waited::Head(head) => head,
            Waited::Hyper => break,
            Waited::Closed => return,
        };
        let snapshot = agent.upstreams.snapshot();
        let live = agent.upstreams.live_instances(&snapshot, &head.service);
        if !fits(&snapshot, &head.service, &live) {
            break;
        }
        if !read_body(&mut down, &mut buf, &mut head, limits.header_read_timeout).await {
            return;
        }
        let keep_alive = serve_one(&agent, &mut down, head, &snapshot, live).await;
        if !keep_alive || *stopping.borrow() {
            return;
        }
    }
    let handler = Arc::new(move |request| {
        let agent = agent.clone();
        async move { super::handle(&agent, request).await }
    });
    let rest = Prefixed::new(buf.freeze(), down);
    crate::server::serve_http_connection(rest, peer, limits, stopping, handler).await;
}

/// True when the fast path serves a request for `service`: an HTTP/1.1
/// service with live instances (hyper explains the lack of any).
fn fits(snapshot: &CatalogSnapshot, service: &str, live: &[&Instance]) -> bool {
    let protocol = snapshot.protocol(service);
    protocol == Protocol::Http && !live.is_empty()
}

/// Reads the body `head` announced (at most [`head::MAX_BODY`]) into it,
/// within `limit`, and takes the head and body off `buf`. False when the
/// caller went away or was too slow: the connection then closes.
async fn read_body<S: AsyncRead + Unpin>(
    down: &mut S,
    buf: &mut BytesMut,
    head: &mut RequestHead,
    limit: std::time::Duration,
) -> bool {
    let whole = head.len + head.body_len;
    let deadline = tokio::time::Instant::now() + limit;
    while buf.len() < whole {
        buf.reserve(whole - buf.len());
        match tokio::time::timeout_at(deadline, down.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    if head.body_len > 0 {
        head.take_body(&buf[head.len..whole]);
    }
    buf.advance(whole);
    true
}

enum Waited {
    Head(RequestHead),
    Hyper,
    Closed,
}

/// Waits for the next request head: at most the listener's header
/// timeout, from the connection's start or the previous answer, as hyper's.
async fn read_head(
    down: &mut TcpStream,
    buf: &mut BytesMut,
    limits: Limits,
    stopping: &mut watch::Receiver<bool>,
) -> Waited {
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        if !buf.is_empty() {
            match head::parse_request(buf, Side::Caller) {
                Parsed::Partial => {}
                Parsed::Hyper => return Waited::Hyper,
                Parsed::Request(head) => return Waited::Head(head),
            }
        }
        buf.reserve(8 * 1024);
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, down.read_buf(buf)) => read,
            // Stopping: an idle connection closes (a request in flight finishes).
            _ = stopping.wait_for(|stop| *stop) => return Waited::Closed,
        };
        match read {
            Ok(Ok(0) | Err(_)) => return Waited::Closed,
            Ok(Ok(_)) => {}
            Err(_) => {
                metrics::http_connection_refused(limits.listener, "header_timeout");
                return Waited::Closed;
            }
        }
    }
}

/// Serves one request; true when the caller's connection may carry another.
async fn serve_one(
    agent: &Arc<ProxyHandles>,
    down: &mut TcpStream,
    head: RequestHead,
    snapshot: &CatalogSnapshot,
    live: Vec<&Instance>,
) -> bool {
    let started = Instant::now();
    let service = head.service.as_str();
    let arrival = agent.access_log.as_ref().map(|_| {
        super::access_log::Arrival::new(
            head.method(),
            head.target(),
            Some(head.request_id()),
            head.trace,
        )
    });
    let requirements =
        agent
            .upstreams
            .effective_requirements(snapshot, service, Requirements::default());
    let deadline = started + route::DEFAULT_TIMEOUT;
    let mut tried: Vec<String> = Vec::new();
    let mut last_failure: Option<Failure> = None;
    let answer = loop {
        let pick =
            match decide::pick_recorded(agent, snapshot, service, &live, requirements, &tried) {
                Ok(pick) => pick,
                Err(e) => break Answer::Own(no_upstream(service, &live, e, last_failure), None),
            };
        let Some(instance) = live.get(pick.index) else {
            let own = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "selection returned no instance",
                "retry",
            );
            break Answer::Own(own, None);
        };
        if !tried.is_empty() {
            ::metrics::counter!(metrics::RETRIES, "service" => service.to_owned()).increment(1);
        }
        let upstream = pick.upstream;
        let in_flight = InFlight::new(agent, service, &instance.id);
        let annotation = Annotation {
            upstream: &upstream,
            rtt_ms: pick.rtt_ms,
        };
        match send(agent, service, instance, &head, deadline, &annotation).await {
            Ok((conn, response)) => {
                in_flight.finish(response.status < 500);
                break Answer::Relay {
                    conn,
                    response,
                    upstream,
                    node: instance.node.as_str(),
                };
            }
            Err(Exchange::Timeout) => {
                drop(in_flight);
                let own = json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no response from {service} within {} ms",
                        route::DEFAULT_TIMEOUT.as_millis()
                    ),
                    "raise x-gossamer-timeout-ms, or check the service's latency",
                );
                break Answer::Own(own, None);
            }
            Err(Exchange::Failed(error)) => {
                if matches!(error, SendError::Connect { .. }) {
                    agent.health.connect_failed(&instance.id).await;
                }
                in_flight.finish(false);
                let retry = head.retryable
                    && tried.is_empty()
                    && agent
                        .upstreams
                        .with(service, |b| b.try_retry(Instant::now()));
                tried.push(instance.id.clone());
                let node = instance.node.to_string();
                last_failure = Some(Failure {
                    upstream,
                    error,
                    node,
                });
                if !retry {
                    let (own, node) = failed_response(service, last_failure);
                    break Answer::Own(own, node);
                }
            }
        }
    };

    let label = if snapshot.service(service).is_some() {
        service
    } else {
        metrics::UNKNOWN_SERVICE
    };
    match answer {
        Answer::Own(response, node) => {
            let status = response.status().as_u16();
            let upstream = response
                .headers()
                .get(route::UPSTREAM_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            agent
                .request_metrics
                .observe(label, node.as_deref(), status, "http1", started);
            if let (Some(log), Some(arrival)) = (&agent.access_log, arrival) {
                log.answered(
                    arrival,
                    service,
                    status,
                    upstream.as_deref(),
                    retries(&tried),
                    started.elapsed(),
                );
            }
            write_own(down, response, head.close).await.is_ok() && !head.close
        }
        Answer::Relay {
            conn,
            response,
            upstream,
            node,
        } => {
            agent
                .request_metrics
                .observe(label, Some(node), response.status, "http1", started);
            if let (Some(log), Some(arrival)) = (&agent.access_log, arrival) {
                log.answered(
                    arrival,
                    service,
                    response.status,
                    Some(&upstream),
                    retries(&tried),
                    started.elapsed(),
                );
            }
            let (more, link) = relay_answer(conn, response, down, head.close, service).await;
            if let Some(link) = link {
                agent.links.put(link);
            }
            more
        }
    }
}

/// Relays an instance's answer to `down`: whether `down` may carry
/// another request, and the link when it may carry one too.
async fn relay_answer<D: AsyncWrite + Unpin>(
    mut conn: Upstream,
    response: ResponseHead,
    down: &mut D,
    close_asked: bool,
    service: &str,
) -> (bool, Option<Upstream>) {
    let relayed = relay(
        response.framing,
        &response.out,
        &mut conn.buf,
        &mut conn.link,
        down,
    )
    .await;
    match relayed {
        Ok(()) => {
            let more = !close_asked && response.framing != Framing::UntilClose;
            let reusable = response.reusable && conn.buf.is_empty();
            (more, reusable.then_some(conn))
        }
        Err(RelayError::Upstream(why)) => {
            // The head is out: the caller can only learn by the
            // connection closing before the body's end.
            tracing::debug!(%service, %why, "answer cut short by the instance");
            (false, None)
        }
        Err(RelayError::Downstream) => (false, None),
    }
}

fn retries(tried: &[String]) -> u32 {
    u32::try_from(tried.len()).unwrap_or(u32::MAX)
}

enum Answer<'live> {
    /// The proxy's own answer, and the node it names (for the metric).
    Own(http::Response<ProxyBody>, Option<String>),
    /// An instance's answer, its body still to relay from `conn`.
    Relay {
        conn: Upstream,
        response: ResponseHead,
        upstream: String,
        /// Borrowed from the live instances: no copy per request.
        node: &'live str,
    },
}

/// Sends the request to `instance`: directly on this node, else on a
/// stream to its node's sidecar with the hop's deadline.
async fn send(
    agent: &ProxyHandles,
    service: &str,
    instance: &Instance,
    head: &RequestHead,
    deadline: Instant,
    annotation: &Annotation<'_>,
) -> Result<(Upstream, ResponseHead), Exchange> {
    let mut sending = Sending {
        head: &head.out,
        head_method: head.head_method,
        retryable: head.retryable,
        annotation: Some(annotation),
    };
    let deadline_at = tokio::time::Instant::from_std(deadline);
    if instance.node == *agent.node_id() {
        let target = Target {
            address: instance.address,
            via: None,
        };
        let reused = agent.links.take(target);
        return exchange(reused, target, &Opener::Direct, &sending, deadline_at).await;
    }
    let (sidecar, frame) =
        super::hop_to(agent, service, instance, deadline).map_err(Exchange::Failed)?;
    let timeout_ms = frame.timeout_ms;
    // The head with the hop's deadline before its blank line.
    let mut hop_head = Vec::with_capacity(head.out.len() + 48);
    hop_head.extend_from_slice(&head.out[..head.head_end - 2]);
    hop_head.extend_from_slice(format!("{HOP_DEADLINE_HEADER}: {timeout_ms}\r\n\r\n").as_bytes());
    hop_head.extend_from_slice(&head.out[head.head_end..]);
    sending.head = &hop_head;
    let target = Target {
        address: instance.address,
        via: Some(sidecar),
    };
    let opener = Opener::Hop {
        transport: &agent.transport,
        frame: &frame,
    };
    let reused = agent.links.take(target);
    let (conn, response) = exchange(reused, target, &opener, &sending, deadline_at).await?;
    if response.connect_failure {
        // Its unread answer leaves the stream unfit for another request.
        return Err(Exchange::Failed(far_connect_failure(&instance.id, sidecar)));
    }
    Ok((conn, response))
}

/// Writes one of the proxy's own (small, whole) answers.
async fn write_own<D: AsyncWrite + Unpin>(
    down: &mut D,
    response: http::Response<ProxyBody>,
    close: bool,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    down.write_all(&out).await
}
