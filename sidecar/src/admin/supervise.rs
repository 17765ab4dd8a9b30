//! The admin API of supervision and placement:
//!
//! - `GET /v1/supervise`: the supervised copies (`gossamer ps`).
//! - `GET /v1/supervise/{name}/logs?after=CURSOR&tail=N&wait=10s`: their
//!   logs merged in time order; with `wait`, an answer with no new line
//!   waits for one (`gossamer logs -f`).
//! - `POST /v1/supervise/{name}/restart`: a rolling restart.
//! - `POST /v1/supervise/{name}/scale?n=N`, `.../stop`, `.../start`: run-time
//!   control; copies leave out of rotation and drained, newest first.
//! - `GET /v1/placement[/{name}]`: nodes' CPU and memory, free and
//!   reserved; with a service name, which nodes fit it.

// As in the main admin API: a validation error *is* the reply, built once
// on the error path; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mesh_proto::names::validate_service_name;

use crate::handles::AdminHandles;
use crate::reply::{self, JsonResponse};
use crate::supervise::placement::{self, PlacementView};
use crate::supervise::{logs, RestartError};

/// Longest wait of a logs request.
const MAX_LOG_WAIT: Duration = Duration::from_secs(60);

/// Routes `/v1/supervise/...` and `/v1/placement/...`.
pub async fn route(
    agent: &Arc<AdminHandles>,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
) -> JsonResponse {
    let query = match Query::parse(query) {
        Ok(q) => q,
        Err(response) => return response,
    };
    match (method, segments) {
        (&Method::GET, ["v1", "supervise"]) => {
            reply::json(StatusCode::OK, &crate::supervise::ps(&agent.supervisor), None)
        }
        (&Method::GET, ["v1", "supervise", name, "logs"]) => logs(agent, name, &query).await,
        (&Method::POST, ["v1", "supervise", name, "restart"]) => restart(agent, name).await,
        (&Method::POST, ["v1", "supervise", name, action @ ("scale" | "stop" | "start")]) => {
            control(agent, name, action, query.n).await
        }
        (&Method::GET, ["v1", "placement"]) => {
            reply::json(StatusCode::OK, &placement_view(agent, None).await, None)
        }
        (&Method::GET, ["v1", "placement", name]) => {
            if let Err(response) = check_name(name) {
                return response;
            }
            if agent.catalog.snapshot().definition(name).is_none() {
                return reply::error(
                    StatusCode::NOT_FOUND,
                    format!("no definition of service {name:?}, so no CPU or memory requirement to place"),
                    "write one with `gossamer services put` (requirements.cpu_millis and memory_mb), or declare them in a [[supervise]] table",
                );
            }
            reply::json(
                StatusCode::OK,
                &placement_view(agent, Some(name)).await,
                None,
            )
        }
        _ => reply::error(
            StatusCode::NOT_FOUND,
            format!("no route for {method} /{}", segments.join("/")),
            "supervision: GET /v1/supervise, GET /v1/supervise/NAME/logs, POST /v1/supervise/NAME/restart|stop|start, POST /v1/supervise/NAME/scale?n=N; placement: GET /v1/placement[/NAME]",
        ),
    }
}

#[derive(Debug, Default)]
struct Query {
    after: u64,
    tail: Option<usize>,
    wait: Option<Duration>,
    n: Option<u64>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Result<Self, JsonResponse> {
        let mut query = Query::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value.parse::<u64>().map_err(|_| {
                    bad_request(
                        format!("{key}={value:?} is not a whole number"),
                        format!("pass {key}=N with N ≥ 0"),
                    )
                })
            };
            match key {
                "after" => query.after = number()?,
                "tail" => query.tail = Some(number()?.min(logs::MAX_LINES as u64) as usize),
                "wait" => query.wait = Some(parse_wait(value)?.min(MAX_LOG_WAIT)),
                "n" => query.n = Some(number()?),
                _ => {}
            }
        }
        Ok(query)
    }
}

fn parse_wait(text: &str) -> Result<Duration, JsonResponse> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits.parse().map_err(|_| {
        bad_request(
            format!("wait={text:?} is not a duration"),
            "use for example wait=10s or wait=500ms",
        )
    })?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(amount)),
        "ms" => Ok(Duration::from_millis(amount)),
        _ => Err(bad_request(
            format!("wait={text:?} has an unknown unit"),
            "use s or ms",
        )),
    }
}

fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> JsonResponse {
    reply::error(StatusCode::BAD_REQUEST, error, hint)
}

fn check_name(name: &str) -> Result<(), JsonResponse> {
    validate_service_name(name).map_err(|e| {
        bad_request(
            e.to_string(),
            "service names are DNS labels, for example \"billing-api\"",
        )
    })
}

