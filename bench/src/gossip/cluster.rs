//! N real agents in this process on loopback (`local` profile), and what
//! the gossip scenario reads from them: members, catalog, the gossip
//! counters of the metrics recorder, QUIC statistics and resident memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use mesh_proto::codec;
use mesh_proto::gossip::SyncMessage;
use mesh_proto::NodeId;
use rand::RngExt;
use sidecar::agent::{self, RunningAgent};
use sidecar::config::Profile;
use sidecar::demo::local_config;

/// Renders the process-wide Prometheus text every in-process agent writes to.
pub struct Metrics(Box<dyn Fn() -> String + Send + Sync>);

impl Metrics {
    /// Installs the agents' recorder (once per process) before any agent starts.
    pub fn install() -> anyhow::Result<Self> {
        let handle = sidecar::metrics::recorder()?;
        Ok(Self(Box::new(move || handle.render())))
    }

    /// Sum of every sample of `name` whose labels contain `label`.
    pub fn counter(&self, name: &str, label: &str) -> f64 {
        let text = (self.0)();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// UDP bytes and datagrams sent on each live QUIC connection, by (agent, connection id).
type QuicTx = HashMap<(String, usize), (u64, u64)>;

/// Gossip traffic counters of the whole process at one instant.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// SWIM bytes sent (`gossamer_gossip_bytes_total{direction="out"}`).
    pub swim_bytes: f64,
    /// SWIM packets sent.
    pub swim_packets: f64,
    /// SWIM packets received (opened), for the loss between the two.
    pub swim_packets_in: f64,
    /// Malformed or unopenable packets.
    pub decode_errors: f64,
    /// What every agent's cached QUIC connections sent (all traffic: SWIM,
    /// RTT pings, anti-entropy, keep-alives, QUIC overhead).
    pub quic: QuicTx,
    /// CPU time (user + system) the whole bench process had used.
    pub cpu: Duration,
    /// The most open connections any one agent held.
    pub connections_max: usize,
    /// When the sample was taken.
    pub at: Option<Instant>,
}

/// Per-node rates between two samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rates {
    /// Seconds between the samples.
    pub window_s: f64,
    /// Agents the rates are divided by.
    pub nodes: usize,
    /// SWIM bytes sent per node per second.
    pub swim_bytes_per_node_s: f64,
    /// SWIM packets sent per node per second.
    pub swim_packets_per_node_s: f64,
    /// QUIC UDP bytes sent per node per second (everything on the wire).
    /// A lower bound: connections that closed between the samples and
    /// connections no agent caches are not counted.
    pub quic_bytes_per_node_s: f64,
    /// QUIC UDP datagrams sent per node per second.
    pub quic_datagrams_per_node_s: f64,
    /// Everything sent: QUIC plus the sealed SWIM datagrams (when SWIM
    /// travels as UDP), UDP payload bytes.
    pub wire_bytes_per_node_s: f64,
    /// Datagrams sent: QUIC's plus SWIM's.
    pub wire_datagrams_per_node_s: f64,
    /// CPU per node, in milliseconds per second (the process's CPU over
    /// the agents: their share of a core is this ÷ 10 %).
    pub cpu_ms_per_node_s: f64,
}

impl Rates {
    /// Rates from `before` to `after`, divided over `nodes` agents.
    pub fn between(before: &Counters, after: &Counters, nodes: usize) -> Self {
        let window_s = match (before.at, after.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let per = |a: f64, b: f64| (b - a).max(0.0) / (window_s.max(1e-9) * nodes.max(1) as f64);
        let (mut quic_bytes, mut quic_datagrams) = (0u64, 0u64);
        for (key, (bytes, datagrams)) in &after.quic {
            let (b0, d0) = before.quic.get(key).copied().unwrap_or((0, 0));
            quic_bytes += bytes.saturating_sub(b0);
            quic_datagrams += datagrams.saturating_sub(d0);
        }
        let swim_bytes = per(before.swim_bytes, after.swim_bytes);
        let swim_packets = per(before.swim_packets, after.swim_packets);
        let quic_bytes = per(0.0, quic_bytes as f64);
        let quic_datagrams = per(0.0, quic_datagrams as f64);
        // The bench's agents use a passphrase, so SWIM is sealed UDP.
        let sealed = sidecar::transport::swim_udp::OVERHEAD as f64;
        Self {
            window_s,
            nodes,
            swim_bytes_per_node_s: swim_bytes,
            swim_packets_per_node_s: swim_packets,
            quic_bytes_per_node_s: quic_bytes,
            quic_datagrams_per_node_s: quic_datagrams,
            wire_bytes_per_node_s: quic_bytes + swim_bytes + swim_packets * sealed,
            wire_datagrams_per_node_s: quic_datagrams + swim_packets,
            cpu_ms_per_node_s: per(
                0.0,
                after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e3,
            ),
        }
    }
}

/// Resident memory of this process, in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    status_kib("/proc/self/status", "VmRSS:")
}

/// A `kB` field of a `/proc/PID/status` file.
pub fn status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The in-process agents.
pub struct Cluster {
    /// Running agents; index 0 is the seed everyone joins through.
    pub agents: Vec<RunningAgent>,
    /// Where their data dirs live (removed at shutdown).
    dir: PathBuf,
    next_name: usize,
    /// Gossip timings of every agent.
    profile: Profile,
}

