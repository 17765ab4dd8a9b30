//! Health of this node's own instances, learnt from traffic.
//!
//! Passive detection with active recovery: the first time a call to a local
//! instance cannot connect, the owning sidecar marks it `critical` in the
//! catalog (so every sidecar in the cluster stops routing to it within a
//! gossip round, not after each has burnt its own failures) and then probes
//! its port until it accepts again, when it is marked `passing`. Healthy
//! instances cost nothing: nothing probes them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_proto::catalog::{Health, RecordBody, RecordKey};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::registry;

/// How often a critical instance's port is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Instances of this node being probed back to health.
#[derive(Debug, Default)]
pub struct Recovering {
    ids: Mutex<HashSet<String>>,
}

impl Recovering {
    /// Claims `id` for probing; false if a probe task already owns it.
    fn claim(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned())
    }

    fn release(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// A call to local instance `id` could not connect: mark it critical and
/// probe it until it is back. Instances of other nodes are not ours to mark.
pub async fn connect_failed(agent: &Arc<Agent>, id: &str) {
    if !set_health(agent, id, Health::Critical).await {
        return;
    }
    if !agent.recovering.claim(id) {
        return;
    }
    warn!(instance = %id, "local instance refuses connections; marked critical until its port accepts again");
    let agent = agent.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        probe_until_back(&agent, &id).await;
        agent.recovering.release(&id);
    });
}

async fn probe_until_back(agent: &Arc<Agent>, id: &str) {
    let mut shutdown = agent.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        // Deregistered (or never ours) while down: nothing left to recover.
        let Some(address) = local_instance(agent, id).map(|i| i.address) else {
            return;
        };
        let accepted = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(address)).await,
            Ok(Ok(_))
        );
        if accepted {
            if set_health(agent, id, Health::Passing).await {
                info!(instance = %id, "local instance accepts connections again; marked passing");
            }
            return;
        }
    }
}

fn local_instance(agent: &Agent, id: &str) -> Option<mesh_proto::Instance> {
    agent.catalog.read(|c| {
        c.instance(id)
            .filter(|i| i.node == *agent.node_id())
            .cloned()
    })
}

/// Publishes a new health for a local instance; false if it is not ours or
/// already has that health.
async fn set_health(agent: &Agent, id: &str, health: Health) -> bool {
    let Some(mut instance) = local_instance(agent, id) else {
        return false;
    };
    if instance.health == health {
        return false;
    }
    instance.health = health;
    registry::publish(
        agent,
        RecordKey::Instance(instance.id.clone()),
        RecordBody::Instance(instance),
    )
    .await;
    true
}
