//! `bench gossip --nodes N`: N real agents in one process on loopback, with
//! the `local` profile (`--profile lan` or `wan` for theirs).
//!
//! Measures, in order: start-to-ready of each agent and the time for the
//! cluster to form; gossip traffic per node at rest and resident memory per
//! agent; when the `gossamer` binary is built, one more agent as its own
//! process, for its start-to-ready time and its memory alone with every
//! member known (it then leaves); the time from registering an instance on
//! one agent to its presence in every agent's catalog (over repeats); the
//! time from killing an agent without leave to its being down on every
//! other; and gossip traffic during churn (an agent killed and a new one
//! started every second).

mod cluster;
mod probe;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use mesh_proto::api::RegisterInstance;
use rand::RngExt;
use serde::Serialize;

use crate::report::{self, fmt_us, percentile, Table};
use cluster::{rss_kib, Cluster, Metrics, Rates};
use probe::ProbeResult;
use sidecar::config::Profile;

/// Options of `bench gossip`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct GossipArgs {
    /// Agents in the cluster.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Registrations whose spread is timed.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Agents killed (one at a time) whose detection is timed.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Seconds to let the cluster settle after forming, before "at rest".
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds of traffic measured at rest.
    #[arg(long, default_value_t = 10.0)]
    pub rest: f64,
    /// Seconds of churn (one agent killed and one started per second).
    #[arg(long, default_value_t = 10.0)]
    pub churn: f64,
    /// Gossip timings of every agent (the local profile is the one whose
    /// detection goals the bench checks; lan and wan for their figures).
    #[arg(long, value_enum, default_value_t = Profile::Local)]
    pub profile: Profile,
    /// Agents started per second while the cluster forms (0: each as soon
    /// as the one before is ready, a few milliseconds apart).
    #[arg(long, default_value_t = 0.0)]
    pub start_rate: f64,
    /// The `gossamer` binary for the separate-process probe [default: next to this binary].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Skip the separate-process probe.
    #[arg(long)]
    pub no_probe: bool,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

/// p50, p99 and max of some durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Spread {
    fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            count: ms.len(),
            p50_ms: percentile(&ms, 0.5),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// What the traffic at rest is made of.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RestDetail {
    /// Catalog index increments per agent per second (records changed
    /// anywhere, e.g. node metadata republished with a moved coordinate).
    pub catalog_changes_per_agent_s: f64,
    /// Records in the first agent's catalog.
    pub catalog_records: usize,
    /// Bytes of one anti-entropy digest (sent by every agent every second
    /// with the local profile).
    pub digest_bytes: usize,
    /// Live QUIC connections cached per agent, on average.
    pub connections_per_agent: f64,
    /// The most any one agent held.
    pub connections_max: usize,
    /// Share of SWIM packets sent that no agent received (in this process).
    pub swim_loss: f64,
    /// Malformed or unopenable packets counted at rest.
    pub decode_errors: f64,
}

/// Everything `bench gossip` measured.
#[derive(Debug, Clone, Serialize)]
pub struct GossipResults {
    /// Agents at the start.
    pub nodes: usize,
    /// Their gossip timings.
    pub profile: Profile,
    /// `agent::start` of each in-process agent (start to ready).
    pub start_to_ready: Spread,
    /// From the first agent's start until every agent saw every other, in s
    /// (None when that did not happen within 180 s; see `formation_note`).
    pub formation_s: Option<f64>,
    /// Why the cluster did not fully form, if it did not.
    pub formation_note: Option<String>,
    /// Traffic at rest.
    pub rest: Rates,
    /// What keeps the cluster busy at rest.
    pub rest_detail: RestDetail,
    /// Registration on one agent to presence in every catalog.
    pub registration_spread: Spread,
    /// Registrations that never reached every agent within 30 s.
    pub registration_timeouts: usize,
    /// Kill without leave to down on every other agent.
    pub kill_to_down: Spread,
    /// Kills not detected everywhere within 60 s.
    pub kill_timeouts: usize,
    /// Traffic during churn.
    pub churn: Rates,
    /// Resident memory of this process before any agent, in KiB.
    pub rss_before_kib: u64,
    /// Resident memory with every agent idle, in KiB.
    pub rss_idle_kib: u64,
    /// (idle − before) / nodes, in KiB.
    pub rss_per_agent_kib: f64,
    /// The separate agent process, when measured.
    pub probe: Option<ProbeResult>,
    /// Why the probe was skipped or failed.
    pub probe_note: Option<String>,
}

