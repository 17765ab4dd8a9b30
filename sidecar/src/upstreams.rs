//! The upstream candidates of a service as this node sees them (catalog
//! snapshot + membership + RTT), and one balancer per service, shared by the
//! proxy, the admin API's instance listing and DNS.
//!
//! Nothing here takes a lock a writer holds across I/O, and the work per
//! call is proportional to the service's instances: the catalog snapshot is
//! indexed by service and the member table is a shared `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use client::select::{Balancer, BalancerConfig, Candidate, Ranking, Requirements};
use mesh_proto::api::RttSource;
use mesh_proto::catalog::Instance;
use mesh_proto::NodeId;
use tokio::sync::watch;

use crate::catalog::{CatalogSnapshot, CatalogStore};
use crate::core::candidates;
use crate::membership::ActiveMembers;
use crate::rtt::RttTable;

/// Balancers by service name, and the views that feed them.
pub struct Upstreams {
    node_id: NodeId,
    catalog: Arc<CatalogStore>,
    members: watch::Receiver<ActiveMembers>,
    rtt: Arc<RttTable>,
    config: BalancerConfig,
    balancers: Mutex<HashMap<String, Balancer>>,
}

impl Upstreams {
    /// No balancer yet; each is made on first use.
    pub fn new(
        node_id: NodeId,
        catalog: Arc<CatalogStore>,
        members: watch::Receiver<ActiveMembers>,
        rtt: Arc<RttTable>,
        config: BalancerConfig,
    ) -> Self {
        Self {
            node_id,
            catalog,
            members,
            rtt,
            config,
            balancers: Mutex::new(HashMap::new()),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The catalog snapshot to read from.
    pub fn snapshot(&self) -> Arc<CatalogSnapshot> {
        self.catalog.snapshot()
    }

    /// Runs `f` on the balancer of `service`, made on first use: call it
    /// only for services with live instances, so that names callers make
    /// up leave no state behind.
    pub fn with<T>(&self, service: &str, f: impl FnOnce(&mut Balancer) -> T) -> T {
        let mut balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: the name is copied only once per
        // service, not on every request.
        if let Some(balancer) = balancers.get_mut(service) {
            return f(balancer);
        }
        let balancer = balancers
            .entry(service.to_owned())
            .or_insert_with(|| Balancer::new(self.config.clone()));
        f(balancer)
    }

    /// Ranks the instances of `service` under `requirements`.
    pub fn rank(
        &self,
        service: &str,
        candidates: &[Candidate],
        requirements: Requirements,
    ) -> Ranking {
        let balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
        match balancers.get(service) {
            Some(balancer) => balancer.rank(candidates, requirements, Instant::now()),
            // A read must not create state: anyone may ask about any name
            // (admin API, DNS), and a fresh balancer ranks the same.
            None => {
                Balancer::new(self.config.clone()).rank(candidates, requirements, Instant::now())
            }
        }
    }

    /// How many balancers exist (one per service that carried calls).
    pub fn balancer_count(&self) -> usize {
        self.balancers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Live instances of `service` in `snapshot` on nodes that are up (ours,
    /// or active members).
    pub fn live_instances<'s>(
        &self,
        snapshot: &'s CatalogSnapshot,
        service: &str,
    ) -> Vec<&'s Instance> {
        let Some(entry) = snapshot.service(service) else {
            return Vec::new();
        };
        let active = self.members.borrow().clone();
        candidates::live_instances(entry, &self.node_id, &active)
    }

    /// The selection module's view of instances.
    pub fn candidates(
        &self,
        snapshot: &CatalogSnapshot,
        instances: &[&Instance],
    ) -> Vec<Candidate> {
        candidates::candidates(instances, &self.node_id, |node| self.rtt_to(snapshot, node))
    }

    /// RTT to `node`: measured, or estimated from its published coordinate.
    pub fn rtt_to(&self, snapshot: &CatalogSnapshot, node: &NodeId) -> (Option<f64>, RttSource) {
        let published = snapshot.node(node).and_then(|m| m.coordinate.as_ref());
        self.rtt.get(node, published)
    }

    /// The active members (an `Arc`, cheap to hold).
    pub fn members(&self) -> ActiveMembers {
        self.members.borrow().clone()
    }

    /// The QUIC address of `node`'s sidecar, while it is an active member.
    pub fn sidecar_addr(&self, node: &NodeId) -> Option<std::net::SocketAddr> {
        self.members.borrow().get(node).map(|m| m.addr)
    }

    /// The definition's requirements made stricter by the caller's.
    pub fn effective_requirements(
        &self,
        snapshot: &CatalogSnapshot,
        service: &str,
        caller: Requirements,
    ) -> Requirements {
        candidates::effective_requirements(snapshot.definition(service), caller)
    }
}
