//! The agent, layer 6: the composition root and the only module that
//! imports every other. It builds each service with the narrow handles it
//! uses, starts every long-lived task under one tracker, and on stop
//! deregisters, leaves, drains and persists, in that order. Every task the
//! agent runs is started in [`start`], so this file is the map of a running
//! sidecar.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_proto::{NodeId, NodeIdentity};
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::catalog::{wall_ms, CatalogStore};
use crate::config::{is_local_only, AgentConfig};
use crate::decisions::Decisions;
use crate::handles::AdminHandles;
use crate::health::PassiveHealth;
use crate::link_shim::{LinkRule, LinkRules};
use crate::membership::Membership;
use crate::persist::DataDir;
use crate::proxy::forward::local_client;
use crate::proxy::ProxyHandles;
use crate::registry::Registry;
use crate::rtt::{RttSampler, RttTable};
use crate::streams::StreamHandles;
use crate::supervise::{SuperviseContext, Supervisor};
use crate::sync::AntiEntropy;
use crate::transport::{Inbound, Transport};
use crate::upstreams::Upstreams;
use crate::{admin, join, metrics, proxy, streams, sync, tls};
use client::select::BalancerConfig;

pub use crate::listeners::Listeners;

/// How long stop waits for tasks to finish on their own before it cancels
/// what is left (a proxied call that streams forever must not hold the exit).
const DRAIN: Duration = Duration::from_secs(5);

/// The handles of a running agent, for in-process users (demo, tests,
/// bench). The agent's own tasks each hold only the handles they use.
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
    /// This node's writes to the catalog.
    pub registry: Arc<Registry>,
    /// RTT to peers.
    pub rtt: Arc<RttTable>,
    /// Link rules of the test-only shim (tests change them at run time).
    pub link_rules: LinkRules,
    /// Candidates and one balancer per service.
    pub upstreams: Arc<Upstreams>,
    /// Local services this agent runs (`--exec`, `[[supervise]]`).
    pub supervisor: Arc<Supervisor>,
    /// When the agent started.
    pub started: Instant,
    /// Actual listener addresses (ports may have been 0).
    pub listeners: Listeners,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
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

    /// RTT to `node` (ms) and its source, as the proxy sees it.
    pub fn rtt_to(&self, node: &NodeId) -> (Option<f64>, mesh_proto::api::RttSource) {
        self.upstreams.rtt_to(&self.catalog.snapshot(), node)
    }
}

/// A started agent; [`RunningAgent::stop`] leaves the cluster and drains.
pub struct RunningAgent {
    /// The shared state, for in-process users (demo, tests, bench).
    pub agent: Arc<Agent>,
    tasks: TaskTracker,
}

impl RunningAgent {
    /// Deregisters local instances, leaves the cluster, drains every task
    /// (bounded), persists the catalog.
    pub async fn stop(self) {
        let agent = self.agent.clone();
        info!(node = %agent.node_id(), "stopping: deregistering local services and leaving the cluster");
        crate::supervise::stop(&agent.supervisor).await;
        agent.registry.deregister_flag_services().await;
        // Give the deregistrations a moment to ride on gossip before leaving.
        tokio::time::sleep(Duration::from_millis(200)).await;
        agent.membership.leave().await;
        let _ = agent.shutdown.send(true);
        if let Err(e) = sync::save_snapshot(&agent.catalog, &agent.data).await {
            warn!(error = %e, "cannot save the catalog snapshot at stop");
        }
        agent.transport.shutdown().await;
        self.tasks.close();
        if tokio::time::timeout(DRAIN, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(drain = ?DRAIN, "some tasks did not finish within the drain time; they are dropped with the runtime");
        }
        if agent.config.ephemeral_data_dir {
            let _ = std::fs::remove_dir_all(agent.data.path());
        }
    }

    /// Stops without leaving or deregistering, as a crash would (tests).
    pub async fn abort(self) {
        let _ = self.agent.shutdown.send(true);
        self.agent.transport.shutdown().await;
        self.tasks.close();
        let _ = tokio::time::timeout(DRAIN, self.tasks.wait()).await;
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
        {
            let mut timings = config.profile.transport();
            if let Some(idle_close) = config.idle_close {
                timings.idle_close = idle_close;
            }
            timings
        },
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
    let rtt = RttTable::new(node_id.clone(), config.allow_estimated_rtt);
    let membership = Membership::start(
        identity.clone(),
        config.profile,
        transport.clone(),
        swim_rx,
        catalog.clone(),
        rtt.clone(),
    );
    let registry = Arc::new(Registry::new(
        node_id.clone(),
        catalog.clone(),
        membership.clone(),
        data.clone(),
        config.services.clone(),
        config.zone.clone(),
    )?);

    let admin_listener = bind_tcp(config.admin_listen, "--admin-listen").await?;
    let proxy_listener = bind_tcp(config.proxy_listen, "--proxy-listen").await?;
    let mut tcp_listeners = Vec::with_capacity(config.tcp.len());
    for spec in &config.tcp {
        let listener = bind_tcp(spec.listen, &format!("--tcp {}", spec.service)).await?;
        info!(service = %spec.service, listen = %listener.local_addr()?, "TCP service listener");
        tcp_listeners.push((spec.service.clone(), listener));
    }
    let tasks = TaskTracker::new();
    let (shutdown, _) = watch::channel(false);
    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(
            start_metrics(
                &tasks,
                addr,
                http_limits(&config, "metrics"),
                shutdown.subscribe(),
            )
            .await?,
        ),
        None => None,
    };
    let dns = match config.dns_listen {
        Some(addr) => Some(crate::dns::DnsSockets::bind(addr).await?),
        None => None,
    };
    let listeners = Listeners {
        quic,
        admin: admin_listener.local_addr()?,
        proxy: proxy_listener.local_addr()?,
        metrics: metrics_addr,
        dns: dns.as_ref().map(|d| d.local_addr()).transpose()?,
    };

