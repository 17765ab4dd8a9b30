//! The web UI at `/ui` on the admin listener (a front): server-rendered HTML
//! that works without JavaScript, a small embedded script that refreshes
//! the page's live part when the server-sent event stream `/v1/events` says
//! something changed, and assets embedded in the binary (no CDN).
//!
//! Everything shown comes from the same views the JSON API answers with;
//! every name from the catalog is escaped ([`html::escape`]).

pub mod html;
pub mod sse;

use bytes::Bytes;
use client::select::Requirements;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::handles::AdminHandles;
use crate::reply::JsonResponse;
use crate::supervise::logs;
use crate::views;

/// Decisions shown on the page.
const DECISIONS_SHOWN: usize = 30;
/// Log lines shown per supervised service.
const LOG_TAIL: usize = 12;

/// The page's script, embedded.
const SCRIPT: &str = include_str!("assets/app.js");
/// The page's style sheet, embedded.
const STYLE: &str = include_str!("assets/app.css");

/// `GET /ui` (the whole page) or `GET /ui?fragment=main` (the live part
/// only, which the script swaps in).
pub async fn page(agent: &AdminHandles, query: Option<&str>) -> JsonResponse {
    let fragment = query
        .unwrap_or("")
        .split('&')
        .any(|pair| pair == "fragment=main");
    let model = gather(agent).await;
    let body = if fragment {
        html::live(&model)
    } else {
        html::page(&model)
    };
    text(StatusCode::OK, "text/html; charset=utf-8", body)
}

/// `GET /ui/app.js` and `GET /ui/app.css`.
pub fn asset(name: &str) -> Option<JsonResponse> {
    match name {
        "app.js" => Some(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            SCRIPT.to_owned(),
        )),
        "app.css" => Some(text(
            StatusCode::OK,
            "text/css; charset=utf-8",
            STYLE.to_owned(),
        )),
        _ => None,
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> JsonResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Nothing on the page comes from elsewhere; say so to the browser.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'"),
    );
    response
}

/// What one rendering of the page shows.
pub struct Model {
    /// `GET /v1/health`.
    pub health: mesh_proto::api::HealthView,
    /// `GET /v1/nodes`.
    pub nodes: Vec<mesh_proto::api::NodeView>,
    /// Estimated RTT between two other nodes, from the coordinates they published.
    pub matrix: Vec<Vec<Cell>>,
    /// The strictest hard requirement among definitions, for the matrix.
    pub strictest_hard_ms: Option<u32>,
    /// Every service with its instances as this node's proxy sees them, and
    /// its definition when it has one.
    pub services: Vec<(
        mesh_proto::api::InstancesView,
        Option<mesh_proto::catalog::Definition>,
    )>,
    /// Recent routing decisions, newest first.
    pub decisions: Vec<crate::decisions::Decision>,
    /// Supervised processes.
    pub ps: crate::supervise::PsView,
    /// The last log lines of each supervised service.
    pub logs: Vec<logs::LogsView>,
}

/// One cell of the RTT matrix (row: from, column: to).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// The same node.
    Zero,
    /// What this node measured (its own row).
    Measured(f64),
    /// This node's Vivaldi estimate (its own row, never measured).
    Estimated(f64),
    /// Between two other nodes, from the coordinates both published.
    Published(f64),
    /// Nothing to show.
    Unknown,
}

async fn gather(agent: &AdminHandles) -> Model {
    let health = views::health(agent).await;
    let nodes = views::nodes(agent).await;
    let snapshot = agent.catalog.snapshot();
    let coordinate = |id: &str| {
        mesh_proto::NodeId::new(id.to_owned())
            .ok()
            .and_then(|node| snapshot.node(&node).and_then(|m| m.coordinate.clone()))
    };
    let coordinates: Vec<_> = nodes.iter().map(|n| coordinate(&n.id)).collect();
    let matrix = nodes
        .iter()
        .enumerate()
        .map(|(i, from)| {
            nodes
                .iter()
                .enumerate()
                .map(|(j, to)| {
                    if i == j {
                        Cell::Zero
                    } else if from.is_self {
                        match (to.rtt_ms, to.rtt_source) {
                            (Some(ms), mesh_proto::api::RttSource::Measured) => Cell::Measured(ms),
                            (Some(ms), mesh_proto::api::RttSource::Estimated) => {
                                Cell::Estimated(ms)
                            }
                            _ => Cell::Unknown,
                        }
                    } else {
                        match (&coordinates[i], &coordinates[j]) {
                            (Some(a), Some(b)) if a.is_valid() && b.is_valid() => {
                                Cell::Published(a.distance_to(b).as_secs_f64() * 1000.0)
                            }
                            _ => Cell::Unknown,
                        }
                    }
                })
                .collect()
        })
        .collect();
    let mut names: Vec<String> = views::services(agent).into_iter().map(|s| s.name).collect();
    names.sort();
    let services: Vec<_> = names
        .iter()
        .map(|name| {
            (
                views::instances(agent, name, Requirements::default()),
                snapshot.definition(name).cloned(),
            )
        })
        .collect();
    let strictest_hard_ms = services.iter().filter_map(|(s, _)| s.hard_rtt_ms).min();
    let ps = crate::supervise::ps(&agent.supervisor);
    let mut tails = Vec::new();
    for name in agent.supervisor.names() {
        if let Some(dir) = agent.supervisor.log_dir(&name) {
            let read =
                tokio::task::spawn_blocking(move || logs::read(&dir, &name, 0, Some(LOG_TAIL)));
            if let Ok(view) = read.await {
                tails.push(view);
            }
        }
    }
    Model {
        health,
        nodes,
        matrix,
        strictest_hard_ms,
        services,
        decisions: agent.decisions.recent(DECISIONS_SHOWN),
        ps,
        logs: tails,
    }
}
