//! The operator CLI: subcommands that talk to the local agent's admin API
//! (tables for people, `--json` for scripts), plus `agent`, `echo` and `demo`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use client::select::Requirements;
use client::Client;
use mesh_proto::api::{InstanceView, RegisterInstance};
use mesh_proto::catalog::Definition;
use serde::Serialize;

use crate::config::AgentArgs;

/// Gossamer: a service mesh sidecar.
#[derive(Debug, Parser)]
#[command(name = "gossamer", version, about, propagate_version = true)]
pub struct Cli {
    /// Admin API of the agent to talk to.
    #[arg(
        long,
        global = true,
        env = "GOSSAMER_AGENT",
        default_value = "http://127.0.0.1:4200"
    )]
    pub agent: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sidecar agent.
    Agent(Box<AgentArgs>),
    /// List cluster members with state and RTT.
    Members,
    /// Service definitions.
    Services {
        /// list, get, put or delete.
        #[command(subcommand)]
        action: ServicesAction,
    },
    /// Instances of a service, eligible first, under optional requirements.
    Instances {
        /// Service name.
        name: String,
        /// Hard RTT requirement in ms.
        #[arg(long)]
        hard_rtt: Option<u32>,
        /// Soft RTT requirement in ms.
        #[arg(long)]
        soft_rtt: Option<u32>,
    },
    /// Register an instance of NAME on the agent's node.
    Register {
        /// Service name.
        name: String,
        /// Port on 127.0.0.1 the instance listens on.
        #[arg(long)]
        port: u16,
        /// Instance id (generated when absent).
        #[arg(long)]
        id: Option<String>,
        /// Deployment id.
        #[arg(long)]
        deployment: Option<String>,
        /// Tag, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Deregister an instance of the agent's node.
    Deregister {
        /// Instance id.
        id: String,
    },
    /// Call a service through the local proxy and print the answer.
    Call {
        /// Service name.
        name: String,
        /// Path, for example /health.
        #[arg(default_value = "/")]
        path: String,
        /// The agent's proxy address.
        #[arg(long, env = "GOSSAMER_PROXY", default_value = "127.0.0.1:4201")]
        proxy: std::net::SocketAddr,
        /// Hard RTT requirement in ms.
        #[arg(long)]
        hard_rtt: Option<u32>,
        /// Soft RTT requirement in ms.
        #[arg(long)]
        soft_rtt: Option<u32>,
    },
    /// Run a small HTTP echo service (demos and tests).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Name reported in answers.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Port to listen on instead of --listen's (a supervising agent sets SERVICE_PORT).
        #[arg(long, env = "SERVICE_PORT")]
        port: Option<u16>,
    },
    /// Start a three-node mesh in this process and show routing by RTT.
    Demo {
        /// Stay up until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Calls to send through the proxy.
        #[arg(long, default_value_t = 200)]
        calls: u32,
    },
    /// Processes this agent supervises: pid, port, restarts, uptime, health.
    Ps,
    /// Logs of a supervised service, merged across copies, each line prefixed with its instance.
    Logs {
        /// Service name.
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Restart a supervised service one copy at a time, each out of rotation before it stops.
    Restart {
        /// Service name.
        name: String,
    },
    /// Nodes with their CPU and memory, free and reserved.
    Nodes {
        /// Only the nodes with room for one copy of NAME (its definition's cpu_millis and memory_mb).
        #[arg(long, value_name = "NAME")]
        fits: Option<String>,
    },
}

