//! `bench sim`: foca and the catalog merge over an in-memory network with
//! loss and delay, deterministic from a seed, for clusters of thousands.
//!
//! Each cluster size runs the same story on a cluster formed at time 0:
//! a quiet spell (traffic at rest), a catalog record written on one node
//! (rounds until every node holds it), a node joining through one member
//! (rounds until every member knows it), and a node crashing without
//! leaving (time until every node declares it down). False suspicions of
//! running nodes are counted throughout. The foca configuration is the
//! agent's own (`sidecar::membership::foca_config`) for the chosen profile.

mod net;
mod node;
mod observe;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use sidecar::config::Profile;

use crate::report::{self, percentile, Table};
use net::{nanos, Nanos, Traffic};
use observe::Spread;
use world::{RunEnd, World, WorldConfig};

/// Options of `bench sim`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SimArgs {
    /// Cluster sizes to simulate, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 5000, 10000])]
    pub nodes: Vec<usize>,
    /// Share of messages the network loses, from 0 to 1 (0.01 is 1 %).
    #[arg(long, default_value_t = 0.01)]
    pub loss: f64,
    /// One-way network delay in milliseconds (each message: 80 % to 120 % of it).
    #[arg(long, default_value_t = 2.0)]
    pub delay: f64,
    /// Seed of every random choice; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Gossip timings, as the agent's `--profile`.
    #[arg(long, value_enum, default_value = "lan")]
    #[serde(serialize_with = "profile_name")]
    pub profile: Profile,
    /// Catalog records written (one after the other) whose spread is timed.
    #[arg(long, default_value_t = 5)]
    pub records: usize,
    /// Simulated seconds of a quiet cluster before the events (traffic at rest).
    #[arg(long, default_value_t = 10.0)]
    pub rest: f64,
    /// Run without Lifeguard (the agent runs with it), for comparison.
    #[arg(long)]
    pub no_lifeguard: bool,
    /// Probe as foca's defaults do (three indirect probes, no second
    /// direct ping) instead of the agent's way, for comparison.
    #[arg(long)]
    pub foca_probes: bool,
    /// Wall-clock budget per cluster size, in seconds.
    #[arg(long, default_value_t = 900)]
    pub budget: u64,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: PathBuf,
}

fn profile_name<S: serde::Serializer>(p: &Profile, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match p {
        Profile::Local => "local",
        Profile::Lan => "lan",
        Profile::Wan => "wan",
    })
}

/// How one fact spread through the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct SpreadResult {
    /// Nodes that had to learn it.
    pub nodes: usize,
    /// Nodes that did before the limit.
    pub reached: usize,
    /// Seconds until half of them had.
    pub p50_s: f64,
    /// Seconds until 99 % had.
    pub p99_s: f64,
    /// Seconds until all had (None if some never did).
    pub all_s: Option<f64>,
    /// `all_s` in gossip periods, rounded up.
    pub rounds: Option<u64>,
    /// Messages sent per node while it spread.
    pub messages_per_node: f64,
}

/// How a crash was detected.
#[derive(Debug, Clone, Serialize)]
pub struct CrashResult {
    /// Seconds until the first probe of the crashed node failed.
    pub first_suspicion_s: Option<f64>,
    /// How it spread once declared down.
    pub down: SpreadResult,
    /// The configured suspicion timeout, in seconds.
    pub suspect_to_down_s: f64,
}

