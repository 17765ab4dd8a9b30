//! The outbound proxy the local service calls as
//! `http://<service>.localhost:<proxy-port>/…`.
//!
//! Each request goes through the same steps, each findable by name:
//! [`route`] (which service, what requirements), eligible and pick (the
//! shared selection module), [`forward`] (loopback or QUIC), observe
//! (outcome to the balancer, metrics, retry once when safe). An HTTP/1.1
//! `Upgrade` takes the same steps, then [`upgrade`] splices the connections
//! after the instance's 101. [`tcp`] serves the `--tcp` listeners with the
//! same selection, once per connection.

pub mod access_log;
mod answers;
mod decide;
pub mod fast;
pub mod forward;
pub mod grpc;
mod grpc_settle;
pub mod headers;
pub mod hop_pool;
pub mod idle_body;
pub mod inbound;
mod request_metrics;
pub mod route;
pub mod tcp;
pub mod trace;
pub mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::select::{Outcome, SelectError};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mesh_proto::frame::ProxyFrame;
use mesh_proto::{Instance, NodeId};
use tokio::net::TcpListener;
use tracing::debug;

use tokio::sync::watch;

use crate::decisions::Decisions;
use crate::health::PassiveHealth;
use crate::metrics;
use crate::transport::Transport;
use crate::upstreams::Upstreams;
use answers::{failed_response, no_upstream, Failure};
use decide::record;
use forward::{LocalClient, ProxyBody, SendError};
use route::Route;

/// What the proxy uses, on the calling side and the receiving side.
pub struct ProxyHandles {
    /// Candidates, RTT and balancers.
    pub upstreams: Arc<Upstreams>,
    /// Streams to peer sidecars.
    pub transport: Arc<Transport>,
    /// Keep-alive client for instances on this node.
    pub http: LocalClient,
    /// Kept hops to instances on other nodes.
    pub hops: Arc<hop_pool::HopPool>,
    /// Idle links of the HTTP/1.1 fast path.
    pub links: Arc<fast::LinkPool>,
    /// Marks local instances that refuse connections.
    pub health: Arc<PassiveHealth>,
    /// Turns true when the agent stops.
    pub shutdown: watch::Receiver<bool>,
    /// Recent routing decisions (read by the admin API and the UI).
    pub decisions: Arc<Decisions>,
    /// `--access-log`, when set.
    pub access_log: Option<access_log::AccessLog>,
    /// The request counters and duration histograms, by label set.
    pub request_metrics: request_metrics::RequestMetrics,
}

impl ProxyHandles {
    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.upstreams.node_id()
    }
}

/// Bodies up to this size of retryable requests are kept to be re-sent.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// Serves the proxy until the agent stops.
pub async fn serve(agent: Arc<ProxyHandles>, listener: TcpListener, limits: crate::server::Limits) {
    let shutdown = agent.shutdown.clone();
    crate::server::serve_with(listener, limits, shutdown, move |stream, peer, stopping| {
        fast::serve_connection(agent.clone(), stream, peer, limits, stopping)
    })
    .await;
}

/// Marks an answer the proxy made itself (not an instance's), with its
/// error and hint, so a gRPC caller can get it as a gRPC status.
#[derive(Debug, Clone)]
struct ProxyMade(String);

/// A JSON error response with `error` and `hint`.
pub fn json_error(
    status: StatusCode,
    error: impl Into<String>,
    hint: impl Into<String>,
) -> Response<ProxyBody> {
    let (error, hint) = (error.into(), hint.into());
    let made = ProxyMade(format!("{error} ({hint})"));
    let mut response = crate::reply::error(status, error, hint)
        .map(|body| body.map_err(|never| match never {}).boxed());
    response.extensions_mut().insert(made);
    response
}

/// The status code as a metric label, without formatting one per request
/// for the codes a proxy answers with most.
fn code_label(status: StatusCode) -> ::metrics::SharedString {
    let common = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return status.as_u16().to_string().into(),
    };
    ::metrics::SharedString::const_str(common)
}

