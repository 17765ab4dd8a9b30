//! The admin HTTP API (JSON, loopback by default): health, members, catalog
//! reads with blocking queries, and writes. Bad input gets 400 with `error`
//! and `hint`; unknown names 404; never a 500 for anything a caller sent.

// Validation errors here *are* the HTTP reply, built once on the error path
// of a request; boxing them would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client::select::Requirements;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use mesh_proto::api::{RegisterInstance, INDEX_HEADER};
use mesh_proto::catalog::{Definition, EXTENSION_PREFIX};
use mesh_proto::names::{validate_id, validate_service_name};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::catalog::CatalogSnapshot;
use crate::handles::AdminHandles;
use crate::registry::{Invalid, Refusal};
use crate::reply::{self, JsonResponse};
use crate::{server, views};

pub mod auth;
pub mod supervise;

/// Decisions `GET /v1/decisions` returns without `?limit=`.
const DEFAULT_DECISIONS: u64 = 50;
/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Default and longest wait of a blocking query (as Consul).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Serves the admin API until the agent stops.
pub async fn serve(agent: Arc<AdminHandles>, listener: TcpListener, limits: server::Limits) {
    let shutdown = agent.shutdown.clone();
    server::serve(listener, limits, shutdown, move |request| {
        let agent = agent.clone();
        async move {
            if let Some(refused) = auth::check(
                agent.admin_token.as_ref(),
                request.method(),
                request.headers(),
            ) {
                return refused.map(|body| body.map_err(|never| match never {}).boxed());
            }
            if request.method() == Method::GET && request.uri().path() == "/v1/events" {
                return crate::ui::sse::events(&agent);
            }
            let mut response = route(&agent, request).await;
            // Errors carry the index too, so a watcher waiting for a name to
            // appear can block on the index of its 404.
            if !response.headers().contains_key(INDEX_HEADER) {
                if let Ok(value) = http::HeaderValue::from_str(&agent.catalog.index().to_string()) {
                    response.headers_mut().insert(INDEX_HEADER, value);
                }
            }
            response.map(|body| body.map_err(|never| match never {}).boxed())
        }
    })
    .await;
}

/// Serves `/metrics`.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    limits: server::Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    server::serve(
        listener,
        limits,
        shutdown,
        move |request: Request<Incoming>| {
            let handle = handle.clone();
            async move {
                if request.uri().path() == "/metrics" {
                    crate::metrics::collect_process();
                    let mut response = Response::new(Full::new(Bytes::from(handle.render())));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                } else {
                    reply::error(
                        StatusCode::NOT_FOUND,
                        format!("no such path {}", request.uri().path()),
                        "metrics are at /metrics",
                    )
                }
            }
        },
    )
    .await;
}

/// Query parameters the API understands.
#[derive(Debug, Default)]
struct Query {
    index: Option<u64>,
    wait: Option<Duration>,
    hard_rtt_ms: Option<u32>,
    soft_rtt_ms: Option<u32>,
    limit: Option<u64>,
}

fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> JsonResponse {
    reply::error(StatusCode::BAD_REQUEST, error, hint)
}

fn parse_query(raw: Option<&str>) -> Result<Query, JsonResponse> {
    let mut query = Query::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value.parse::<u64>().map_err(|_| {
                bad_request(
                    format!("{what}={value:?} is not a whole number"),
                    format!("pass {what}=N with N ≥ 0"),
                )
            })
        };
        let millis = |what: &str| -> Result<u32, JsonResponse> {
            number(what)?.try_into().map_err(|_| {
                bad_request(
                    format!("{what}={value} is too large"),
                    "pass milliseconds below 4294967296",
                )
            })
        };
        match key {
            "index" => query.index = Some(number("index")?),
            "wait" => query.wait = Some(parse_wait(value)?),
            "hard_rtt_ms" => query.hard_rtt_ms = Some(millis("hard_rtt_ms")?),
            "soft_rtt_ms" => query.soft_rtt_ms = Some(millis("soft_rtt_ms")?),
            "limit" => query.limit = Some(number("limit")?),
            _ => {}
        }
    }
    Ok(query)
}