/// Everything measured for one cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Cluster size.
    pub nodes: usize,
    /// Gossip period (one round), in seconds.
    pub round_s: f64,
    /// Probe period, in seconds.
    pub probe_period_s: f64,
    /// foca's max transmissions per update at this size.
    pub max_transmissions: u8,
    /// Wall seconds to build the formed cluster.
    pub bootstrap_wall_s: f64,
    /// Wall seconds of the simulation proper.
    pub run_wall_s: f64,
    /// Simulated seconds covered.
    pub simulated_s: f64,
    /// Events handled.
    pub events: u64,
    /// SWIM packets per node per second at rest.
    pub rest_packets_per_node_s: f64,
    /// Bytes (SWIM and anti-entropy) per node per second at rest.
    pub rest_bytes_per_node_s: f64,
    /// The median of the record spreads (by time to reach every node).
    pub record: SpreadResult,
    /// The most rounds any record took (None if one never reached every node).
    pub record_rounds_max: Option<u64>,
    /// Every record spread.
    pub records: Vec<SpreadResult>,
    /// A new node joining through one member.
    pub join: SpreadResult,
    /// Members the joiner knew once every node knew it.
    pub joiner_known_at_join: usize,
    /// Members the joiner knew at the end of the run.
    pub joiner_known_at_end: usize,
    /// Simulated seconds from the join to the end of the run.
    pub joiner_age_at_end_s: f64,
    /// A node crashing without leaving.
    pub crash: CrashResult,
    /// Failed probes of running nodes over the whole run.
    pub false_suspicions: u64,
    /// The same per node per hour of simulated time.
    pub false_suspicions_per_node_hour: f64,
    /// Whether Lifeguard ran.
    pub lifeguard: bool,
    /// Down notifications about running nodes over the whole run (one per
    /// node told).
    pub false_downs: u64,
    /// The running nodes declared down by someone (indices; the joiner is
    /// the last).
    pub falsely_down_nodes: Vec<u32>,
    /// Identity renewals after a false down.
    pub rejoins: u64,
    /// Messages per node over the whole run.
    pub messages_per_node: f64,
    /// Bytes per node over the whole run.
    pub bytes_per_node: f64,
    /// Messages the network lost.
    pub lost: u64,
    /// Errors foca returned (stale or self-addressed packets, mostly).
    pub foca_errors: u64,
    /// Why the run stopped early, if it did.
    pub note: Option<String>,
}

/// Runs `bench sim`.
pub fn run(args: &SimArgs) -> anyhow::Result<Vec<SimResult>> {
    if !(0.0..1.0).contains(&args.loss) {
        bail!(
            "--loss {} is not a share from 0 to 1 (0.01 means 1 %)",
            args.loss
        );
    }
    if !(0.0..=10_000.0).contains(&args.delay) {
        bail!("--delay {} ms is not between 0 and 10000", args.delay);
    }
    if let Some(n) = args.nodes.iter().find(|n| !(3..=50_000).contains(*n)) {
        bail!("--nodes {n} is outside 3 to 50000");
    }
    let mut results = Vec::new();
    for &n in &args.nodes {
        println!(
            "simulating {n} nodes (loss {}, delay {} ms, seed {})...",
            args.loss, args.delay, args.seed
        );
        let result = run_one(n, args)?;
        results.push(result);
    }
    print_tables(&results);
    let name = format!(
        "sim-{}-{}{}{}-loss{}-delay{}",
        args.nodes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        match args.profile {
            Profile::Local => "local",
            Profile::Lan => "lan",
            Profile::Wan => "wan",
        },
        if args.no_lifeguard {
            "-nolifeguard"
        } else {
            ""
        },
        if args.foca_probes { "-focaprobes" } else { "" },
        args.loss,
        args.delay
    );
    let path = report::write_json(&args.out, &name, "sim", args, &results)?;
    println!("\nwrote {}", path.display());
    Ok(results)
}

fn secs(n: Nanos) -> f64 {
    n as f64 / 1e9
}

fn spread_result(spread: &Spread, nodes: usize, round: Nanos, messages: u64) -> SpreadResult {
    let delays = spread.delays_secs();
    let all = (spread.count >= nodes).then(|| secs(spread.last_at.saturating_sub(spread.since)));
    SpreadResult {
        nodes,
        reached: spread.count.min(nodes),
        p50_s: percentile(&delays, 0.5),
        p99_s: percentile(&delays, 0.99),
        all_s: all,
        rounds: all.map(|s| (s / secs(round)).ceil() as u64),
        messages_per_node: messages as f64 / nodes.max(1) as f64,
    }
}