    let upstreams = Arc::new(Upstreams::new(
        node_id.clone(),
        catalog.clone(),
        membership.active(),
        rtt.clone(),
        BalancerConfig {
            allow_estimated_rtt: config.allow_estimated_rtt,
            base_ejection: config.base_ejection,
            ..BalancerConfig::default()
        },
    ));
    let supervisor = Arc::new(Supervisor::new(SuperviseContext {
        registry: registry.clone(),
        root: data.path().join("supervise"),
        listeners,
        profile: config.profile,
        specs: config.supervise.clone(),
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let health = PassiveHealth::new(registry.clone(), shutdown.subscribe());
    let decisions = Arc::new(Decisions::default());
    let access_log = match &config.access_log {
        Some(target) => {
            let (log, writer) = crate::proxy::access_log::AccessLog::open(target)?;
            // Detached: it ends when the proxy drops its sender, after the
            // last line is written.
            tokio::spawn(writer);
            Some(log)
        }
        None => None,
    };
    let proxy_handles = Arc::new(ProxyHandles {
        upstreams: upstreams.clone(),
        transport: transport.clone(),
        http: local_client(),
        hops: crate::proxy::hop_pool::HopPool::start(),
        links: crate::proxy::fast::LinkPool::start(),
        health,
        shutdown: shutdown.subscribe(),
        decisions: decisions.clone(),
        access_log,
        request_metrics: Default::default(),
    });
    // Set from the start when --join names targets: until one answers, the
    // node is not in the cluster it was told to join.
    if config.admin_token.is_none() && !config.admin_listen.ip().is_loopback() {
        warn!(admin = %config.admin_listen, "the admin API listens beyond loopback without --admin-token: anyone who reaches it can change the catalog; set --admin-token (or restrict it with a network policy)");
    }
    let join_problem = join::JoinProblem::default();
    if !config.join.is_empty() {
        join_problem.set("not in a cluster yet: joining through --join".to_owned());
    }
    let admin_handles = Arc::new(AdminHandles {
        identity: identity.clone(),
        catalog: catalog.clone(),
        membership: membership.clone(),
        registry: registry.clone(),
        upstreams: upstreams.clone(),
        supervisor: supervisor.clone(),
        decisions,
        event_streams: Arc::new(tokio::sync::Semaphore::new(crate::ui::sse::MAX_STREAMS)),
        listeners,
        ready: ready.clone(),
        join_problem: join_problem.clone(),
        admin_token: config.admin_token.clone(),
        shutdown: shutdown.subscribe(),
    });
    let stream_handles = Arc::new(StreamHandles {
        identity: identity.clone(),
        catalog: catalog.clone(),
        proxy: proxy_handles.clone(),
        membership: membership.clone(),
    });
    let anti_entropy = AntiEntropy {
        catalog: catalog.clone(),
        transport: transport.clone(),
        members: membership.active(),
        interval: config
            .anti_entropy
            .unwrap_or_else(|| config.profile.anti_entropy_interval()),
    };

    let stopping = shutdown.subscribe();
    let until_stop = |task| until(stopping.clone(), task);
    let served = stream_handles.clone();
    transport.serve_streams_with(Arc::new(move |stream| {
        Box::pin(streams::serve(served.clone(), stream))
    }));
    tasks.spawn(until_stop(Box::pin(streams::dispatch(
        stream_handles,
        stream_rx,
    ))));
    tasks.spawn(until_stop(Box::pin(crate::rtt::run(
        RttSampler {
            rtt: rtt.clone(),
            transport: transport.clone(),
            members: membership.active(),
        },
        rtt_rx,
    ))));
    tasks.spawn(admin::serve(
        admin_handles,
        admin_listener,
        http_limits(&config, "admin"),
    ));
    for (service, listener) in tcp_listeners {
        tasks.spawn(proxy::tcp::serve(proxy_handles.clone(), service, listener));
    }
    tasks.spawn(proxy::serve(
        proxy_handles,
        proxy_listener,
        http_limits(&config, "proxy"),
    ));
    tasks.spawn(until_stop(Box::pin(sync::run(anti_entropy.clone()))));
    // Joining at start and joining again from member pulls differ only in
    // their targets and in whether a failure is reported.
    let joiner = |targets, problem| join::Joiner {
        targets,
        problem,
        identity: identity.clone(),
        bound: quic,
        membership: membership.clone(),
        transport: transport.clone(),
    };
    tasks.spawn(until_stop(Box::pin(crate::member_sync::run(
        crate::member_sync::MemberSync {
            membership: membership.clone(),
            transport: transport.clone(),
            members: membership.active(),
            interval: config.profile.member_sync_interval(),
            rejoin: (!config.join.is_empty()).then(|| joiner(config.join.clone(), None)),
        },
    ))));
    tasks.spawn(until_stop(Box::pin(sync::persist_loop(
        catalog.clone(),
        data.clone(),
    ))));
    let saved_members = data.members();
    if !saved_members.is_empty() {
        info!(
            members = saved_members.len(),
            "rejoining the members saved in the data dir, with --join"
        );
    }
    tasks.spawn(until_stop(Box::pin(join::remember_members(
        membership.clone(),
        data.clone(),
    ))));
    tasks.spawn(until_stop(Box::pin(join::run(joiner(
        join::targets(&config.join, &saved_members, &[quic, advertise]),
        (!config.join.is_empty()).then(|| join_problem.clone()),
    )))));
    tasks.spawn(until_stop(Box::pin(crate::reap::run(
        catalog.clone(),
        membership.active(),
        config.reap_after,
    ))));
    tasks.spawn(until_stop(Box::pin(watch_membership(
        membership.clone(),
        catalog.clone(),
        rtt.clone(),
        anti_entropy,
    ))));

    registry.publish_node_meta(rtt.coordinate()).await;
    registry.restore().await;
    if let Some(dns) = dns {
        let source = crate::dns::source::AgentSource {
            identity: identity.clone(),
            upstreams: upstreams.clone(),
            catalog: catalog.clone(),
        };
        tasks.spawn(crate::dns::serve(dns, source.shared(), config.dns_ttl));
    }
    // After restore, so an earlier run's stale instances are gone first.
    tasks.spawn(crate::supervise::run(supervisor.clone()));
    let agent = Arc::new(Agent {
        config,
        identity,
        data,
        transport,
        membership,
        catalog,
        registry,
        rtt,
        link_rules,
        upstreams,
        supervisor,
        started: Instant::now(),
        listeners,
        ready,
        shutdown,
    });
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
        dns = ?agent.listeners.dns,
        "agent ready"
    );
    Ok(RunningAgent { agent, tasks })
}

type BoxedTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `task` until the agent stops (loops that have no shutdown of their own).
async fn until(mut stopping: watch::Receiver<bool>, task: BoxedTask) {
    tokio::select! {
        _ = task => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
}

/// Members expected to push the catalog to a node that (re)joined.
const JOIN_PUSHERS: u32 = 3;

/// Reacts to membership changes: catalog views change when nodes come and go.
async fn watch_membership(
    membership: Membership,
    catalog: Arc<CatalogStore>,
    rtt: Arc<RttTable>,
    anti_entropy: AntiEntropy,
) {
    let mut active = membership.active();
    let mut known = active.borrow().clone();
    while active.changed().await.is_ok() {
        let now = active.borrow().clone();
        // A node that (re)joined gets the catalog at once instead of waiting
        // for an anti-entropy round, from a few members, not all: with every
        // member pushing, each rejoin cost the cluster N exchanges and as
        // many handshakes, and at 250 agents on one machine the load that
        // caused false suspicions fed more of them.
        let members = u32::try_from(now.len()).unwrap_or(u32::MAX).max(1);
        let pushers = JOIN_PUSHERS.min(members);
        for (id, identity) in now.iter() {
            if known.get(id) != Some(identity) && rand::rng().random_ratio(pushers, members) {
                let anti_entropy = anti_entropy.clone();
                let peer = identity.addr;
                tokio::spawn(async move { sync::sync_with(&anti_entropy, peer, false).await });
            }
        }
        for id in known.keys().filter(|id| !now.contains_key(*id)) {
            rtt.forget(id);
        }
        known = now;
        catalog.touch();
    }
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

/// The bounds of the HTTP listener named `listener`, from the flags.
fn http_limits(config: &AgentConfig, listener: &'static str) -> crate::server::Limits {
    crate::server::Limits {
        listener,
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
    }
}

async fn start_metrics(
    tasks: &TaskTracker,
    addr: SocketAddr,
    limits: crate::server::Limits,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let handle = metrics::recorder()?;
    let listener = bind_tcp(addr, "--metrics-listen").await?;
    let local = listener.local_addr()?;
    tasks.spawn(admin::serve_metrics(listener, handle, limits, shutdown));
    Ok(local)
}

/// Runs an agent until SIGINT or SIGTERM, then leaves the cluster and drains.
pub async fn run_until_signal(args: crate::config::AgentArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let running = start(config).await?;
    wait_for_signal().await?;
    running.stop().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