/// Runs `bench gossip`.
pub async fn run(args: &GossipArgs) -> anyhow::Result<GossipResults> {
    if !(2..=1000).contains(&args.nodes) {
        bail!("--nodes {} must be from 2 to 1000", args.nodes);
    }
    if args.kills >= args.nodes - 1 {
        bail!(
            "--kills {} must leave at least two agents of {}",
            args.kills,
            args.nodes
        );
    }
    let metrics = Metrics::install()?;
    let rss_before = rss_kib();
    let mut cluster = Cluster::new(args.profile);
    let result = measure(args, &metrics, &mut cluster, rss_before).await;
    cluster.shutdown().await;
    let results = result?;
    print_table(&results);
    let path = report::write_json(
        &args.out,
        &match args.profile {
            Profile::Local => format!("gossip-{}", args.nodes),
            other => format!("gossip-{}-{}", args.nodes, profile_name(other)),
        },
        "gossip",
        args,
        &results,
    )?;
    println!("\nwrote {}", path.display());
    Ok(results)
}

async fn measure(
    args: &GossipArgs,
    metrics: &Metrics,
    cluster: &mut Cluster,
    rss_before: u64,
) -> anyhow::Result<GossipResults> {
    println!(
        "starting {} agents in this process ({} profile)...",
        args.nodes,
        profile_name(args.profile)
    );
    let started = Instant::now();
    let mut starts = Vec::new();
    for started_so_far in 1..=args.nodes {
        starts.push(cluster.add().await?);
        if args.start_rate > 0.0 {
            let due = started + Duration::from_secs_f64(started_so_far as f64 / args.start_rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let (formation_s, formation_note) = match cluster.wait_formed(Duration::from_secs(180)).await {
        Ok(after_last) => {
            let total = started.elapsed().as_secs_f64();
            println!(
                "formed in {total:.1} s ({:.1} s after the last start)",
                after_last.as_secs_f64()
            );
            (Some(total), None)
        }
        Err(e) => {
            println!("warning: {e:#}; measuring anyway");
            (None, Some(format!("{e:#}")))
        }
    };

    // Let the joins' anti-entropy and RTT probing settle before "at rest".
    tokio::time::sleep(Duration::from_secs_f64(args.settle.clamp(0.0, 600.0))).await;
    let before = cluster.counters(metrics);
    let index_before = cluster.catalog_indexes();
    tokio::time::sleep(Duration::from_secs_f64(args.rest.max(0.5))).await;
    let after = cluster.counters(metrics);
    let rest = Rates::between(&before, &after, cluster.agents.len());
    let index_after = cluster.catalog_indexes();
    let changes: u64 = index_after
        .iter()
        .zip(&index_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let rest_detail = RestDetail {
        catalog_changes_per_agent_s: changes as f64
            / (cluster.agents.len().max(1) as f64 * rest.window_s.max(1e-9)),
        catalog_records: cluster.catalog_records(),
        digest_bytes: cluster.digest_bytes(),
        connections_per_agent: after.quic.len() as f64 / cluster.agents.len().max(1) as f64,
        connections_max: after.connections_max,
        swim_loss: 1.0
            - (after.swim_packets_in - before.swim_packets_in)
                / (after.swim_packets - before.swim_packets).max(1.0),
        decode_errors: after.decode_errors - before.decode_errors,
    };
    let rss_idle = rss_kib();

    // Before any kill, so the probe joins a cluster of exactly --nodes agents.
    let (probe, probe_note) = if args.no_probe {
        (None, Some("skipped (--no-probe)".to_owned()))
    } else {
        match (
            crate::agent_proc::find_binary(args.agent_bin.as_deref()),
            cluster.seed(),
        ) {
            (Some(binary), Some(seed)) => {
                println!(
                    "probe: one more agent as its own process ({})...",
                    binary.display()
                );
                let expect = cluster.agents.len() + 1;
                match probe::measure(&binary, args.profile, &seed, expect, Duration::from_secs(5))
                    .await
                {
                    Ok(result) => (Some(result), None),
                    Err(e) => (None, Some(format!("probe failed: {e:#}"))),
                }
            }
            _ => (
                None,
                Some(
                    "skipped: no gossamer binary next to this one; \
                     build it with `cargo build --release -p sidecar` or pass --agent-bin"
                        .to_owned(),
                ),
            ),
        }
    };

    println!("timing {} registrations...", args.repeats);
    let mut spreads = Vec::new();
    let mut registration_timeouts = 0;
    for k in 0..args.repeats {
        match registration(cluster, k).await? {
            Some(took) => spreads.push(took),
            None => registration_timeouts += 1,
        }
        let pause = rand::rng().random_range(100..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    println!("timing {} kills without leave...", args.kills);
    let mut kills = Vec::new();
    let mut kill_timeouts = 0;
    for _ in 0..args.kills {
        let victim = rand::rng().random_range(1..cluster.agents.len());
        match kill(cluster, victim).await {
            Some(took) => kills.push(took),
            None => kill_timeouts += 1,
        }
    }

    println!("churn for {:.0} s...", args.churn);
    let churn = churn(cluster, metrics, args.churn).await?;

    Ok(GossipResults {
        nodes: args.nodes,
        profile: args.profile,
        start_to_ready: Spread::of(&starts),
        formation_s,
        formation_note,
        rest,
        rest_detail,
        registration_spread: Spread::of(&spreads),
        registration_timeouts,
        kill_to_down: Spread::of(&kills),
        kill_timeouts,
        churn,
        rss_before_kib: rss_before,
        rss_idle_kib: rss_idle,
        rss_per_agent_kib: rss_idle.saturating_sub(rss_before) as f64 / args.nodes as f64,
        probe,
        probe_note,
    })
}

/// Registers an instance on one agent and times its arrival everywhere.
async fn registration(cluster: &Cluster, k: usize) -> anyhow::Result<Option<Duration>> {
    let writer = k % cluster.agents.len();
    let id = format!("spread-{k}");
    let request = RegisterInstance {
        service: "bench-spread".to_owned(),
        port: None,
        address: Some(format!("127.0.0.1:{}", 20_000 + k)),
        id: Some(id.clone()),
        deployment_id: None,
        tags: Vec::new(),
        health: None,
    };
    let started = Instant::now();
    cluster.agents[writer]
        .agent
        .registry
        .register(request, false)
        .await
        .map_err(|e| anyhow::anyhow!("cannot register: {e}"))?;
    let mut pending: Vec<usize> = (0..cluster.agents.len()).collect();
    while started.elapsed() < Duration::from_secs(30) {
        pending.retain(|&i| {
            !cluster.agents[i]
                .agent
                .catalog
                .read(|c| c.instance(&id).is_some())
        });
        if pending.is_empty() {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(None)
}

/// Kills agent `victim` without leave and times until no other agent has
/// it among its active members.
async fn kill(cluster: &mut Cluster, victim: usize) -> Option<Duration> {
    let started = Instant::now();
    let id = cluster.kill(victim).await;
    while started.elapsed() < Duration::from_secs(60) {
        let still = cluster
            .agents
            .iter()
            .any(|a| a.agent.membership.active().borrow().contains_key(&id));
        if !still {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Replaces one agent per second for `secs` and measures gossip traffic.
async fn churn(cluster: &mut Cluster, metrics: &Metrics, secs: f64) -> anyhow::Result<Rates> {
    let before = cluster.counters(metrics);
    let started = Instant::now();
    let rounds = secs.max(1.0).round() as u32;
    for round in 1..=rounds {
        let victim = rand::rng().random_range(1..cluster.agents.len());
        cluster.kill(victim).await;
        cluster.add().await?;
        let next = started + Duration::from_secs(u64::from(round));
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(Rates::between(
        &before,
        &cluster.counters(metrics),
        cluster.agents.len(),
    ))
}

fn print_table(r: &GossipResults) {
    let ms = |v: f64| fmt_us(v * 1000.0);
    let mut t = Table::new(&["measure", "p50", "p99", "max", "count", "target"]);
    let spread_row = |t: &mut Table, name: &str, s: &Spread, target: &str| {
        t.row(vec![
            name.to_owned(),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            s.count.to_string(),
            target.to_owned(),
        ]);
    };
    spread_row(
        &mut t,
        "start to ready (in process)",
        &r.start_to_ready,
        "≤ 100 ms",
    );
    spread_row(
        &mut t,
        "registration on all",
        &r.registration_spread,
        "p99 ≤ 2 s",
    );
    spread_row(&mut t, "kill to down on all", &r.kill_to_down, "≤ 5 s");
    match r.formation_s {
        Some(s) => println!(
            "\nGossip on {} agents ({} profile), formed in {s:.1} s",
            r.nodes,
            profile_name(r.profile)
        ),
        None => println!(
            "\nGossip on {} agents ({} profile), NOT fully formed",
            r.nodes,
            profile_name(r.profile)
        ),
    }
    print!("{}", t.render());
    if r.registration_timeouts + r.kill_timeouts > 0 {
        println!(
            "timeouts: {} registrations, {} kills",
            r.registration_timeouts, r.kill_timeouts
        );
    }
    let mut traffic = Table::new(&[
        "traffic per node",
        "SWIM B/s",
        "SWIM pkts/s",
        "QUIC B/s",
        "QUIC dgrams/s",
        "wire B/s",
        "wire dgrams/s",
        "CPU ms/s",
    ]);
    for (name, rates) in [("at rest", &r.rest), ("during churn", &r.churn)] {
        traffic.row(vec![
            name.to_owned(),
            format!("{:.0}", rates.swim_bytes_per_node_s),
            format!("{:.1}", rates.swim_packets_per_node_s),
            format!("{:.0}", rates.quic_bytes_per_node_s),
            format!("{:.1}", rates.quic_datagrams_per_node_s),
            format!("{:.0}", rates.wire_bytes_per_node_s),
            format!("{:.1}", rates.wire_datagrams_per_node_s),
            format!("{:.2}", rates.cpu_ms_per_node_s),
        ]);
    }
    println!();
    print!("{}", traffic.render());
    let d = &r.rest_detail;
    println!(
        "at rest: {:.2} catalog changes per agent per second, {} records, digest {} B, {:.1} QUIC connections per agent (max {})",
        d.catalog_changes_per_agent_s, d.catalog_records, d.digest_bytes, d.connections_per_agent, d.connections_max
    );
    println!(
        "at rest: {:.1} % of SWIM packets sent were not received; {:.0} decode errors",
        d.swim_loss * 100.0,
        d.decode_errors
    );
    println!(
        "\nmemory: {:.0} KiB per agent in process ((RSS {} − {} KiB) / {})",
        r.rss_per_agent_kib, r.rss_idle_kib, r.rss_before_kib, r.nodes
    );
    match (&r.probe, &r.probe_note) {
        (Some(p), _) => println!(
            "separate agent process: start to ready {:.1} ms, full view of {} members after {:.1} s, RSS {:.1} MiB idle (peak {:.1} MiB)",
            p.start_to_ready_ms,
            p.members_seen,
            p.full_view_s,
            p.rss_kib as f64 / 1024.0,
            p.hwm_kib as f64 / 1024.0
        ),
        (None, Some(note)) => println!("separate agent process: {note}"),
        (None, None) => {}
    }
}

/// A profile as `--profile` spells it.
fn profile_name(profile: Profile) -> String {
    use clap::ValueEnum;
    profile
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_default()
}
