//! Operator commands of supervision and placement: `gossamer ps`,
//! `gossamer logs NAME [-f]`, `gossamer restart NAME`, `gossamer start|stop
//! NAME`, `gossamer scale NAME N` and
//! `gossamer nodes [--fits NAME]`, talking to the agent's admin API.

use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_proto::api::ErrorBody;
use serde::de::DeserializeOwned;

use super::args::{Cli, Command};
use super::table::table;
use crate::supervise::control::ScaleView;
use crate::supervise::logs::{LogLine, LogsView, Stream};
use crate::supervise::placement::PlacementView;
use crate::supervise::{PsView, RestartView};

/// How long one `logs -f` request waits for new lines.
const FOLLOW_WAIT: &str = "30s";

/// A minimal client of the agent's supervision API.
struct Api {
    base: String,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    fn new(agent: &str) -> anyhow::Result<Self> {
        let base = agent.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("invalid agent URL {agent:?}: only http://HOST:PORT is supported; pass for example --agent http://127.0.0.1:4200");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { base, http })
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| anyhow!("invalid request URL {url}: {e}"))?;
        let response = self.http.request(request).await.map_err(|e| {
            anyhow!("cannot reach the agent at {url}: {e}; is `gossamer agent` running there?")
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("the agent's answer from {url} broke off: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
                error: String::from_utf8_lossy(&body).into_owned(),
                hint: "see the agent's log".to_owned(),
            });
            bail!("{} (HTTP {}); {}", error.error, status.as_u16(), error.hint);
        }
        serde_json::from_slice(&body).map_err(|e| anyhow!("unexpected answer from {url}: {e}"))
    }
}

