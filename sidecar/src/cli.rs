//! The operator CLI: subcommands that talk to the local agent's admin API
//! (tables for people, `--json` for scripts), plus `agent`, `echo` and `demo`.

use anyhow::{bail, Context};
use client::select::Requirements;
use client::Client;
use mesh_proto::api::{InstanceView, RegisterInstance};
use mesh_proto::catalog::Definition;
use serde::Serialize;

pub mod args;
mod show;
pub mod supervise;
pub mod table;

pub use args::{Cli, Command, LogFormat, ServicesAction};
use table::table;

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

/// Runs an operator command against the agent.
pub async fn run_operator(cli: &Cli) -> anyhow::Result<()> {
    let mut client = Client::new(&cli.agent)?;
    // The agent's --admin-token, for changes (reads need none).
    if let Some(token) = std::env::var("GOSSAMER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        client = client.with_token(token.trim());
    }
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
                        if n.warnings.is_empty() {
                            "-".to_owned()
                        } else {
                            n.warnings.join("; ")
                        },
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
                    "WARNING",
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
                "service {} ({}): hard RTT {}, soft RTT {}",
                view.service,
                view.protocol.unwrap_or_default(),
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
            http2,
        } => {
            let proxy = match proxy {
                Some(proxy) => *proxy,
                None => proxy_of(&cli.agent).await?,
            };
            let call = crate::demo::Call {
                name,
                path,
                proxy,
                hard_rtt: *hard_rtt,
                soft_rtt: *soft_rtt,
                http2: *http2,
            };
            crate::demo::call_cli(&call, cli.json).await?
        }
        Command::Ps
        | Command::Logs { .. }
        | Command::Restart { .. }
        | Command::Start { .. }
        | Command::Stop { .. }
        | Command::Scale { .. }
        | Command::Nodes { .. } => supervise::run(cli).await?,
        Command::Agent(_)
        | Command::Echo { .. }
        | Command::Demo { .. }
        | Command::Up(_)
        | Command::Down { .. } => {
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
        ServicesAction::Get { name } => {
            let definition = client.definition(name).await?;
            if cli.json {
                return print_json(&definition);
            }
            print!("{}", show::definition(&definition));
        }
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

/// Where the proxy of the agent at `agent` (its admin URL) listens, as its
/// admin API says; an unspecified address (0.0.0.0) means the agent's host.
async fn proxy_of(agent: &str) -> anyhow::Result<std::net::SocketAddr> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;

    let base = agent.trim_end_matches('/');
    let url = format!("{base}/v1/agent/listeners");
    let uri: http::Uri = url.parse().with_context(|| {
        format!("--agent {agent:?} is not a URL; pass for example http://127.0.0.1:4200")
    })?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri.clone()))
            .await
            .with_context(|| format!("no answer from {url} within 10 s"))?
            .with_context(|| {
                format!("cannot reach the agent at {base}; is it running? (--agent)")
            })?;
    if !response.status().is_success() {
        bail!(
            "{url} answered {}; an agent older than this CLI? pass --proxy ADDR",
            response.status()
        );
    }
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("cannot read the answer of {url}"))?
        .to_bytes();
    let listeners: crate::listeners::Listeners = serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not answer with listeners"))?;
    let mut proxy = listeners.proxy;
    if proxy.ip().is_unspecified() {
        let host = uri
            .host()
            .map(|h| h.trim_matches(['[', ']']))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .with_context(|| {
                format!("the proxy of {base} listens on {proxy}; pass --proxy HOST:PORT")
            })?;
        proxy.set_ip(host);
    }
    Ok(proxy)
}
