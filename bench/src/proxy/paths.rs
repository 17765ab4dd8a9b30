//! The sidecar paths of `bench proxy`: the echo service, one local sidecar
//! in front of it, and two sidecars joined over QUIC with mutual TLS; each
//! either in this process (sharing its runtime with the load generator and
//! the echo service) or as `gossamer agent` processes, like nginx and
//! HAProxy. Agents run the `lan` profile, the production default, so
//! background gossip is what a deployment would have.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sidecar::agent::{self, RunningAgent};
use sidecar::config::Profile;
use sidecar::demo::local_config;

use crate::agent_proc::AgentProcess;

/// Service name the bench registers.
pub const SERVICE: &str = "echo";

/// Starts the echo service on a free loopback port.
pub async fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot bind the echo service on loopback")?;
    let addr = listener.local_addr()?;
    tokio::spawn(sidecar::echo::serve(listener, "bench-echo".to_owned()));
    Ok(addr)
}

fn bench_config(name: &str, join: Vec<String>) -> sidecar::config::AgentConfig {
    let mut config = local_config(name, join, Vec::new());
    config.profile = Profile::Lan;
    config.data_dir = std::env::temp_dir().join(format!(
        "gossamer-bench-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    config
}

/// Waits until `agent` sees `want` live instances of the bench service.
async fn wait_for_instances(
    agent: &RunningAgent,
    want: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let a = &agent.agent;
        let seen = a
            .upstreams
            .live_instances(&a.catalog.snapshot(), SERVICE)
            .len();
        if seen >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "agent {} saw {seen} of {want} {SERVICE} instances after {within:?}; \
                 the mesh did not form (see the log above)",
                agent.agent.node_id()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One agent with the echo service registered on it: calls stay on the node.
pub async fn one_sidecar(echo: SocketAddr) -> anyhow::Result<(SocketAddr, Vec<RunningAgent>)> {
    let mut config = bench_config("bench-local", Vec::new());
    config.services = vec![(SERVICE.to_owned(), echo.port())];
    let running = agent::start(config).await?;
    wait_for_instances(&running, 1, Duration::from_secs(10)).await?;
    Ok((running.agent.listeners.proxy, vec![running]))
}

/// Two agents: the caller's (no instance) and the callee's (echo
/// registered), joined over QUIC; calls cross the QUIC connection.
pub async fn two_sidecars(echo: SocketAddr) -> anyhow::Result<(SocketAddr, Vec<RunningAgent>)> {
    let mut server = bench_config("bench-callee", Vec::new());
    server.services = vec![(SERVICE.to_owned(), echo.port())];
    let server = agent::start(server).await?;
    let caller = bench_config(
        "bench-caller",
        vec![server.agent.listeners.quic.to_string()],
    );
    let caller = agent::start(caller).await?;
    wait_for_instances(&caller, 1, Duration::from_secs(20)).await?;
    Ok((caller.agent.listeners.proxy, vec![caller, server]))
}

/// Stops agents as a clean shutdown would.
pub async fn stop_agents(agents: Vec<RunningAgent>) {
    for agent in agents {
        agent.stop().await;
    }
}

/// Polls `proxy` with requests for the bench service until one is answered.
async fn wait_routable(proxy: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let target = crate::load::Target {
        addr: proxy,
        host: format!("{SERVICE}.localhost"),
        path: "/".to_owned(),
    };
    let deadline = Instant::now() + within;
    while !crate::load::one_request(&target).await {
        if Instant::now() > deadline {
            bail!("the proxy at {proxy} did not route to {SERVICE} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One `gossamer agent` process with the echo service registered on it,
/// routing HTTP/1.1 calls.
pub async fn one_sidecar_process(
    binary: &Path,
    echo: SocketAddr,
) -> anyhow::Result<(SocketAddr, Vec<AgentProcess>)> {
    let (proxy, agents) = spawn_one_sidecar_process(binary, echo).await?;
    wait_routable(proxy, Duration::from_secs(20)).await?;
    Ok((proxy, agents))
}

/// Two `gossamer agent` processes, the caller's and the callee's (echo
/// registered), joined over QUIC, routing HTTP/1.1 calls.
pub async fn two_sidecars_process(
    binary: &Path,
    echo: SocketAddr,
) -> anyhow::Result<(SocketAddr, Vec<AgentProcess>)> {
    let (proxy, agents) = spawn_two_sidecars_process(binary, echo).await?;
    wait_routable(proxy, Duration::from_secs(30)).await?;
    Ok((proxy, agents))
}

fn service_flags(echo: SocketAddr) -> [String; 4] {
    [
        "--profile".to_owned(),
        "lan".to_owned(),
        "--service".to_owned(),
        format!("{SERVICE}={}", echo.port()),
    ]
}

/// [`one_sidecar_process`] without the wait for a routed call (the caller
/// checks its own protocol).
pub async fn spawn_one_sidecar_process(
    binary: &Path,
    echo: SocketAddr,
) -> anyhow::Result<(SocketAddr, Vec<AgentProcess>)> {
    let local = AgentProcess::start(binary, "bench-local-proc", &service_flags(echo)).await?;
    Ok((local.addrs.proxy, vec![local]))
}

/// [`two_sidecars_process`] without the wait for a routed call; the callee
/// is the last agent.
pub async fn spawn_two_sidecars_process(
    binary: &Path,
    echo: SocketAddr,
) -> anyhow::Result<(SocketAddr, Vec<AgentProcess>)> {
    let callee = AgentProcess::start(binary, "bench-callee-proc", &service_flags(echo)).await?;
    let flags = [
        "--profile".to_owned(),
        "lan".to_owned(),
        "--join".to_owned(),
        callee.addrs.quic.to_string(),
    ];
    let caller = AgentProcess::start(binary, "bench-caller-proc", &flags).await?;
    Ok((caller.addrs.proxy, vec![caller, callee]))
}
