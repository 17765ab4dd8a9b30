//! The agent: builds every part from the configuration, starts the
//! long-lived tasks, and stops them cleanly. Every task the agent runs is
//! started in [`start`], so this file is the map of a running sidecar.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::{NodeMeta, RecordBody, RecordKey};
use mesh_proto::{NodeId, NodeIdentity};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::catalog::{wall_ms, CatalogStore};
use crate::config::{is_local_only, AgentConfig, Profile};
use crate::link_shim::{LinkRule, LinkRules};
use crate::membership::Membership;
use crate::persist::DataDir;
use crate::proxy::forward::{local_client, LocalClient};
use crate::rtt::RttTable;
use crate::transport::{Inbound, Transport, TransportTimings};
use crate::upstreams::Upstreams;
use crate::{admin, join, metrics, proxy, registry, streams, sync, tls};
use client::select::BalancerConfig;

/// Everything a running agent shares between its tasks.
pub struct Agent {
    /// Resolved configuration.
    pub config: AgentConfig,
    /// This node's identity.
    pub identity: NodeIdentity,
    /// Data directory.
    pub data: DataDir,
    /// QUIC endpoint.
    pub transport: Arc<Transport>,
    /// SWIM membership.
    pub membership: Membership,
    /// Replicated catalog.
    pub catalog: Arc<CatalogStore>,
    /// RTT to peers.
    pub rtt: Arc<RttTable>,
    /// Instances registered on this node through the API (persisted).
    pub registrations: Mutex<Vec<RegisterInstance>>,
    /// Link rules of the test-only shim (tests change them at run time).
    pub link_rules: LinkRules,
    /// One balancer per service (proxy and instance listings).
    pub upstreams: Upstreams,
    /// Keep-alive HTTP client for instances on this node.
    pub http: LocalClient,
    /// Local instances marked critical and probed back to health.
    pub recovering: crate::health::Recovering,
    /// Local services this agent runs (`--exec`, `[[supervise]]`).
    pub supervisor: crate::supervise::Supervisor,
    /// When the agent started.
    pub started: Instant,
    /// Actual listener addresses (ports may have been 0).
    pub listeners: Listeners,
    ready: AtomicBool,
    shutdown: watch::Sender<bool>,
}

/// Where the agent's listeners ended up (written to `listeners.json` in the
/// data dir once ready, for tools and tests that asked for port 0).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Listeners {
    /// QUIC endpoint.
    pub quic: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
    /// Proxy.
    pub proxy: SocketAddr,
    /// Metrics, when enabled.
    pub metrics: Option<SocketAddr>,
}

impl Agent {
    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.identity.node_id
    }

    /// True once every listener serves.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A receiver that turns true when the agent is stopping.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// A started agent; [`RunningAgent::stop`] leaves the cluster and drains.
pub struct RunningAgent {
    /// The shared state, for in-process users (demo, tests, bench).
    pub agent: Arc<Agent>,
    tasks: JoinSet<()>,
}

impl RunningAgent {
    /// Deregisters `--service` instances, leaves the cluster, stops every task.
    pub async fn stop(mut self) {
        let agent = self.agent.clone();
        info!(node = %agent.node_id(), "stopping: deregistering flag services and leaving the cluster");
        crate::supervise::stop(&agent).await;
        registry::deregister_flag_services(&agent).await;
        // Give the deregistrations a moment to ride on gossip before leaving.
        tokio::time::sleep(Duration::from_millis(200)).await;
        agent.membership.leave().await;
        let _ = agent.shutdown.send(true);
        if let Err(e) = agent.catalog.read(|c| agent.data.save_snapshot(c)) {
            warn!(error = %e, "cannot save the catalog snapshot at stop");
        }
        agent.transport.shutdown().await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if agent.config.ephemeral_data_dir {
            let _ = std::fs::remove_dir_all(agent.data.path());
        }
    }

    /// Stops without leaving or deregistering, as a crash would (tests).
    pub async fn abort(mut self) {
        let _ = self.agent.shutdown.send(true);
        self.agent.transport.shutdown().await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn timings(profile: Profile) -> TransportTimings {
    match profile {
        Profile::Local => TransportTimings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
        },
        Profile::Lan => TransportTimings {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
        },
        Profile::Wan => TransportTimings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(10),
        },
    }
}

