//! What `gossamer up` prints: the status table whenever it changes, what
//! services wait for, and every service's log lines prefixed with the
//! copy they came from (coloured on a terminal, plain otherwise).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::Agent;
use crate::supervise::logs::{self, Stream};
use crate::supervise::{ps, PsView};

/// How often the table and the logs are looked at.
const TICK: Duration = Duration::from_millis(300);
const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

/// Prints until the agent stops.
pub async fn follow(agent: Arc<Agent>, colour: bool) {
    let node = agent.node_id().to_string();
    let mut last_table = String::new();
    let mut cursors: BTreeMap<String, u64> = BTreeMap::new();
    // Only this run's lines: earlier runs' are in `gossamer logs`.
    let start = crate::catalog::wall_ms() * 1000;
    loop {
        let view = ps(&agent.supervisor);
        let table = status(&view);
        if table != last_table {
            print!("{table}");
            last_table = table;
        }
        for (i, name) in agent.supervisor.names().iter().enumerate() {
            let Some(dir) = agent.supervisor.log_dir(name) else {
                continue;
            };
            let after = *cursors.get(name).unwrap_or(&start);
            let service = name.clone();
            let Ok(lines) =
                tokio::task::spawn_blocking(move || logs::read(&dir, &service, after, None)).await
            else {
                continue;
            };
            cursors.insert(name.clone(), lines.cursor);
            let mut out = String::new();
            for line in &lines.lines {
                // `api-node7-2` reads better as `api.2`; a build as `api.build`.
                let who = line
                    .instance
                    .strip_prefix(&format!("{name}-{node}-"))
                    .map(|copy| format!("{name}.{copy}"))
                    .or_else(|| {
                        line.instance
                            .strip_suffix("-build")
                            .map(|s| format!("{s}.build"))
                    })
                    .unwrap_or_else(|| line.instance.clone());
                let marker = if line.stream == Stream::Sup {
                    "gossamer: "
                } else {
                    ""
                };
                if colour {
                    let c = COLOURS[i % COLOURS.len()];
                    let _ = writeln!(out, "\x1b[{c}m{who:<12} |\x1b[0m {marker}{}", line.text);
                } else {
                    let _ = writeln!(out, "{who:<12} | {marker}{}", line.text);
                }
            }
            print!("{out}");
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The status table: service, state, copies, health, ports, restarts, build.
fn status(view: &PsView) -> String {
    let mut rows = Vec::new();
    for service in &view.services {
        let copies: Vec<_> = view
            .processes
            .iter()
            .filter(|p| p.service == service.service)
            .collect();
        let passing = copies
            .iter()
            .filter(|p| p.health == Some(mesh_proto::catalog::Health::Passing))
            .count();
        let ports: Vec<String> = copies
            .iter()
            .filter_map(|p| p.port.map(|p| p.to_string()))
            .collect();
        let restarts: u32 = copies.iter().map(|p| p.restarts).sum();
        let state = if service.waiting_for.is_empty() {
            service.state.clone()
        } else {
            format!("waiting for {}", service.waiting_for.join(", "))
        };
        let build = match &service.build {
            None => "-".to_owned(),
            Some(b) if b.ok => "ok".to_owned(),
            Some(b) => b.message.clone(),
        };
        rows.push(vec![
            service.service.clone(),
            state,
            format!("{}/{}", copies.len(), service.desired),
            format!("{passing} passing"),
            if ports.is_empty() {
                "-".to_owned()
            } else {
                ports.join(",")
            },
            restarts.to_string(),
            build,
        ]);
    }
    let header = [
        "SERVICE", "STATE", "COPIES", "HEALTH", "PORT", "RESTARTS", "BUILD",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::from("\n");
    let line = |cells: Vec<String>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out.push('\n');
    out
}