fn not_supervised(agent: &AdminHandles, name: &str) -> JsonResponse {
    let names = agent.supervisor.names();
    reply::error(
        StatusCode::NOT_FOUND,
        format!(
            "this agent ({}) supervises no service {name:?}",
            agent.node_id()
        ),
        if names.is_empty() {
            "it supervises nothing: start it with --exec NAME -- CMD, or [[supervise]] tables in --config; \
             or point --agent at the agent that runs the service"
                .to_owned()
        } else {
            format!("it supervises: {}", names.join(", "))
        },
    )
}

async fn logs(agent: &Arc<AdminHandles>, name: &str, query: &Query) -> JsonResponse {
    if let Err(response) = check_name(name) {
        return response;
    }
    let Some(dir) = agent.supervisor.log_dir(name) else {
        return not_supervised(agent, name);
    };
    let mut written = agent.supervisor.clock.subscribe();
    let read = |dir: std::path::PathBuf| {
        let name = name.to_owned();
        let (after, tail) = (query.after, query.tail);
        async move {
            tokio::task::spawn_blocking(move || logs::read(&dir, &name, after, tail))
                .await
                .ok()
        }
    };
    let Some(mut view) = read(dir.clone()).await else {
        return reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the logs failed",
            "see the agent's log",
        );
    };
    if let Some(wait) = query.wait.filter(|_| view.lines.is_empty()) {
        let after = query.after;
        if tokio::time::timeout(wait, written.wait_for(|stamp| *stamp > after))
            .await
            .is_ok()
        {
            if let Some(newer) = read(dir).await {
                view = newer;
            }
        }
    }
    reply::json(StatusCode::OK, &view, None)
}

async fn restart(agent: &Arc<AdminHandles>, name: &str) -> JsonResponse {
    if let Err(response) = check_name(name) {
        return response;
    }
    match crate::supervise::restart(&agent.supervisor, name).await {
        Ok(view) => reply::json(StatusCode::OK, &view, None),
        Err(RestartError::Unknown(_)) => not_supervised(agent, name),
        Err(e @ RestartError::Busy(_)) => reply::error(
            StatusCode::CONFLICT,
            e.to_string(),
            "wait for it to finish (`gossamer ps` shows the copies)",
        ),
        Err(e @ RestartError::Failed { .. }) => reply::error(
            StatusCode::BAD_GATEWAY,
            e.to_string(),
            format!("see `gossamer logs {name}`; the copy keeps being restarted with backoff"),
        ),
        Err(e @ RestartError::Stopping) => reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            "the agent is shutting down",
        ),
    }
}

async fn control(
    agent: &Arc<AdminHandles>,
    name: &str,
    action: &str,
    n: Option<u64>,
) -> JsonResponse {
    use crate::supervise::control::{self, ControlError};
    if let Err(response) = check_name(name) {
        return response;
    }
    let supervisor = &agent.supervisor;
    let result = match action {
        "stop" => control::stop(supervisor, name).await,
        "start" => control::start(supervisor, name).await,
        _ => {
            let Some(n) = n else {
                return bad_request(
                    "scale needs the number of copies",
                    format!("POST /v1/supervise/{name}/scale?n=3 (n=0 stops it)"),
                );
            };
            control::scale(supervisor, name, u32::try_from(n).unwrap_or(u32::MAX)).await
        }
    };
    match result {
        Ok(view) => reply::json(StatusCode::OK, &view, None),
        Err(ControlError::Unknown(_)) => not_supervised(agent, name),
        Err(e @ ControlError::Range(_)) => bad_request(e.to_string(), "pass n between 0 and 64"),
        Err(e @ ControlError::Stopping) => reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            "the agent is shutting down",
        ),
    }
}

/// Nodes' resources; with `service`, each marked with whether one copy fits.
pub async fn placement_view(agent: &AdminHandles, service: Option<&str>) -> PlacementView {
    let nodes: Vec<_> = crate::views::nodes(agent)
        .await
        .into_iter()
        .filter_map(|n| {
            let id = mesh_proto::NodeId::new(n.id).ok()?;
            Some((id, n.state.as_str().to_owned()))
        })
        .collect();
    let (mut resources, requirements) = agent.catalog.read(|c| {
        (
            placement::resources(c, &nodes, None),
            service.and_then(|s| c.definition(s).map(|d| d.requirements.clone())),
        )
    });
    if let Some(requirements) = &requirements {
        for node in &mut resources {
            node.fits = Some(node.state == "alive" && placement::fits(node, requirements, 1));
        }
    }
    PlacementView {
        service: service.map(str::to_owned),
        cpu_millis: requirements.as_ref().and_then(|r| r.cpu_millis),
        memory_mb: requirements.as_ref().and_then(|r| r.memory_mb),
        nodes: resources,
    }
}
