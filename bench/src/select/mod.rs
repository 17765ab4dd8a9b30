//! `bench select`: the proxy's per-request selection cost (snapshot read,
//! live instances, candidates, requirements, P2C pick and outcome report)
//! against the size of the catalog and of the member table.
//!
//! The catalog holds a target service with a fixed number of instances and
//! a growing number of other services' records; the member table grows to
//! `--members`. The cost per pick must stay flat: the proxy reads the
//! service's entry of the catalog snapshot and never scans the catalog.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use client::select::{BalancerConfig, Outcome, Requirements};
use mesh_proto::catalog::{Catalog, Health, Instance, Record, RecordBody, RecordKey};
use mesh_proto::{Hlc, NodeId, NodeIdentity, Version};
use serde::Serialize;
use sidecar::catalog::CatalogStore;
use sidecar::membership::ActiveMembers;
use sidecar::rtt::RttTable;
use sidecar::upstreams::Upstreams;
use tokio::sync::watch;

use crate::report::{self, Table};

/// Options of `bench select`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SelectArgs {
    /// Catalog sizes (records) to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    pub records: Vec<usize>,
    /// Members in the member table.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Instances of the service being called.
    #[arg(long, default_value_t = 8)]
    pub instances: usize,
    /// Picks measured per catalog size.
    #[arg(long, default_value_t = 200_000)]
    pub picks: usize,
    /// Directory for the JSON results.
    #[arg(long, default_value = report::DEFAULT_OUT)]
    #[serde(skip)]
    pub out: std::path::PathBuf,
}

/// One catalog size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SelectRow {
    /// Records in the catalog.
    pub records: usize,
    /// Members in the member table.
    pub members: usize,
    /// Mean cost of one selection, ns.
    pub ns_per_pick: f64,
    /// The same selection with the first wave's candidate list: every
    /// catalog record scanned under the catalog's lock, ns.
    pub scan_ns_per_pick: f64,
    /// This cost divided by the smallest catalog's.
    pub vs_smallest: f64,
}

/// Everything `bench select` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SelectResults {
    /// One row per catalog size.
    pub rows: Vec<SelectRow>,
    /// Largest cost over smallest: flat means close to 1.
    pub largest_over_smallest: f64,
}

fn node(n: usize) -> NodeId {
    NodeId::new(format!("node-{n}")).unwrap_or_else(|_| unreachable!("a valid node id"))
}

fn record(key: RecordKey, body: RecordBody, writer: &NodeId, n: usize) -> Record {
    Record {
        key,
        version: Version {
            hlc: Hlc {
                wall_ms: 1_000 + n as u64,
                logical: 0,
            },
            writer: writer.clone(),
        },
        body,
    }
}

fn instance(id: String, service: &str, on: NodeId, port: u16) -> Instance {
    Instance {
        id,
        service: service.to_owned(),
        node: on,
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        deployment_id: None,
        tags: Vec::new(),
        health: Health::Passing,
    }
}

/// A catalog of `records` records: the target's instances, then others.
fn catalog(records: usize, members: usize, instances: usize) -> Catalog {
    let mut catalog = Catalog::new();
    for n in 0..records {
        let on = node(n % members.max(1));
        let (service, id) = if n < instances {
            ("target".to_owned(), format!("target-{n}"))
        } else {
            (format!("other-{}", n % 997), format!("other-{n}"))
        };
        let body = RecordBody::Instance(instance(id.clone(), &service, on.clone(), 8000));
        catalog.apply(record(RecordKey::Instance(id), body, &on, n));
    }
    catalog
}

/// Which way the candidate list is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The service's entry of the snapshot.
    Snapshot,
    /// Every record scanned under the lock (the first wave's `live_instances`).
    Scan,
}

