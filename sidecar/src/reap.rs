//! Reaps the records of nodes that stay down: every sweep asks the reaper
//! core which owners were absent from the members for `--reap-after-s`,
//! drops their records from this node's catalog, and takes back those that
//! returned. Nothing is gossiped: each node reaps on its own clock, and all
//! of them see the same absence.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::NodeId;
use tokio::sync::watch;
use tracing::info;

use crate::catalog::{CatalogSnapshot, CatalogStore};
use crate::core::reaper::Reaper;
use crate::membership::ActiveMembers;

/// The default reap time: Consul's 72 hours.
pub const DEFAULT_REAP_AFTER: Duration = Duration::from_secs(72 * 3600);

/// Sweeps until the agent stops.
pub async fn run(
    catalog: Arc<CatalogStore>,
    members: watch::Receiver<ActiveMembers>,
    after: Duration,
) {
    let mut reaper = Reaper::new(after);
    let mut tick = tokio::time::interval(sweep_every(after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let owners = owners(&catalog.snapshot(), catalog.node_id());
        let active = members.borrow().clone();
        let verdict = reaper.observe(owners, |n| active.contains_key(n), Instant::now());
        for node in verdict.reap {
            let records = catalog.reap(&node);
            info!(%node, records, after_s = after.as_secs(), "reaped the records of a node down longer than the reap time");
        }
        for node in verdict.back {
            catalog.unreap(&node);
            info!(%node, "a reaped node is back; its records are welcome again");
        }
    }
}

/// A quarter of the reap time, between 250 ms and 30 s: reaping may come
/// late by that much, which a reap time of hours never notices.
fn sweep_every(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// Every node that owns a record in `snapshot`, except `this` node.
fn owners(snapshot: &CatalogSnapshot, this: &NodeId) -> BTreeSet<NodeId> {
    let mut owners: BTreeSet<NodeId> = snapshot.nodes().keys().cloned().collect();
    for (_, entry) in snapshot.services() {
        owners.extend(entry.instances.iter().map(|i| i.node.clone()));
    }
    owners.remove(this);
    owners
}