/// Parses `30s`, `5m`, `250ms` or a plain number of seconds.
fn parse_wait(text: &str) -> Result<Duration, JsonResponse> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let amount: u64 = digits.parse().map_err(|_| {
        bad_request(
            format!("wait={text:?} is not a duration"),
            "use for example wait=30s, wait=5m or wait=500ms",
        )
    })?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(amount),
        "ms" => Duration::from_millis(amount),
        "m" => Duration::from_secs(amount.saturating_mul(60)),
        _ => {
            return Err(bad_request(
                format!("wait={text:?} has an unknown unit"),
                "use s, m or ms",
            ))
        }
    };
    Ok(duration.min(MAX_WAIT))
}

/// What a blocking read watches: the index of its own answer, so a watcher
/// of one service is not woken by writes to another.
#[derive(Debug, Clone, Copy)]
enum Watched<'a> {
    /// The whole catalog (service lists, nodes).
    Catalog,
    /// One service's definition and instances.
    Service(&'a str),
}

impl Watched<'_> {
    /// The index of the answer in `snapshot`; a service nobody named yet
    /// answers with the catalog's index, so the watcher waits for it to appear.
    fn index(self, snapshot: &CatalogSnapshot) -> u64 {
        match self {
            Watched::Catalog => snapshot.index,
            Watched::Service(name) => snapshot.service(name).map_or(snapshot.index, |s| s.index),
        }
    }

    fn changed_past(self, snapshot: &CatalogSnapshot, index: u64) -> bool {
        match self {
            Watched::Catalog => snapshot.index > index,
            Watched::Service(name) => snapshot.service(name).is_some_and(|s| s.index > index),
        }
    }
}

/// Waits until what `watched` answers changed past `query.index`, or the
/// wait ends; returns the snapshot to answer from.
async fn block(agent: &AdminHandles, query: &Query, watched: Watched<'_>) -> Arc<CatalogSnapshot> {
    let mut changes = agent.catalog.subscribe();
    let Some(index) = query.index else {
        return changes.borrow().clone();
    };
    let wait = query.wait.unwrap_or(DEFAULT_WAIT);
    // Jitter spreads the wake-ups of many watchers, as Consul does.
    let jitter = wait.mul_f64(rand::random::<f64>() / 16.0);
    // An index above ours comes from before this agent restarted (the index
    // starts again at 1): answer at once so the watcher picks up the new one,
    // instead of blocking until the catalog happens to catch up.
    if index > changes.borrow().index {
        return changes.borrow().clone();
    }
    let mut stopping = agent.shutdown.clone();
    // A stopping agent answers blocked readers at once, so they can go to
    // another agent instead of holding this one's drain.
    tokio::select! {
        _ = tokio::time::timeout(
            wait + jitter,
            changes.wait_for(|snapshot| watched.changed_past(snapshot, index)),
        ) => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    let snapshot = changes.borrow().clone();
    snapshot
}

async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, JsonResponse> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                reply::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {MAX_BODY} bytes"),
                    "send a smaller JSON document",
                )
            } else {
                bad_request(
                    format!("cannot read the request body: {e}"),
                    "send the whole body",
                )
            }
        })?;
    let body = body.to_bytes();
    // serde would also take a JSON array as a struct's fields in order;
    // the API documents objects only.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(bad_request(
                "the request body is empty",
                "send a JSON object with the fields documented in README.md",
            ))
        }
        Some(_) => {
            return Err(bad_request(
                "the request body is not a JSON object",
                "send a JSON object ({...}) with the fields documented in README.md",
            ))
        }
    }
    serde_json::from_slice(&body).map_err(|e| {
        bad_request(
            format!("invalid JSON body: {e}"),
            "check field names and types against the API in README.md",
        )
    })
}

