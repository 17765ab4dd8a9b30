//! The HTTP/1.1 fast path of the proxy port, for the requests most calls
//! are: no body, HTTP/1.1, to an HTTP service whose live instances are all
//! on this node.
//!
//! Why it exists: through hyper's server and pooled client, each proxied
//! request cost about 34 µs of CPU, against HAProxy's 15–18 µs (issue 16).
//! The difference was not system calls (the same count) but the work
//! between them: a request and a response built as `http` types, a pool
//! checkout, and a hand-off to the client connection's task and back. Here
//! one task serves a caller's connection and keeps its own connections to
//! the instances: a head is parsed in place, written once with the trace
//! continued, and the answer's head rewritten and its body relayed as it
//! comes. The pipeline is the same as hyper's path, step by step: the
//! shared pick (with its decision record), the outcome to the balancer,
//! a retry of safe requests on another instance, passive health, the
//! timeout, metrics and the access log.
//!
//! Anything else (a body, an upgrade, `x-gossamer-*` options, gRPC, h2c,
//! an instance on another node, a head it cannot parse) hands the
//! connection, with the bytes it read, to hyper for the rest of its life:
//! the fast path never answers what hyper would answer differently.

mod body;
mod head;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use client::select::Requirements;
use http::StatusCode;
use http_body_util::BodyExt;
use mesh_proto::{Instance, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::answers::{failed_response, no_upstream, Failure};
use super::forward::{ProxyBody, SendError};
use super::{decide, json_error, route, InFlight, ProxyHandles};
use crate::catalog::CatalogSnapshot;
use crate::metrics;
use crate::server::prefixed::Prefixed;
use crate::server::Limits;
use body::{relay, RelayError, READ_CHUNK};
use head::{Annotation, Parsed, RequestHead, ResponseHead, ResponseParsed};

/// Connections to instances one caller's connection keeps open.
const KEPT_PER_CONNECTION: usize = 4;
/// Longest wait for a connection to an instance (as the pooled client's).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    let mut kept = Kept::default();
    let mut handles = MetricHandles::default();
    loop {
        let head = match read_head(&mut down, &mut buf, limits, &mut stopping).await {
            Waited::Head(head) => head,
            Waited::Hyper => break,
            Waited::Closed => return,
        };
        let snapshot = agent.upstreams.snapshot();
        let live = agent.upstreams.live_instances(&snapshot, &head.service);
        if !fits(&agent, &snapshot, &head.service, &live) {
            break;
        }
        buf.advance(head.len);
        let keep_alive = serve_one(
            &agent,
            &mut down,
            head,
            &snapshot,
            live,
            &mut kept,
            &mut handles,
        )
        .await;
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
/// service whose live instances are all on this node.
fn fits(
    agent: &ProxyHandles,
    snapshot: &CatalogSnapshot,
    service: &str,
    live: &[Instance],
) -> bool {
    let protocol = snapshot
        .definition(service)
        .map(|d| d.protocol)
        .unwrap_or_default();
    protocol == Protocol::Http
        && !live.is_empty()
        && live.iter().all(|i| i.node == *agent.node_id())
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
            match head::parse_request(buf) {
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
    live: Vec<Instance>,
    kept: &mut Kept,
    handles: &mut MetricHandles,
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
        let upstream = format!("{}/{}", instance.node, instance.id);
        let in_flight = InFlight {
            agent,
            service,
            instance: instance.id.clone(),
            started: Instant::now(),
            done: false,
        };
        let annotation = Annotation {
            upstream: &upstream,
            rtt_ms: pick.rtt_ms,
        };
        match exchange(kept, instance.address, &head, deadline, &annotation).await {
            Ok((conn, response)) => {
                in_flight.finish(response.status < 500);
                break Answer::Relay {
                    conn,
                    response,
                    upstream,
                    node: instance.node.to_string(),
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
            handles.observe(label, node.as_deref(), status, started);
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
            mut conn,
            response,
            upstream,
            node,
        } => {
            handles.observe(label, Some(&node), response.status, started);
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
            let relayed = relay(
                response.framing,
                &response.out,
                &mut conn.buf,
                &mut conn.stream,
                down,
            )
            .await;
            match relayed {
                Ok(()) => {
                    if response.reusable && conn.buf.is_empty() {
                        kept.put(conn);
                    }
                    !head.close && response.framing != head::Framing::UntilClose
                }
                Err(RelayError::Upstream(why)) => {
                    // The head is out: the caller can only learn by the
                    // connection closing before the body's end.
                    tracing::debug!(%service, %upstream, %why, "answer cut short by the instance");
                    false
                }
                Err(RelayError::Downstream) => false,
            }
        }
    }
}

fn retries(tried: &[String]) -> u32 {
    u32::try_from(tried.len()).unwrap_or(u32::MAX)
}

enum Answer {
    /// The proxy's own answer, and the node it names (for the metric).
    Own(http::Response<ProxyBody>, Option<String>),
    /// An instance's answer, its body still to relay from `conn`.
    Relay {
        conn: Upstream,
        response: ResponseHead,
        upstream: String,
        node: String,
    },
}

/// Writes one of the proxy's own (small, whole) answers.
async fn write_own(
    down: &mut TcpStream,
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

/// A connection to an instance, with what was read from it and not yet used.
struct Upstream {
    address: SocketAddr,
    stream: TcpStream,
    buf: BytesMut,
}

/// The connections to instances one caller's connection keeps.
#[derive(Default)]
struct Kept {
    idle: Vec<Upstream>,
}

impl Kept {
    /// An idle connection to `address` the instance has not closed.
    fn take(&mut self, address: SocketAddr) -> Option<Upstream> {
        while let Some(at) = self.idle.iter().position(|c| c.address == address) {
            let conn = self.idle.swap_remove(at);
            // Readable now means closed (0) or bytes nobody asked for: unfit.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    fn put(&mut self, conn: Upstream) {
        if self.idle.len() >= KEPT_PER_CONNECTION {
            self.idle.remove(0);
        }
        self.idle.push(conn);
    }
}

enum Exchange {
    /// No answer before the deadline.
    Timeout,
    /// No answer: why, as the hyper path says it.
    Failed(SendError),
}

/// Sends the head to the instance at `address` and reads the answer's head.
/// A kept connection the instance closed meanwhile is replaced by a new
/// one when the request may be sent again.
async fn exchange(
    kept: &mut Kept,
    address: SocketAddr,
    head: &RequestHead,
    deadline: Instant,
    annotation: &Annotation<'_>,
) -> Result<(Upstream, ResponseHead), Exchange> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let broken = |reason: String| {
        Exchange::Failed(SendError::Broken {
            target: address.to_string(),
            reason,
        })
    };
    let mut reused = kept.take(address);
    loop {
        let was_kept = reused.is_some();
        let mut conn = match reused.take() {
            Some(conn) => conn,
            None => connect(address, deadline).await?,
        };
        let sent = tokio::time::timeout_at(deadline, conn.stream.write_all(&head.out)).await;
        match sent {
            Err(_) => return Err(Exchange::Timeout),
            // A kept connection may have closed since: the head never got there.
            Ok(Err(_)) if was_kept => continue,
            Ok(Err(e)) => return Err(broken(format!("cannot send the request: {e}"))),
            Ok(Ok(())) => {}
        }
        let mut informational = Vec::new();
        loop {
            match head::parse_response(&conn.buf, head.head_method, annotation) {
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
            conn.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, conn.stream.read_buf(&mut conn.buf)).await {
                Err(_) => return Err(Exchange::Timeout),
                Ok(Ok(n)) if n > 0 => {}
                // Closed before a byte of answer: on a kept connection that
                // is the keep-alive race; send again if that is safe.
                Ok(result)
                    if was_kept
                        && conn.buf.is_empty()
                        && informational.is_empty()
                        && head.retryable =>
                {
                    tracing::debug!(%address, ?result, "kept connection closed before answering; sending again on a new one");
                    break;
                }
                Ok(Ok(_)) => {
                    return Err(broken(
                        "the instance closed the connection before answering".to_owned(),
                    ))
                }
                Ok(Err(e)) => return Err(broken(format!("cannot read the answer: {e}"))),
            }
        }
    }
}

async fn connect(
    address: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<Upstream, Exchange> {
    let limit = deadline.min(tokio::time::Instant::now() + CONNECT_TIMEOUT);
    let failed = |reason: String| {
        Exchange::Failed(SendError::Connect {
            target: address.to_string(),
            reason,
        })
    };
    let stream = match tokio::time::timeout_at(limit, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) if limit < deadline => return Err(failed("connect timed out".to_owned())),
        Err(_) => return Err(Exchange::Timeout),
    };
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        address,
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
    })
}

/// The request counter and duration histogram of the last label set this
/// connection used: a connection mostly calls one service on one node, so
/// the metric keys are built once, not per request.
#[derive(Default)]
struct MetricHandles {
    last: Option<(
        (String, String, u16),
        ::metrics::Counter,
        ::metrics::Histogram,
    )>,
}

impl MetricHandles {
    fn observe(&mut self, service: &str, node: Option<&str>, status: u16, started: Instant) {
        let node = node.unwrap_or("none");
        let same = self
            .last
            .as_ref()
            .is_some_and(|((s, n, c), _, _)| s == service && n == node && *c == status);
        if !same {
            let code = StatusCode::from_u16(status)
                .map_or_else(|_| status.to_string().into(), super::code_label);
            let counter = ::metrics::counter!(
                metrics::PROXY_REQUESTS,
                "service" => service.to_owned(),
                "upstream_node" => node.to_owned(),
                "code" => code,
                "protocol" => "http1"
            );
            let histogram =
                ::metrics::histogram!(metrics::PROXY_DURATION, "service" => service.to_owned());
            self.last = Some((
                (service.to_owned(), node.to_owned(), status),
                counter,
                histogram,
            ));
        }
        if let Some((_, counter, histogram)) = &self.last {
            counter.increment(1);
            histogram.record(started.elapsed().as_secs_f64());
        }
    }
}