/// Which protocol the caller spoke, for the `protocol` metric label.
fn protocol_label(request: &Request<Incoming>) -> &'static str {
    if grpc::is_grpc(request.headers()) {
        "grpc"
    } else if request.version() == http::Version::HTTP_2 {
        "http2"
    } else {
        "http1"
    }
}

/// The request body, kept whole when it may have to be sent twice.
enum RequestBody {
    Replayable(Bytes),
    Streaming(Option<Incoming>),
}

impl RequestBody {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Replayable(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed(),
            ),
            RequestBody::Streaming(body) => body.take().map(|b| b.map_err(Into::into).boxed()),
        }
    }
}

async fn handle(agent: &Arc<ProxyHandles>, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // A caller's unsupported request is the caller's 4xx: it must never
    // reach an instance and count against it (CONNECT ejected healthy ones).
    if request.method() == http::Method::CONNECT {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported by the proxy",
            "reach a TCP service through a --tcp listener (see Protocols in README.md)",
        );
    }
    let protocol = protocol_label(&request);
    let mut route = match route::route(request.method(), request.uri(), request.headers()) {
        Ok(route) => route,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.error, e.hint),
    };
    let trace = trace::continue_trace(request.headers_mut());
    let arrival = agent.access_log.as_ref().map(|_| {
        access_log::AccessLog::arrival(request.method(), request.uri(), request.headers(), trace)
    });
    // An upgraded connection is never retried: once it switches, bytes of
    // another protocol flow.
    let client_upgrade = upgrade::is_upgrade(request.headers()).then(|| {
        route.retryable = false;
        hyper::upgrade::on(&mut request)
    });
    let (parts, body) = request.into_parts();
    let replayable = route.retryable
        && body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= REPLAYABLE_BODY);
    let body = if replayable {
        match body.collect().await {
            Ok(collected) => RequestBody::Replayable(collected.to_bytes()),
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                    "send the whole body",
                )
            }
        }
    } else {
        RequestBody::Streaming(Some(body))
    };

    let service = route.service.clone();
    // Labels come only from the catalog: a name nobody registered is
    // `unknown`, so callers cannot grow the series without bound.
    let label = if agent.upstreams.snapshot().service(&service).is_some() {
        service.as_str()
    } else {
        metrics::UNKNOWN_SERVICE
    };
    let (response, upstream_node) =
        match tokio::time::timeout(route.timeout, attempts(agent, &route, started, parts, body))
            .await
        {
            Ok(result) => result,
            Err(_) => (
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no response from {service} within {} ms",
                        route.timeout.as_millis()
                    ),
                    "raise x-gossamer-timeout-ms, or check the service's latency",
                ),
                None,
            ),
        };
    let mut response = response;
    if protocol == "grpc" {
        response = grpc_if_proxy_made(response);
    }
    upgrade::splice_if_switched(
        client_upgrade,
        &mut response,
        format!("upgrade to {service}"),
    );
    if let Some(idle) = route.body_idle {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response = response.map(|body| idle_body::IdleTimeoutBody::new(body, idle).boxed());
        }
    }
    agent.request_metrics.observe(
        label,
        upstream_node.as_deref(),
        response.status().as_u16(),
        protocol,
        started,
    );
    if let (Some(log), Some(arrival)) = (&agent.access_log, arrival) {
        log.finished(arrival, &service, &response, started.elapsed());
    }
    response
}

/// For a gRPC caller, turns one of the proxy's own error answers (on
/// either sidecar) into a gRPC status: a JSON body would reach the client
/// as a framing error instead of the reason.
fn grpc_if_proxy_made(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    match response.extensions_mut().remove::<ProxyMade>() {
        Some(ProxyMade(message)) => grpc::as_grpc_status(response, &message, empty_body()),
        None => response,
    }
}

fn empty_body() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Reports the outcome of a picked instance even when the attempt is dropped
/// (timeout): otherwise its in-flight count would never come down.
struct InFlight<'a> {
    agent: &'a ProxyHandles,
    service: &'a str,
    instance: &'a str,
    started: Instant,
    done: bool,
}

impl<'a> InFlight<'a> {
    /// A request to `instance` of `service`, starting now.
    fn new(agent: &'a ProxyHandles, service: &'a str, instance: &'a str) -> Self {
        Self {
            agent,
            service,
            instance,
            started: Instant::now(),
            done: false,
        }
    }