fn run_one(n: usize, args: &SimArgs) -> anyhow::Result<SimResult> {
    let foca_probes = args.foca_probes;
    let profile = args.profile;
    let config_for = move |size| {
        let config = sidecar::membership::foca_config(profile, size);
        if foca_probes {
            foca::Config {
                retry_direct_probe: false,
                num_indirect_probes: foca::Config::simple().num_indirect_probes,
                ..config
            }
        } else {
            config
        }
    };
    let foca = config_for(n);
    let round = foca
        .periodic_gossip
        .as_ref()
        .map_or(nanos(foca.probe_period), |p| nanos(p.frequency));
    let probe = nanos(foca.probe_period);
    let suspect = nanos(foca.suspect_to_down_after);
    let max_tx = foca.max_transmissions.get();
    let sync_every = match args.profile {
        Profile::Local => Duration::from_secs(1),
        Profile::Lan => Duration::from_secs(5),
        Profile::Wan => Duration::from_secs(15),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.budget);
    let mut world = World::formed(WorldConfig {
        nodes: n,
        config_for: std::sync::Arc::new(config_for),
        probe_period: foca.probe_period,
        loss: args.loss,
        delay: Duration::from_secs_f64(args.delay / 1000.0),
        sync_every,
        seed: world::mix(args.seed, n as u64),
        lifeguard: !args.no_lifeguard,
    })?;
    let bootstrap_wall = started.elapsed();
    let run_started = Instant::now();
    let mut note = None;
    let stopped_early = |end: RunEnd, what: &str, note: &mut Option<String>| {
        if end == RunEnd::WallBudget && note.is_none() {
            *note = Some(format!(
                "wall-clock budget of {} s ran out during {what}",
                args.budget
            ));
        }
    };

    // At rest: skip the first probe periods, then count.
    let warm = 2 * probe;
    let rest_end = warm + nanos(Duration::from_secs_f64(args.rest.max(1.0)));
    let end = world.run_until(warm, deadline, |_| false);
    stopped_early(end, "warm-up", &mut note);
    let before = world.net.total.clone();
    let end = world.run_until(rest_end, deadline, |_| false);
    stopped_early(end, "the quiet spell", &mut note);
    let rest = delta(&world.net.total, &before);
    let rest_s = secs(rest_end - warm) * n as f64;

    // Records written one after the other on nodes spread over the cluster.
    let mut records = Vec::new();
    for k in 0..args.records.max(1) {
        let before = world.net.total.clone();
        let writer = (k * n / args.records.max(1)) as u32;
        world.write_record(writer, k)?;
        let limit = world.now + nanos(Duration::from_secs(120));
        let end = world.run_until(limit, deadline, |w| {
            w.record.as_ref().is_some_and(|(_, s)| s.count >= n)
        });
        stopped_early(end, "the record spread", &mut note);
        match world.record.as_ref() {
            Some((_, spread)) => records.push(spread_result(
                spread,
                n,
                round,
                delta(&world.net.total, &before).messages(),
            )),
            None => bail!("the record was not written"),
        }
        if end == RunEnd::WallBudget {
            break;
        }
    }
    // The run with the median time to reach every node stands for them all.
    let mut ranked: Vec<&SpreadResult> = records.iter().collect();
    ranked.sort_by(|a, b| {
        a.all_s
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.all_s.unwrap_or(f64::INFINITY))
    });
    let record = ranked[(ranked.len() - 1) / 2].clone();
    let record_rounds_max = if records.iter().all(|r| r.rounds.is_some()) {
        records.iter().filter_map(|r| r.rounds).max()
    } else {
        None
    };

    // A node joins through node 0.
    let before = world.net.total.clone();
    let joiner = world.join(0)?;
    world.observer.up = Some(Spread::new(joiner, n, world.now));
    let join_start = world.now;
    let limit = world.now + nanos(Duration::from_secs(120));
    let end = world.run_until(limit, deadline, |w| {
        w.observer.up.as_ref().is_some_and(|s| s.count >= n)
    });
    stopped_early(end, "the join", &mut note);
    let joiner_known_at_join = world.nodes[joiner as usize].core.foca().num_members();
    let join = match world.observer.up.as_ref() {
        Some(spread) => spread_result(
            spread,
            n,
            round,
            delta(&world.net.total, &before).messages(),
        ),
        None => bail!("the join was not watched"),
    };

    // A node crashes without leaving.
    let before = world.net.total.clone();
    let victim = 1 + (world::mix(args.seed, 7) % (n as u64 - 1)) as u32;
    world.crash(victim);
    let witnesses = world.running();
    world.observer.down = Some(Spread::new(victim, world.nodes.len(), world.now));
    let limit = world.now + suspect + nanos(Duration::from_secs(120));
    let end = world.run_until(limit, deadline, |w| {
        w.observer
            .down
            .as_ref()
            .is_some_and(|s| s.count >= witnesses)
    });
    stopped_early(end, "the crash", &mut note);
    let crash_start = world.observer.down.as_ref().map_or(world.now, |s| s.since);
    let crash = CrashResult {
        first_suspicion_s: world
            .observer
            .first_suspicion_at
            .map(|t| secs(t.saturating_sub(crash_start))),
        down: match world.observer.down.as_ref() {
            Some(spread) => spread_result(
                spread,
                witnesses,
                round,
                delta(&world.net.total, &before).messages(),
            ),
            None => bail!("the crash was not watched"),
        },
        suspect_to_down_s: secs(suspect),
    };

    let total = &world.net.total;
    let nodes_total = world.nodes.len().max(1) as f64;
    Ok(SimResult {
        nodes: n,
        round_s: secs(round),
        probe_period_s: secs(probe),
        max_transmissions: max_tx,
        bootstrap_wall_s: bootstrap_wall.as_secs_f64(),
        run_wall_s: run_started.elapsed().as_secs_f64(),
        simulated_s: secs(world.now),
        events: world.events,
        rest_packets_per_node_s: rest.swim_packets as f64 / rest_s.max(1e-9),
        rest_bytes_per_node_s: rest.bytes() as f64 / rest_s.max(1e-9),
        record,
        record_rounds_max,
        records,
        join,
        joiner_known_at_join,
        joiner_known_at_end: world.nodes[joiner as usize].core.foca().num_members(),
        joiner_age_at_end_s: secs(world.now.saturating_sub(join_start)),
        crash,
        false_suspicions: world.observer.false_suspicions,
        false_suspicions_per_node_hour: world.observer.false_suspicions as f64
            / (nodes_total * secs(world.now) / 3600.0).max(1e-9),
        lifeguard: !args.no_lifeguard,
        false_downs: world.observer.false_downs,
        falsely_down_nodes: world.observer.falsely_down.iter().copied().collect(),
        rejoins: world.observer.rejoins,
        messages_per_node: total.messages() as f64 / nodes_total,
        bytes_per_node: total.bytes() as f64 / nodes_total,
        lost: total.lost,
        foca_errors: world.foca_errors,
        note,
    })
}