async fn route(agent: &Arc<AdminHandles>, request: Request<Incoming>) -> JsonResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = match parse_query(request.uri().query()) {
        Ok(query) => query,
        Err(response) => return response,
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "health"]) => reply::json(
            StatusCode::OK,
            &views::health(agent).await,
            Some(agent.catalog.index()),
        ),
        (&Method::GET, ["v1", "nodes"]) => {
            let snapshot = block(agent, &query, Watched::Catalog).await;
            reply::json(
                StatusCode::OK,
                &views::nodes(agent).await,
                Some(snapshot.index),
            )
        }
        (&Method::GET, ["v1", "services"]) => {
            let snapshot = block(agent, &query, Watched::Catalog).await;
            reply::json(
                StatusCode::OK,
                &views::services(agent),
                Some(snapshot.index),
            )
        }
        (_, ["v1", "services", name]) => service(agent, &method, name, &query, request).await,
        (&Method::GET, ["v1", "services", name, "instances"]) => {
            if let Err(response) = check_service_name(name) {
                return response;
            }
            let watched = Watched::Service(name);
            let snapshot = block(agent, &query, watched).await;
            let caller = Requirements {
                hard_rtt_ms: query.hard_rtt_ms,
                soft_rtt_ms: query.soft_rtt_ms,
            };
            reply::json(
                StatusCode::OK,
                &views::instances(agent, name, caller),
                Some(watched.index(&snapshot)),
            )
        }
        (&Method::GET, ["v1", "decisions"]) => {
            let limit = query.limit.unwrap_or(DEFAULT_DECISIONS);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            reply::json(
                StatusCode::OK,
                &agent.decisions.recent(limit),
                Some(agent.catalog.index()),
            )
        }
        (&Method::GET, ["v1", "agent", "listeners"]) => reply::json(
            StatusCode::OK,
            &agent.listeners,
            Some(agent.catalog.index()),
        ),
        (&Method::GET, ["ui"]) => crate::ui::page(agent, request.uri().query()).await,
        (&Method::GET, ["ui", asset]) => match crate::ui::asset(asset) {
            Some(response) => response,
            None => reply::error(
                StatusCode::NOT_FOUND,
                format!("no such UI asset {asset:?}"),
                "the UI is at /ui",
            ),
        },
        (&Method::PUT, ["v1", "instances"]) => register(agent, request).await,
        (&Method::DELETE, ["v1", "instances", id]) => deregister(agent, id).await,
        (_, ["v1", "supervise" | "placement", ..]) => {
            supervise::route(agent, &method, &segments, request.uri().query()).await
        }
        (_, ["v1", rest @ ..]) => match allowed_methods(rest) {
            Some(allow) => method_not_allowed(&method, &path, allow),
            None => reply::error(
                StatusCode::NOT_FOUND,
                format!("no route for {method} {path}"),
                "see the admin API in README.md: /v1/health, /v1/nodes, /v1/services, /v1/instances",
            ),
        },
        _ => reply::error(
            StatusCode::NOT_FOUND,
            format!("no such path {path}"),
            "the admin API lives under /v1/, the web UI at /ui",
        ),
    }
}

/// The methods a known path (after `/v1/`) accepts, for a 405 answer.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["health"]
        | ["nodes"]
        | ["services"]
        | ["services", _, "instances"]
        | ["decisions"]
        | ["events"]
        | ["agent", "listeners"] => Some("GET"),
        ["services", _] => Some("GET, PUT, DELETE"),
        ["instances"] => Some("PUT"),
        ["instances", _] => Some("DELETE"),
        _ => None,
    }
}

fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> JsonResponse {
    let mut response = reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on {path}"),
        format!("use {allow}"),
    );
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

fn check_service_name(name: &str) -> Result<(), JsonResponse> {
    validate_service_name(name).map_err(|e| {
        bad_request(
            e.to_string(),
            "service names are DNS labels, for example \"billing-api\"",
        )
    })
}

async fn service(
    agent: &Arc<AdminHandles>,
    method: &Method,
    name: &str,
    query: &Query,
    request: Request<Incoming>,
) -> JsonResponse {
    if let Err(response) = check_service_name(name) {
        return response;
    }
    let not_found = || {
        reply::error(
            StatusCode::NOT_FOUND,
            format!("no definition of service {name:?}"),
            "list services with GET /v1/services, or write one with PUT /v1/services/NAME",
        )
    };
    match *method {
        Method::GET => {
            let watched = Watched::Service(name);
            let snapshot = block(agent, query, watched).await;
            match snapshot.definition(name) {
                Some(definition) => {
                    reply::json(StatusCode::OK, definition, Some(watched.index(&snapshot)))
                }
                None => {
                    let mut response = not_found();
                    if let Ok(value) =
                        http::HeaderValue::from_str(&watched.index(&snapshot).to_string())
                    {
                        response.headers_mut().insert(INDEX_HEADER, value);
                    }
                    response
                }
            }
        }
        Method::PUT => {
            let definition: Definition = match read_json(request).await {
                Ok(d) => d,
                Err(response) => return response,
            };
            let definition = match check_definition(name, definition) {
                Ok(d) => d,
                Err(response) => return response,
            };
            if let Err(refused) = agent.registry.put_definition(definition.clone()).await {
                return refusal(refused);
            }
            reply::json(StatusCode::OK, &definition, Some(agent.catalog.index()))
        }
        Method::DELETE => {
            if agent.catalog.snapshot().definition(name).is_none() {
                return not_found();
            }
            if let Err(refused) = agent.registry.delete_definition(name).await {
                return refusal(refused);
            }
            reply::json(
                StatusCode::OK,
                &serde_json::json!({ "deleted": name }),
                Some(agent.catalog.index()),
            )
        }
        _ => method_not_allowed(method, &format!("/v1/services/{name}"), "GET, PUT, DELETE"),
    }
}

