//! The in-process paths of `bench proxy`: the echo service, one local
//! sidecar in front of it, and two sidecars joined over QUIC with mutual TLS.
//! Agents run the `lan` profile, the production default, so background
//! gossip is what a deployment would have.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sidecar::agent::{self, RunningAgent};
use sidecar::config::Profile;
use sidecar::demo::local_config;

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
        let seen = sidecar::upstreams::live_instances(&agent.agent, SERVICE).len();
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