fn delta(now: &Traffic, before: &Traffic) -> Traffic {
    Traffic {
        swim_packets: now.swim_packets - before.swim_packets,
        swim_bytes: now.swim_bytes - before.swim_bytes,
        sync_messages: now.sync_messages - before.sync_messages,
        sync_bytes: now.sync_bytes - before.sync_bytes,
        lost: now.lost - before.lost,
    }
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |s| format!("{s:.2} s"))
}

fn opt_rounds(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |r| r.to_string())
}

fn print_tables(results: &[SimResult]) {
    let mut spread = Table::new(&[
        "nodes",
        "record: all (median)",
        "rounds (median/max)",
        "rounds/log2 N",
        "join: all",
        "rounds",
        "joiner knows",
        "crash: suspected",
        "down on all",
    ]);
    for r in results {
        let log = (r.nodes as f64).log2();
        spread.row(vec![
            r.nodes.to_string(),
            opt_s(r.record.all_s),
            format!(
                "{}/{}",
                opt_rounds(r.record.rounds),
                opt_rounds(r.record_rounds_max)
            ),
            r.record
                .rounds
                .map_or_else(|| "-".to_owned(), |x| format!("{:.2}", x as f64 / log)),
            opt_s(r.join.all_s),
            opt_rounds(r.join.rounds),
            format!(
                "{}/{} after {:.0} s",
                r.joiner_known_at_end, r.nodes, r.joiner_age_at_end_s
            ),
            opt_s(r.crash.first_suspicion_s),
            opt_s(r.crash.down.all_s),
        ]);
    }
    println!(
        "\nConvergence (one round = one gossip period)\n{}",
        spread.render()
    );
    let mut cost = Table::new(&[
        "nodes",
        "packets/node/s at rest",
        "B/node/s at rest",
        "msgs/node (record)",
        "msgs/node (run)",
        "false suspicions",
        "per node-hour",
        "false downs (nodes)",
        "bootstrap",
        "run",
    ]);
    for r in results {
        cost.row(vec![
            r.nodes.to_string(),
            format!("{:.2}", r.rest_packets_per_node_s),
            format!("{:.0}", r.rest_bytes_per_node_s),
            format!("{:.1}", r.record.messages_per_node),
            format!("{:.0}", r.messages_per_node),
            r.false_suspicions.to_string(),
            format!("{:.2}", r.false_suspicions_per_node_hour),
            format!("{} ({})", r.false_downs, r.falsely_down_nodes.len()),
            format!("{:.1} s", r.bootstrap_wall_s),
            format!("{:.1} s", r.run_wall_s),
        ]);
    }
    println!("Cost and accuracy\n{}", cost.render());
    for r in results {
        if let Some(note) = &r.note {
            println!("note ({} nodes): {note}", r.nodes);
        }
    }
}