/// Validates a definition and fills in its content hash.
fn check_definition(name: &str, mut definition: Definition) -> Result<Definition, JsonResponse> {
    if definition.name.is_empty() {
        definition.name = name.to_owned();
    }
    if definition.name != name {
        return Err(bad_request(
            format!(
                "the body names service {:?} but the path names {name:?}",
                definition.name
            ),
            "make \"name\" match the path, or omit it",
        ));
    }
    let requirements = &definition.requirements;
    if let (Some(soft), Some(hard)) = (requirements.soft_rtt_ms, requirements.hard_rtt_ms) {
        if soft > hard {
            return Err(bad_request(
                format!("soft_rtt_ms {soft} is above hard_rtt_ms {hard}"),
                "the soft requirement is a preference inside the hard limit: make soft ≤ hard",
            ));
        }
    }
    if let Some(name) = definition
        .endpoints
        .keys()
        .find(|k| k.starts_with(EXTENSION_PREFIX))
    {
        return Err(bad_request(
            format!("endpoint name {name:?} starts with the reserved {EXTENSION_PREFIX:?}"),
            "rename the endpoint (names starting with that prefix carry fields on the wire)",
        ));
    }
    if let Some(repository) = &definition.repository {
        if repository.url.trim().is_empty() {
            return Err(bad_request(
                "repository.url is empty",
                "give the clone URL, for example \"repository\": {\"url\": \"https://github.com/acme/billing.git\"}, or drop \"repository\"",
            ));
        }
    }
    let repository = definition.repository.iter();
    let texts = std::iter::once(&definition.version)
        .chain(definition.image.iter())
        .chain(repository.clone().map(|r| &r.url))
        .chain(repository.filter_map(|r| r.container_file.as_ref()))
        .chain(definition.endpoints.keys())
        .chain(definition.endpoints.values())
        .chain(definition.client_sdks.keys())
        .chain(definition.client_sdks.values());
    for text in texts {
        if text.len() > 2048 {
            return Err(bad_request(
                "a field of the definition is longer than 2048 characters",
                "shorten URLs and names",
            ));
        }
    }
    if definition.endpoints.len() + definition.client_sdks.len() > 64 {
        return Err(bad_request(
            "more than 64 endpoints and SDK URLs",
            "keep at most 64",
        ));
    }
    definition.content_hash = String::new();
    let canonical = serde_json::to_vec(&definition).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    definition.content_hash = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Ok(definition)
}

async fn register(agent: &Arc<AdminHandles>, request: Request<Incoming>) -> JsonResponse {
    let registration: RegisterInstance = match read_json(request).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    match agent.registry.register(registration, true).await {
        Ok(instance) => reply::json(StatusCode::OK, &instance, Some(agent.catalog.index())),
        Err(refused) => refusal(refused),
    }
}

/// The answer to a write the registry refused.
fn refusal(refused: Invalid) -> JsonResponse {
    let status = match refused.refusal {
        Refusal::BadInput => StatusCode::BAD_REQUEST,
        Refusal::Conflict => StatusCode::CONFLICT,
        Refusal::NotDurable => StatusCode::INSUFFICIENT_STORAGE,
    };
    reply::error(status, refused.error, refused.hint)
}

async fn deregister(agent: &Arc<AdminHandles>, id: &str) -> JsonResponse {
    if let Err(e) = validate_id("instance id", id) {
        return bad_request(
            e.to_string(),
            "pass the id shown by GET /v1/services/NAME/instances",
        );
    }
    let removed = match agent.registry.deregister(id).await {
        Ok(removed) => removed,
        Err(refused) => return refusal(refused),
    };
    if removed {
        reply::json(
            StatusCode::OK,
            &serde_json::json!({ "deregistered": id }),
            Some(agent.catalog.index()),
        )
    } else {
        reply::error(
            StatusCode::NOT_FOUND,
            format!(
                "no instance {id:?} registered on this node ({})",
                agent.node_id()
            ),
            "an instance can only be deregistered through the agent of the node it runs on",
        )
    }
}