/// Runs `ps`, `logs`, `restart` or `nodes`.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let api = Api::new(&cli.agent)?;
    match &cli.command {
        Command::Ps => ps(&api, cli.json).await,
        Command::Logs { name, follow, tail } => logs(&api, name, *follow, *tail, cli.json).await,
        Command::Restart { name } => restart(&api, name, cli.json).await,
        Command::Start { name } => control(&api, name, "start", cli.json).await,
        Command::Stop { name } => control(&api, name, "stop", cli.json).await,
        Command::Scale { name, copies } => {
            control(&api, name, &format!("scale?n={copies}"), cli.json).await
        }
        Command::Nodes { fits } => nodes(&api, fits.as_deref(), cli.json).await,
        _ => bail!("not a supervision command"),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `1h02m`, `3m05s`, `12s`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn dash<T: ToString>(value: Option<T>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

async fn ps(api: &Api, json: bool) -> anyhow::Result<()> {
    let view: PsView = api.call(Method::GET, "/v1/supervise").await?;
    if json {
        return print_json(&view);
    }
    if view.processes.is_empty() {
        println!(
            "node {} supervises no process (start the agent with --exec NAME -- CMD, or [[supervise]] in --config)",
            view.node
        );
    } else {
        let rows = view
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.service.clone(),
                    p.instance.clone(),
                    dash(p.pid),
                    dash(p.port),
                    format!("{:?}", p.state).to_lowercase(),
                    p.health
                        .map_or("-".to_owned(), |h| format!("{h:?}").to_lowercase()),
                    p.restarts.to_string(),
                    p.uptime_ms.map_or("-".to_owned(), human_duration),
                    p.last_exit.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        table(
            &[
                "SERVICE",
                "INSTANCE",
                "PID",
                "PORT",
                "STATE",
                "HEALTH",
                "RESTARTS",
                "UPTIME",
                "LAST_EXIT",
            ],
            rows,
        );
    }
    for service in &view.services {
        if !service.waiting_for.is_empty() {
            println!(
                "{}: waiting for {} to pass before starting",
                service.service,
                service.waiting_for.join(", ")
            );
        } else if service.state == "stopped" {
            println!(
                "{}: stopped (`gossamer start {}` starts it)",
                service.service, service.service
            );
        }
        if let Some(build) = service.build.as_ref().filter(|b| !b.ok) {
            println!("{}: {}", service.service, build.message);
        }
    }
    if !view.strays.is_empty() {
        println!("\nstill running from an earlier run of the agent (not stopped; `kill PID` if unwanted):");
        let rows = view
            .strays
            .iter()
            .map(|s| {
                vec![
                    s.record.service.clone(),
                    s.record.instance.clone(),
                    s.record.pid.to_string(),
                    s.record.port.to_string(),
                    if s.holds_port { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        table(&["SERVICE", "INSTANCE", "PID", "PORT", "HOLDS_PORT"], rows);
    }
    Ok(())
}

/// The line as `logs` prints it: the instance id, then the text.
pub fn format_line(line: &LogLine, width: usize) -> String {
    let marker = match line.stream {
        Stream::Sup => "| gossamer: ",
        Stream::Out | Stream::Err => "| ",
    };
    format!("{:<width$} {marker}{}", line.instance, line.text)
}

async fn logs(
    api: &Api,
    name: &str,
    follow: bool,
    tail: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut width = 0;
    let mut print = |view: &LogsView| {
        for line in &view.lines {
            if json {
                println!("{}", serde_json::to_string(line).unwrap_or_default());
            } else {
                width = width.max(line.instance.len());
                println!("{}", format_line(line, width));
            }
        }
    };
    let first = match tail {
        Some(n) => format!("/v1/supervise/{name}/logs?tail={n}"),
        None => format!("/v1/supervise/{name}/logs"),
    };
    let mut view: LogsView = api.call(Method::GET, &first).await?;
    print(&view);
    while view.more {
        view = api
            .call(
                Method::GET,
                &format!("/v1/supervise/{name}/logs?after={}", view.cursor),
            )
            .await?;
        print(&view);
    }
    if !follow {
        return Ok(());
    }
    loop {
        view = api
            .call(
                Method::GET,
                &format!(
                    "/v1/supervise/{name}/logs?after={}&wait={FOLLOW_WAIT}",
                    view.cursor
                ),
            )
            .await?;
        print(&view);
    }
}

async fn restart(api: &Api, name: &str, json: bool) -> anyhow::Result<()> {
    if !json {
        eprintln!("restarting {name} one copy at a time...");
    }
    let view: RestartView = api
        .call(Method::POST, &format!("/v1/supervise/{name}/restart"))
        .await?;
    if json {
        return print_json(&view);
    }
    println!(
        "restarted {} in {:.1} s: {}",
        view.service,
        view.took_ms as f64 / 1000.0,
        view.restarted.join(", ")
    );
    if let Some(note) = view.note {
        println!("note: {note}");
    }
    Ok(())
}

async fn control(api: &Api, name: &str, action: &str, json: bool) -> anyhow::Result<()> {
    let view: ScaleView = api
        .call(Method::POST, &format!("/v1/supervise/{name}/{action}"))
        .await?;
    if json {
        return print_json(&view);
    }
    println!(
        "{}: {} -> {} cop{} in {:.1} s",
        view.service,
        view.from,
        view.to,
        if view.to == 1 { "y" } else { "ies" },
        view.took_ms as f64 / 1000.0
    );
    if !view.started.is_empty() {
        println!("started: {}", view.started.join(", "));
    }
    if !view.stopped.is_empty() {
        println!("drained and stopped: {}", view.stopped.join(", "));
    }
    if let Some(note) = view.note {
        println!("note: {note}");
    }
    Ok(())
}

async fn nodes(api: &Api, fits: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match fits {
        Some(name) => format!("/v1/placement/{name}"),
        None => "/v1/placement".to_owned(),
    };
    let mut view: PlacementView = api.call(Method::GET, &path).await?;
    if let Some(name) = fits {
        let total = view.nodes.len();
        view.nodes.retain(|n| n.fits == Some(true));
        if json {
            return print_json(&view);
        }
        let need = |v: Option<u32>, unit: &str| {
            v.map_or(format!("no {unit} requirement"), |v| format!("{v} {unit}"))
        };
        println!(
            "{name} needs {} and {} per copy: {} of {total} nodes fit",
            need(view.cpu_millis, "CPU millis"),
            need(view.memory_mb, "MiB"),
            view.nodes.len()
        );
        if view.nodes.is_empty() {
            return Ok(());
        }
    } else if json {
        return print_json(&view);
    }
    let rows = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.state.clone(),
                n.cpus.to_string(),
                n.memory_mb.to_string(),
                n.free_cpu_millis.to_string(),
                n.free_memory_mb.to_string(),
                n.instances.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "STATE",
            "CPUS",
            "MEMORY_MB",
            "FREE_CPU_MILLIS",
            "FREE_MEMORY_MB",
            "INSTANCES",
        ],
        rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_lines_read_well() {
        assert_eq!(human_duration(12_500), "12s");
        assert_eq!(human_duration(185_000), "3m05s");
        assert_eq!(human_duration(3_720_000), "1h02m");
        let line = LogLine {
            ts_us: 1,
            instance: "echo-a-1".into(),
            stream: Stream::Out,
            text: "hello".into(),
        };
        assert_eq!(format_line(&line, 10), "echo-a-1   | hello");
        let note = LogLine {
            stream: Stream::Sup,
            ..line
        };
        assert_eq!(format_line(&note, 0), "echo-a-1 | gossamer: hello");
    }
}