impl Cluster {
    /// An empty cluster whose agents keep their data under a fresh temp dir
    /// and gossip with `profile`'s timings.
    pub fn new(profile: Profile) -> Self {
        Self {
            agents: Vec::new(),
            dir: std::env::temp_dir().join(format!(
                "gossamer-bench-gossip-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            )),
            next_name: 0,
            profile,
        }
    }

    /// The seed's QUIC address, once there is one.
    pub fn seed(&self) -> Option<String> {
        self.agents
            .first()
            .map(|a| a.agent.listeners.quic.to_string())
    }

    /// Starts one more agent joining the seed and a random other member;
    /// returns how long `agent::start` took (start to ready).
    pub async fn add(&mut self) -> anyhow::Result<Duration> {
        let name = format!("gossip-{:04}", self.next_name);
        self.next_name += 1;
        let mut join: Vec<String> = self.seed().into_iter().collect();
        if self.agents.len() > 1 {
            let other = rand::rng().random_range(1..self.agents.len());
            join.push(self.agents[other].agent.listeners.quic.to_string());
        }
        let mut config = local_config(&name, join, Vec::new());
        config.profile = self.profile;
        config.data_dir = self.dir.join(&name);
        config.ephemeral_data_dir = false;
        let started = Instant::now();
        let running = agent::start(config).await?;
        let took = started.elapsed();
        self.agents.push(running);
        Ok(took)
    }

    /// Members (alive or suspect, self excluded) each agent sees.
    pub fn active_counts(&self) -> Vec<usize> {
        self.agents
            .iter()
            .map(|a| a.agent.membership.active().borrow().len())
            .collect()
    }

    /// Waits until every agent sees every other; returns how long it took.
    pub async fn wait_formed(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let want = self.agents.len().saturating_sub(1);
        let mut next_report = Duration::from_secs(10);
        loop {
            let counts = self.active_counts();
            if counts.iter().all(|&c| c == want) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= next_report {
                next_report += Duration::from_secs(10);
                let mut sorted = counts.clone();
                sorted.sort_unstable();
                let complete = sorted.iter().filter(|&&c| c == want).count();
                eprintln!(
                    "  forming, {:.0} s: peers seen min {} / median {} / max {} of {want}; {complete} agents complete",
                    started.elapsed().as_secs_f64(),
                    sorted.first().copied().unwrap_or(0),
                    sorted.get(sorted.len() / 2).copied().unwrap_or(0),
                    sorted.last().copied().unwrap_or(0),
                );
            }
            if started.elapsed() > within {
                let mut missing: Vec<(usize, usize)> = counts
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(_, c)| c != want)
                    .collect();
                missing.sort_by_key(|&(_, c)| c);
                let mut short = Vec::new();
                for &(i, c) in &missing {
                    let agent = &self.agents[i].agent;
                    let mut text = format!("{} sees {c}", agent.node_id());
                    if short.is_empty() {
                        // The worst one: what its own member table says.
                        let members = agent.membership.members().await;
                        let down = members
                            .iter()
                            .filter(|m| m.state == mesh_proto::api::MemberState::Down)
                            .count();
                        text.push_str(&format!(
                            " (generation {}, {} members known, {down} down)",
                            agent.membership.local().generation,
                            members.len()
                        ));
                    }
                    short.push(text);
                }
                let shown = short
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                bail!(
                    "{} of {} agents do not see all {want} peers after {within:?} ({shown}{}); \
                     the machine may be overloaded, try fewer --nodes",
                    short.len(),
                    self.agents.len(),
                    if short.len() > 10 { ", ..." } else { "" }
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each agent's catalog index.
    pub fn catalog_indexes(&self) -> Vec<u64> {
        self.agents
            .iter()
            .map(|a| a.agent.catalog.index())
            .collect()
    }

    /// Records in the first agent's catalog.
    pub fn catalog_records(&self) -> usize {
        self.agents
            .first()
            .map_or(0, |a| a.agent.catalog.read(|c| c.len()))
    }

    /// Encoded size of the first agent's anti-entropy digest.
    pub fn digest_bytes(&self) -> usize {
        self.agents.first().map_or(0, |a| {
            let digest = SyncMessage::Digest(a.agent.catalog.read(|c| c.digest()));
            codec::encode(&digest).map_or(0, |b| b.len())
        })
    }

    /// Kills agent `index` without leaving (as a crash would) and returns its id.
    pub async fn kill(&mut self, index: usize) -> NodeId {
        let running = self.agents.remove(index);
        let id = running.agent.node_id().clone();
        running.abort().await;
        id
    }

    /// A snapshot of the gossip counters.
    pub fn counters(&self, metrics: &Metrics) -> Counters {
        let mut quic = QuicTx::new();
        let mut connections_max = 0;
        for running in &self.agents {
            let agent = &running.agent;
            // Every open connection, whoever it is to (not one per member).
            let live = agent.transport.live();
            connections_max = connections_max.max(live.len());
            for (_, connection) in live {
                let stats = connection.stats();
                quic.insert(
                    (agent.node_id().to_string(), connection.stable_id()),
                    (stats.udp_tx.bytes, stats.udp_tx.datagrams),
                );
            }
        }
        Counters {
            swim_bytes: metrics.counter(sidecar::metrics::GOSSIP_BYTES, "direction=\"out\""),
            swim_packets: metrics.counter(sidecar::metrics::GOSSIP_PACKETS, "direction=\"out\""),
            swim_packets_in: metrics.counter(sidecar::metrics::GOSSIP_PACKETS, "direction=\"in\""),
            decode_errors: metrics.counter(sidecar::metrics::DECODE_ERRORS, ""),
            quic,
            cpu: crate::load::process_cpu(),
            connections_max,
            at: Some(Instant::now()),
        }
    }

    pub async fn shutdown(self) {
        let mut tasks = tokio::task::JoinSet::new();
        for running in self.agents {
            tasks.spawn(running.abort());
        }
        while tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