/// Builds and starts an agent.
pub async fn start(config: AgentConfig) -> anyhow::Result<RunningAgent> {
    tls::install_crypto_provider();
    let data = DataDir::open(&config.data_dir)?;
    let node_id = NodeId::new(data.node_id(config.node_id.as_deref())?)
        .map_err(|e| anyhow::anyhow!("{e}; pass --node-id with a valid name"))?;
    let generation = data.next_generation(wall_ms())?;
    warn_about_addresses(&config);

    let trust = tls::ClusterTrust::load(&config.trust, node_id.as_str())?;
    let link_rules = LinkRules::default();
    for (addr, delay) in &config.link_delays {
        warn!(%addr, ?delay, "TEST ONLY: --debug-link-delay is delaying every datagram to this peer");
        link_rules.set(*addr, LinkRule::Delay(*delay));
    }
    for addr in &config.link_drops {
        warn!(%addr, "TEST ONLY: --debug-link-drop is dropping every datagram to this peer");
        link_rules.set(*addr, LinkRule::Drop);
    }

    let (swim_tx, swim_rx) = mpsc::channel(4096);
    let (rtt_tx, rtt_rx) = mpsc::channel(1024);
    let (stream_tx, stream_rx) = mpsc::channel(1024);
    let inbound = Inbound {
        swim: swim_tx,
        rtt: rtt_tx,
        streams: stream_tx,
    };
    // The shim must wrap the socket from the start for rules added later to
    // apply, so tests that partition at run time start with an inert rule.
    let transport = Transport::bind(
        config.bind,
        &trust,
        link_rules.clone(),
        timings(config.profile),
        inbound,
    )?;
    let quic = transport.local_addr()?;
    let advertise = if config.advertise.port() == 0 {
        SocketAddr::new(config.advertise.ip(), quic.port())
    } else {
        config.advertise
    };
    let identity = NodeIdentity {
        node_id: node_id.clone(),
        addr: advertise,
        generation,
    };

    if config.metrics_listen.is_some() {
        // Before the tasks start: a gauge they set first must not be lost.
        metrics::recorder()?;
    }
    let catalog = CatalogStore::new(node_id.clone(), data.snapshot());
    let membership = Membership::start(
        identity.clone(),
        config.profile,
        transport.clone(),
        swim_rx,
        catalog.clone(),
    );
    let rtt = RttTable::new(node_id.clone(), config.allow_estimated_rtt);

    let admin_listener = bind_tcp(config.admin_listen, "--admin-listen").await?;
    let proxy_listener = bind_tcp(config.proxy_listen, "--proxy-listen").await?;
    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(start_metrics(addr).await?),
        None => None,
    };
    let listeners = Listeners {
        quic,
        admin: admin_listener.local_addr()?,
        proxy: proxy_listener.local_addr()?,
        metrics: metrics_addr,
    };

    let registrations = data.registrations()?;
    let config_allow_estimated = config.allow_estimated_rtt;
    let config_base_ejection = config.base_ejection;
    let (shutdown, _) = watch::channel(false);
    let agent = Arc::new(Agent {
        config,
        identity,
        data,
        transport,
        membership,
        catalog,
        rtt,
        registrations: Mutex::new(registrations),
        link_rules,
        upstreams: Upstreams::new(BalancerConfig {
            allow_estimated_rtt: config_allow_estimated,
            base_ejection: config_base_ejection,
            ..BalancerConfig::default()
        }),
        http: local_client(),
        recovering: Default::default(),
        supervisor: Default::default(),
        started: Instant::now(),
        listeners,
        ready: AtomicBool::new(false),
        shutdown,
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(streams::dispatch(agent.clone(), stream_rx));
    tasks.spawn(crate::rtt::run(agent.clone(), rtt_rx));
    tasks.spawn(admin::serve(agent.clone(), admin_listener));
    tasks.spawn(proxy::serve(agent.clone(), proxy_listener));
    tasks.spawn(sync::run(agent.clone()));
    tasks.spawn(sync::persist_loop(agent.clone()));
    tasks.spawn(join::run(agent.clone()));
    tasks.spawn(watch_membership(agent.clone()));

    write_node_meta(&agent).await;
    registry::restore(&agent).await;
    // After restore, so an earlier run's stale instances are gone first.
    tasks.spawn(crate::supervise::run(agent.clone()));
    let listeners_json = serde_json::to_vec_pretty(&agent.listeners)?;
    crate::persist::write_atomic(&agent.data.path().join("listeners.json"), &listeners_json)?;
    agent.ready.store(true, Ordering::Relaxed);
    info!(
        node = %agent.node_id(),
        generation,
        quic = %agent.listeners.quic,
        admin = %agent.listeners.admin,
        proxy = %agent.listeners.proxy,
        metrics = ?agent.listeners.metrics.map(metrics::url),
        "agent ready"
    );
    Ok(RunningAgent { agent, tasks })
}

fn warn_about_addresses(config: &AgentConfig) {
    let joins_remote = config.join.iter().any(|target| {
        target
            .rsplit_once(':')
            .and_then(|(host, _)| {
                host.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .ok()
            })
            .is_none_or(|ip| !is_local_only(ip))
    });
    if is_local_only(config.advertise.ip()) && joins_remote {
        warn!(
            advertise = %config.advertise,
            "advertising a loopback or unspecified address while joining non-local peers; \
             they will not reach this node: set --advertise to an address they can reach"
        );
    }
}

async fn bind_tcp(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({flag}); is another agent running? choose a free address")
    })
}

async fn start_metrics(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = metrics::recorder()?;
    let listener = bind_tcp(addr, "--metrics-listen").await?;
    let local = listener.local_addr()?;
    tokio::spawn(admin::serve_metrics(listener, handle));
    Ok(local)
}

/// Publishes this node's metadata (CPU, memory, zone, version, coordinate).
pub async fn write_node_meta(agent: &Agent) {
    let meta = NodeMeta {
        node: agent.node_id().clone(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_mb: total_memory_mb(),
        zone: agent.config.zone.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        coordinate: Some(agent.rtt.coordinate()),
    };
    registry::publish(
        agent,
        RecordKey::Node(agent.node_id().clone()),
        RecordBody::Node(meta),
    )
    .await;
}

fn total_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Reacts to membership changes: catalog views change when nodes come and go.
async fn watch_membership(agent: Arc<Agent>) {
    let mut active = agent.membership.active();
    let mut known = active.borrow().clone();
    while active.changed().await.is_ok() {
        let now = active.borrow().clone();
        for (id, identity) in now.iter() {
            if known.get(id) != Some(identity) {
                // A node that (re)joined gets our catalog at once instead of
                // waiting for the next anti-entropy round.
                let agent = agent.clone();
                let peer = identity.addr;
                tokio::spawn(async move { sync::sync_with(&agent, peer).await });
            }
        }
        for id in known.keys().filter(|id| !now.contains_key(*id)) {
            agent.rtt.forget(id);
        }
        known = now;
        agent.catalog.touch();
    }
}

/// Runs an agent until SIGINT or SIGTERM, then leaves the cluster and drains.
pub async fn run_until_signal(args: crate::config::AgentArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let running = start(config).await?;
    wait_for_signal().await?;
    running.stop().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
