//! The handles the admin API and its views use: built by the agent (the composition root)
//! from the services, so that no front imports the agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mesh_proto::{NodeId, NodeIdentity};
use tokio::sync::watch;

use crate::catalog::CatalogStore;
use crate::decisions::Decisions;
use crate::membership::Membership;
use crate::registry::Registry;
use crate::supervise::Supervisor;
use crate::upstreams::Upstreams;

/// What the admin API and its views read and write.
pub struct AdminHandles {
    /// This node's identity.
    pub identity: NodeIdentity,
    /// The catalog (snapshots, blocking queries).
    pub catalog: Arc<CatalogStore>,
    /// Members and their states.
    pub membership: Membership,
    /// Writes of this node's records.
    pub registry: Arc<Registry>,
    /// Candidates, RTT and balancers.
    pub upstreams: Arc<Upstreams>,
    /// Local services.
    pub supervisor: Arc<Supervisor>,
    /// Recent routing decisions of this node's proxy.
    pub decisions: Arc<Decisions>,
    /// Slots for the UI's event streams (`GET /v1/events`), at most
    /// [`crate::ui::sse::MAX_STREAMS`].
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// Where this agent's listeners are bound (`GET /v1/agent/listeners`).
    pub listeners: crate::listeners::Listeners,
    /// True once every listener serves.
    pub ready: Arc<AtomicBool>,
    /// Token required on admin writes (`--admin-token`), if any.
    pub admin_token: Option<crate::config::AdminToken>,
    /// Why this node is not in a cluster it was told to join, until it is.
    pub join_problem: crate::join::JoinProblem,
    /// Turns true when the agent stops.
    pub shutdown: watch::Receiver<bool>,
}

impl AdminHandles {
    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.identity.node_id
    }

    /// True once every listener serves.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