    /// Leaves the report to the response body, for a call whose outcome
    /// comes at its end; the latency is still the head's.
    fn settle_later(mut self, agent: Arc<ProxyHandles>) -> grpc_settle::Settle {
        self.done = true;
        let latency = self.started.elapsed();
        let service = self.service.to_owned();
        let instance = self.instance.to_owned();
        Box::new(move |success| report(&agent, &service, &instance, latency, success))
    }

    fn finish(mut self, success: bool) {
        self.done = true;
        report(
            self.agent,
            self.service,
            self.instance,
            self.started.elapsed(),
            success,
        );
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            report(
                self.agent,
                self.service,
                self.instance,
                self.started.elapsed(),
                false,
            );
        }
    }
}

fn report(agent: &ProxyHandles, service: &str, instance: &str, latency: Duration, success: bool) {
    let outcome = if success {
        Outcome::Success { latency }
    } else {
        Outcome::Failure { latency }
    };
    let ejected = agent.upstreams.with(service, |b| {
        let before = b.ejections_total();
        b.report(instance, outcome, Instant::now());
        b.ejections_total() > before
    });
    if ejected {
        ::metrics::counter!(metrics::EJECTIONS, "service" => service.to_owned()).increment(1);
        debug!(%service, %instance, "instance ejected after consecutive failures");
    }
}

/// Picks, sends, and retries once on another instance when that is safe.
async fn attempts(
    agent: &Arc<ProxyHandles>,
    route: &Route,
    started: Instant,
    parts: http::request::Parts,
    mut body: RequestBody,
) -> (Response<ProxyBody>, Option<String>) {
    let mut parts = Some(parts);
    let service = route.service.as_str();
    let snapshot = agent.upstreams.snapshot();
    let protocol = snapshot.protocol(service);
    let requirements =
        agent
            .upstreams
            .effective_requirements(&snapshot, service, route.requirements);
    let mut tried: Vec<String> = Vec::new();
    let mut last_failure: Option<Failure> = None;
    loop {
        let live = agent.upstreams.live_instances(&snapshot, service);
        if live.is_empty() {
            // No balancer is made for a name without instances: unknown
            // names must leave no state behind.
            let error = SelectError::NoInstances {};
            record(
                agent,
                service,
                Err(&error),
                &[],
                requirements,
                !tried.is_empty(),
            );
            return (no_upstream(service, &live, error, last_failure), None);
        }
        let pick =
            match decide::pick_recorded(agent, &snapshot, service, &live, requirements, &tried) {
                Ok(pick) => pick,
                Err(e) => return (no_upstream(service, &live, e, last_failure), None),
            };
        let Some(instance) = live.get(pick.index) else {
            return (
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "selection returned no instance",
                    "retry",
                ),
                None,
            );
        };
        let in_flight = InFlight::new(agent, service, &instance.id);
        let Some(attempt_body) = body.take() else {
            return failed_response(service, last_failure);
        };
        // A safe or idempotent request may go again, once, even when the
        // connection broke after sending (a node died mid-call), if the
        // retry budget allows. Only then is its head copied for the next
        // attempt (a copy costs an allocation per header).
        let may_retry =
            route.retryable && matches!(body, RequestBody::Replayable(_)) && tried.is_empty();
        let attempt_parts = if may_retry {
            parts.clone()
        } else {
            parts.take()
        };
        let Some(attempt_parts) = attempt_parts else {
            return failed_response(service, last_failure);
        };
        let request = Request::from_parts(attempt_parts, attempt_body);
        let node = instance.node.to_string();
        if !tried.is_empty() {
            // Counted here, once another instance was picked: a retry
            // decided with nowhere left to go was never sent.
            ::metrics::counter!(metrics::RETRIES, "service" => service.to_owned()).increment(1);
        }
        let deadline = started + route.timeout;
        match send(agent, service, protocol, instance, request, deadline).await {
            Ok(response) => {
                // A gRPC refusal arrives as 200 with grpc-status UNAVAILABLE.
                let failed_at_head =
                    response.status().as_u16() >= 500 || grpc::is_unavailable(response.headers());
                let mut response = response;
                if !failed_at_head && grpc::is_grpc(response.headers()) {
                    // Any other gRPC call's status comes in its trailers.
                    let settle = in_flight.settle_later(agent.clone());
                    response = response
                        .map(|body| grpc_settle::SettleAtTrailers::new(body, settle).boxed());
                } else {
                    in_flight.finish(!failed_at_head);
                }
                // A switch of protocols keeps its Upgrade/Connection pair.
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    headers::strip_hop_by_hop(response.headers_mut());
                }
                annotate(&mut response, pick.upstream, pick.rtt_ms);
                if !tried.is_empty() {
                    let retries = access_log::Retries(tried.len() as u32);
                    response.extensions_mut().insert(retries);
                }
                return (response, Some(node));
            }
            Err(e) => {
                in_flight.finish(false);
                let retry = may_retry
                    && agent
                        .upstreams
                        .with(service, |b| b.try_retry(Instant::now()));
                tried.push(instance.id.clone());
                last_failure = Some(Failure {
                    upstream: pick.upstream,
                    error: e,
                    node,
                });
                if !retry {
                    return failed_response(service, last_failure);
                }
            }
        }
    }
}