/// `gossamer services` actions.
#[derive(Debug, Subcommand)]
pub enum ServicesAction {
    /// List services.
    List,
    /// Show one definition.
    Get {
        /// Service name.
        name: String,
    },
    /// Write a definition from a JSON file ("-" for stdin).
    Put {
        /// JSON file with the definition.
        file: PathBuf,
    },
    /// Delete a definition.
    Delete {
        /// Service name.
        name: String,
    },
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows under a header, columns aligned.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

/// Runs an operator command against the agent.
pub async fn run_operator(cli: &Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.agent)?;
    match &cli.command {
        Command::Members => {
            let nodes = client.nodes().await?;
            if cli.json {
                return print_json(&nodes);
            }
            let rows = nodes
                .iter()
                .map(|n| {
                    vec![
                        format!("{}{}", n.id, if n.is_self { " (self)" } else { "" }),
                        n.address.clone(),
                        n.state.as_str().to_owned(),
                        n.generation.to_string(),
                        ms(n.rtt_ms),
                        format!("{:?}", n.rtt_source).to_lowercase(),
                        n.last_heard_ms
                            .map_or("-".to_owned(), |m| format!("{m} ms ago")),
                    ]
                })
                .collect();
            table(
                &[
                    "NODE",
                    "ADDRESS",
                    "STATE",
                    "GENERATION",
                    "RTT_MS",
                    "RTT_SOURCE",
                    "LAST_HEARD",
                ],
                rows,
            );
        }
        Command::Services { action } => services(cli, &client, action).await?,
        Command::Instances {
            name,
            hard_rtt,
            soft_rtt,
        } => {
            let view = client
                .instances(
                    name,
                    &Requirements {
                        hard_rtt_ms: *hard_rtt,
                        soft_rtt_ms: *soft_rtt,
                    },
                )
                .await?;
            if cli.json {
                return print_json(&view);
            }
            let fmt_req = |r: Option<u32>| r.map_or("none".to_owned(), |v| format!("{v} ms"));
            println!(
                "service {}: hard RTT {}, soft RTT {}",
                view.service,
                fmt_req(view.hard_rtt_ms),
                fmt_req(view.soft_rtt_ms)
            );
            let row = |i: &InstanceView, status: String| {
                vec![
                    i.instance.id.clone(),
                    i.instance.node.to_string(),
                    i.instance.address.to_string(),
                    ms(i.rtt_ms),
                    format!("{:?}", i.rtt_source).to_lowercase(),
                    format!("{:?}", i.instance.health).to_lowercase(),
                    status,
                ]
            };
            let mut rows: Vec<Vec<String>> = view
                .eligible
                .iter()
                .map(|i| {
                    row(
                        i,
                        if i.within_soft {
                            "eligible (within soft)".into()
                        } else {
                            "eligible".into()
                        },
                    )
                })
                .collect();
            rows.extend(view.ineligible.iter().map(|i| {
                let why = i
                    .ineligible
                    .as_ref()
                    .map(|w| {
                        serde_json::to_value(w)
                            .ok()
                            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                row(i, format!("ineligible: {why}"))
            }));
            table(
                &[
                    "INSTANCE",
                    "NODE",
                    "ADDRESS",
                    "RTT_MS",
                    "RTT_SOURCE",
                    "HEALTH",
                    "STATUS",
                ],
                rows,
            );
        }
        Command::Register {
            name,
            port,
            id,
            deployment,
            tags,
        } => {
            let instance = client
                .register(&RegisterInstance {
                    service: name.clone(),
                    port: Some(*port),
                    address: None,
                    id: id.clone(),
                    deployment_id: deployment.clone(),
                    tags: tags.clone(),
                    health: None,
                })
                .await?;
            if cli.json {
                return print_json(&instance);
            }
            println!(
                "registered {} ({} at {} on {})",
                instance.id, instance.service, instance.address, instance.node
            );
        }
        Command::Deregister { id } => {
            client.deregister(id).await?;
            if cli.json {
                return print_json(&serde_json::json!({ "deregistered": id }));
            }
            println!("deregistered {id}");
        }
        Command::Call {
            name,
            path,
            proxy,
            hard_rtt,
            soft_rtt,
        } => crate::demo::call_cli(name, path, *proxy, *hard_rtt, *soft_rtt, cli.json).await?,
        Command::Ps | Command::Logs { .. } | Command::Restart { .. } | Command::Nodes { .. } => {
            crate::supervise::cli::run(cli).await?
        }
        Command::Agent(_) | Command::Echo { .. } | Command::Demo { .. } => {
            bail!("not an operator command")
        }
    }
    Ok(())
}

async fn services(cli: &Cli, client: &Client, action: &ServicesAction) -> anyhow::Result<()> {
    match action {
        ServicesAction::List => {
            let services = client.services().await?;
            if cli.json {
                return print_json(&services);
            }
            let rows = services
                .iter()
                .map(|s| {
                    let d = s.definition.as_ref();
                    let req = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
                    vec![
                        s.name.clone(),
                        d.map_or("-".to_owned(), |d| d.version.clone()),
                        format!("{}/{}", s.passing, s.instances),
                        d.map_or("-".to_owned(), |d| req(d.requirements.soft_rtt_ms)),
                        d.map_or("-".to_owned(), |d| req(d.requirements.hard_rtt_ms)),
                    ]
                })
                .collect();
            table(
                &[
                    "SERVICE",
                    "VERSION",
                    "PASSING/INSTANCES",
                    "SOFT_RTT_MS",
                    "HARD_RTT_MS",
                ],
                rows,
            );
        }
        ServicesAction::Get { name } => print_json(&client.definition(name).await?)?,
        ServicesAction::Put { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read the definition from stdin")?
            } else {
                std::fs::read_to_string(file).with_context(|| {
                    format!(
                        "cannot read {}; pass a JSON file with the definition",
                        file.display()
                    )
                })?
            };
            let definition: Definition = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid definition: {e}; see README.md for the fields",
                    file.display()
                )
            })?;
            if definition.name.is_empty() {
                bail!(
                    "{} has no \"name\"; add the service name, for example \"name\": \"billing\"",
                    file.display()
                );
            }
            let stored = client.put_definition(&definition).await?;
            if cli.json {
                return print_json(&stored);
            }
            println!("stored {} (hash {})", stored.name, stored.content_hash);
        }
        ServicesAction::Delete { name } => {
            client.delete_definition(name).await?;
            if cli.json {
                return print_json(&serde_json::json!({ "deleted": name }));
            }
            println!("deleted {name}");
        }
    }
    Ok(())
}