fn measure(args: &SelectArgs, records: usize, path: Path) -> anyhow::Result<f64> {
    let local = node(usize::MAX);
    let store = CatalogStore::new(
        local.clone(),
        catalog(records, args.members, args.instances),
    );
    let members: ActiveMembers = Arc::new(
        (0..args.members)
            .map(|n| {
                let id = node(n);
                let identity = NodeIdentity {
                    node_id: id.clone(),
                    addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + (n % 50_000) as u16)),
                    generation: 1,
                };
                (id, identity)
            })
            .collect::<BTreeMap<_, _>>(),
    );
    let (_members_tx, members_rx) = watch::channel(members);
    let rtt = RttTable::new(local.clone(), false);
    for n in 0..args.members {
        rtt.observe(&node(n), Duration::from_micros(500 + (n % 7) as u64 * 100));
    }
    let upstreams = Upstreams::new(
        local,
        store.clone(),
        members_rx,
        rtt,
        BalancerConfig::default(),
    );
    let caller = Requirements {
        hard_rtt_ms: Some(30),
        soft_rtt_ms: Some(10),
    };
    // The proxy's path per request, as `proxy::attempts` runs it.
    let pick_once = || -> anyhow::Result<()> {
        let snapshot = upstreams.snapshot();
        let requirements = upstreams.effective_requirements(&snapshot, "target", caller);
        // The scan copies every record it keeps, as the proxy once did.
        let scanned: Vec<mesh_proto::Instance>;
        let live: Vec<&mesh_proto::Instance> = match path {
            Path::Snapshot => upstreams.live_instances(&snapshot, "target"),
            Path::Scan => {
                scanned = store.read(|c| {
                    c.instances()
                        .filter(|i| i.service == "target")
                        .cloned()
                        .collect()
                });
                scanned.iter().collect()
            }
        };
        let candidates = upstreams.candidates(&snapshot, &live);
        let now = Instant::now();
        let pick = upstreams
            .with("target", |b| b.pick(&candidates, requirements, &[], now))
            .map_err(|e| anyhow::anyhow!("no pick: {}", e.message()))?;
        let id = &candidates[pick.index].instance_id;
        upstreams.with("target", |b| {
            b.report(
                id,
                Outcome::Success {
                    latency: Duration::from_micros(300),
                },
                now,
            )
        });
        Ok(())
    };
    for _ in 0..args.picks / 10 {
        pick_once()?;
    }
    let started = Instant::now();
    for _ in 0..args.picks {
        pick_once()?;
    }
    Ok(started.elapsed().as_nanos() as f64 / args.picks as f64)
}

/// Runs `bench select`.
pub fn run(args: &SelectArgs) -> anyhow::Result<SelectResults> {
    if args.records.is_empty() || args.records.iter().any(|&r| r < args.instances) {
        bail!(
            "--records must list sizes of at least --instances ({}) records",
            args.instances
        );
    }
    if args.members == 0 || args.instances == 0 || args.picks == 0 {
        bail!("--members, --instances and --picks must be at least 1");
    }
    let mut rows: Vec<SelectRow> = Vec::new();
    for &records in &args.records {
        let ns = measure(args, records, Path::Snapshot)?;
        let scan_ns = measure(args, records, Path::Scan)?;
        let base = rows.first().map_or(ns, |r| r.ns_per_pick);
        rows.push(SelectRow {
            records,
            members: args.members,
            ns_per_pick: ns,
            scan_ns_per_pick: scan_ns,
            vs_smallest: ns / base,
        });
    }
    let largest_over_smallest = rows.last().map_or(1.0, |r| r.vs_smallest);
    let mut table = Table::new(&[
        "records",
        "members",
        "per pick",
        "vs smallest",
        "scanning (first wave)",
    ]);
    for r in &rows {
        table.row(vec![
            r.records.to_string(),
            r.members.to_string(),
            format!("{:.0} ns", r.ns_per_pick),
            format!("{:.2}", r.vs_smallest),
            format!("{:.0} ns", r.scan_ns_per_pick),
        ]);
    }
    println!("{}", table.render());
    let out = SelectResults {
        rows,
        largest_over_smallest,
    };
    let path = report::write_json(&args.out, "select", "select", args, &out)?;
    println!("\nwrote {}", path.display());
    Ok(out)
}