async fn send(
    agent: &ProxyHandles,
    service: &str,
    protocol: mesh_proto::Protocol,
    instance: &Instance,
    request: Request<ProxyBody>,
    deadline: Instant,
) -> Result<Response<ProxyBody>, SendError> {
    if instance.node == *agent.node_id() {
        let result = if upgrade::is_upgrade(request.headers()) {
            upgrade::to_local(instance.address, request).await
        } else {
            forward::to_local(&agent.http, protocol, instance.address, request).await
        };
        if matches!(result, Err(SendError::Connect { .. })) {
            agent.health.connect_failed(&instance.id).await;
        }
        return result.map(forward::boxed);
    }
    let (sidecar, frame) = hop_to(agent, service, instance, deadline)?;
    forward::over_quic(&agent.transport, &agent.hops, sidecar, frame, request).await
}

/// The sidecar of `instance`'s node and the frame that opens a stream to
/// it, for a request due by `deadline`.
fn hop_to(
    agent: &ProxyHandles,
    service: &str,
    instance: &Instance,
    deadline: Instant,
) -> Result<(std::net::SocketAddr, ProxyFrame), SendError> {
    let sidecar = agent
        .upstreams
        .sidecar_addr(&instance.node)
        .ok_or_else(|| SendError::Connect {
            target: instance.node.to_string(),
            reason: "the node left the cluster".to_owned(),
        })?;
    let frame = ProxyFrame {
        instance_id: instance.id.clone(),
        address: instance.address,
        service: service.to_owned(),
        // The far sidecar gives up shortly after the caller would: without
        // it, a partition that swallows the caller's stream reset would
        // leave the far side waiting on the instance until its idle
        // timeout. The grace lets the caller's own timer answer first,
        // with the deadline the caller set.
        timeout_ms: remaining_ms(deadline, Instant::now()).saturating_add(FAR_SIDE_GRACE_MS),
    };
    Ok((sidecar, frame))
}

/// How much later than the caller the far sidecar gives up.
const FAR_SIDE_GRACE_MS: u32 = 250;

/// Milliseconds left until `deadline`, at least 1 (0 on the wire means
/// "no deadline", which a caller that still waits never means).
fn remaining_ms(deadline: Instant, now: Instant) -> u32 {
    let left = deadline.saturating_duration_since(now).as_millis();
    u32::try_from(left).unwrap_or(u32::MAX).max(1)
}

/// Names where an answer came from: `upstream` is the pick's `node/instance`
/// (taken as the header's bytes, not copied).
fn annotate(response: &mut Response<ProxyBody>, upstream: String, rtt_ms: Option<f64>) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::try_from(upstream) {
        headers.insert(route::UPSTREAM_HEADER, value);
    }
    if let Some(rtt) = rtt_ms {
        if let Ok(value) = HeaderValue::try_from(format!("{rtt:.2}")) {
            headers.insert(route::RTT_HEADER, value);
        }
    }
}
